"""Export a trained model: ``python launch/export.py RUN_DIR --out MODEL_DIR [--stage NAME]``.

MODEL_DIR gets weights.safetensors (every network the method needs, no pickle) and model.json (method, config,
labels, eval transform, operating thresholds, provenance, cxrdist version): ``launch/predict.py MODEL_DIR`` and
``cxrdist.load_model(MODEL_DIR)`` then need neither the run dir nor the shards. A run without operating
thresholds gets them first (its val split is evaluated). Mistakes are one line on stderr, exit status 2.
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.deploy.export import check_out, export_model
from cxrdist.deploy.onnx_export import check_onnx_installed
from cxrdist.log import setup_logging
from cxrdist.run.preflight import check_run_dir


def main(argv: list[str] | None = None) -> int:
    """Check the request, then write the export."""
    p = cli.parser("export.py", __doc__)
    p.add_argument("run_dir", type=Path, help="run dir of a trained run")
    p.add_argument("--out", type=Path, required=True, help="the export folder (new or empty)")
    p.add_argument("--stage", help="export this stage's best.pt (default: the method's final model)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (single-network methods)")
    args = p.parse_args(argv)
    try:
        if args.onnx:
            check_onnx_installed()
        check_run_dir(args.run_dir, "export")
        check_out(args.out)
        setup_logging(None, 0)
        out = export_model(args.run_dir, args.out, stage=args.stage, onnx=args.onnx)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("export.py", e)
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
