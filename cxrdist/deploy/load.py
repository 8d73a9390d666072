"""``load_model(path)``: a run dir or an exported model → a ready :class:`~cxrdist.engine.predictor.Predictor`.

Both sources go through one description of the model (the ``model.json`` an export writes, see
:mod:`cxrdist.deploy.export`): method and config, the final model's transform, the auxiliary networks, the
stored image size, the operating thresholds and provenance. A run dir's description is made from the run (its
config, its shards' ``_dataset.json``, its weights files); an export's is read back and its version checked. The
networks are built by the method's own builders with ``model.pretrained=false`` (the trained weights replace
ImageNet's, so nothing is downloaded) and get their weights through :func:`~cxrdist.engine.checkpoint.ready_model`,
the evaluator's step.

Operating thresholds (:mod:`cxrdist.eval.thresholds`, Youden's J) come from the evaluator's predictions on the
``val`` split of the same weights: ``RUN/eval/val/thresholds.json`` records them with the weights' sha256; when
it is missing or of other weights, the val split is evaluated first (``launch/evaluate.py RUN --split val``).

``backend="onnx"`` swaps only the network: an export's ``model.onnx`` in onnxruntime
(:mod:`cxrdist.deploy.onnx_backend`) inside the same predictor, built from the same description. Loading an export
checks the sha256 of each file model.json records (weights.safetensors, model.onnx) that is present.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from omegaconf import DictConfig, OmegaConf

from cxrdist import __version__
from cxrdist.config import from_container, load_config, to_container
from cxrdist.data.format import read_json
from cxrdist.deploy.onnx_backend import OnnxGraph, check_onnxruntime_installed, graph_maps
from cxrdist.dist import DistEnv
from cxrdist.engine.checkpoint import read_model_weights, ready_model
from cxrdist.engine.pipeline import code_version, stage_dirs
from cxrdist.engine.predictor import Predictor
from cxrdist.engine.stages import EvalStage, StageContext
from cxrdist.engine.strategy import resolve_precision
from cxrdist.eval.thresholds import sigmoid, youden_thresholds
from cxrdist.labels import LABELS
from cxrdist.log import Tracker
from cxrdist.methods import Method, get_method
from cxrdist.run.evaluate import evaluate_run

logger = logging.getLogger(__name__)
FORMAT = "cxrdist-model"
FORMAT_VERSION = 1  # bump when model.json or the weights' key layout changes meaning
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
BACKENDS = ("torch", "onnx")


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def method_for_inference(cfg: DictConfig) -> tuple[Method, EvalStage, list]:
    """The configured method (``pretrained`` off: trained weights follow), its final EvalStage and its stages."""
    cfg = from_container(to_container(cfg))
    if "pretrained" in cfg.method.model:
        cfg.method.model.pretrained = False
    method = get_method(cfg.method.name)(cfg)
    stages = method.stages()
    final = next((s for s in reversed(stages) if isinstance(s, EvalStage)), None)
    if final is None:
        raise ValueError(f"method {cfg.method.name} has no evaluation stage: nothing defines its final model")
    return method, final, stages


def _eval_stage_val(run_dir: Path, weights: Path) -> Path | None:
    """The run's own evaluation of ``weights`` on val (``eval.splits`` with val), if it made one."""
    for done in sorted((run_dir / "stages").glob("*/DONE.json")):
        record = json.loads(done.read_text())
        npz = done.parent / "val" / "predictions.npz"
        evaluated = Path(str(record.get("outputs", {}).get("weights", "")))
        if evaluated.parts[-3:] == Path(weights).parts[-3:] and npz.is_file():  # stages/NN_name/best.pt
            return npz
    return None


