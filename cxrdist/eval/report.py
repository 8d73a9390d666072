"""Published-vs-ours report for one or several runs (Markdown + PNG), from the files the evaluator wrote.

A run's numbers come from its ``metrics.json`` (``RUN/eval/<split>`` if ``launch/evaluate.py`` wrote one, else
the method's final eval stage); the published numbers and the split they were measured on come from the
run's saved config (``method.published``). The report says which split each side used: a paper measured on a
random image split (zhao2021) is flagged as not comparable with official-split numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cxrdist.eval.figures import plot_published_vs_ours
from cxrdist.eval.tables import auroc_table_md
from cxrdist.labels import LABELS

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
    scheme = json.loads(shards.read_text())["config"].get("split_scheme", "official") if shards.is_file() else "?"
    run = {"dir": run_dir, "name": run_dir.name, "cfg": cfg, "scheme": scheme, "metrics": {}}
    for split in ("test", "bbox"):
        path = find_metrics(run_dir, split)
        if path is not None:
            run["metrics"][split] = json.loads(path.read_text()) | {"path": str(path)}
    if "test" not in run["metrics"]:
        raise FileNotFoundError(f"{run_dir}: no test metrics.json; run launch/evaluate.py {run_dir} first")
    return run


def _loc_lines(run: dict[str, Any]) -> list[str]:
    bbox = run["metrics"].get("bbox", {}).get("localization")
    if not bbox:
        return ["No localization results (no bbox evaluation)."]
    pub = run["cfg"]["method"]["published"].get("localization", {})
    lines = [
        "| protocol | variant | ours (mean over classes) | ours (mean over boxes) | published |",
        "|---|---|---|---|---|",
    ]
    for variant, by_t in bbox["kim"].items():
        for t, s in by_t.items():
            p = pub.get("kim", {}).get(t) if variant == "best" else None
            lines.append(
                f"| kim2021 acc@IoU>{t} | threshold {variant} | {_f(s['mean_over_classes'])} | "
                f"{_f(s['mean_over_boxes'])} | {_f(p)} |"
            )
    for variant, s in bbox["fang"].items():
        p = pub.get("fang_iou") if variant == "best" else None
        lines.append(
            f"| fang2021 best-box IoU | threshold {variant} | {_f(s['mean_over_classes'])} | "
            f"{_f(s['mean_over_boxes'])} | {_f(p)} |"
        )
    lines.append("")
    lines.append(
        "Protocol: "
        + "; ".join(
            f"{k}: {v}"
            for k, v in bbox["protocol"].items()
            if k in ("compare_size", "thresholds", "connectivity", "upsampling")
        )
    )
    return lines


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
        f"- Ours: shards written with split scheme `{run['scheme']}` ({SPLIT_NOTE.get(run['scheme'], '?')}); "
        f"{run['metrics']['test']['num_samples']} test images; from {run['metrics']['test']['path']}.",
    ]
    if pub.get("split") and pub.get("split") != run["scheme"]:
        lines.append(f"- **Splits differ** (paper: {pub['split']}, ours: {run['scheme']}): compare with care.")
    lines += [
        "",
        "### AUROC (test)",
        "",
        auroc_table_md({"ours": auroc}, {"published": pub["auroc"]} if pub.get("auroc") else None),
    ]
    lines += [f"- {w}" for w in auroc.get("warnings", [])]
    lines += ["", "### Localization (bbox)", "", *_loc_lines(run), ""]
    return lines


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write ``out/report.md`` and ``out/report.png`` for the given runs; return the Markdown path."""
    runs = [load_run(Path(r)) for r in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# cxrdist report", ""]
    if len(runs) > 1:
        lines += [
            "## Side by side (test AUROC)",
            "",
            auroc_table_md({r["name"]: r["metrics"]["test"]["auroc"] for r in runs}),
            "",
        ]
    for r in runs:
        lines += run_section(r)
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
