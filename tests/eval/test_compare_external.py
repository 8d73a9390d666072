"""Two runs compared on an external set (launch/compare.py --external): per class DeLong on the annotated images
only, the paired patient bootstrap of the mean, Holm; the same-keys check; one-line errors; and the report's
external section with intervals in every column (NIH test included). Fake run dirs, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrdist.eval.compare import paired_comparison
from cxrdist.eval.delong import delong_paired
from cxrdist.eval.external import masked_bootstrap_mean, masked_paired_comparison
from cxrdist.eval.report import load_runs, write_report
from cxrdist.eval.stats import holm
from cxrdist.labels import LABELS
from testkit.eval_runs import fake_eval_run, fake_external, fake_shards, fixed_external_set, script


def _scores(labels: np.ndarray, signal: float, seed: int) -> np.ndarray:
    return labels * signal + np.random.default_rng(seed).normal(size=labels.shape)


def test_with_every_label_annotated_it_is_the_nih_paired_comparison():
    labels, _, pids, _ = fixed_external_set()
    labels = (np.random.default_rng(1).random(labels.shape) > 0.7).astype(np.uint8)
    a, b = _scores(labels, 1.0, 0), np.round(_scores(labels, 0.5, 1), 1)  # rounded: ties
    got = masked_paired_comparison(labels, a, b, np.ones_like(labels), pids, 150, 3)
    want = paired_comparison(labels, a, b, pids, 150, 3)
    for name in LABELS:
        for k in ("auroc_a", "auroc_b", "delta", "p", "p_holm"):
            assert got["per_class"][name][k] == pytest.approx(want["per_class"][name][k], abs=1e-12), (name, k)
        assert got["per_class"][name]["delong"] == pytest.approx(want["per_class"][name]["delong"], abs=1e-12)
    for k in ("auroc_a", "auroc_b", "delta", "p"):
        assert got["mean"][k] == pytest.approx(want["mean"][k], abs=1e-12)
    assert got["mean"]["bootstrap"] == pytest.approx(want["mean"]["bootstrap"], abs=1e-12)
    same = masked_paired_comparison(labels, a, a, np.ones_like(labels), pids, 50, 0)
    assert same["mean"]["delta"] == 0 and same["mean"]["p"] == 1


def test_only_annotated_images_count_and_holm_runs_over_the_annotated_classes():
    labels, mask, pids, _ = fixed_external_set()
    a, b = _scores(labels, 1.2, 0), _scores(labels, 0.4, 1)
    got = masked_paired_comparison(labels, a, b, mask, pids, 120, 0)
    noise = np.random.default_rng(9)  # what the set does not annotate must not matter
    labels2, a2 = labels.copy(), a.copy()
    labels2[mask == 0] = noise.integers(0, 2, (mask == 0).sum())
    a2[mask == 0] = noise.normal(size=(mask == 0).sum()) * 50
    assert masked_paired_comparison(labels2, a2, b, mask, pids, 120, 0) == got
    for c in range(7):
        keep = mask[:, c] == 1
        d = delong_paired(labels[keep][:, [c]], a[keep][:, [c]], b[keep][:, [c]])
        assert got["per_class"][LABELS[c]]["p"] == pytest.approx(d.p[0], abs=1e-12)
    assert [got["per_class"][n]["p_holm"] for n in LABELS[:7]] == pytest.approx(
        holm([got["per_class"][n]["p"] for n in LABELS[:7]]).tolist(), abs=1e-12
    )
    assert got["not_annotated"] == list(LABELS[7:])
    assert all(got["per_class"][n]["p_holm"] is None and got["per_class"][n]["auroc_a"] is None for n in LABELS[7:])
    lo, hi = got["mean"]["bootstrap"]
    assert got["mean"]["delta"] > 0 and lo <= got["mean"]["delta"] <= hi and got["mean"]["p"] < 0.05


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    shards = fake_shards(tmp_path / "shards")
    a = fake_eval_run(tmp_path / "a", shards, "chexnet", 0, 1.5)
    b = fake_eval_run(tmp_path / "b", shards, "dcnn", 1, 0.3)
    fake_external(a, "chexpert", 1.5, 0)
    fake_external(b, "chexpert", 0.3, 1)
    return a, b


def test_compare_cli_on_an_external_set_and_its_one_line_refusals(tmp_path: Path, two_runs, capsys):
    a, b = two_runs
    compare = script("compare")
    out = tmp_path / "cmp"
    argv = [str(a), str(b), "--external", "chexpert", "--resamples", "200", "--out", str(out), "--no-wandb"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "compare-chexpert.json").read_text())
    assert saved["external"] == "chexpert" and saved["num_images"] == 90 and saved["not_annotated"] == list(LABELS[7:])
    assert saved["mean"]["delta"] > 0 and saved["mean"]["p"] < 0.05
    assert saved["per_class"]["Hernia"]["p"] is None and "each class on the images that annotate it" in printed
    assert (out / "compare-chexpert.md").read_text().startswith("# a vs b (chexpert)")
    assert not (out / "compare.md").exists()

    def refused(*extra: str, run_b: Path = b) -> str:
        assert compare.main([str(a), str(run_b), "--out", str(tmp_path / "bad"), "--no-wandb", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("compare.py: ") and not (tmp_path / "bad").exists(), err
        return err[0]

    assert "no external result 'mimic'" in refused("--external", "mimic") and "there: chexpert" in refused(
        "--external", "mimic"
    )
    assert "no external result '../chexpert'" in refused("--external", "../chexpert")  # only a result's own name
    fake_external(b, "padchest", 0.3, 1)
    fake_external(a, "padchest", 0.3, 1, config_hash="f" * 64)
    assert "two different shard sets" in refused("--external", "padchest")
    z = dict(np.load(b / "eval/external/chexpert/test/predictions.npz"))
    z["label_mask"][3, 0] = 1 - z["label_mask"][3, 0]
    np.savez(b / "eval/external/chexpert/test/predictions.npz", **z)
    assert "other annotated classes (label_mask)" in refused("--external", "chexpert")
    z["keys"][4] = "somebody/else"
    np.savez(b / "eval/external/chexpert/test/predictions.npz", **z)
    assert "is in a but not in b" in refused("--external", "chexpert")


def test_the_reports_external_section_has_intervals_in_every_column(tmp_path: Path, two_runs):
    a, _ = two_runs
    [run] = load_runs([a], num_resamples=100)
    md = write_report([a], tmp_path / "out", num_resamples=100).read_text()
    section = md[md.index("External validation") :].splitlines()
    row = next(line for line in section if line.startswith("| Atelectasis |"))
    lo, hi = run["intervals"]["per_class"]["Atelectasis"]["delong"]
    assert row.count("[") == 2 and f"[{lo:.2f}, {hi:.2f}] |" in row.split("|")[2] + "|"  # NIH test: DeLong too
    mean = next(line for line in section if line.startswith("| **mean (own classes)** |"))
    lo, hi = run["intervals"]["mean"]["bootstrap"]
    assert mean.count("[") == 2 and f"[{lo:.2f}, {hi:.2f}]" in mean  # both means: patient bootstrap
    shared = next(line for line in section if line.startswith("| **mean (shared 7)** |"))
    labels, mask, pids, _ = fixed_external_set()
    logits = dict(np.load(a / "eval/external/chexpert/test/predictions.npz"))["logits"]
    want = masked_bootstrap_mean(labels, logits, mask, pids, 100)  # CheXpert annotates exactly the shared 7 here
    assert shared.count("[") == 2 and shared.endswith(f"{want['estimate']:.4f} [{want['ci95'][0]:.2f}, "
                                                      f"{want['ci95'][1]:.2f}] |")  # fmt: skip
