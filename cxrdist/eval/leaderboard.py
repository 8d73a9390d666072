"""Runs side by side with intervals: finding run dirs (folders of seeds too), labels, groups, paired tests.

A *run* here is the dict of :func:`cxrdist.eval.report.load_run` plus ``label`` (its path, shortened to the
shortest suffix that tells it from the others: two ``seed=0`` folders of different sweeps never merge) and, from
its saved ``predictions.npz``, ``intervals`` (:func:`~cxrdist.eval.compare.auroc_intervals`) and
``loc_intervals``. Runs group by their config with the seed (and the keys that cannot change results) left out;
a group's label is its method name, plus the keys that tell it from another group of the same method.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrdist.eval.compare import (
    _f,
    _fci,
    _fp,
    auroc_intervals,
    inside,
    localization_intervals,
    paired_comparison,
    paired_localization,
    patients_of,
)
from cxrdist.eval.external import masked_bootstrap_mean, masked_paired_comparison
from cxrdist.eval.stats import align_keys
from cxrdist.labels import LABELS

# Keys left out when grouping runs into one entry: the seed (what a group varies) and what cannot change results.
UNGROUPED = ("seed", "run_dir", "cluster", "logger", "data.root", "loader.workers", "loader.eval_batch_per_rank",
             "engine.log_every_steps", "engine.progress", "eval.heatmap_examples")  # fmt: skip


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path is a run dir (has ``config.yaml``) or a folder of run dirs (a sweep, a folder of seeds)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            out.append(path)
            continue
        found = sorted(c.parent for c in path.glob("*/config.yaml")) + sorted(
            c.parent for c in path.glob("*/*/config.yaml")
        )
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such run dir; give a run dir or a folder of run dirs (a sweep's)")
        if not found:
            raise FileNotFoundError(
                f"{path}: not a cxrdist run dir (no config.yaml) nor a folder of run dirs; give a run dir or a sweep's"
            )
        out += found
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def run_labels(dirs: Sequence[Path]) -> list[str]:
    """The shortest path suffix of each run dir that is unique among ``dirs`` (a name alone where it is)."""
    parts = [Path(d).resolve().parts for d in dirs]
    depth = [1] * len(parts)
    for _ in range(max((len(p) for p in parts), default=1)):
        labels = ["/".join(p[-k:]) for p, k in zip(parts, depth)]
        dup = {lab for lab in labels if labels.count(lab) > 1}
        if not dup:
            return labels
        depth = [k + (lab in dup) for k, lab in zip(depth, labels)]
    return ["/".join(p) for p in parts]


def load_predictions(metrics_path: str | Path) -> dict[str, np.ndarray] | None:
    """``predictions.npz`` beside a ``metrics.json`` (keys, labels, logits[, patient_ids]); None if absent."""
    path = Path(metrics_path).with_name("predictions.npz")
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _patients(pred: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    return patients_of(pred["keys"].tolist(), pred.get("patient_ids"))


def attach_intervals(run: dict[str, Any], num_resamples: int, seed: int) -> None:
    """Add ``intervals`` (test AUROC) and ``loc_intervals`` (bbox) from the run's saved predictions, if any."""
    run["intervals"], run["loc_intervals"], run["pred"] = None, None, None
    test = load_predictions(run["metrics"]["test"]["path"])
    if test is not None:
        pids, how = _patients(test)
        run["pred"] = test
        run["intervals"] = auroc_intervals(test["labels"], test["logits"], pids, num_resamples, seed)
        run["intervals"]["patients"] = how
    bbox = run["metrics"].get("bbox", {})
    loc = bbox.get("localization")
    bbox_pred = load_predictions(bbox["path"]) if bbox else None
    if loc and loc.get("per_box") and bbox_pred is not None:
        pids, _ = _patients(bbox_pred)
        by_key = dict(zip(bbox_pred["keys"].tolist(), pids.tolist()))
        run["loc_intervals"] = localization_intervals(loc, by_key, num_resamples, seed)
    run["external_shared_ci"] = shared_mean_intervals(run, num_resamples, seed)


def shared_mean_intervals(run: dict[str, Any], num_resamples: int, seed: int) -> dict[str, list[float] | None]:
    """The report's external "shared mean" row's intervals: per column (``NIH test`` and each external set), the
    patient-clustered bootstrap CI of the mean AUROC over the classes every external set of the run annotates, each
    class on its annotated images (:func:`~cxrdist.eval.external.masked_bootstrap_mean`); None without predictions."""
    ext = run.get("external") or {}
    shared = [c for c, name in enumerate(LABELS)
              if all(name not in m["auroc"].get("not_annotated", []) for m in ext.values())]  # fmt: skip
    if not ext or not shared:
        return {}
    preds = {"NIH test": run.get("pred")}
    preds |= {n: load_predictions(Path(run["dir"]) / "eval" / "external" / n / "test" / "metrics.json") for n in ext}
    out: dict[str, list[float] | None] = {}
    for name, pred in preds.items():
        if pred is None:
            out[name] = None
            continue
        mask = np.zeros(pred["labels"].shape, np.uint8)
        mask[:, shared] = pred["label_mask"][:, shared] if "label_mask" in pred else 1
        boot = masked_bootstrap_mean(pred["labels"], pred["logits"], mask, _patients(pred)[0], num_resamples, seed)
        out[name] = boot["ci95"]
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}.{key}" if prefix else key).items()}


