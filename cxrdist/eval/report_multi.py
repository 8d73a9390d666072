"""The report's parts about several runs: leaderboard, per-class table, paired tests against a baseline, forest plot,
and per-run ROC panels with bands. Runs are the dicts of :func:`cxrdist.eval.report.load_runs`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdist.eval.compare import _f, _fci, patients_of
from cxrdist.eval.figures_ci import plot_forest, plot_roc_bands
from cxrdist.eval.leaderboard import baseline_md, group_runs, leaderboard_md, per_class_md, published_mean
from cxrdist.eval.localization import KIM_IOU_T
from cxrdist.labels import LABELS


def pick_baseline(runs: Sequence[dict[str, Any]], baseline: Path | str) -> dict[str, Any]:
    """The run named by ``baseline``: one of the runs' dirs, or a label; a one-line error otherwise."""
    want = Path(baseline).resolve()
    hits = [r for r in runs if Path(r["dir"]).resolve() == want or r["label"] == str(baseline)]
    if len(hits) != 1:
        labels = ", ".join(r["label"] for r in runs)
        raise ValueError(f"--baseline {baseline}: not one of the runs of this report ({labels}); give its run dir")
    return hits[0]


def forest_rows(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The forest plot's rows: every run, grouped, with its mean AUROC CI and its method's published mean."""
    rows = []
    for g in groups:
        for r in g["runs"]:
            iv = r.get("intervals")
            rows.append({
                "label": r["label"],
                "group": g["label"],
                "estimate": iv["mean"]["auroc"] if iv else r["metrics"]["test"]["auroc"]["mean"],
                "ci": iv["mean"]["bootstrap"] if iv else None,
                "published": published_mean(r),
            })  # fmt: skip
    return rows


# The board's column heads: the figure and the paper it stands for.
BOARD_NAMES = {f"{k}>{t:g}": f"{name}>{t:g}" for t in KIM_IOU_T
               for k, name in (("acc_at_iou", "kim2021 acc@IoU"), ("afp_at_iou", "Wang AFP@IoU"))}  # fmt: skip
BOARD_NAMES["best_box_iou"] = "fang2021 best-box IoU"


def localization_board_md(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Per run with bbox results: each fixed-threshold headline figure with its patient-bootstrap CI."""
    boards = [(r["label"], v, figs) for r in runs for v, figs in (r.get("loc_intervals") or {}).items()]
    if not boards:
        return []
    names = list(dict.fromkeys(n for *_, figs in boards for n in figs))  # older runs lack the AFP columns: '—'
    cell = lambda f: "—" if f is None else f"{_f(f['value'])} {_fci(f['ci'])}"  # noqa: E731
    rows = [f"| {label} | heatmap > {v} | " + " | ".join(cell(figs.get(n)) for n in names) + " |"
            for label, v, figs in boards]  # fmt: skip
    head = "| run | binarisation | " + " | ".join(BOARD_NAMES.get(n, n) for n in names) + " |"
    return ["### Localization (bbox, fixed thresholds, 95% patient-bootstrap CIs)", "", head,
            "|---" * (len(names) + 2) + "|", *rows, "",
            "- Wang AFP@IoU>T: average false positives per image (lower is better), mean over classes.",
            ""]  # fmt: skip


def multi_run_lines(
    runs: Sequence[dict[str, Any]], out: Path, baseline: Path | str | None, num_resamples: int, seed: int
) -> list[str]:
    """Leaderboard, per-class table, paired tests against ``baseline`` and the forest plot (written to ``out``)."""
    base = pick_baseline(runs, baseline) if baseline is not None else None
    groups = group_runs(runs)
    plot_forest(forest_rows(groups), out / "forest.png", title="Test mean AUROC with 95% patient-bootstrap CIs")
    lines = ["## Leaderboard (test)", "", *leaderboard_md(groups), "", "![forest plot](forest.png)", ""]
    lines += ["### Per class (mean ± sd over each entry's runs)", "", *per_class_md(groups, LABELS), ""]
    lines += localization_board_md(runs)
    if base is not None:
        lines += ["### Paired tests against the baseline", "", *baseline_md(runs, base, num_resamples, seed), ""]
        lines += [
            "- Δ and its CI: paired patient bootstrap of the mean AUROC (the same resamples for both runs); per "
            "class: DeLong's test for correlated AUROCs, Holm-adjusted across the classes. The full per-class "
            "tables: `launch/compare.py RUN BASELINE`.",
            "",
        ]
    return lines


def roc_band_lines(run: dict[str, Any], out: Path, num_resamples: int = 200, seed: int = 0) -> list[str]:
    """Per-class ROC panels with bootstrap bands for a run with saved predictions (``roc_<label>.png``)."""
    pred = run.get("pred")
    if pred is None:
        return []
    name = "roc_" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", run["label"]) + ".png"
    pids, _ = patients_of(pred["keys"].tolist(), pred.get("patient_ids"))
    title = f"{run['label']}: test ROC per class, 95% patient-bootstrap bands ({num_resamples} resamples)"
    plot_roc_bands(pred["labels"], pred["logits"], pids, out / name, title, num_resamples, seed)
    return [f"![ROC per class, {run['label']}]({name})", ""]
