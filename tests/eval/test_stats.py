"""Statistics core: DeLong against an O(n²) reference, the paired test, the patient-clustered bootstrap, Holm, keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrdist.eval.bootstrap import (
    bootstrap_auroc,
    bootstrap_class_means,
    cluster_index,
    paired_bootstrap_auroc,
    paired_bootstrap_class_means,
    resample_counts,
)
from cxrdist.eval.delong import delong_auroc, delong_paired
from cxrdist.eval.stats import align_keys, bootstrap_p_value, check_scores, holm, percentile_ci

REPO = Path(__file__).resolve().parents[2]
Q95 = norm.ppf(0.975)


def _tied_split(seed: int, num: int = 700) -> tuple[np.ndarray, np.ndarray]:
    """Unbalanced classes (3%–50% positives) and scores rounded to 0.1 so that many are tied."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.03, 0.1, 0.25, 0.5])
    labels = (rng.random((num, prevalence.size)) < prevalence).astype(np.uint8)
    scores = np.round(rng.standard_normal(labels.shape) + 0.8 * labels, 1)
    return labels, scores


def _slow_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong 1988 the O(mn) way: the kernel psi on every (positive, negative) pair."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def _slow_cov(a: tuple, b: tuple) -> float:
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = a, b
    m, n = v10_a.size, v01_a.size
    s10 = np.sum((v10_a - auc_a) * (v10_b - auc_b)) / (m - 1)
    s01 = np.sum((v01_a - auc_a) * (v01_b - auc_b)) / (n - 1)
    return s10 / m + s01 / n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_delong_equals_slow_reference_with_ties(seed: int) -> None:
    labels, scores = _tied_split(seed)
    res = delong_auroc(labels, scores)
    for c in range(labels.shape[1]):
        y = labels[:, c] == 1
        ref = _slow_components(scores[y, c], scores[~y, c])
        var = _slow_cov(ref, ref)
        assert res.auroc[c] == pytest.approx(roc_auc_score(y, scores[:, c]), abs=1e-12)
        assert abs(res.auroc[c] - ref[0]) < 1e-10
        assert abs(res.variance[c] - var) < 1e-10
        assert abs(res.ci_low[c] - max(0.0, ref[0] - Q95 * np.sqrt(var))) < 1e-10
        assert abs(res.ci_high[c] - min(1.0, ref[0] + Q95 * np.sqrt(var))) < 1e-10
        assert res.reasons[c] is None
    assert res.num_positive.tolist() == labels.sum(axis=0).tolist()


def test_delong_undefined_and_degenerate_classes_never_crash() -> None:
    labels, scores = _tied_split(5, num=200)
    labels[:, 0] = 0  # no positives
    labels[:, 1] = 1  # no negatives
    labels[:, 2] = 0
    labels[7, 2] = 1  # a single positive: AUROC defined, variance not
    scores[:, 3] = labels[:, 3] * 5.0  # perfect separation: zero variance
    res = delong_auroc(labels, scores)
    assert np.isnan(res.auroc[:2]).all() and np.isnan(res.variance[:2]).all() and np.isnan(res.ci_low[:2]).all()
    assert "no positives" in res.reasons[0] and "no negatives" in res.reasons[1]
    assert res.auroc[2] == pytest.approx(roc_auc_score(labels[:, 2], scores[:, 2]), abs=1e-12)
    assert np.isnan(res.variance[2]) and np.isnan(res.ci_high[2]) and "at least 2" in res.reasons[2]
    assert res.auroc[3] == 1.0 and res.variance[3] == 0.0 and res.ci_low[3] == res.ci_high[3] == 1.0
    assert "zero" in res.reasons[3]


