"""Run dirs with evaluation results but no training: saved test predictions of a fixed test set (120 images of 40
patients), optional bbox localization results, external-set results, and a shard root written "from a phantom". For
the report, the leaderboard, compare.py and the report's W&B run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import yaml

from cxrdist.config import compose, to_container
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.external import masked_auroc, masked_bootstrap_mean
from cxrdist.eval.localization import evaluate_localization
from cxrdist.eval.pairs_file import write_pairs
from cxrdist.eval.schema import METRICS_SCHEMA

REPO = Path(__file__).resolve().parents[2]
N, PATIENTS = 120, 40


def script(name: str) -> ModuleType:
    """``launch/<name>.py`` as a module (its ``main(argv)`` is the command)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_shards(root: Path) -> Path:
    """A shard root's ``_dataset.json`` only, written from a phantom (its label file is not the release's)."""
    root.mkdir(parents=True)
    writer = {"split_scheme": "official", "size": 64}
    sources = {"Data_Entry_2017_v2020.csv": "0" * 64}
    (root / "_dataset.json").write_text(json.dumps({"config": writer, "sources": sources}))
    return root


def fixed_test_set() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The same labels, patients and NIH-style keys for every run."""
    rng = np.random.default_rng(123)
    labels = (rng.random((N, 14)) > 0.75).astype(np.uint8)
    pids = rng.integers(0, PATIENTS, N)
    keys = [f"{p:08d}_{i:03d}" for i, p in enumerate(pids)]
    return labels, pids, keys


def fake_localization(spread: int) -> tuple[dict, dict]:
    """30 boxes of 3 classes on 10 patients; heatmaps off the box by up to ``spread`` pixels."""
    rng = np.random.default_rng(0)
    heat, boxes, patient = {}, [], {}
    for i in range(30):
        key, c = f"k{i}", i % 3
        hm = np.zeros((32, 32), np.float32)
        x = int(rng.integers(0, spread + 1))
        hm[x : x + 10, x : x + 10] = 1.0
        heat[(key, c)] = hm
        boxes.append({"key": key, "class_idx": c, "x": 4, "y": 4, "w": 10, "h": 10})
        patient[key] = i // 3
    return evaluate_localization(heat, boxes, orig_size=32, compare_size=32, thresholds=[60, 180]), patient


def fake_eval_run(
    run: Path, shards: Path, method: str, seed: int, signal: float, *overrides: str, patients: bool = True,
    bbox: int = 0, pairs_file: bool = True,
) -> Path:  # fmt: skip
    """A run dir of ``method`` whose test logits are ``labels * signal`` + noise (seeded); with ``bbox``, the
    localization results of heatmaps off the boxes by up to ``bbox`` pixels and the bbox predictions, the per-pair
    FP counts beside metrics.json as the evaluator writes them (``pairs_file=False``: inline, as it once did)."""
    cfg = compose([f"method={method}", f"data.root={shards}", f"seed={seed}", *overrides])
    cfg = to_container(cfg) | {"run_dir": str(run)}
    (run / "eval" / "test").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    labels, pids, keys = fixed_test_set()
    logits = labels * signal + np.random.default_rng(seed).normal(size=labels.shape)
    extra = {"patient_ids": pids} if patients else {}
    np.savez(run / "eval" / "test" / "predictions.npz", keys=np.array(keys), logits=logits, labels=labels, **extra)
    auroc = auroc_per_class(labels, logits)
    test = {"schema_version": METRICS_SCHEMA, "split": "test", "num_samples": N, "auroc": auroc}
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps(test))
    if bbox:
        loc, patient = fake_localization(bbox)
        (run / "eval" / "bbox").mkdir()
        loc = write_pairs(loc, run / "eval" / "bbox") if pairs_file else loc
        (run / "eval" / "bbox" / "metrics.json").write_text(
            json.dumps({"schema_version": METRICS_SCHEMA, "localization": loc})
        )
        keys = sorted(patient)
        np.savez(run / "eval" / "bbox" / "predictions.npz", keys=np.array(keys), patient_ids=[patient[k] for k in keys],
                 logits=np.zeros((30, 14)), labels=np.zeros((30, 14), np.uint8))  # fmt: skip
    return run


def fixed_external_set() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """An external set of 90 images of 30 patients (CheXpert-style keys and ids): labels, mask, patients, keys.
    Classes 0-6 are annotated (one image in ten left out, as an uncertain label under U-Ignore), the rest are not."""
    rng = np.random.default_rng(7)
    labels = (rng.random((90, 14)) > 0.7).astype(np.uint8)
    mask = np.zeros((90, 14), np.uint8)
    mask[:, :7] = rng.random((90, 7)) > 0.1
    labels[mask == 0] = 0  # as the writer stores a label it does not know
    pids = np.array([f"patient{p:05d}" for p in rng.integers(0, 30, 90)])
    keys = [f"{p}/study{i}/view1_frontal" for i, p in enumerate(pids)]
    return labels, mask, pids, keys


def fake_external(run: Path, name: str, signal: float, seed: int, config_hash: str = "e" * 64) -> Path:
    """``RUN/eval/external/<name>/test`` as launch/evaluate.py writes it for :func:`fixed_external_set`: logits
    ``labels * signal`` + noise (seeded), the masked AUROC with its intervals, predictions with the mask."""
    out = run / "eval" / "external" / name / "test"
    out.mkdir(parents=True)
    labels, mask, pids, keys = fixed_external_set()
    logits = labels * signal + np.random.default_rng(seed).normal(size=labels.shape)
    np.savez(out / "predictions.npz", keys=np.array(keys), logits=logits, labels=labels, label_mask=mask,
             patient_ids=pids)  # fmt: skip
    auroc = masked_auroc(labels, logits, mask) | {"bootstrap": masked_bootstrap_mean(labels, logits, mask, pids, 200)}
    metrics = {"schema_version": METRICS_SCHEMA, "split": "test", "num_samples": len(keys), "auroc": auroc,
               "shards": f"/data/{name}-shards", "shards_config_hash": config_hash, "dataset": name}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out