def val_thresholds(run_dir: Path, stage: str | None, weights: Path) -> dict[str, Any]:
    """Youden-J thresholds of ``weights`` on the val split (evaluated first when not recorded for them)."""
    out, digest = Path(run_dir) / "eval" / "val", sha256(weights)
    record_path = out / "thresholds.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("weights_sha256") == digest:
            return record
    source = _eval_stage_val(Path(run_dir), weights)
    if source is None:
        logger.info("operating thresholds: evaluating %s on val first (Youden's J is chosen there)", weights)
        evaluate_run(Path(run_dir), ["val"], stage=stage)
        source = out / "predictions.npz"
    with np.load(source) as z:
        labels, probs = z["labels"], sigmoid(z["logits"])
        mask = z["label_mask"] if "label_mask" in z.files else None  # an external set's known labels
    record = {
        "rule": "youden_j",
        "split": "val",
        "num_samples": len(labels),
        "weights": str(weights),
        "weights_sha256": digest,
        "predictions": str(source),
        "per_class": youden_thresholds(labels, probs, mask),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(record_path, record)
    return record


def _transforms(tf: Any) -> dict[str, Any]:
    tf = OmegaConf.to_container(tf) if isinstance(tf, DictConfig) else dict(tf)
    return {"eval": [dict(o) for o in tf["eval"]], "normalize": tf["normalize"], "channels": int(tf["channels"])}


def describe_run(run_dir: Path, stage: str | None = None) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """A run dir's model description (what ``model.json`` holds) and weights (``model`` and each aux sidecar)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    method, final, stages = method_for_inference(cfg)
    ctx = StageContext(cfg=cfg, run_dir=run_dir, env=DistEnv(), tracker=Tracker())
    ctx.stage_dirs = stage_dirs(run_dir, stages)
    if stage is not None and stage not in ctx.stage_dirs:
        names = ", ".join(ctx.stage_dirs)
        raise ValueError(f"--stage {stage}: method {cfg.method.name} has no such stage (its stages: {names})")
    weights = ctx.stage_dirs[stage] / "best.pt" if stage else Path(final.weights(ctx))
    states = {"model": read_model_weights(weights)[0]}
    try:  # before the val evaluation: a stage of another network (e.g. lungheart's seg U-Net) is one line
        final.build_model(ctx).load_state_dict(states["model"], strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{weights}: not weights of {cfg.method.name}'s final model ({str(e).strip().splitlines()[0]}); "
            "choose a stage that trains that network"
        ) from None
    aux = []
    for a in method.aux_networks():
        path = ctx.stage_path(a.stage, a.weights)
        states[f"aux.{a.sidecar}"] = read_model_weights(path)[0]
        aux.append({"sidecar": a.sidecar, "stage": a.stage, "weights_sha256": sha256(path)})
    dataset = read_json(Path(cfg.data.root) / "_dataset.json")
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cxrdist_version": __version__,
        "method": cfg.method.name,
        "weights_stage": stage or weights.parent.name.split("_", 1)[1],
        "labels": list(LABELS),
        "transforms": _transforms(final.transforms(ctx)),
        "aux": aux,
        "stored_size": int(dataset["config"]["size"] or 0),
        "compare_size": int(cfg.eval.compare_size),
        "box_threshold": float(cfg.eval.thresholds[0]),
        "thresholds": val_thresholds(run_dir, stage, weights),
        "provenance": {
            "run_dir": str(run_dir.resolve()),
            "weights_sha256": sha256(weights),
            "code_version": code_version(),
            "shards": {k: dataset.get(k) for k in ("config_hash", "config", "sources")},
        },
        "config": to_container(cfg),
    }
    return spec, states


def check_compatible(spec: dict[str, Any], where: Path) -> None:
    """Refuse a model description this cxrdist cannot read (one line saying what to do)."""
    if spec.get("format") != FORMAT:
        raise ValueError(f"{where}: not a cxrdist model (format {spec.get('format')!r}, expected {FORMAT!r})")
    theirs, ours = str(spec.get("cxrdist_version", "?")), __version__
    if spec.get("format_version") != FORMAT_VERSION or theirs.split(".")[:2] != ours.split(".")[:2]:
        raise ValueError(
            f"{where}: exported by cxrdist {theirs} (model format {spec.get('format_version')}); this is cxrdist "
            f"{ours}, which reads format {FORMAT_VERSION} from cxrdist {'.'.join(ours.split('.')[:2])}.*: export "
            f"the run again with this version, or install cxrdist {theirs}"
        )


def _predictor_fields(spec: dict[str, Any], backend: str) -> dict[str, Any]:
    """What both backends' predictors take from the model description as it is."""
    per_class = spec["thresholds"]["per_class"]
    info = {k: spec[k] for k in ("method", "weights_stage", "provenance", "cxrdist_version")}
    return {
        "labels": list(spec["labels"]),
        "transforms": spec["transforms"],
        "stored_size": int(spec["stored_size"]),
        "compare_size": int(spec["compare_size"]),
        "thresholds": [per_class[name]["threshold"] for name in spec["labels"]],
        "box_threshold": float(spec["box_threshold"]),
        "info": {"backend": backend, **info},
    }


def assemble(spec: dict[str, Any], states: dict[str, dict[str, torch.Tensor]], device: Any = None) -> Predictor:
    """A Predictor from a model description and its weights (the method's builders, ``ready_model``)."""
    device = torch.device(device) if device is not None else DistEnv().device
    cfg = from_container(spec["config"])
    method, final, stages = method_for_inference(cfg)
    ctx = StageContext(cfg=cfg, run_dir=Path("."), env=DistEnv(), tracker=Tracker())
    ctx.stage_dirs = stage_dirs(Path("."), stages)
    model = ready_model(final.build_model(ctx), states["model"], device)
    aux = [(a, ready_model(a.build(), states[f"aux.{a.sidecar}"], device)) for a in method.aux_networks()]
    for a, _ in aux:
        a.transforms = _transforms(a.transforms)
    return Predictor(
        model=model,
        maps=final.maps,
        device=device,
        aux=aux,
        aux_dtype=resolve_precision(cfg.engine.precision, device),
        **_predictor_fields(spec, "torch"),
    )


def assemble_onnx(spec: dict[str, Any], graph: Path, device: Any = None) -> Predictor:
    """A Predictor whose network is ``graph`` (model.onnx) in onnxruntime: no method or torch network is built;
    the tensors around the graph stay on the CPU (onnxruntime moves the input to its device)."""
    if spec.get("aux"):  # export refuses these (onnx_export.check_onnx_method); a hand-edited model.json may not
        raise ValueError(f"{graph}: {spec['method']} runs auxiliary networks, which model.onnx does not hold")
    return Predictor(model=OnnxGraph(graph, device), maps=graph_maps, **_predictor_fields(spec, "onnx"))


def _check_sha256(path: Path, expected: str) -> None:
    if sha256(path) != expected:
        raise ValueError(f"{path}: sha256 differs from model.json's: the file is damaged or from another export")


def check_export_files(path: Path, spec: dict[str, Any], backend: str) -> Path | None:
    """The export's files against ``model.json``: the backend's file must be there, and every recorded file that
    is there must have its sha256 (a damaged model.onnx is refused by the torch backend too: one artifact). Returns
    the ONNX file's path when the export has one."""
    weights = path / WEIGHTS
    onnx = spec.get("onnx")
    graph = path / onnx["file"] if onnx else None
    if backend == "torch" and not weights.is_file():
        raise ValueError(f"{path}: {WEIGHTS} is missing; copy the whole exported folder")
    if backend == "onnx":
        if graph is None:
            raise ValueError(
                f"{path}: exported without --onnx (no model.onnx in {MODEL_JSON}): export the run again with "
                "launch/export.py RUN --out DIR --onnx, or use --backend torch"
            )
        if not graph.is_file():
            raise ValueError(f"{graph} is missing; copy the whole exported folder")
    if weights.is_file():
        _check_sha256(weights, spec["weights_sha256"])
    if graph is not None and graph.is_file():
        _check_sha256(graph, onnx["sha256"])
    return graph


def load_export(path: Path, device: Any = None, backend: str = "torch") -> Predictor:
    """An exported model folder (``model.json`` + ``weights.safetensors``, or ``model.onnx`` for ``backend``
    ``onnx``) → Predictor."""
    path = Path(path)
    spec = json.loads((path / MODEL_JSON).read_text())
    check_compatible(spec, path / MODEL_JSON)
    graph = check_export_files(path, spec, backend)
    if backend == "onnx":
        return assemble_onnx(spec, graph, device)
    flat = safetensors.torch.load_file(str(path / WEIGHTS))
    states: dict[str, dict[str, torch.Tensor]] = {"model": {}}
    for key, tensor in flat.items():
        group, name = key.split("/", 1)
        states.setdefault(group, {})[name] = tensor
    return assemble(spec, states, device)


def check_backend(path: Path, backend: str) -> None:
    """``backend`` is torch or onnx; onnx runs an export's model.onnx (not a run dir) and needs onnxruntime."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        if not (path / MODEL_JSON).is_file():
            raise ValueError(
                f"--backend onnx runs an exported model.onnx; {path} is not an export: export it with "
                "launch/export.py RUN --out DIR --onnx, or use --backend torch"
            )
        check_onnxruntime_installed()


def load_model(
    path: str | os.PathLike, *, stage: str | None = None, device: Any = None, backend: str = "torch"
) -> Predictor:
    """A trained model, ready to predict: ``path`` is a run dir (``stage``: that stage's ``best.pt``; default the
    method's final model) or a folder written by ``launch/export.py``. ``device``: default CUDA when present.
    ``backend="onnx"``: an export's ``model.onnx`` through onnxruntime, with the same reading, transform,
    thresholds and heatmap paste (:mod:`cxrdist.deploy.onnx_backend`).

    >>> model = cxrdist.load_model("runs/chexnet")
    >>> out = model.predict(["scan.dcm", "folder/x.png"])  # out["probs"], out["heatmaps"], out["calls"]
    """
    path = Path(path)
    check_backend(path, backend)
    if (path / MODEL_JSON).is_file():
        if stage is not None:
            raise ValueError(f"{path} is an exported model (one stage's weights); --stage applies to run dirs")
        return load_export(path, device, backend)
    if (path / "config.yaml").is_file():
        spec, states = describe_run(path, stage)
        return assemble(spec, states, device)
    raise ValueError(f"{path}: neither an exported model (no {MODEL_JSON}) nor a run dir (no config.yaml)")