def test_paired_delong_identical_predictions_give_delta_0_p_1() -> None:
    labels, scores = _tied_split(0)
    for other in (scores.copy(), 3.0 * scores + 1.0):  # the same ranking: identical AUROC components
        res = delong_paired(labels, scores, other)
        assert (res.delta == 0).all() and (res.p == 1).all() and (res.p_holm == 1).all() and (res.z == 0).all()
        assert (res.ci_low == 0).all() and (res.ci_high == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_delong_equals_slow_reference(seed: int) -> None:
    labels, scores_a = _tied_split(seed)
    rng = np.random.default_rng(100 + seed)
    scores_b = np.round(scores_a + rng.standard_normal(scores_a.shape), 1)  # correlated with A, ties kept
    res = delong_paired(labels, scores_a, scores_b)
    for c in range(labels.shape[1]):
        y = labels[:, c] == 1
        a = _slow_components(scores_a[y, c], scores_a[~y, c])
        b = _slow_components(scores_b[y, c], scores_b[~y, c])
        var = _slow_cov(a, a) + _slow_cov(b, b) - 2 * _slow_cov(a, b)  # the textbook S_aa + S_bb - 2 S_ab
        z = (a[0] - b[0]) / np.sqrt(var)
        assert abs(res.delta[c] - (a[0] - b[0])) < 1e-10 and abs(res.variance[c] - var) < 1e-10
        assert abs(res.z[c] - z) < 1e-8 and abs(res.p[c] - 2 * norm.sf(abs(z))) < 1e-10
    assert np.allclose(res.p_holm, holm(res.p))


def test_paired_delong_clearly_different_and_degenerate() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, 2)) < 0.3).astype(int)
    good = rng.standard_normal(labels.shape) + 2.0 * labels
    poor = rng.standard_normal(labels.shape) + 0.2 * labels
    res = delong_paired(labels, good, poor)
    assert (res.delta > 0.2).all() and (res.p < 1e-10).all() and (res.ci_low > 0).all()

    perfect, constant = labels * 1.0, np.zeros(labels.shape)  # Var(delta) = 0 with delta = 0.5: no normal test
    res = delong_paired(labels, perfect, constant)
    assert (res.delta == 0.5).all() and np.isnan(res.p).all() and "no normal test" in res.reasons[0]


def _patients(num_patients: int, seed: int) -> np.ndarray:
    """Patient id of each image, 1–12 images per patient."""
    sizes = np.random.default_rng(seed).integers(1, 13, num_patients)
    return np.repeat(np.arange(num_patients), sizes)


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    patients = _patients(150, 0)
    labels, scores = _tied_split(1, num=patients.size)
    first = bootstrap_auroc(labels, scores, patients, num_resamples=300, seed=7)
    again = bootstrap_auroc(labels, scores, patients, num_resamples=300, seed=7)
    other = bootstrap_auroc(labels, scores, patients, num_resamples=300, seed=8)
    as_text = bootstrap_auroc(labels, scores, [f"p{i:05d}" for i in patients], num_resamples=300, seed=7)
    assert np.array_equal(first.per_class_samples, again.per_class_samples)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert np.array_equal(first.per_class_samples, as_text.per_class_samples)  # ids only need a sort order
    assert not np.array_equal(first.samples, other.samples) and first.ci_low != other.ci_low
    assert first.num_clusters == 150 and first.seed == 7 and first.num_dropped == 0
    assert np.array_equal(resample_counts(150, 300, 7), resample_counts(150, 300, 7))
    assert (resample_counts(150, 300, 7).sum(axis=1) == 150).all()


def test_resample_auroc_equals_sklearn_on_the_explicit_resample() -> None:
    patients = _patients(120, 3)
    labels, scores = _tied_split(2, num=patients.size)
    res = bootstrap_auroc(labels, scores, patients, num_resamples=20, seed=11)
    cluster, num_clusters = cluster_index(patients, patients.size)
    counts = resample_counts(num_clusters, 20, 11)
    for r in range(20):
        rows = np.repeat(np.arange(patients.size), counts[r, cluster])  # every image, as often as its patient
        for c in range(labels.shape[1]):
            expected = roc_auc_score(labels[rows, c], scores[rows, c])
            assert abs(res.per_class_samples[r, c] - expected) < 1e-12
        assert res.samples[r] == pytest.approx(res.per_class_samples[r].mean(), abs=1e-15)
    for c in range(labels.shape[1]):
        assert abs(res.per_class[c] - roc_auc_score(labels[:, c], scores[:, c])) < 1e-12