def _grouping_key(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _flat(cfg).items() if not any(k == u or k.startswith(u + ".") for u in UNGROUPED)}


def group_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of the same config but for the seed, in first-seen order: ``{label, method, runs, config}``."""
    groups: list[dict[str, Any]] = []
    for run in runs:
        key = _grouping_key(run["cfg"])
        hit = next((g for g in groups if g["config"] == key), None)
        if hit is None:
            groups.append(hit := {"method": run["cfg"]["method"]["name"], "runs": [], "config": key})
        hit["runs"].append(run)
    for g in groups:
        same = [h for h in groups if h["method"] == g["method"] and h is not g]
        keys = sorted(
            {k for h in same for k in set(g["config"]) | set(h["config"]) if g["config"].get(k) != h["config"].get(k)}
        )
        keys = [k for k in keys if not k.startswith("method.published")]
        extra = ", ".join(f"{k.removeprefix('method.')}={g['config'].get(k)}" for k in keys[:3])
        g["label"] = f"{g['method']} ({extra})" if extra else g["method"]
    return groups


def _mean(run: dict[str, Any]) -> float | None:
    iv = run.get("intervals")
    return iv["mean"]["auroc"] if iv else run["metrics"]["test"]["auroc"]["mean"]


def published_mean(run: dict[str, Any]) -> float | None:
    """The paper's printed mean AUROC of the run's method, if it printed one."""
    pub = run["cfg"]["method"].get("published", {}).get("auroc") or {}
    return next((v for k, v in pub.items() if k.lower() in ("mean", "average")), None)


def leaderboard_md(groups: Sequence[dict[str, Any]]) -> list[str]:
    """One row per group: seeds, mean ± sd of the mean AUROC over seeds, each run's mean with its CI, published."""
    lines = [
        "| method | runs | seeds | mean AUROC (mean ± sd over runs) | each run: mean AUROC [95% CI] | published | "
        "inside? |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in sorted(groups, key=lambda g: -statistics.fmean([_mean(r) or 0.0 for r in g["runs"]])):
        means = [m for m in (_mean(r) for r in g["runs"]) if m is not None]
        sd = f" ± {statistics.stdev(means):.4f}" if len(means) > 1 else ""
        avg = f"{statistics.fmean(means):.4f}{sd}" if means else "n/a"
        each = "; ".join(
            f"{r['label']}: {_f(_mean(r))} {_fci(r['intervals']['mean']['bootstrap']) if r['intervals'] else ''}"
            for r in g["runs"]
        )
        pub = published_mean(g["runs"][0])
        hits = [inside(pub, r["intervals"]["mean"]["bootstrap"]) for r in g["runs"] if r["intervals"]]
        seeds = ", ".join(str(r["cfg"].get("seed")) for r in g["runs"])
        lines.append(f"| {g['label']} | {len(g['runs'])} | {seeds} | {avg} | {each} | {_f(pub)} | "
                     f"{', '.join(hits) or '—'} |")  # fmt: skip
    lines += ["", "- 95% CIs: patient-clustered bootstrap of the mean AUROC over the 14 classes; 'inside?': whether "
              "the paper's mean lies in each run's interval (one answer per run)."]  # fmt: skip
    return lines


def per_class_md(groups: Sequence[dict[str, Any]], class_names: Sequence[str]) -> list[str]:
    """Per class and group: the AUROC averaged over the group's runs (± sd), with the published value."""
    head = "| class | " + " | ".join(g["label"] for g in groups) + " |"
    lines = [head, "|---" * (len(groups) + 1) + "|"]
    for name in class_names:
        cells = []
        for g in groups:
            vals = [r["metrics"]["test"]["auroc"]["per_class"].get(name) for r in g["runs"]]
            vals = [v for v in vals if v is not None]
            pub = (g["runs"][0]["cfg"]["method"].get("published", {}).get("auroc") or {}).get(name)
            sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            cell = f"{statistics.fmean(vals):.4f}{sd}" if vals else "n/a"
            cells.append(cell + (f" (pub. {pub:.3f})" if pub is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _aligned(a: dict[str, Any], b: dict[str, Any], pa: dict[str, np.ndarray], pb: dict[str, np.ndarray],
             what: str = "test set") -> np.ndarray:  # fmt: skip
    """B's rows in A's order; the same keys with the same labels (and label masks) are required (one line)."""
    idx = align_keys(pa["keys"].tolist(), pb["keys"].tolist(), names=(a["label"], b["label"]))
    for field, differs in (("labels", "other labels"), ("label_mask", "other annotated classes (label_mask)")):
        if field in pa and field in pb and not np.array_equal(pa[field], pb[field][idx]):
            bad = int(np.flatnonzero((pa[field] != pb[field][idx]).any(axis=1))[0])
            raise ValueError(f"{a['label']} and {b['label']}: image {pa['keys'][bad]} has {differs} in the two runs; "
                             f"a paired test needs the same {what} (same shards)")  # fmt: skip
    return idx


def compare_runs(a: dict[str, Any], b: dict[str, Any], num_resamples: int, seed: int) -> dict[str, Any]:
    """The paired comparison of two runs' test predictions; the same keys with the same labels are required."""
    pa, pb = a.get("pred"), b.get("pred")
    for run, pred in ((a, pa), (b, pb)):
        if pred is None:
            raise FileNotFoundError(f"{run['dir']}: no predictions.npz beside {run['metrics']['test']['path']}")
    idx = _aligned(a, b, pa, pb)
    pids, _ = _patients(pa)
    out = paired_comparison(pa["labels"], pa["logits"], pb["logits"][idx], pids, num_resamples, seed)
    loc_a, loc_b = (r["metrics"].get("bbox", {}).get("localization") for r in (a, b))
    bbox_pred = load_predictions(a["metrics"]["bbox"]["path"]) if loc_a else None
    if loc_a and loc_b and loc_a.get("per_box") and loc_b.get("per_box") and bbox_pred is not None:
        by_key = dict(zip(bbox_pred["keys"].tolist(), _patients(bbox_pred)[0].tolist()))
        out["localization"] = paired_localization(loc_a, loc_b, by_key, num_resamples, seed)
    return out


def external_predictions(run: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """The saved predictions of ``run`` on the external set ``name`` (``RUN/eval/external/<name>/test``); a run
    without that result is a one-line error naming what it has and the command that makes it."""
    path = Path(run["dir"]) / "eval" / "external" / name / "test" / "metrics.json"
    have = ", ".join(sorted(run.get("external") or {})) or "none"
    if name not in (run.get("external") or {}) or not path.is_file():
        raise FileNotFoundError(f"{run['dir']}: no external result {name!r} ({path} missing; external results there: "
                                f"{have}); make it with python launch/evaluate.py {run['dir']} --shards "
                                f"<{name} shard root> [--name {name}]")  # fmt: skip
    pred = load_predictions(path)
    if pred is None or "label_mask" not in pred:
        raise FileNotFoundError(f"{path.with_name('predictions.npz')}: missing or without label_mask; re-evaluate: "
                                f"python launch/evaluate.py {run['dir']} --shards <{name} shard root>")  # fmt: skip
    return pred


def compare_external(a: dict[str, Any], b: dict[str, Any], name: str, num_resamples: int, seed: int) -> dict[str, Any]:
    """The paired comparison of two runs on the external set ``name``: each class on its annotated images only
    (:func:`cxrdist.eval.external.masked_paired_comparison`); the same images, labels and masks are required."""
    pa, pb = external_predictions(a, name), external_predictions(b, name)
    ha, hb = (r["external"][name].get("shards_config_hash") for r in (a, b))
    if ha and hb and ha != hb:
        raise ValueError(f"{a['label']} and {b['label']}: external {name!r} holds two different shard sets "
                         f"(config_hash {ha[:8]} vs {hb[:8]}); evaluate both on the same --shards")  # fmt: skip
    idx = _aligned(a, b, pa, pb, f"external set {name!r}")
    pids, how = _patients(pa)
    out = masked_paired_comparison(pa["labels"], pa["logits"], pb["logits"][idx], pa["label_mask"], pids,
                                   num_resamples, seed)  # fmt: skip
    return out | {"external": name, "patients": how, "shards": a["external"][name].get("shards")}


def baseline_md(runs: Sequence[dict[str, Any]], baseline: dict[str, Any], num_resamples: int, seed: int) -> list[str]:
    """One row per run: Δ mean AUROC vs the baseline with its paired-bootstrap CI and p, and the classes whose
    DeLong test stays significant after Holm (p < 0.05)."""
    lines = [
        f"Baseline: **{baseline['label']}**.",
        "",
        "| run | Δ mean AUROC (run − baseline) | 95% CI | p (paired bootstrap) | classes with Holm p < 0.05 (Δ) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        if run is baseline:
            continue
        c = compare_runs(run, baseline, num_resamples, seed)
        sig = [f"{n} ({r['delta']:+.3f})" for n, r in c["per_class"].items()
               if r["p_holm"] is not None and r["p_holm"] < 0.05]  # fmt: skip
        m = c["mean"]
        lines.append(f"| {run['label']} | {_f(m['delta'])} | {_fci(m['bootstrap'])} | {_fp(m['p'])} | "
                     f"{', '.join(sig) or 'none'} |")  # fmt: skip
        run.setdefault("vs_baseline", c)
    return lines


def write_json(path: Path, obj: Any) -> None:
    """JSON with NaN-free values (None where undefined)."""
    path.write_text(json.dumps(obj, indent=1) + "\n")
