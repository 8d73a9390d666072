"""``--backend onnx``: an export's ``model.onnx`` run by onnxruntime inside the torch backend's predictor.

The graph (:mod:`cxrdist.deploy.onnx_export`) is the network from the eval tensor to ``logits`` and ``maps``, so
only that step changes: :class:`OnnxGraph` stands in for the network in
:class:`~cxrdist.engine.predictor.Predictor` and :func:`graph_maps` for the method's ``maps``. Everything around it
is the torch backend's code — reading PNG/JPEG/DICOM, the writer's resize, the eval crop and normalisation
(``eval_batch``), sigmoid and the operating thresholds' calls, and the paste of the feature-resolution maps into
the whole image (``Predictor.full_frame``, which stays Python: the graph outputs the maps before it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def check_onnxruntime_installed() -> None:
    """``--backend onnx`` needs onnxruntime: one line naming the extra when it is missing (nothing imported)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ValueError(
            "--backend onnx needs onnxruntime, not installed: pip install 'cxrdist[export]' (or use the default "
            "--backend torch)"
        )


def providers(device: Any) -> list[Any]:
    """onnxruntime execution providers for ``device`` (None: CUDA when onnxruntime has it, else the CPU)."""
    import onnxruntime  # optional extra [export]: only --backend onnx needs it (check_onnxruntime_installed)

    available = onnxruntime.get_available_providers()
    if device is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device (cpu, cuda, cuda:1)") from None
    if dev.type == "cpu":
        return [CPU]
    if dev.type == "cuda" and CUDA in available:
        return [(CUDA, {"device_id": dev.index or 0}), CPU]
    raise ValueError(
        f"--device {device} with --backend onnx: this onnxruntime runs on {', '.join(available)} only "
        "(pip install onnxruntime-gpu for CUDA); use --device cpu or --backend torch"
    )


class OnnxGraph(nn.Module):
    """``model.onnx`` in an onnxruntime session, called like the network: eval tensor → (logits, maps)."""

    def __init__(self, path: Path, device: Any = None):
        super().__init__()
        import onnxruntime  # optional extra [export], see providers()

        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=providers(device))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, 14), maps (B, 14, h, w)) as float32 CPU tensors."""
        x = np.ascontiguousarray(image.detach().float().cpu().numpy())
        logits, maps = self.session.run(["logits", "maps"], {"image": x})
        return torch.from_numpy(logits), torch.from_numpy(maps)


def graph_maps(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The ``maps`` function of the onnx backend: the graph reads the image only (single-network methods)."""
    return model(batch["image"])
