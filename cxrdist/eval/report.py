"""Published-vs-ours report for one or several runs (Markdown + PNG), from the files the evaluator wrote.

A run's numbers come from its ``metrics.json`` (``RUN/eval/<split>`` if ``launch/evaluate.py`` wrote one, else
the method's final eval stage); the published numbers and the split they were measured on come from the
run's saved config (``method.published``). The report says which split each side used: a paper measured on a
random image split (zhao2021) is flagged as not comparable with official-split numbers.

Localization: a published number is set beside the fixed-threshold measurements only (each Wang binarisation
threshold), never beside the oracle rows (threshold chosen per box with the ground truth), and only for a run whose
config matches ``published.localization.applies_to`` (e.g. fang2021's CAM IoU stands beside the masked lungheart
model, not its ``use_mask=false`` ablation). The ImageNet weights (``model.imagenet_weights``) and the shards'
stored size are stated per run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cxrdist.eval.compare import NUM_RESAMPLES, SEED, _fci, inside, intervals_table_md
from cxrdist.eval.external import external_section_md
from cxrdist.eval.figures import plot_published_vs_ours
from cxrdist.eval.leaderboard import attach_intervals, find_runs, group_runs, run_labels
from cxrdist.eval.localization import ACC_AFP, ACC_AT_IOU, BEST_BOX_IOU, KIM_IOU_T, ORACLE
from cxrdist.eval.pairs_file import read_pairs
from cxrdist.eval.report_multi import multi_run_lines, roc_band_lines
from cxrdist.eval.schema import check_metrics_schema
from cxrdist.eval.tables import auroc_table_md
from cxrdist.labels import LABELS

# sha256 of the release's Data_Entry_2017_v2020.csv (cxrdist/phantom/nih_metadata/PROVENANCE.md): shards whose writer
# read another label file were written from a phantom (or an edited copy), and the report's title says so.
NIH_DATA_ENTRY_SHA256 = "dc1d2df67fdc1c5a7601d48699cda2b13dc2c4841488b4183dcf04884dbaca11"

SPLIT_NOTE = {
    "official": "the official NIH train_val/test lists (patient-disjoint)",
    "random-image": "a random image-level train/test split (patients may straddle it): NOT comparable with "
    "official-split numbers",
}


def find_metrics(run_dir: Path, split: str) -> Path | None:
    """The newest metrics.json of ``split`` in a run (launch/evaluate.py output first, then eval stages)."""
    cands = [run_dir / "eval" / split / "metrics.json"]
    cands += sorted(run_dir.glob(f"stages/*/{split}/metrics.json"), reverse=True)
    return next((c for c in cands if c.is_file()), None)


def load_run(run_dir: Path) -> dict[str, Any]:
    """Config, shard split scheme and metrics of one run."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    shards = Path(cfg["data"]["root"]) / "_dataset.json"
    writer = json.loads(shards.read_text())["config"] if shards.is_file() else {}
    scheme = writer.get("split_scheme", "official") if writer else "?"
    run = {"dir": run_dir, "name": run_dir.name, "cfg": cfg, "scheme": scheme, "metrics": {}}
    run["stored_size"] = writer.get("size", "?")
    sources = json.loads(shards.read_text()).get("sources", {}) if shards.is_file() else {}
    entry = sources.get("Data_Entry_2017_v2020.csv")
    run["phantom"] = entry is not None and entry != NIH_DATA_ENTRY_SHA256  # a phantom writes its own label file
    for split in ("test", "bbox"):
        path = find_metrics(run_dir, split)
        if path is not None:
            metrics = check_metrics_schema(json.loads(path.read_text()), path)
            if metrics.get("localization"):  # its per-pair FP counts live beside it (eval/pairs_file.py)
                metrics["localization"] = read_pairs(metrics["localization"], path.parent)
            run["metrics"][split] = metrics | {"path": str(path)}
    run["external"] = {
        p.parent.parent.name: check_metrics_schema(json.loads(p.read_text()), p)
        for p in sorted((run_dir / "eval" / "external").glob("*/test/metrics.json"))
    }
    if "test" not in run["metrics"]:
        raise FileNotFoundError(f"{run_dir}: no test metrics.json; run launch/evaluate.py {run_dir} first")
    return run


ORACLE_NOTE = (
    "ORACLE rows pick, for each ground-truth box, whichever binarisation threshold fits it better: an upper bound "
    "no paper could measure. Published numbers stand beside the fixed thresholds (heatmap > T) only."
)


def applies(published_loc: dict[str, Any], method_cfg: dict[str, Any]) -> list[str]:
    """Where this run's method config differs from ``applies_to`` (nested, e.g. ``{model: {use_mask: false}}``)."""

    def walk(want: Any, have: Any, path: str) -> list[str]:
        if isinstance(want, dict):
            have = have if isinstance(have, dict) else {}
            return [d for k, v in want.items() for d in walk(v, have.get(k), f"{path}.{k}")]
        return [] if want == have else [f"{path}={want} (this run: {have})"]

    return walk(published_loc.get("applies_to") or {}, method_cfg, "method")


