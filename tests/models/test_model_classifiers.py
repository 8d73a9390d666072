"""Every classifier: output and heatmap shapes at 224, and parameter counts computed independently."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision.models as tvm

from cxrdist.models import Classifier, build_model, list_models
from testkit.modelcheck import conv_params, count

K = 14
# (registry name, builder kwargs); every one has a 7×7 feature map at 224
CLASSIFIERS = [
    ("dcnn", {}),
    ("chexnet", {}),
    ("ma", {}),
    ("cral", {}),
    ("cral", {"attention": "att2"}),
    ("cral", {"backbone": "densenet121"}),
    ("cral", {"backbone": "densenet121", "attention": "att2"}),
    ("amdensenet", {}),
    ("amdensenet", {"cbam_placement": "after_transition"}),
    ("lungheart", {"use_mask": False}),
    ("diseasemask", {"mask_size": 7}),
]


@pytest.fixture(scope="module")
def image224() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 224, 224)


@pytest.mark.parametrize(
    ("name", "kwargs"), CLASSIFIERS, ids=["-".join([n, *map(str, kw.values())]) for n, kw in CLASSIFIERS]
)
def test_logits_and_heatmaps_at_224(model_cache, image224, name, kwargs):
    model = model_cache(name, **kwargs)
    assert isinstance(model, Classifier)
    with torch.no_grad():
        logits, maps = model.forward_with_maps(image224)
        plain = model(image224)
    assert logits.shape == (2, K) and maps.shape == (2, K, 7, 7)
    assert torch.isfinite(logits).all() and torch.isfinite(maps).all()
    torch.testing.assert_close(plain, logits)


def test_registry():
    assert set(list_models()) == {
        "dcnn", "chexnet", "ma", "cral", "amdensenet", "lungheart", "diseasemask", "unet", "alignment"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vit")


# ---- parameter counts: each reference is built from torchvision / timm or from layer shapes by hand ----

R50_FEATURES = count(tvm.resnet50()) - (2048 * 1000 + 1000)
D121_WITH_HEAD = count(tvm.densenet121(num_classes=K))
D121_FEATURES = D121_WITH_HEAD - (1024 * K + K)


def bn(c: int) -> int:
    return 2 * c


def preact_bottleneck(c: int) -> int:
    m = c // 4
    return bn(c) + c * m + bn(m) + 9 * m * m + bn(m) + m * c


def att1(c: int, maps: int) -> int:
    return conv_params(c, 512, 3) + conv_params(512, 512, 3) + conv_params(512, maps, 1)


def att2(c: int, maps: int) -> int:
    trunk = 2 * preact_bottleneck(c)
    mask = 2 * preact_bottleneck(c) + bn(c) + c * c + bn(c) + conv_params(c, maps, 1)
    return trunk + mask


def cbam(c: int) -> int:
    return 2 * c * (c // 16) + 2 * 7 * 7


def test_chexnet_count_is_torchvision_densenet121(model_cache):
    assert count(model_cache("chexnet")) == D121_WITH_HEAD == 6_968_206


def test_dcnn_count(model_cache):
    expected = R50_FEATURES + conv_params(2048, 1024, 3) + 1024 * K + K
    assert count(model_cache("dcnn")) == expected == 42_397_774


def test_dcnn_transition_norm_from_the_method_config():
    """``method.model.transition_norm`` reaches the model: a BatchNorm after the conv, 2·1024 more parameters."""
    from cxrdist.config import compose
    from cxrdist.methods import get_method

    cfg = compose(["method=dcnn", "data.root=/unused", "method.model.pretrained=false"])
    plain = get_method("dcnn")(cfg).build_model("train")
    cfg = compose(
        ["method=dcnn", "data.root=/unused", "method.model.pretrained=false", "method.model.transition_norm=true"]
    )
    normed = get_method("dcnn")(cfg).build_model("train")
    assert isinstance(plain.transition, torch.nn.Conv2d)
    assert isinstance(normed.transition[1], torch.nn.BatchNorm2d) and normed.transition[1].num_features == 1024
    assert count(normed) - count(plain) == 2 * 1024
    logits, maps = normed.eval().forward_with_maps(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, K) and maps.shape == (2, K, 2, 2)


def test_ma_count(model_cache):
    se_features = count(timm.create_model("seresnet101", num_classes=0))
    assert count(model_cache("ma")) == se_features + conv_params(4096, K, 1) == 47_335_230


@pytest.mark.parametrize(
    ("backbone", "attention", "channels", "features", "expected"),
    [
        ("resnet50", "att1", 2048, R50_FEATURES, 35_341_404),
        ("resnet50", "att2", 2048, R50_FEATURES, 45_618_268),
        ("densenet121", "att1", 1024, D121_FEATURES, 14_054_300),
        ("densenet121", "att2", 1024, D121_FEATURES, 12_503_964),
    ],
)
def test_cral_count(model_cache, backbone, attention, channels, features, expected):
    branch = att1(channels, K) if attention == "att1" else att2(channels, K)
    kwargs = {} if backbone == "resnet50" else {"backbone": backbone}
    if attention == "att2":
        kwargs["attention"] = "att2"
    assert count(model_cache("cral", **kwargs)) == features + branch + K * channels + K == expected


def test_cral_shared_attention_count():
    model = build_model("cral", backbone="densenet121", category_wise=False)
    assert count(model) == D121_FEATURES + att1(1024, 1) + K * 1024 + K


@pytest.mark.parametrize(
    ("placement", "channels", "expected"),
    [("before_transition", (256, 512, 1024), 7_140_532), ("after_transition", (128, 256, 512), 7_011_508)],
)
def test_amdensenet_count(model_cache, placement, channels, expected):
    kwargs = {} if placement == "before_transition" else {"cbam_placement": placement}
    assert count(model_cache("amdensenet", **kwargs)) == D121_WITH_HEAD + sum(map(cbam, channels)) == expected


def test_lungheart_count(model_cache):
    multiscale = conv_params(3, 3, 5) + conv_params(3, 3, 9) + conv_params(6, 1, 7)
    assert count(model_cache("lungheart", use_mask=False)) == D121_WITH_HEAD + multiscale == 6_969_461
    assert count(build_model("lungheart", multiscale=False)) == D121_WITH_HEAD


def test_diseasemask_count_is_torchvision_resnet50(model_cache):
    model = model_cache("diseasemask", mask_size=7)
    assert count(model) == count(tvm.resnet50(num_classes=K)) == 23_536_718
    assert "psi" in dict(model.named_buffers())


def test_one_channel_classifier():
    model = build_model("chexnet", in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, K)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dcnn", {}),
        ("ma", {}),
        ("cral", {"backbone": "densenet121", "attention": "att2"}),
        ("amdensenet", {}),
        ("lungheart", {}),
        ("diseasemask", {"mask_size": 2}),
    ],
    ids=["dcnn", "ma", "cral-att2", "amdensenet", "lungheart", "diseasemask"],
)
def test_train_step_reaches_every_parameter(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs).train()
    x, extra = torch.randn(2, 3, 64, 64), {}
    if name == "lungheart":
        extra["mask"] = torch.rand(2, 1, 64, 64)
    if name == "diseasemask":
        model.set_masks(torch.ones(8, 2, 2))
    logits, maps = model.forward_with_maps(x, **extra)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.rand(2, K)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing  # all parameters are used (DDP without find_unused_parameters)