def _width(res) -> float:
    return res.ci_high - res.ci_low


def test_duplicated_images_leave_the_clustered_interval_and_narrow_an_image_level_one() -> None:
    rng = np.random.default_rng(0)
    num, k = 1500, 4
    labels = (rng.random((num, 2)) < [0.2, 0.4]).astype(int)
    scores = rng.standard_normal(labels.shape) + labels
    base = bootstrap_auroc(labels, scores, np.arange(num), num_resamples=1000, seed=1)
    dup_labels, dup_scores, dup_patients = (
        np.repeat(labels, k, 0),
        np.repeat(scores, k, 0),
        np.repeat(np.arange(num), k),
    )
    clustered = bootstrap_auroc(dup_labels, dup_scores, dup_patients, num_resamples=1000, seed=1)
    image_level = bootstrap_auroc(dup_labels, dup_scores, np.arange(num * k), num_resamples=1000, seed=1)
    # Every patient's weight scales all its k copies alike: the same resamples give the same AUROCs.
    assert np.allclose(clustered.per_class_samples, base.per_class_samples, rtol=0, atol=1e-12)
    assert abs(_width(clustered) - _width(base)) < 1e-12
    assert 0.42 < _width(image_level) / _width(clustered) < 0.58  # ~ 1 / sqrt(k)


@pytest.mark.parametrize(("correlated", "expected"), [(True, 2.0), (False, 1.0)])
def test_clustered_interval_widens_with_within_patient_correlation(correlated: bool, expected: float) -> None:
    """k = 4 images per patient: near-duplicates widen the clustered interval by ~sqrt(k); independent ones do not."""
    rng = np.random.default_rng(1)
    num_patients, k = 800, 4
    patients = np.repeat(np.arange(num_patients), k)
    if correlated:  # the patient's finding and score, with a little per-image noise
        labels = np.repeat((rng.random((num_patients, 2)) < 0.3).astype(int), k, 0)
        scores = (
            np.repeat(rng.standard_normal((num_patients, 2)), k, 0) + labels + 0.05 * rng.standard_normal(labels.shape)
        )
    else:
        labels = (rng.random((num_patients * k, 2)) < 0.3).astype(int)
        scores = rng.standard_normal(labels.shape) + labels
    clustered = bootstrap_auroc(labels, scores, patients, num_resamples=1000, seed=2)
    image_level = bootstrap_auroc(labels, scores, np.arange(patients.size), num_resamples=1000, seed=2)
    assert _width(clustered) / _width(image_level) == pytest.approx(expected, rel=0.18)


def test_paired_bootstrap_identical_and_different_runs() -> None:
    patients = _patients(200, 4)
    labels, scores = _tied_split(3, num=patients.size)
    same = paired_bootstrap_auroc(labels, scores, scores.copy(), patients, num_resamples=400, seed=5)
    assert same.delta.estimate == 0 and same.delta.ci_low == 0 and same.delta.ci_high == 0 and same.p == 1
    assert (same.per_class_p == 1).all() and (same.per_class_p_holm == 1).all()
    # Run A of a paired bootstrap is the unpaired bootstrap with the same seed: the resamples are shared.
    alone = bootstrap_auroc(labels, scores, patients, num_resamples=400, seed=5)
    assert np.array_equal(same.a.per_class_samples, alone.per_class_samples)

    rng = np.random.default_rng(0)
    noisy = scores + 3.0 * rng.standard_normal(scores.shape)
    diff = paired_bootstrap_auroc(labels, scores, noisy, patients, num_resamples=400, seed=5)
    assert diff.delta.estimate > 0.05 and diff.delta.ci_low > 0 and diff.p == pytest.approx(2 / 401)
    assert np.array_equal(diff.delta.samples, diff.a.samples - diff.b.samples)


