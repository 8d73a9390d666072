"""What an evaluation and the report spend on intervals at the real NIH test-set size, on one core.

``python -m benchmarks.intervals`` (from the repository root): 25,596 images × 14 classes of 2,797 patients
(benchmarks/stats.py's synthetic split), timing :func:`cxrdist.eval.compare.auroc_intervals` (DeLong + the
patient-clustered bootstrap, 2,000 resamples: what the evaluator writes into metrics.json and the report
shows), :func:`~cxrdist.eval.compare.paired_comparison` (launch/compare.py and the report's paired tests) and the
per-class ROC panels with 200-resample bands. Prints wall and CPU seconds (median of ``--repeat``), each as a
ratio of the issue's 10 s goal and of the naive loop (explicit resample + ``roc_auc_score``, timed for
``--naive`` resamples in the same run and extrapolated).
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
from cxrdist.eval.compare import auroc_intervals, paired_comparison  # noqa: E402
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
    base_wall, base_cpu = _median(times.pop("naive"))
    print(f"{args.images} images × {labels.shape[1]} classes, {args.patients} patients, {args.resamples} resamples, "
          f"1 thread, median of {args.repeat}")  # fmt: skip
    print(f"naive loop (extrapolated from {args.naive} resamples): {base_wall:.1f} s wall, {base_cpu:.1f} s CPU")
    for name, pairs in times.items():
        wall, cpu = _median(pairs)
        vs = f", {base_wall / wall:.0f}× faster than naive" if name != "roc bands" else ", 200 resamples"
        print(f"{name:10s}: {wall:6.2f} s wall ({wall / GOAL_S:.2f} of the {GOAL_S:g} s goal{vs}), {cpu:6.2f} s CPU "
              f"({cpu / GOAL_S:.2f} of the goal)")  # fmt: skip


if __name__ == "__main__":
    main()
