"""``launch/export.py RUN --out DIR``: one self-contained folder that predicts without the run dir or shards.

``DIR/weights.safetensors`` holds every tensor (no pickle): the final model's under ``model/<name>``, each
auxiliary network's under ``aux.<sidecar>/<name>`` (lungheart's U-Net, diseasemask's alignment net; diseasemask's
disease masks ψ are a buffer of its model). ``DIR/model.json`` is the model description of
:mod:`cxrdist.deploy.load`: method and full config, labels, the eval transform, the auxiliary networks, the
shards' stored size, the operating thresholds (Youden's J on val) with their counts, the provenance (run dir,
weights sha256, code version, the shards' writer config hash, split scheme and NIH source file hashes),
cxrdist's version and the safetensors file's sha256. With ``onnx=True`` the folder also gets ``model.onnx``
(single-network methods; :mod:`cxrdist.deploy.onnx_export`), recorded under ``model.json``'s ``onnx``. The folder
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import safetensors.torch

from cxrdist.deploy.load import MODEL_JSON, WEIGHTS, assemble, describe_run, sha256, write_json
from cxrdist.deploy.onnx_export import check_onnx_installed, check_onnx_method, write_onnx

logger = logging.getLogger(__name__)


def check_out(out: Path) -> None:
    """The export folder must not exist yet, or be empty (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; choose a new folder for the export")


def export_model(run_dir: Path, out: Path, stage: str | None = None, onnx: bool = False) -> Path:
    """Write the export of ``run_dir``'s final model (or ``stage``'s best.pt) to ``out``; return ``out``.
    ``onnx``: also ``model.onnx`` (refused, before anything is written, without onnx installed or for a method
    that is more than one network)."""
    out = Path(out)
    check_out(out)
    if onnx:
        check_onnx_installed()
        check_onnx_method(Path(run_dir))
    spec, states = describe_run(Path(run_dir), stage)
    flat = {f"{g}/{k}": v.detach().cpu().contiguous().clone() for g, sd in states.items() for k, v in sd.items()}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        safetensors.torch.save_file(flat, str(tmp / WEIGHTS), metadata={"format": spec["format"]})
        spec["weights_sha256"] = sha256(tmp / WEIGHTS)
        if onnx:
            spec["onnx"] = write_onnx(assemble(spec, states, "cpu"), spec, tmp)
        write_json(tmp / MODEL_JSON, spec)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = (out / WEIGHTS).stat().st_size
    logger.info("exported %s (%s, %d tensors, %.1f MB) to %s", run_dir, spec["method"], len(flat), size / 1e6, out)
    return out