def test_resamples_without_positives_are_dropped_and_counted() -> None:
    patients = _patients(60, 6)
    labels, scores = _tied_split(4, num=patients.size)
    labels[:, 0] = patients == 0  # one positive patient: absent from ~1/e of the resamples
    res = bootstrap_auroc(labels, scores, patients, num_resamples=500, seed=0)
    dropped = np.isnan(res.per_class_samples[:, 0])
    assert res.num_dropped == dropped.sum() and 0.25 * 500 < res.num_dropped < 0.5 * 500
    assert np.isnan(res.samples[dropped]).all() and np.isfinite(res.samples[~dropped]).all()
    assert np.isfinite([res.ci_low, res.ci_high]).all() and "left out" in res.warnings[-1]

    labels[:, 1] = 0  # a class absent from the data: NaN with a reason, out of the mean, never a crash
    res = bootstrap_auroc(labels, scores, patients, num_resamples=100, seed=0)
    assert np.isnan(res.per_class[1]) and np.isnan(res.per_class_samples[:, 1]).all() and not res.classes[1]
    assert np.isnan(res.per_class_ci_low[1]) and "class 1: no positives or no negatives" in res.warnings[0]
    assert res.estimate == pytest.approx(np.mean(res.per_class[[0, 2, 3]]), abs=1e-15)
    paired = paired_bootstrap_auroc(labels, scores, scores[::-1].copy(), patients, num_resamples=100, seed=0)
    assert np.isnan(paired.per_class_p[1]) and np.isfinite(np.delete(paired.per_class_p_holm, 1)).all()
    assert np.isnan(delong_paired(labels, scores, scores[::-1]).p_holm[1])


def test_clustered_class_means_equal_the_explicit_resample() -> None:
    rng = np.random.default_rng(0)
    num_items = 400
    patients = rng.integers(0, 90, num_items)
    classes = rng.integers(0, 8, num_items)
    hits = rng.random(num_items) < 0.4
    ious = rng.random(num_items)
    res = bootstrap_class_means(ious, patients, classes, num_classes=8, num_resamples=30, seed=3)
    pooled = bootstrap_class_means(hits, patients, classes, average="items", num_resamples=30, seed=3)
    per_class = np.array([ious[classes == c].mean() for c in range(8)])
    assert np.allclose(res.per_class, per_class, rtol=0, atol=1e-12) and res.estimate == pytest.approx(per_class.mean())
    assert pooled.estimate == pytest.approx(hits.mean(), abs=1e-12)
    cluster, num_clusters = cluster_index(patients, num_items)
    counts = resample_counts(num_clusters, 30, 3)
    for r in range(30):
        rows = np.repeat(np.arange(num_items), counts[r, cluster])
        means = np.array([ious[rows][classes[rows] == c].mean() for c in range(8)])
        assert np.allclose(res.per_class_samples[r], means, rtol=0, atol=1e-12)
        assert abs(res.samples[r] - means.mean()) < 1e-12
        assert abs(pooled.samples[r] - hits[rows].mean()) < 1e-12


def test_paired_class_means_and_duplicated_boxes() -> None:
    rng = np.random.default_rng(1)
    patients, classes = np.arange(300), rng.integers(0, 4, 300)
    hits = (rng.random(300) < 0.5).astype(float)
    same = paired_bootstrap_class_means(hits, hits.copy(), patients, classes, num_resamples=200, seed=0)
    assert same.delta.estimate == 0 and same.p == 1 and (same.delta.per_class_samples == 0).all()
    better = np.maximum(hits, rng.random(300) < 0.5)
    diff = paired_bootstrap_class_means(better, hits, patients, classes, num_resamples=200, seed=0)
    assert diff.delta.ci_low > 0 and diff.p == pytest.approx(2 / 201)
    # Each patient's box counted 3 times: the clustered interval of the mean over classes is unchanged.
    base = bootstrap_class_means(hits, patients, classes, num_resamples=500, seed=4)
    triple = bootstrap_class_means(
        np.repeat(hits, 3), np.repeat(patients, 3), np.repeat(classes, 3), num_resamples=500, seed=4
    )
    assert abs(_width(base) - _width(triple)) < 1e-12


