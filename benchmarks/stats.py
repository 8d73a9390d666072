"""Benchmark of the statistics core [G5]: patient-clustered bootstrap of 14 AUROCs + DeLong at the NIH test size.

Synthetic data at the real sizes: 25,596 test images × 14 labels (fang2021 Table 1 test prevalence) over 2,797
patients with a skewed images-per-patient distribution (every patient has >= 1 image; a few have ~100, as NIH
follow-up series do), labels and scores correlated within a patient; float32 scores as a model writes them.

Measured on one thread (OMP/MKL/OpenBLAS threads = 1, set before numpy loads):
- ours: ``bootstrap_auroc`` (``--resamples`` patient-clustered resamples, "sort once, resample as weights") plus
  ``delong_auroc`` for the 14 classes; goal (issue #17): well under 10 s for 2,000 resamples.
- naive: the loop a reader would write: per resample, materialise the resampled rows (``np.repeat``) and call
  sklearn's ``roc_auc_score`` per class; timed on ``--naive`` resamples and extrapolated to ``--resamples``.
Repeats are interleaved (ours, naive, ours, ...) and the medians reported; the naive resamples are the first ones
of ours, and their AUROCs must agree to 1e-12 (else the script fails).

Run: ``.venv/bin/python -m benchmarks.stats [--resamples 2000] [--images 25596] [--patients 2797] [--naive 20]
[--repeat 3]``; ``--tiny`` is a seconds-long smoke run (used by tests/eval/test_stats.py).
"""

from __future__ import annotations

import os

# One core: the thread pools read these when numpy/scipy load, so they are set before any import of them.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import time

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrdist.eval.bootstrap import bootstrap_auroc, cluster_index, resample_counts
from cxrdist.eval.delong import delong_auroc

GOAL_S = 10.0
# fang2021 Table 1, "Test" column (25,596 images), in LABELS order.
TEST_POSITIVES = (3279, 1069, 4658, 6112, 1748, 1623, 555, 2665, 1815, 925, 1093, 435, 1143, 86)
TEST_IMAGES = 25_596


def make_split(num_images: int, num_patients: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Labels, float32 scores and patient ids, correlated within a patient (per-class AUROC about 0.85–0.9)."""
    if num_patients > num_images:
        raise SystemExit(f"--patients ({num_patients}) must not exceed --images ({num_images})")
    # 1 image each, the rest spread by a Dirichlet(0.3) share: a long right tail of follow-up series.
    extra = rng.multinomial(num_images - num_patients, rng.dirichlet(np.full(num_patients, 0.3)))
    patients = np.repeat(np.arange(num_patients), 1 + extra)
    prevalence = np.array(TEST_POSITIVES) / TEST_IMAGES
    effect = rng.standard_normal((num_patients, prevalence.size))[patients]  # the patient's disease propensity
    labels = rng.random(effect.shape) < expit(logit(prevalence) + 1.5 * effect - 0.6)
    shift = np.sqrt(2.0) * norm.ppf(0.8)  # binormal: AUROC 0.8 from the shift alone; the patient effect adds to it
    scores = (0.5 * effect + rng.standard_normal(effect.shape) + shift * labels).astype(np.float32)
    return labels.astype(np.uint8), scores, patients


def naive(labels: np.ndarray, scores: np.ndarray, cluster: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample: build the resampled rows and call roc_auc_score per class."""
    out = np.empty((counts.shape[0], labels.shape[1]))
    for r in range(counts.shape[0]):
        rows = np.repeat(np.arange(labels.shape[0]), counts[r, cluster])
        for c in range(labels.shape[1]):
            out[r, c] = roc_auc_score(labels[rows, c], scores[rows, c])
    return out


class _timer:
    """Appends (wall, CPU) seconds of the block, times ``scale``, to ``into``."""

    def __init__(self, into: list[tuple[float, float]], scale: float = 1.0) -> None:
        self.into, self.scale = into, scale

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.into.append((wall * self.scale, cpu * self.scale))


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in pairs), statistics.median(c for _, c in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--images", type=int, default=TEST_IMAGES)
    parser.add_argument("--patients", type=int, default=2797)
    parser.add_argument("--naive", type=int, default=20, help="resamples timed for the naive loop (extrapolated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="2,000 images, 200 resamples: a smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.patients, args.resamples, args.naive, args.repeat = 2000, 220, 200, 3, 1
    labels, scores, patients = make_split(args.images, args.patients, np.random.default_rng(args.seed))
    sizes = np.bincount(patients)
    print(
        f"{args.images:,} images × {labels.shape[1]} classes, {args.patients:,} patients (images per patient: "
        f"median {np.median(sizes):g}, p90 {np.percentile(sizes, 90):g}, max {sizes.max()}), "
        f"{args.resamples:,} resamples, 1 thread"
    )
    cluster, num_clusters = cluster_index(patients, patients.size)
    naive_counts = resample_counts(num_clusters, args.resamples, args.seed)[: args.naive]
    times: dict[str, list[tuple[float, float]]] = {"boot": [], "delong": [], "naive": []}
    for _ in range(args.repeat):
        with _timer(times["boot"]):
            boot = bootstrap_auroc(labels, scores, patients, num_resamples=args.resamples, seed=args.seed)
        with _timer(times["delong"]):
            delong_auroc(labels, scores)
        with _timer(times["naive"], scale=args.resamples / args.naive):
            reference = naive(labels, scores, cluster, naive_counts)
    error = float(np.nanmax(np.abs(boot.per_class_samples[: args.naive] - reference)))
    if not error < 1e-12:
        raise SystemExit(f"bootstrap AUROCs differ from sklearn's on the explicit resamples by {error:.3g}")
    (boot_w, boot_c), (delong_w, delong_c), (naive_w, naive_c) = (
        _median(times[k]) for k in ("boot", "delong", "naive")
    )
    ours_w, ours_c = boot_w + delong_w, boot_c + delong_c
    if (args.images, args.resamples) != (TEST_IMAGES, 2000):
        print(f"(the {GOAL_S:g} s goal is for 2,000 resamples of {TEST_IMAGES:,} images: ratios below are indicative)")
    print(f"median of {args.repeat} interleaved repeats; wall time (CPU time of this process: the machine is shared)")
    print(f"clustered bootstrap ({args.resamples:,} resamples): {boot_w:8.3f} s  ({boot_c:.3f} s CPU)")
    print(f"DeLong ({labels.shape[1]} classes):                 {delong_w:8.3f} s  ({delong_c:.3f} s CPU)")
    print(
        f"ours total:                            {ours_w:8.3f} s  ({ours_c:.3f} s CPU)  vs goal {GOAL_S:g} s: "
        f"{ours_w / GOAL_S:.3f} of it ({ours_c / GOAL_S:.3f} in CPU time)"
    )
    print(
        f"naive loop (np.repeat + roc_auc_score), {args.naive} resamples extrapolated to {args.resamples:,}: "
        f"{naive_w:.1f} s ({naive_c:.1f} s CPU)  vs naive: ours is {naive_w / ours_w:.0f}x faster "
        f"({naive_c / ours_c:.0f}x in CPU time)"
    )
    print(
        f"mean AUROC {boot.estimate:.4f} [{boot.ci_low:.4f}, {boot.ci_high:.4f}], dropped resamples "
        f"{boot.num_dropped}; max |ours - sklearn| on the naive resamples {error:.1e}"
    )


if __name__ == "__main__":
    main()
