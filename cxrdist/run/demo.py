"""The README's demo: phantom → shards → verify → train chexnet on 2 ranks → evaluate → report.

Each step is skipped when its output is already complete, so ``make demo`` can be rerun.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from cxrdist import cli
from cxrdist.data.verify import format_report, verify_dataset
from cxrdist.data.writer import WriterConfig, write_dataset
from cxrdist.eval.report import write_report
from cxrdist.phantom.generate import make_phantom
from cxrdist.progress import follow
from cxrdist.run.launcher import submit

logger = logging.getLogger(__name__)


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run_data_steps(out: Path, num_images: int, size: int, shard_size: int, workers: int) -> Path:
    """Generate the phantom, write its shards and verify them; return the shard root."""
    phantom, shards = out / "phantom", out / "shards"
    t0 = _step(f"1. phantom ChestX-ray14: {num_images} images at {size} px → {phantom}")
    if (phantom / "phantom.json").is_file():
        print("   already there (delete it to regenerate)")
    else:
        summary = make_phantom(phantom, num_images=num_images, size=size, seed=0, workers=workers)
        print(f"   {summary}")
    print(f"   {time.perf_counter() - t0:.1f} s")
    t0 = _step(f"2. shards ({shard_size} px JPEG, DALI index beside each tar) → {shards}")
    cfg = WriterConfig(nih_root=str(phantom), out=str(shards), size=shard_size, samples_per_shard=250, workers=workers)
    info = write_dataset(cfg, progress=True)
    for split, i in info.items():
        print(f"   {split:5s} {i['num_samples']:6d} samples, {len(i['shards'])} shard(s)")
    print(f"   {time.perf_counter() - t0:.1f} s")
    t0 = _step("3. verify: checksums, counts, every image decoded")
    print(format_report(verify_dataset(shards, progress=True)))
    print(f"   {time.perf_counter() - t0:.1f} s")
    return shards


DEMO_OVERRIDES = [
    # chexnet from scratch at 112 px on 2 CPU ranks: the phantom's findings survive 128 px shards.
    "method=chexnet",
    "method.model.pretrained=false",
    "method.stages.train.epochs=3",
    "method.stages.train.global_batch=32",
    "method.stages.train.transforms.train=[{op: resize, size: 128}, {op: random_resized_crop, size: 112, "
    "scale: [0.6, 1.0]}, {op: hflip}]",
    "method.stages.train.transforms.eval=[{op: resize, size: 128}, {op: center_crop, size: 112}]",
    "loader.workers=1",
    "eval.heatmap_examples=1",
]


def run_training_steps(out: Path, shards: Path, nproc: int, extra: list[str]) -> Path:
    """Submit chexnet on the phantom through launch/submit.py's code (local cluster, ``nproc`` tasks), wait for
    it, then print the evaluation tables and write the report."""
    run_dir = (out / "runs" / "chexnet").resolve()
    argv = [
        "--cluster",
        "local",
        "--tasks-per-node",
        str(nproc),
        "--run-dir",
        str(run_dir),
        *DEMO_OVERRIDES,
        f"data.root={shards.resolve()}",
        *extra,
    ]
    t0 = _step(f"4. train + evaluate chexnet: python launch/submit.py {' '.join(argv)}")
    job = submit(argv)
    print(f"   job {job['job_id']}, {nproc} tasks (gloo); W&B offline in {job['wandb']}; log: {job['follow'][0]}")
    print("   rank 0's log as it goes:", flush=True)
    with follow(run_dir):  # the job's console is a file: show rank 0's lines (and a bar on a terminal) here
        job["job"].results()  # raises the job's error, if any
    done = json.loads((run_dir / "stages" / "00_train" / "DONE.json").read_text())["outputs"]
    for h in done["history"]:
        print(
            f"   epoch {h['epoch']}: train loss {h['train_loss']:.4f}, val loss {h['val_loss']:.4f}, "
            f"val AUROC {h['val_auroc']:.4f}"
        )
    print(f"   {time.perf_counter() - t0:.1f} s")
    t0 = _step("5. evaluation tables (test AUROC, bbox localization) and the published-vs-ours report")
    md = write_report([run_dir], run_dir / "report")
    print(md.read_text())
    print(f"   report: {md} and {md.with_suffix('.png')}; {time.perf_counter() - t0:.1f} s")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end."""
    p = cli.parser("cxrdist.run.demo", __doc__)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where everything goes")
    p.add_argument("--num-images", type=int, default=2000, help="phantom images")
    p.add_argument("--size", type=int, default=256, help="phantom image side")
    p.add_argument("--shard-size", type=int, default=128, help="stored side in the shards")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2, help="training ranks")
    p.add_argument("--data-only", action="store_true", help="stop after the shards are verified")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the training run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cxrdist.progress").setLevel(logging.INFO)  # progress lines when stderr is no terminal
    args.out.mkdir(parents=True, exist_ok=True)
    shards = run_data_steps(args.out, args.num_images, args.size, args.shard_size, args.workers)
    if not args.data_only:
        run_training_steps(args.out, shards, args.nproc, args.overrides)
    print(f"\ndemo finished; everything is under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
