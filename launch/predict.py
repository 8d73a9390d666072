"""Predict on your images: ``python launch/predict.py MODEL --images PATH [PATH ...] --out DIR``.

MODEL is a run dir (the method's final model, or ``--stage NAME``'s best.pt) or a folder written by
``launch/export.py``. PATH is a file, a folder (searched recursively) or a glob of PNG, JPEG or DICOM files.
DIR gets predictions.csv (14 probabilities and a 1/0 call per class at the model's operating thresholds),
heatmaps/<file>_<class>.png for the positive calls, heatmaps.npz, skipped.csv and summary.json; nothing is
written anywhere else (a run dir without operating thresholds gets them first: its val split is evaluated).
``--backend onnx`` runs an export's model.onnx in onnxruntime (exported with ``--onnx``; pip install
'cxrdist[export]'), with the same reading, transform, thresholds and heatmaps as the default ``torch``.
Mistakes in the command are one line on stderr and exit status 2, before anything is written.
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.deploy.files import check_request, predict_files
from cxrdist.deploy.load import load_model
from cxrdist.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Check the request, load the model, predict every readable image."""
    p = cli.parser("predict.py", __doc__)
    p.add_argument("model", type=Path, help="run dir or exported model folder")
    p.add_argument("--images", nargs="+", required=True, help="files, folders (recursive) or globs")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--stage", help="run dir only: use this stage's best.pt (default: the method's final model)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument(
        "--backend", default="torch", help="torch (default) or onnx: an export's model.onnx through onnxruntime"
    )
    args = p.parse_args(argv)
    try:
        cli.check_positive(batch=args.batch)
        check_request(args.images, args.out)
        setup_logging(None, 0)  # the console: loading may evaluate val first, predict shows its progress
        model = load_model(args.model, stage=args.stage, device=args.device, backend=args.backend)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("predict.py", e)
    summary = predict_files(model, args.images, args.out, batch_size=args.batch)
    print(f"{summary['predicted']} images predicted, {summary['skipped']} skipped → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
