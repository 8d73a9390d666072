"""Backbone feature extractors: the network up to its last feature map, without pooling or classifier.

ResNet-18/50 and DenseNet-121 come from torchvision (the module names of published ChestX-ray14
checkpoints). ``pretrained`` loads the ImageNet weights of ``imagenet_weights``: ``v1`` (default) is
IMAGENET1K_V1, the original torchvision weights every paper here (2017–2021) used; ``v2`` is torchvision's
``DEFAULT``, i.e. the 2021 IMAGENET1K_V2 recipe for ResNet-50/101, which the papers predate (ResNet-18 and
DenseNet-121 have only V1).

SE-ResNet-101 comes from timm (``seresnet101``: an SE block with reduction 16 on the residual branch of every
bottleneck); its ImageNet initialisation is the torchvision ResNet-101, as ma2019 §4.1 says ("initialized
using weights from the pre-trained ResNet-101 model(using ImageNet)"), with the SE blocks left at their init.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import Tensor, nn

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50", "densenet121", "seresnet101")

_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], type[tvm.WeightsEnum]]] = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights),
    "resnet101": (tvm.resnet101, tvm.ResNet101_Weights),
    "densenet121": (tvm.densenet121, tvm.DenseNet121_Weights),
}
# model.imagenet_weights: v1 = the original weights (the papers'), v2 = torchvision's DEFAULT (newer where it exists).
IMAGENET_WEIGHTS: tuple[str, ...] = ("v1", "v2")
_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def weights_error(name: str, exc: BaseException) -> RuntimeError:
    """The error raised when ImageNet weights cannot be loaded (no network and nothing cached)."""
    return RuntimeError(
        f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}: {exc}); put them in the "
        "torch/timm cache (TORCH_HOME / HF_HOME) on a machine with internet, or run with pretrained=false"
    )


def weights_enum(name: str, version: str = "v1") -> tvm.WeightsEnum:
    """torchvision weights of ``version`` (v1: IMAGENET1K_V1; v2: ``DEFAULT``) of the torchvision model ``name``."""
    if version not in IMAGENET_WEIGHTS:
        raise ValueError(f"imagenet_weights {version!r}: choose v1 (the original weights, the papers') or v2")
    enum = _TORCHVISION[name][1]
    return enum.IMAGENET1K_V1 if version == "v1" else enum.DEFAULT


def ensure_imagenet_weights(name: str, version: str = "v1", timeout_s: float = 60.0) -> Path:
    """The cached weights file of torchvision model ``name`` (``version``), downloaded into the torch cache if missing.

    Lets a launcher find missing weights before a run starts (a download on a login node also serves compute
    nodes without internet that share the cache). ``timeout_s`` bounds each network wait.

    Raises:
        RuntimeError: the file is not cached and cannot be downloaded (:func:`weights_error`).
    """
    weights = weights_enum(name, version)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if path.is_file():
        return path
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # urllib's default is to wait forever on a silent network
    try:
        weights.get_state_dict(progress=False)  # torch.hub caches it under the same path (hash-checked)
    except Exception as exc:  # URLError, timeout, hash mismatch: all mean "no usable weights"
        raise weights_error(f"{name} ({weights.url}, cache {path.parent})", exc) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return path


def build_torchvision_model(name: str, pretrained: bool, version: str = "v1") -> nn.Module:
    """Build a torchvision ImageNet model (1000-class head), with the ``version`` ImageNet weights when ``pretrained``.

    Raises:
        RuntimeError: ``pretrained`` and the weights are neither cached nor downloadable.
    """
    builder = _TORCHVISION[name][0]
    weights = weights_enum(name, version)
    if not pretrained:
        # A random ResNet starts with every residual branch's last BN scale at zero (Goyal et al. 2017), as timm's
        # SE-ResNet-101 does by default (zero_init_last): measured on the 64-px phantom, ResNet-50 from scratch at
        # Adam 1e-3 reaches a lower loss in the first epochs with it (README, "Learning check on the phantom").
        # ImageNet weights overwrite these scales, so pretrained runs are unaffected.
        kwargs = {"zero_init_residual": True} if name.startswith("resnet") else {}
        return builder(weights=None, **kwargs)
    try:
        return builder(weights=weights)
    except Exception as exc:  # URLError, hash mismatch, corrupt cache: all mean "no usable weights"
        raise weights_error(name, exc) from exc


def adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """Return ``conv`` for ``in_chans`` input channels (3: unchanged; 1: RGB kernels summed).

    Summing over RGB makes the 1-channel network compute exactly what the 3-channel one computes on the grey
    image replicated to RGB, for pretrained and random weights alike.
    """
    if in_chans == conv.in_channels:
        return conv
    if in_chans != 1 or conv.in_channels != 3:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _resnet_features(model: nn.Module, in_chans: int) -> nn.Sequential:
    """conv1 … layer4 of a torchvision/timm ResNet as a Sequential (same parameter names, no head)."""
    # timm names the stem ReLU ``act1``; keep torchvision's ``relu`` so both backbones look alike.
    children = OrderedDict((n, getattr(model, n) if hasattr(model, n) else model.act1) for n in _RESNET_STAGES)
    children["conv1"] = adapt_first_conv(children["conv1"], in_chans)
    return nn.Sequential(children)


def densenet_features(model: nn.Module, in_chans: int) -> nn.Sequential:
    """torchvision DenseNet ``features`` (conv0 … norm5) plus the final ReLU its forward applies."""
    children = OrderedDict(model.features.named_children())
    children["conv0"] = adapt_first_conv(children["conv0"], in_chans)
    children["relu5"] = nn.ReLU()
    return nn.Sequential(children)


def load_resnet101_into_seresnet(features: nn.Module, in_chans: int, version: str = "v1") -> None:
    """Copy torchvision ImageNet ResNet-101 weights into SE-ResNet-101 features; SE blocks keep their init.

    Raises:
        RuntimeError: the weights cannot be loaded, or a non-SE parameter has no ResNet-101 counterpart
            (or the other way round).
    """
    try:
        state = weights_enum("resnet101", version).get_state_dict(progress=False)
    except Exception as exc:
        raise weights_error("resnet101 (the ResNet part of seresnet101)", exc) from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if in_chans == 1:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    missing, unexpected = features.load_state_dict(state, strict=False)
    not_se = [k for k in missing if ".se." not in k]
    if not_se or unexpected:
        raise RuntimeError(f"ResNet-101 → SE-ResNet-101 key mismatch: missing {not_se}, unexpected {unexpected}")


def _seresnet101_features(pretrained: bool, in_chans: int, version: str) -> nn.Sequential:
    import timm  # imported here: timm is only needed for this backbone and its import is slow

    model = timm.create_model("seresnet101", pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    features = _resnet_features(model, in_chans)
    if pretrained:
        load_resnet101_into_seresnet(features, in_chans, version)
    return features


def build_backbone(
    name: str, pretrained: bool = False, in_chans: int = 3, imagenet_weights: str = "v1"
) -> tuple[nn.Sequential, int]:
    """Build a feature extractor returning the last feature map (B, C, H/32, W/32), post-ReLU.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: initialise from ImageNet (needs the weights cached or a network).
        in_chans: 1 or 3 input channels.
        imagenet_weights: ``v1`` (IMAGENET1K_V1, the papers') or ``v2`` (torchvision's DEFAULT); see the module.

    Returns:
        ``(features, num_features)``: an ``nn.Sequential`` with the torchvision child names (``conv1`` …
        ``layer4`` for ResNets, ``conv0`` … ``norm5``, ``relu5`` for DenseNet) and its channel count C.
        Its parameters are exactly the reference model's minus the classifier.

    Raises:
        ValueError: unknown name, ``in_chans`` or ``imagenet_weights``.
        RuntimeError: ``pretrained`` and the weights cannot be loaded.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if imagenet_weights not in IMAGENET_WEIGHTS:
        raise ValueError(f"imagenet_weights {imagenet_weights!r}: choose v1 (the original weights, the papers') or v2")
    if name == "seresnet101":
        return _seresnet101_features(pretrained, in_chans, imagenet_weights), 2048
    if name in ("resnet18", "resnet50"):
        model = build_torchvision_model(name, pretrained, imagenet_weights)
        return _resnet_features(model, in_chans), model.fc.in_features
    if name == "densenet121":
        model = build_torchvision_model(name, pretrained, imagenet_weights)
        return densenet_features(model, in_chans), model.classifier.in_features
    raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})")


def stage_outputs(features: nn.Sequential, x: Tensor, names: tuple[str, ...]) -> list[Tensor]:
    """Run ``features`` on ``x`` and return the outputs of the children called ``names`` (in order)."""
    outputs = []
    for child_name, child in features.named_children():
        x = child(x)
        if child_name in names:
            outputs.append(x)
    if len(outputs) != len(names):
        raise ValueError(f"children {names} not all found in {[n for n, _ in features.named_children()]}")
    return outputs