def _loc_rows(bbox: dict[str, Any], pub: dict[str, Any] | None, cis: dict[str, Any] | None = None) -> list[str]:
    """Accuracy at T(IoU) and best-box IoU rows: fixed thresholds with the published number (if any) beside them,
    then the oracle. ``pub``: the method's ``published.localization`` (kim2021's ``kim``, fang2021's ``fang_iou``);
    ``cis`` (:func:`~cxrdist.eval.compare.localization_intervals`) adds the headline figure's patient-bootstrap CI."""
    pub, cis = pub or {}, cis or {}
    rows = []
    for key in (ACC_AT_IOU, BEST_BOX_IOU):
        res, paper = bbox[key], bbox["compared_with"][key].split(" ")[0]
        for variant in sorted(res, key=lambda v: (v == ORACLE, 0.0 if v == ORACLE else float(v))):  # oracle last
            oracle = variant == ORACLE
            label = "ORACLE: best threshold per GT box (upper bound)" if oracle else f"heatmap > {variant}"
            by_t = res[variant].items() if key == ACC_AT_IOU else [(None, res[variant])]
            for t, s in by_t:
                p = None if oracle else (pub.get("kim", {}).get(t) if key == ACC_AT_IOU else pub.get("fang_iou"))
                what = f"accuracy at IoU > {t}" if key == ACC_AT_IOU else "best-box IoU"
                cells = f"{_f(s['mean_over_classes'])} | {_f(s['mean_over_boxes'])}"
                ci = cis.get(variant, {}).get(f"acc_at_iou>{t}" if key == ACC_AT_IOU else "best_box_iou")
                ci_cell = _fci(ci["ci"]) if ci else "—"
                hit = inside(p, ci["ci"]) if ci else "—"
                published = "—" if oracle else _f(p)
                rows.append(f"| {what} | {label} | {cells} | {ci_cell} | {hit} | {published} | {paper} |")
    return rows + _afp_rows(bbox, cis)


def _afp_rows(bbox: dict[str, Any], cis: dict[str, Any]) -> list[str]:
    """Wang et al. 2017's average false positives at kim2021's T(IoU), per fixed threshold (no published AFP is
    set beside them: none of the configured papers prints one for its own model)."""
    rows, paper = [], bbox["compared_with"][ACC_AFP].split(" (")[0]
    for variant in sorted(bbox[ACC_AFP], key=float):
        for t in (f"{t:g}" for t in KIM_IOU_T):
            s = bbox[ACC_AFP][variant]["iou"].get(t)
            if s is None:
                continue
            ci = cis.get(variant, {}).get(f"afp_at_iou>{t}")
            cells = f"{_f(s['afp_mean_over_classes'])} | {_f(s['afp_pooled'])} (pooled over image-class pairs)"
            rows.append(f"| average FP at IoU > {t} | heatmap > {variant} | {cells} | "
                        f"{_fci(ci['ci']) if ci else '—'} | — | — | {paper} |")  # fmt: skip
    return rows


def _loc_lines(run: dict[str, Any]) -> list[str]:
    bbox = run["metrics"].get("bbox", {}).get("localization")
    if not bbox:
        return ["No localization results (no bbox evaluation)."]
    pub = run["cfg"]["method"]["published"].get("localization", {})
    differs = applies(pub, run["cfg"]["method"]) if pub else []
    lines = [
        "| measure | binarisation | ours (mean over classes) | ours (mean over boxes) | 95% CI (headline) | "
        "published inside CI? | published | paper |",
        "|---|---|---|---|---|---|---|---|",
        *_loc_rows(bbox, None if differs else pub, run.get("loc_intervals")),
        "",
        f"- {ORACLE_NOTE}",
        *(f"- {key}: compared with {paper}" for key, paper in bbox["compared_with"].items()),
        "- 95% CI: patient-clustered bootstrap of the headline figure (accuracy at IoU: mean over classes, as "
        "kim2021; best-box IoU: mean over boxes, as fang2021; average FP: mean over classes of the FP per image "
        "with a box of the class, as Wang et al. 2017, the (image, class) pairs resampled by patient); '—' where "
        "the run has no saved predictions to find the patients (or, for AFP, its metrics.json predates the per-pair "
        "FP counts: rerun launch/evaluate.py), and for the oracle.",
    ]
    if pub.get("note"):
        lines.append(f"- Published: {pub['note']}")
    if differs:
        lines.append(
            "- The published localization numbers are of another model than this run's, so none is set beside "
            f"these rows: they apply to {', '.join(differs)}."
        )
    lines.append(
        "- Protocol: "
        + "; ".join(
            f"{k}: {v}"
            for k, v in bbox["protocol"].items()
            if k in ("compare_size", "thresholds", "connectivity", "upsampling")
        )
    )
    return lines


