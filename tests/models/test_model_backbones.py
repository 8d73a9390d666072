"""Backbones: parameter counts against torchvision/timm, channel adaptation, ImageNet loading and its failure."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import timm
import torch
import torchvision.models as tvm

from cxrdist.models import build_model
from cxrdist.models.backbones import adapt_first_conv, build_backbone, load_resnet101_into_seresnet, weights_enum
from testkit.modelcheck import count

# mmpretrain's SE-ResNet table (SE block r=16 in every bottleneck, 1000-class head) lists SE-ResNet-101 at
# "Params(M) 49.33"; the SENet paper (Hu et al.) itself prints only SE-ResNet-50's ~2.5M increment.
SE_RESNET101_PARAMS_M = 49.33


@pytest.mark.parametrize(
    ("name", "reference", "head"),
    [
        ("resnet18", lambda: tvm.resnet18(), 512 * 1000 + 1000),
        ("resnet50", lambda: tvm.resnet50(), 2048 * 1000 + 1000),
        ("densenet121", lambda: tvm.densenet121(), 1024 * 1000 + 1000),
    ],
)
def test_torchvision_backbones_match_reference_minus_classifier(name, reference, head):
    features, num_features = build_backbone(name)
    assert count(features) == count(reference()) - head
    with torch.no_grad():
        out = features.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, num_features, 2, 2)
    assert out.min() >= 0  # the last map is post-ReLU for every backbone (CAM and CRAL rely on it)


@pytest.mark.parametrize(("name", "last_bn"), [("resnet18", "bn2"), ("resnet50", "bn3"), ("seresnet101", "bn3")])
def test_random_resnets_start_with_zero_residual_branches(name, last_bn):
    """Every random ResNet (torchvision's and timm's SE-ResNet alike) starts each residual branch at zero."""
    features, _ = build_backbone(name)
    blocks = [m for layer in ("layer1", "layer2", "layer3", "layer4") for m in getattr(features, layer)]
    assert blocks and all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn1.weight) > 0 for b in blocks)  # only the branch's last BN


@pytest.fixture(scope="module")
def seresnet101():
    torch.manual_seed(0)
    return build_backbone("seresnet101")


def test_seresnet101_matches_timm_and_senet(seresnet101):
    features, num_features = seresnet101
    reference = count(timm.create_model("seresnet101"))
    with_head = count(features) + num_features * 1000 + 1000
    assert with_head == reference == 49_326_872
    assert abs(with_head / 1e6 - SE_RESNET101_PARAMS_M) / SE_RESNET101_PARAMS_M < 0.01
    # SE (r=16) in every one of the 3 + 4 + 23 + 3 bottlenecks.
    assert sum(1 for n, _ in features.named_modules() if n.endswith(".se")) == 33
    assert features.layer1[0].se.fc1.out_channels == 256 // 16


def test_seresnet101_takes_resnet101_weights_and_keeps_se_init(seresnet101, monkeypatch):
    features, _ = seresnet101
    source = tvm.resnet101().state_dict()
    monkeypatch.setattr(tvm.ResNet101_Weights, "get_state_dict", lambda self, **kw: dict(source))
    se_before = {k: v.clone() for k, v in features.state_dict().items() if ".se." in k}
    load_resnet101_into_seresnet(features, in_chans=3)
    state = features.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert se_before and all(torch.equal(state[k], v) for k, v in se_before.items())


def test_seresnet101_one_channel_sums_the_rgb_kernels(monkeypatch):
    source = tvm.resnet101().state_dict()
    monkeypatch.setattr(tvm.ResNet101_Weights, "get_state_dict", lambda self, **kw: dict(source))
    features, _ = build_backbone("seresnet101", pretrained=True, in_chans=1)
    assert torch.equal(features.conv1.weight, source["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(features.layer4[2].conv3.weight, source["layer4.2.conv3.weight"])


def test_seresnet101_key_mismatch_is_an_error(seresnet101, monkeypatch):
    features, _ = seresnet101
    source = tvm.resnet101().state_dict()
    source["layer5.0.conv1.weight"] = torch.zeros(1)
    monkeypatch.setattr(tvm.ResNet101_Weights, "get_state_dict", lambda self, **kw: dict(source))
    with pytest.raises(RuntimeError, match="unexpected.*layer5"):
        load_resnet101_into_seresnet(features, in_chans=3)


def test_one_channel_conv_equals_rgb_on_replicated_grey():
    torch.manual_seed(0)
    conv3 = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    conv1 = adapt_first_conv(conv3, 1)
    grey = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv1(grey), conv3(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)
    assert adapt_first_conv(conv3, 3) is conv3
    with pytest.raises(ValueError):
        adapt_first_conv(conv3, 2)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_one_channel_backbone(name):
    features, num_features = build_backbone(name, in_chans=1)
    with torch.no_grad():
        assert features.eval()(torch.randn(1, 1, 64, 64)).shape == (1, num_features, 2, 2)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weight caches, and no network even on a machine that has one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "seresnet101"])
def test_pretrained_without_weights_raises_clear_error(offline, name):
    with pytest.raises(RuntimeError, match=r"ImageNet weights for .* could not be loaded .*pretrained=false") as err:
        build_backbone(name, pretrained=True)
    assert "TORCH_HOME" in str(err.value)


def test_pretrained_error_reaches_the_model_builders(offline):
    with pytest.raises(RuntimeError, match="ImageNet weights for densenet121"):
        build_model("chexnet", pretrained=True)


def test_unknown_backbone_and_channels():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="in_chans"):
        build_backbone("resnet18", in_chans=4)


@pytest.mark.parametrize("name,source", [("resnet18", "resnet18"), ("resnet50", "resnet50"),
                                         ("densenet121", "densenet121"), ("seresnet101", "resnet101")])  # fmt: skip
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_imagenet_weights_version_picks_the_file(offline, name: str, source: str, version: str):
    """model.imagenet_weights reaches the download: v1 asks for IMAGENET1K_V1's file, v2 for torchvision's DEFAULT."""
    with pytest.raises(RuntimeError) as err:
        build_backbone(name, pretrained=True, imagenet_weights=version)
    assert weights_enum(source, version).url in str(err.value)


def test_imagenet_weights_v1_is_the_original():
    assert weights_enum("resnet50", "v1") is tvm.ResNet50_Weights.IMAGENET1K_V1
    assert weights_enum("resnet50", "v2") is tvm.ResNet50_Weights.IMAGENET1K_V2  # the 2021 recipe
    assert weights_enum("resnet101", "v2") is tvm.ResNet101_Weights.IMAGENET1K_V2
    assert weights_enum("densenet121", "v2") is tvm.DenseNet121_Weights.IMAGENET1K_V1  # it has no V2
    with pytest.raises(ValueError, match="imagenet_weights 'v3'"):
        build_backbone("resnet18", imagenet_weights="v3")


@pytest.mark.parametrize("method", ["dcnn", "chexnet", "ma", "cral", "amdensenet", "lungheart", "diseasemask"])
def test_every_method_defaults_to_v1_and_checks_the_value(method: str):
    from cxrdist.config import compose
    from cxrdist.methods import get_method

    cfg = compose([f"method={method}", "data.root=/x"])
    assert get_method(method)(cfg).model_cfg.imagenet_weights == "v1"
    bad = compose([f"method={method}", "data.root=/x", "method.model.imagenet_weights=v3"])
    with pytest.raises(ValueError, match=r"method.model.imagenet_weights='v3': choose v1"):
        get_method(method)(bad)
