"""Average false positives (Wang et al. 2017) with a patient-clustered bootstrap CI: the per-pair FP counts the
localization code keeps, the fast interval against an explicit loop that resamples patients, and the paired test."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdist.eval.compare import localization_intervals, paired_localization
from cxrdist.eval.localization import KIM_IOU_T, evaluate_localization
from cxrdist.labels import LABELS

B = 300  # two draw blocks of 256 (the block edge is exercised)


def _loc(extra: int, seed: int = 0) -> tuple[dict, dict]:
    """18 images of 7 patients; 3 classes, some images with two; each heatmap has a blob near the box and up to
    ``extra`` blobs far from it (false positives at any T)."""
    rng = np.random.default_rng(seed)
    heat, boxes, patient = {}, [], {}
    for i in range(18):
        key = f"k{i:02d}"
        patient[key] = i % 7
        for c in {i % 3, (i * 5) % 3} if i % 4 else {i % 3}:
            hm = np.zeros((64, 64), np.float32)
            s = int(rng.integers(0, 6))
            hm[4 + s : 16 + s, 4 + s : 16 + s] = 1.0
            for j in range(int(rng.integers(0, extra + 1))):  # disjoint blobs far from the box: each its own FP
                hm[30 + 12 * (j // 2) : 36 + 12 * (j // 2), 30 + 14 * (j % 2) : 38 + 14 * (j % 2)] = 0.8
            heat[(key, c)] = hm
            boxes.append({"key": key, "class_idx": c, "x": 4, "y": 4, "w": 12, "h": 12})
    return evaluate_localization(heat, boxes, orig_size=64, compare_size=64, thresholds=[60, 180]), patient


def test_per_pair_fp_counts_add_up_to_the_protocol_afp():
    loc, _ = _loc(3)
    pp = loc["per_pair"]
    assert len(pp["key"]) == loc["num_pairs"] and len(pp["class_idx"]) == loc["num_pairs"]
    cls = np.asarray(pp["class_idx"])
    for variant, grids in loc["acc_afp_at_overlap"].items():
        for grid, by_t in grids.items():
            for t, s in by_t.items():
                fp = np.asarray(pp["fp"][variant][grid][t])
                assert fp.dtype.kind == "i" and (fp >= 0).all()
                for c in range(3):
                    assert s["afp"][LABELS[c]] == pytest.approx(fp[cls == c].mean())
                assert s["afp_pooled"] == pytest.approx(fp.mean())
    assert max(pp["fp"]["60"]["iou"]["0.5"]) >= 2  # the far blobs are counted, one each


def _slow_afp_ci(fp: np.ndarray, cls: np.ndarray, pids: np.ndarray, seed: int, confidence: float = 0.95):
    """The reference: draw patients with replacement (numpy's generator, blocks of 256 draws, as documented), gather
    each drawn patient's (image, class) pairs one by one, average per class, then over the classes of the data."""
    patients = np.unique(pids)
    classes = np.unique(cls)
    rng = np.random.default_rng(seed)
    samples = []
    for start in range(0, B, 256):
        for row in rng.integers(0, patients.size, size=(min(256, B - start), patients.size)):
            sums, counts = dict.fromkeys(classes, 0.0), dict.fromkeys(classes, 0)
            for p in row:
                for i in np.flatnonzero(pids == patients[p]):
                    sums[cls[i]] += fp[i]
                    counts[cls[i]] += 1
            per = [sums[c] / counts[c] if counts[c] else np.nan for c in classes]
            samples.append(np.nan if np.isnan(per).any() else np.mean(per))
    samples = np.array(samples)
    tail = (1 - confidence) / 2
    return np.quantile(samples[~np.isnan(samples)], [tail, 1 - tail]).tolist()


def test_afp_interval_equals_an_explicit_patient_resampling_loop():
    loc, patient = _loc(3)
    iv = localization_intervals(loc, patient, num_resamples=B, seed=7)
    pp = loc["per_pair"]
    cls = np.asarray(pp["class_idx"])
    pids = np.array([patient[k] for k in pp["key"]])
    for variant in ("60", "180"):
        for t in (f"{t:g}" for t in KIM_IOU_T):
            got = iv[variant][f"afp_at_iou>{t}"]
            assert got["value"] == pytest.approx(loc["acc_afp_at_overlap"][variant]["iou"][t]["afp_mean_over_classes"])
            fp = np.asarray(pp["fp"][variant]["iou"][t], dtype=np.float64)
            assert got["ci"] == pytest.approx(_slow_afp_ci(fp, cls, pids, seed=7), abs=1e-12)
            assert got["ci"][0] <= got["value"] <= got["ci"][1]
    again = localization_intervals(loc, patient, num_resamples=B, seed=7)
    assert again == iv  # seeded: the same intervals
    assert localization_intervals(loc, patient, num_resamples=B, seed=8) != iv
    old = {k: v for k, v in loc.items() if k != "per_pair"}  # a metrics.json from before the per-pair counts
    assert not any(k.startswith("afp") for k in localization_intervals(old, patient, num_resamples=20)["60"])


def test_paired_afp_is_zero_for_identical_runs_and_finds_more_false_positives():
    few, patient = _loc(0)
    many, _ = _loc(4)
    same = paired_localization(many, many, patient, num_resamples=B)
    assert all(same["60"][f"afp_at_iou>{t:g}"]["delta"] == 0 and same["60"][f"afp_at_iou>{t:g}"]["p"] == 1
               for t in KIM_IOU_T)  # fmt: skip
    d = paired_localization(few, many, patient, num_resamples=B)["60"]["afp_at_iou>0.5"]
    want = (few["acc_afp_at_overlap"]["60"]["iou"]["0.5"]["afp_mean_over_classes"]
            - many["acc_afp_at_overlap"]["60"]["iou"]["0.5"]["afp_mean_over_classes"])  # fmt: skip
    assert d["delta"] == pytest.approx(want) and d["delta"] < 0 and d["ci"][1] < 0
    moved = {**many, "per_pair": {**many["per_pair"], "class_idx": many["per_pair"]["class_idx"][::-1]}}
    with pytest.raises(ValueError, match="other \\(image, class\\) pairs"):
        paired_localization(few, moved, patient, num_resamples=10)