def _weights_line(method_cfg: dict[str, Any]) -> str:
    model = method_cfg.get("model", {})
    if not model.get("pretrained", False):
        return "none (`model.pretrained=false`: random initialisation)"
    version = model.get("imagenet_weights", "v1")
    names = {
        "v1": "IMAGENET1K_V1, the original torchvision weights the papers used",
        "v2": "torchvision's DEFAULT (IMAGENET1K_V2 for ResNet-50/101, a 2021 recipe the papers predate; V1 for "
        "ResNet-18 and DenseNet-121)",
    }
    return f"{names.get(version, version)} (`model.imagenet_weights={version}`)"


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def run_section(run: dict[str, Any]) -> list[str]:
    """Markdown for one run: splits, AUROC table with the published column, localization."""
    m = run["cfg"]["method"]
    pub = m.get("published", {})
    auroc = run["metrics"]["test"]["auroc"]
    lines = [
        f"## {run['name']} — method `{m['name']}`",
        "",
        f"Paper: {m.get('paper', '')}",
        "",
        f"- Published numbers: {pub.get('source', 'n/a')}; measured on {SPLIT_NOTE.get(pub.get('split'), '?')}.",
        f"- Ours: shards written with split scheme `{run['scheme']}` ({SPLIT_NOTE.get(run['scheme'], '?')}), "
        f"images stored at {run['stored_size'] or 'their source size'} px; "
        f"{run['metrics']['test']['num_samples']} test images; from {run['metrics']['test']['path']}.",
        f"- ImageNet weights: {_weights_line(m)}.",
    ]
    if pub.get("split") and pub.get("split") != run["scheme"]:
        lines.append(f"- **Splits differ** (paper: {pub['split']}, ours: {run['scheme']}): compare with care.")
    lines += ["", "### AUROC (test)", ""]
    if run.get("intervals"):
        lines += [intervals_table_md(run["intervals"], pub.get("auroc")), f"- {run['intervals']['patients']}."]
    else:
        lines += [
            auroc_table_md({"ours": auroc}, {"published": pub["auroc"]} if pub.get("auroc") else None),
            "- No predictions.npz beside the metrics: no intervals (re-run launch/evaluate.py on this run).",
        ]
    lines += [f"- {w}" for w in auroc.get("warnings", [])]
    lines += ["", "### Localization (bbox)", "", *_loc_lines(run), ""]
    if run.get("external"):  # launch/evaluate.py RUN --shards <external shard root>
        nih = run["metrics"]["test"] | ({"intervals": run["intervals"]} if run.get("intervals") else {})
        md = external_section_md(nih, run["external"], run.get("external_shared_ci"))
        lines += ["### External validation (test AUROC)", "", md, ""]
    return lines


def load_runs(paths: list[Path], num_resamples: int = NUM_RESAMPLES, seed: int = SEED) -> list[dict[str, Any]]:
    """Every run under ``paths`` (run dirs or folders of them), labelled by its path, with its intervals."""
    dirs = find_runs(paths)
    runs = [load_run(d) for d in dirs]
    for run, label in zip(runs, run_labels(dirs)):
        run["name"] = run["label"] = label
        attach_intervals(run, num_resamples, seed)
    return runs


def write_report(
    run_dirs: list[Path], out: Path, baseline: Path | None = None, num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
) -> Path:  # fmt: skip
    """Write ``out/report.md`` and ``out/report.png`` for the given runs (or folders of runs: a leaderboard with a
    forest plot when there are several, paired tests against ``baseline``); return the Markdown path."""
    return write_runs_report(load_runs(list(run_dirs), num_resamples, seed), out, baseline, num_resamples, seed)


def write_runs_report(
    runs: list[dict[str, Any]], out: Path, baseline: Path | None = None, num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
) -> Path:  # fmt: skip
    """:func:`write_report` of runs already loaded (:func:`load_runs`); the runs gain ``vs_baseline`` (the paired
    comparison with the baseline) where there is one. Returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    phantom = (" — PHANTOM data (shards not written from the NIH release's label file: synthetic images; no "
               "number here compares with a paper)")  # fmt: skip
    lines = ["# cxrdist report" + (phantom if any(r["phantom"] for r in runs) else ""), ""]
    if len(runs) > 1 or baseline is not None:
        lines += multi_run_lines(runs, out, baseline, num_resamples, seed)
    firsts = {id(g["runs"][0]) for g in group_runs(runs)}  # ROC bands: one figure per method entry (seconds each)
    for r in runs:
        lines += run_section(r) + (roc_band_lines(r, out, seed=seed) if id(r) in firsts else [])
    rows: dict[str, dict[str, float | None]] = {}
    for r in runs:
        pub = r["cfg"]["method"].get("published", {}).get("auroc")
        if pub:
            rows[f"published ({r['cfg']['method']['name']})"] = {k: pub.get(k) for k in LABELS}
        rows[r["name"]] = dict(r["metrics"]["test"]["auroc"]["per_class"])
    plot_published_vs_ours(rows, out / "report.png", title="Test AUROC: published vs ours")
    lines += ["![published vs ours](report.png)", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md
