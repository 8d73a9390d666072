"""Markdown tables for reports: per-class AUROC (runs vs published) and the three localization protocols.

Undefined values (``None``) print as ``n/a`` and the reason is listed under the table, so a missing number is
never silently dropped from a comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrdist.eval.localization import ACC_AFP, ACC_AT_IOU, BEST_BOX_IOU
from cxrdist.labels import LABELS

logger = logging.getLogger(__name__)

_MEAN_KEYS = ("mean", "average")


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _split_published(published: Mapping | None) -> dict[str, Mapping[str, Any]]:
    """Accept ``{class: value}`` (one column named "published") or ``{column: {class: value}}``."""
    if not published:
        return {}
    if all(isinstance(v, Mapping) for v in published.values()):
        return dict(published)
    return {"published": published}


def _printed_mean(column: Mapping[str, Any]) -> float | None:
    for key, value in column.items():
        if key.lower() in _MEAN_KEYS:
            return value
    return None


def auroc_table_md(
    results: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Any] | None = None,
    class_names: Sequence[str] = LABELS,
    digits: int = 4,
) -> str:
    """Per-class AUROC table, one column per run and per published column, with a Mean row.

    Args:
        results: ``{run name: auroc_per_class(...) result}`` or ``{run name: {class: value or None}}``.
        published: ``{class: value}`` or ``{column name: {class: value}}``; a "Mean"/"Average" entry is printed
            as given (papers' printed means can differ from the mean of their rows), otherwise it is computed.
        class_names: row order.
        digits: decimals.

    Returns:
        Markdown: the table, then notes (undefined classes with their warnings, means over fewer classes).
        With exactly one run and one published column a Δ (run − published) column is added.
    """
    columns: dict[str, tuple[Mapping[str, Any], float | None]] = {}
    notes: list[str] = []
    for run, res in results.items():
        per_class = res.get("per_class", res)
        defined = [per_class[n] for n in class_names if per_class.get(n) is not None]
        mean = res.get("mean") if "per_class" in res else (float(np.mean(defined)) if defined else None)
        columns[run] = (per_class, mean)
        notes += [f"{run}: {w}" for w in res.get("warnings", [])]
        undefined = [n for n in class_names if per_class.get(n) is None]
        if undefined and not res.get("warnings"):
            notes.append(f"{run}: n/a for {', '.join(undefined)} (AUROC undefined or missing)")
        if undefined:
            notes.append(f"{run}: Mean is over the {len(defined)} defined classes, not {len(class_names)}")
    for name, col in _split_published(published).items():
        printed = _printed_mean(col)
        defined = [col[n] for n in class_names if col.get(n) is not None]
        if printed is None and defined:
            notes.append(f"{name}: Mean computed from its {len(defined)} per-class values (none printed)")
        columns[name] = (col, printed if printed is not None else (float(np.mean(defined)) if defined else None))

    delta = len(results) == 1 and len(columns) == 2
    header = ["Class", *columns, *(["Δ (run − published)"] if delta else [])]
    rows = []
    for n in [*class_names, "Mean"]:
        vals = [col.get(n) if n != "Mean" else mean for col, mean in columns.values()]
        diff = None if not delta or None in vals else vals[0] - vals[1]
        diff_cell = "n/a" if diff is None else f"{diff:+.{digits}f}"
        rows.append([n, *(_fmt(v, digits) for v in vals), *([diff_cell] if delta else [])])
    lines = _table(header, rows)
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"


_VARIANT_LABEL = {"oracle": "ORACLE: per GT box the best of all thresholds (upper bound, no paper could pick it)"}


def _variant(key: str) -> str:
    return _VARIANT_LABEL.get(key, f"> {key}")


def _acc_at_iou_md(loc: Mapping[str, Any], digits: int) -> list[str]:
    classes = loc["classes"]
    header = ["T(IoU)", "binarisation", *classes, "Mean (classes)", "Mean (boxes)"]
    rows = []
    t_keys = next(iter(loc[ACC_AT_IOU].values())).keys()
    for t in t_keys:
        for variant, by_t in loc[ACC_AT_IOU].items():
            s = by_t[t]
            cells = [_fmt(s["per_class"][c], digits) for c in classes]
            rows.append(
                [t, _variant(variant), *cells, _fmt(s["mean_over_classes"], digits), _fmt(s["mean_over_boxes"], digits)]
            )
    return ["### Accuracy at T(IoU) (compared with kim2021 Table 1)", "", *_table(header, rows)]


def _best_box_iou_md(loc: Mapping[str, Any], digits: int) -> list[str]:
    classes = loc["classes"]
    header = ["binarisation", *classes, "Mean (classes)", "Mean (boxes)"]
    rows = [
        [_variant(v), *(_fmt(s["per_class"][c], digits) for c in classes), _fmt(s["mean_over_classes"], digits)]
        + [_fmt(s["mean_over_boxes"], digits)]
        for v, s in loc[BEST_BOX_IOU].items()
    ]
    title = "### IoU of the best predicted box (compared with fang2021 Table 3: its 0.3014 = Mean over boxes)"
    return [title, "", *_table(header, rows)]


def _acc_afp_md(loc: Mapping[str, Any], digits: int) -> list[str]:
    classes = loc["classes"]
    header = ["criterion", "metric", *classes, "Mean (classes)", "Mean (boxes / pooled)"]
    lines: list[str] = []
    for thr, by_measure in loc[ACC_AFP].items():
        rows = []
        for measure, by_t in by_measure.items():
            for t, s in by_t.items():
                crit = f"{'IoU' if measure == 'iou' else 'IoBB'} > {t}"
                acc = [_fmt(s["accuracy"][c], digits) for c in classes]
                afp = [_fmt(s["afp"][c], digits) for c in classes]
                means_acc = [_fmt(s["accuracy_mean_over_classes"], digits), _fmt(s["accuracy_mean_over_boxes"], digits)]
                means_afp = [_fmt(s["afp_mean_over_classes"], digits), _fmt(s["afp_pooled"], digits)]
                rows += [[crit, "Acc.", *acc, *means_acc], [crit, "AFP", *afp, *means_afp]]
        lines += [f"### Accuracy and average FP at T(IoU), T(IoBB) (Wang et al. 2017), heatmap > {thr}", ""]
        lines += [*_table(header, rows), ""]
    return lines


def localization_table_md(loc_result: Mapping[str, Any], digits: int = 4) -> str:
    """All three localization protocols of an :func:`evaluate_localization` result as Markdown.

    Args:
        loc_result: the dict returned by ``cxrdist.eval.localization.evaluate_localization``.
        digits: decimals.

    Returns:
        Markdown with the box counts, kim2021, fang2021 and Wang et al. tables, the protocol choices and the
        warnings (classes without boxes print as n/a and are left out of the means over classes).
    """
    loc = loc_result
    counts = [str(loc["boxes_per_class"][c]) for c in loc["classes"]]
    lines = [
        f"Box split: {loc['num_boxes']} boxes on {loc['num_images']} images ({loc['num_pairs']} (image, class) pairs).",
        "",
        *_table(["", *loc["classes"], "total"], [["GT boxes", *counts, str(loc["num_boxes"])]]),
        "",
        *_acc_at_iou_md(loc, digits),
        "",
        *_best_box_iou_md(loc, digits),
        "",
        *_acc_afp_md(loc, digits),
        "### Protocol",
        "",
        *(f"- **{k}**: {v}" for k, v in loc["protocol"].items()),
    ]
    if loc.get("warnings"):
        lines += ["", "### Warnings", "", *(f"- {w}" for w in loc["warnings"])]
    return "\n".join(lines) + "\n"
