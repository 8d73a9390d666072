"""``launch/export.py RUN --out DIR --onnx``: the final model as ``DIR/model.onnx`` beside the safetensors export.

The graph is the classifier's forward on the eval transform's tensor — input ``image`` (batch, C, H, W): a
shard-sized grey image after the eval crop and normalisation recorded in ``model.json`` (``transforms``) and in the
graph's metadata — with outputs ``logits`` and ``probs`` (batch, 14) and ``maps`` (batch, 14, h, w): the method's
heatmaps (CAMs or the model's own maps) at feature resolution over the network input, before the paste into the
whole image that :meth:`~cxrdist.engine.predictor.Predictor.full_frame` does. The batch axis is dynamic; H and W
are the eval crop's (the graph's shape arithmetic is fixed at that size).

Only single-network methods are exported: a method whose prediction also runs an auxiliary network (lungheart's
U-Net mask, diseasemask's alignment) is refused with one line, because the glue between the networks is Python
(the mask's threshold, storage rounding and crop to the eval geometry; the affine's alignment of the image and the
inverse warp of the maps); its prediction is ``cxrdist.load_model`` on the safetensors export (README, "Using a
trained model"). The method's own ``maps`` function is traced on ``{"image": x}`` (lungheart's ``use_mask=false``
ablation, one network, exports).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. torch 2.14's default (``dynamo=True``,
``torch.export``-based) needs the ``onnxscript`` package as well; the TorchScript exporter needs nothing beyond
torch to write the graph (``onnx`` adds the metadata, ``onnxruntime`` checks it). It is deprecated upstream but
present in 2.14; the export is checked against PyTorch with onnxruntime every time, so a change in it shows.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cxrdist import __version__
from cxrdist.config import load_config
from cxrdist.deploy.load import method_for_inference, sha256
from cxrdist.engine.predictor import Predictor, eval_batch

logger = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
# Opset 17: LayerNormalization's opset, run by onnxruntime ≥ 1.14 and TensorRT ≥ 8.6; every op these
# classifiers use (conv, batch norm, pooling, einsum of the CAMs, logsumexp) is in it.
OPSET = 17
EXTRA = "export"  # the pyproject extra that installs onnx and onnxruntime
TOLERANCE = 1e-4  # |Δ probability| allowed between onnxruntime and PyTorch (measured ≤ 4e-7, tests/deploy/test_onnx.py)
NEEDS = ("onnx", "onnxruntime")


def check_onnx_installed() -> None:
    """``--onnx`` needs onnx and onnxruntime: one line naming the extra when either is missing."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"--onnx needs {' and '.join(missing)}, not installed: pip install 'cxrdist[{EXTRA}]' (or export without "
            "--onnx)"
        )


def check_onnx_method(run_dir: Path) -> None:
    """Refuse a method whose prediction runs auxiliary networks (one line saying why and what to use instead)."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    method, _, _ = method_for_inference(cfg)
    aux = [f"the {a.sidecar} from its {a.stage} network" for a in method.aux_networks()]
    if aux:
        raise ValueError(
            f"--onnx: {cfg.method.name}'s prediction is not one network (it computes {'; '.join(aux)}, joined to "
            "the classifier by Python code a graph would not carry); ONNX export is for single-network methods: "
            "export without --onnx and predict with launch/predict.py or cxrdist.load_model"
        )


class OnnxHead(nn.Module):
    """The exported function: image → (logits, probs, maps) through the method's final model and its ``maps``."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.model
        self.maps_fn = predictor.maps

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (B, 14), sigmoid probabilities (B, 14), maps (B, 14, h, w))."""
        logits, maps = self.maps_fn(self.model, {"image": image})
        return logits, torch.sigmoid(logits), maps


def sample_input(predictor: Predictor, n: int, seed: int = 0) -> Tensor:
    """``n`` random shard-sized grey images through the eval transform: the tensor the graph takes."""
    side = predictor.stored_size or 256  # 0: shards at original size; any side works, the eval crop fixes H, W
    rng = np.random.default_rng(seed)
    grays = [rng.integers(0, 256, (side, side), dtype=np.uint8) for _ in range(n)]
    return eval_batch(grays, predictor.transforms, torch.device("cpu"))[0]


def _torch_export(head: OnnxHead, example: Tensor, path: Path) -> None:
    dyn = {name: {0: "batch"} for name in ("image", "logits", "probs", "maps")}
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice (see the module docstring), and its tracer's notes that
        # shape checks (CAM weights vs channels, a pooling's cell count) are fixed at the traced size: H, W are.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits", "probs", "maps"],
            dynamic_axes=dyn,
        )


def _metadata(spec: dict[str, Any]) -> dict[str, str]:
    per_class = spec["thresholds"]["per_class"]
    return {
        "labels": json.dumps(spec["labels"]),
        "cxrdist_method": spec["method"],
        "cxrdist_version": __version__,
        "weights_stage": spec["weights_stage"],
        "transforms": json.dumps(spec["transforms"]),
        "stored_size": str(spec["stored_size"]),
        "operating_thresholds": json.dumps([per_class[name]["threshold"] for name in spec["labels"]]),
        "outputs": "logits, probs (sigmoid): (batch, 14) in the order of labels; maps: (batch, 14, h, w) heatmaps "
        "over the network input",
    }


def check_against_torch(path: Path, head: OnnxHead, x: Tensor) -> tuple[float, list[int]]:
    """Max |Δ probability| of onnxruntime vs PyTorch on ``x`` (refused above :data:`TOLERANCE`), and the maps'
    shape."""
    import onnxruntime  # optional extra [export]: only --onnx runs it (checked by check_onnx_installed)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, probs, maps = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = head(x)[1].numpy()
    diff = float(np.abs(probs - expected).max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime's probabilities differ from PyTorch's by {diff:.2e} (> {TOLERANCE})")
    return diff, list(maps.shape)


def write_onnx(predictor: Predictor, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``folder/model.onnx`` for ``predictor`` (on the CPU) and check it; return its model.json entry."""
    import onnx  # optional extra [export]: only --onnx needs it (checked by check_onnx_installed)

    path = folder / ONNX_FILE
    head = OnnxHead(predictor).eval()
    x = sample_input(predictor, 3)
    _torch_export(head, x[:2], path)
    graph = onnx.load(str(path))
    for key, value in _metadata(spec).items():
        graph.metadata_props.add(key=key, value=value)
    graph.doc_string = f"cxrdist {spec['method']} ({spec['weights_stage']}): chest X-ray classifier, 14 labels"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    diff, maps_shape = check_against_torch(path, head, x)  # a batch of 3, traced with 2: the batch axis is dynamic
    logger.info("model.onnx: opset %d, onnxruntime vs PyTorch max |Δp| %.1e", OPSET, diff)
    return {
        "file": ONNX_FILE,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False) of torch {torch.__version__}",
        "input": {"name": "image", "shape": ["batch", *x.shape[1:]], "dtype": "float32"},
        "outputs": {"logits": ["batch", 14], "probs": ["batch", 14], "maps": ["batch", *maps_shape[1:]]},
        "sha256": sha256(path),
        "check": {
            "onnxruntime": importlib.metadata.version("onnxruntime"),
            "max_abs_diff_probs": diff,
            "tolerance": TOLERANCE,
        },
    }