def test_class_means_bad_input_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"values\[2\] is nan"):
        bootstrap_class_means([0.1, 0.2, np.nan], [1, 2, 3], [0, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        bootstrap_class_means([0.1, 0.2], [1, 2], [0, 2], num_classes=2)
    with pytest.raises(ValueError, match="one id per item"):
        bootstrap_class_means([0.1, 0.2], [1], [0, 1])
    with pytest.raises(ValueError, match="average"):
        bootstrap_class_means([0.1, 0.2], [1, 2], [0, 1], average="boxes")


def test_holm_against_a_hand_computed_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06 (step-down monotone)
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaNs stay NaN and do not count in m (R p.adjust semantics); values cap at 1.
    out = holm([0.01, np.nan, 0.04, 0.03, 0.005, np.nan])
    assert np.isnan(out[[1, 5]]).all() and np.allclose(out[[0, 2, 3, 4]], [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm([0.5, 0.9, 0.2]), [1.0, 1.0, 0.6])
    assert np.isnan(holm([np.nan, np.nan])).all() and holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


def test_holm_matches_its_definition_on_random_p_values() -> None:
    p = np.random.default_rng(0).random(14) ** 3
    order = np.argsort(p)
    m = p.size
    expected = np.empty(m)
    for i, idx in enumerate(order):  # max over j <= i of min(1, (m - j) p_(j)), 0-based j
        expected[idx] = max(min(1.0, (m - j) * p[order[j]]) for j in range(i + 1))
    assert np.allclose(holm(p), expected, rtol=0, atol=1e-15)


def test_bootstrap_p_value_and_percentile_ci() -> None:
    assert bootstrap_p_value(np.zeros(99)) == 1.0
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)
    assert bootstrap_p_value(np.array([-1.0, 1, 2, 3])) == pytest.approx(min(1, 2 * 2 / 5))
    assert np.isnan(bootstrap_p_value(np.full(5, np.nan)))
    low, high = percentile_ci(np.r_[np.arange(101.0), np.nan])
    assert (low, high) == pytest.approx((2.5, 97.5), abs=1e-12)
    low, high = percentile_ci(np.array([[np.nan, 1.0], [np.nan, 2.0]]))
    assert np.isnan(low[0]) and low[1] == pytest.approx(1.025)


def test_align_keys() -> None:
    assert align_keys(["a", "b", "c"], ["a", "b", "c"]).tolist() == [0, 1, 2]
    index = align_keys(["a", "b", "c"], np.array(["c", "a", "b"]))
    assert np.array(["c", "a", "b"])[index].tolist() == ["a", "b", "c"]
    cases = [
        ((["a", "b", "c"], ["a", "c"]), "key 'b' is in A but not in B"),
        ((["a", "c"], ["c", "x", "a"]), "key 'x' is in B but not in A"),
        ((["a", "b"], ["b", "b"]), "B: key 'b' appears more than once"),
    ]
    for (ref, other), message in cases:
        with pytest.raises(ValueError, match=message) as info:
            align_keys(ref, other)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="'x.png' is in run_a"):
        align_keys(np.array(["x.png"]), np.array(["y.png"]), names=("run_a", "run_b"))


def test_check_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        check_scores(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"class column\(s\) \[1\]"):
        check_scores(np.zeros((3, 2)), np.array([[0.0, 1], [0, np.nan], [0, 0]]))
    with pytest.raises(ValueError, match="same"):
        delong_paired(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 1)))


def test_benchmark_tiny_runs() -> None:
    """``python -m benchmarks.stats --tiny`` (seconds): keeps the benchmark working; its timings are not asserted."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.stats", "--tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "clustered bootstrap" in out and "vs goal" in out and "vs naive" in out
