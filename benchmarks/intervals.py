"""What an evaluation and the report spend on intervals at the real NIH test-set size, on one core.

``python -m benchmarks.intervals`` (from the repository root): 25,596 images × 14 classes of 2,797 patients
(benchmarks/stats.py's synthetic split), timing :func:`cxrdist.eval.compare.auroc_intervals` (DeLong + the
patient-clustered bootstrap, 2,000 resamples: what the evaluator writes into metrics.json and the report
shows), :func:`~cxrdist.eval.compare.paired_comparison` (launch/compare.py and the report's paired tests) and the
per-class ROC panels with 200-resample bands. Prints wall and CPU seconds (median of ``--repeat``), each as a
ratio of the issue's 10 s goal and of the naive loop (explicit resample + ``roc_auc_score``, timed for
``--naive`` resamples in the same run and extrapolated).

Localization: :func:`~cxrdist.eval.compare.localization_intervals` at the NIH bbox split's size (984 boxes, 880
images; here each image its own patient and (image, class) pair, the worst case), two binarisation thresholds:
kim2021 accuracy, fang2021 IoU and Wang's AFP intervals, against an explicit loop that gathers each drawn patient's
pairs for one AFP figure (extrapolated from ``--naive`` resamples, times the 6 AFP figures).
"""

from __future__ import annotations

import os

# One core: the thread pools read these when numpy/scipy load, so they are set before any import of them.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.stats import GOAL_S, TEST_IMAGES, _median, _timer, make_split, naive  # noqa: E402
from cxrdist.eval.bootstrap import cluster_index, resample_counts  # noqa: E402
from cxrdist.eval.compare import auroc_intervals, localization_intervals, paired_comparison  # noqa: E402
from cxrdist.eval.figures_ci import plot_roc_bands  # noqa: E402


def main() -> None:
    """Time the three calls and print one line each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=TEST_IMAGES)
    p.add_argument("--patients", type=int, default=2797)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--naive", type=int, default=5, help="resamples timed for the naive loop (extrapolated)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    labels, scores, patients = make_split(args.images, args.patients, rng)
    other = scores + rng.normal(scale=0.3, size=scores.shape).astype(np.float32)
    times: dict[str, list[tuple[float, float]]] = {"intervals": [], "paired": [], "roc bands": [], "naive": []}
    loc_times: dict[str, list[tuple[float, float]]] = {"localization": [], "naive AFP": []}
    loc, fp, pair_cls = _bbox_split(rng)
    cluster, num = cluster_index(patients, len(labels))
    counts = resample_counts(num, args.naive, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            with _timer(times["naive"], scale=args.resamples / args.naive):
                naive(labels, scores, cluster, counts)
            with _timer(times["intervals"]):
                auroc_intervals(labels, scores, patients, args.resamples)
            with _timer(times["paired"]):
                paired_comparison(labels, scores, other, patients, args.resamples)
            with _timer(times["roc bands"]):
                plot_roc_bands(labels, scores, patients, Path(tmp) / "roc.png")
            with _timer(loc_times["localization"]):
                localization_intervals(loc, {k: k for k in loc["per_box"]["key"]}, args.resamples)
            with _timer(loc_times["naive AFP"], scale=6 * args.resamples / args.naive):
                _naive_afp(fp, pair_cls, args.naive)
    base_wall, base_cpu = _median(times.pop("naive"))
    print(f"{args.images} images × {labels.shape[1]} classes, {args.patients} patients, {args.resamples} resamples, "
          f"1 thread, median of {args.repeat}")  # fmt: skip
    print(f"naive loop (extrapolated from {args.naive} resamples): {base_wall:.1f} s wall, {base_cpu:.1f} s CPU")
    for name, pairs in times.items():
        wall, cpu = _median(pairs)
        vs = f", {base_wall / wall:.0f}× faster than naive" if name != "roc bands" else ", 200 resamples"
        print(f"{name:10s}: {wall:6.2f} s wall ({wall / GOAL_S:.2f} of the {GOAL_S:g} s goal{vs}), {cpu:6.2f} s CPU "
              f"({cpu / GOAL_S:.2f} of the goal)")  # fmt: skip
    (lw, lc), (nw, _) = _median(loc_times["localization"]), _median(loc_times["naive AFP"])
    print(f"localization (984 boxes, 2 thresholds, 7 figures each): {lw:6.2f} s wall, {lc:6.2f} s CPU; the naive "
          f"loop for its 6 AFP figures alone (extrapolated): {nw:.1f} s wall, {nw / lw:.0f}× slower")  # fmt: skip


def _bbox_split(rng: np.random.Generator, boxes: int = 984, images: int = 880) -> tuple[dict, np.ndarray, np.ndarray]:
    """A localization result of the NIH bbox split's size: best IoUs per box, FP counts per (image, class) pair."""
    keys = [f"{i % images:08d}_000" for i in range(boxes)]
    cls = rng.integers(0, 8, boxes)
    pairs = sorted(set(zip(keys, cls.tolist())))
    pair_cls = np.array([c for _, c in pairs])
    fp = {t: rng.poisson(1.0, len(pairs)).tolist() for t in ("0.3", "0.5", "0.7")}
    loc = {
        "per_box": {"key": keys, "class_idx": cls.tolist(), "best_iou": {t: rng.random(boxes).tolist()
                                                                          for t in ("60", "180")}},
        "per_pair": {"key": [k for k, _ in pairs], "class_idx": pair_cls.tolist(),
                     "fp": {t: {"iou": fp} for t in ("60", "180")}},
    }  # fmt: skip
    return loc, np.asarray(fp["0.5"], dtype=np.float64), pair_cls


def _naive_afp(fp: np.ndarray, pair_cls: np.ndarray, resamples: int) -> None:
    """AFP's interval the slow way: per resample, draw patients (one pair each here) and average per class."""
    rng = np.random.default_rng(1)
    for _ in range(resamples):
        drawn = rng.integers(0, fp.size, fp.size)
        per = [fp[drawn][pair_cls[drawn] == c].mean() for c in range(8) if (pair_cls[drawn] == c).any()]
        float(np.mean(per))


if __name__ == "__main__":
    main()
