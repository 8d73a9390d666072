"""Figures are written and readable; Markdown tables show n/a with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.figures import plot_heatmap_overlay, plot_published_vs_ours, plot_roc
from cxrdist.eval.localization import evaluate_localization
from cxrdist.eval.tables import auroc_table_md, localization_table_md
from cxrdist.labels import LABELS


def _split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((400, 14)) < 0.2).astype(np.uint8)
    labels[:, 13] = 0
    return labels, rng.standard_normal((400, 14)) + labels


def _readable_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width > 100 and img.height > 100


def test_figures_written(tmp_path: Path) -> None:
    labels, scores = _split()
    _readable_png(plot_roc(labels, scores, tmp_path / "roc.png"))
    image = (np.random.default_rng(0).random((224, 224)) * 255).astype(np.uint8)
    gt, pred = np.array([[10, 10, 50, 60]]), np.array([[20, 20, 80, 90], [100, 100, 120, 130]])
    _readable_png(
        plot_heatmap_overlay(image, np.random.default_rng(1).random((7, 7)), gt, pred, tmp_path / "o.png", "x")
    )
    _readable_png(plot_heatmap_overlay(image, np.zeros((7, 7)), np.zeros((0, 4)), np.zeros((0, 4)), tmp_path / "e.png"))
    rows = {"published": {"Atelectasis": 0.80, "Hernia": 0.87}, "run A": {"Atelectasis": 0.78, "Hernia": None}}
    rows["run B"] = {"Atelectasis": 0.79, "Hernia": 0.85, "Mass": 0.7}
    _readable_png(plot_published_vs_ours(rows, tmp_path / "sub" / "bars.png"))
    with pytest.raises(ValueError):
        plot_published_vs_ours({}, tmp_path / "none.png")


def test_auroc_table_na_warning_delta_and_printed_mean() -> None:
    labels, scores = _split()
    res = auroc_per_class(labels, scores)
    published = {name: 0.8 for name in LABELS} | {"Average": 0.7724}  # a printed mean is kept as printed
    md = auroc_table_md({"ours": res}, published)
    lines = md.splitlines()
    assert lines[0] == "| Class | ours | published | Δ (run − published) |"
    hernia = next(line for line in lines if line.startswith("| Hernia"))
    assert hernia == "| Hernia | n/a | 0.8000 | n/a |"
    mean = next(line for line in lines if line.startswith("| Mean"))
    assert f"{res['mean']:.4f}" in mean and "0.7724" in mean
    assert any("Hernia: AUROC undefined" in line for line in lines)
    assert any("13 defined classes" in line for line in lines)


def test_auroc_table_several_runs_and_published_columns() -> None:
    per_class = {name: 0.75 for name in LABELS}
    md = auroc_table_md({"a": per_class, "b": per_class | {"Edema": None}}, {"X": per_class, "Y": per_class})
    assert md.splitlines()[0] == "| Class | a | b | X | Y |"
    assert "b: n/a for Edema" in md
    assert "X: Mean computed" in md


def test_localization_table() -> None:
    hm = np.zeros((224, 224))
    hm[10:30, 10:30] = 1.0
    boxes = [{"key": "a", "class_idx": 0, "x": 10, "y": 10, "w": 20, "h": 20}]
    md = localization_table_md(evaluate_localization({("a", 0): hm}, boxes, orig_size=224))
    assert "### Accuracy at T(IoU) (compared with kim2021 Table 1)" in md
    assert "### IoU of the best predicted box (compared with fang2021 Table 3" in md
    assert "(Wang et al. 2017), heatmap > 60" in md and "heatmap > 180" in md
    assert "| 0.3 | > 60 | 1.0000 | n/a |" in md
    assert "ORACLE: per GT box the best of all thresholds" in md
    assert "Cardiomegaly: no ground-truth boxes" in md
    assert "**false_positive**" in md
