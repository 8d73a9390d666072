"""CRAL residual attention, AM-DenseNet CBAM placement, lungheart multi-scale attention and mask, ma space attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrdist.models import build_model
from cxrdist.models.attention import CBAM, MultiScaleInputAttention, SpaceAttention

K = 14


def _capture(module: torch.nn.Module, store: dict, key: str, replace=None):
    """Forward hook recording (and optionally replacing) a module's output."""

    def hook(_m, _i, out):
        store[key] = out if replace is None else replace(out)
        return store[key]

    return module.register_forward_hook(hook)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("backbone", ["resnet50", "densenet121"])
def test_cral_att1_zero_attention_is_identity(model_cache, x64, backbone):
    model = model_cache("cral", backbone=backbone)
    seen: dict = {}
    hooks = [_capture(model.features, seen, "F"), _capture(model.attention, seen, "a", torch.zeros_like)]
    try:
        with torch.no_grad():
            attended = model.attended_features(x64)
    finally:
        for h in hooks:
            h.remove()
    assert attended.shape == (2, K, *seen["F"].shape[1:])
    # H^c = ReLU((1 + 0) ⊙ F) = F exactly (F is post-ReLU)
    assert torch.equal(attended, seen["F"].unsqueeze(1).expand_as(attended))


def test_cral_att2_zero_attention_is_trunk(model_cache, x64):
    model = model_cache("cral", backbone="densenet121", attention="att2")
    seen: dict = {}
    hooks = [_capture(model.trunk, seen, "T"), _capture(model.attention, seen, "a", torch.zeros_like)]
    try:
        with torch.no_grad():
            attended = model.attended_features(x64)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(attended, F.relu(seen["T"]).unsqueeze(1).expand_as(attended))


@pytest.mark.parametrize("attention", ["att1", "att2"])
def test_cral_fast_head_equals_materialised_attention(model_cache, x64, attention):
    model = model_cache("cral", backbone="densenet121", attention=attention)
    with torch.no_grad():
        logits, maps = model.forward_with_maps(x64)
        attended = model.attended_features(x64)  # (B, K, C, h, w)
    expected = torch.einsum("bkc,kc->bk", attended.mean(dim=(3, 4)), model.head.weight) + model.head.bias
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps, torch.einsum("bkchw,kc->bkhw", attended, model.head.weight), atol=1e-4, rtol=1e-4)


def test_cral_shared_attention_broadcasts(x64):
    torch.manual_seed(0)
    model = build_model("cral", backbone="densenet121", category_wise=False).eval()
    with torch.no_grad():
        a = model.attention_maps(x64)
        attended = model.attended_features(x64)
        logits, maps = model.forward_with_maps(x64)
    assert a.shape == (2, 1, 2, 2) and model.attention.body[-1].out_channels == 1
    assert all(torch.equal(attended[:, 0], attended[:, c]) for c in range(1, K))
    assert logits.shape == (2, K) and maps.shape == (2, K, 2, 2)


def test_cral_without_residual_is_attention_times_features(x64):
    torch.manual_seed(0)
    model = build_model("cral", backbone="densenet121", residual=False).eval()
    seen: dict = {}
    hooks = [_capture(model.features, seen, "F"), _capture(model.attention, seen, "a")]
    try:
        with torch.no_grad():
            attended = model.attended_features(x64)
    finally:
        for h in hooks:
            h.remove()
    expected = F.relu(seen["a"].unsqueeze(2) * seen["F"].unsqueeze(1))
    assert torch.equal(attended, expected)


def test_cral_rejects_unknown_options():
    with pytest.raises(ValueError):
        build_model("cral", attention="att3")
    with pytest.raises(ValueError):
        build_model("cral", backbone="resnet18")


def _names(model) -> list[str]:
    return [n for n, _ in model.features.named_children()]


def test_amdensenet_cbam_before_transition(model_cache):
    model = model_cache("amdensenet")
    assert _names(model) == [
        "conv0", "norm0", "relu0", "pool0",
        "denseblock1", "cbam1", "transition1",
        "denseblock2", "cbam2", "transition2",
        "denseblock3", "cbam3", "transition3",
        "denseblock4", "norm5", "relu5",
    ]  # fmt: skip
    assert [model.features.get_submodule(f"cbam{i}").channel.mlp[0].in_channels for i in (1, 2, 3)] == [256, 512, 1024]


def test_amdensenet_cbam_after_transition(model_cache):
    names = _names(model_cache("amdensenet", cbam_placement="after_transition"))
    for i in (1, 2, 3):
        assert names.index(f"cbam{i}") == names.index(f"transition{i}") + 1
    assert names.count("cbam4") == 0
    with pytest.raises(ValueError):
        build_model("amdensenet", cbam_placement="inside")


def test_amdensenet_at_512(model_cache):
    # zhao2021 trains at 512×512; one image is enough for the shape.
    model = model_cache("amdensenet")
    with torch.no_grad():
        logits, maps = model.forward_with_maps(torch.randn(1, 3, 512, 512))
    assert logits.shape == (1, K) and maps.shape == (1, K, 16, 16)


def test_cbam_is_channel_then_spatial():
    torch.manual_seed(0)
    block, x = CBAM(32), torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(block(x), block.spatial(block.channel(x)))
    assert block.channel.mlp[0].out_channels == 2 and block.spatial.conv.kernel_size == (7, 7)


def test_multiscale_attention_shapes():
    torch.manual_seed(0)
    module, x = MultiScaleInputAttention(3), torch.randn(2, 3, 32, 32)
    att = module.attention_map(x)
    assert att.shape == (2, 1, 32, 32) and (att > 0).all() and (att < 1).all()
    torch.testing.assert_close(module(x), x * att)
    assert MultiScaleInputAttention(1)(torch.randn(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_lungheart_ones_mask_equals_no_mask(x64):
    torch.manual_seed(0)
    masked = build_model("lungheart").eval()
    unmasked = build_model("lungheart", use_mask=False).eval()
    unmasked.load_state_dict(masked.state_dict())
    with torch.no_grad():
        logits, maps = masked.forward_with_maps(x64, torch.ones(2, 1, 64, 64))
        ref_logits, ref_maps = unmasked.forward_with_maps(x64)
        torch.testing.assert_close(logits, ref_logits)
        torch.testing.assert_close(maps, ref_maps)
        # a fractional mask: F_l = F_g ⊙ avgpool(M) (the left 40 of 64 columns: pooled to 2×2 = [1, .25])
        mask = torch.zeros(2, 1, 64, 64)
        mask[..., :40] = 1
        fg = masked.features(masked.input_attention(x64))
        pooled = torch.tensor([1.0, 0.25]).view(1, 1, 1, 2)
        expected = masked.classifier((fg * pooled).mean(dim=(2, 3)))
        torch.testing.assert_close(masked(x64, mask), expected, atol=1e-5, rtol=1e-5)
        # the heatmap is the CAM of the classified features F_l: the mask weights it, and its mean is the logit
        logits_m, maps_m = masked.forward_with_maps(x64, mask)
        torch.testing.assert_close(maps_m, maps * pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps_m.mean(dim=(2, 3)) + masked.classifier.bias, logits_m, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked.heatmaps(x64, mask), maps_m)
    with pytest.raises(ValueError, match="use_mask=True"):
        masked(x64)
    with pytest.raises(ValueError, match="use_mask=False"):
        unmasked(x64, torch.ones(2, 1, 64, 64))
    with pytest.raises(ValueError, match="mask must be"):
        masked(x64, torch.ones(2, 64, 64))


def test_lungheart_without_multiscale():
    model = build_model("lungheart", multiscale=False, use_mask=False).eval()
    assert isinstance(model.input_attention, torch.nn.Identity)


def test_space_attention_concatenates_tiled_gap():
    x = torch.randn(2, 4, 7, 7)
    y = SpaceAttention()(x)
    assert y.shape == (2, 8, 7, 7)
    assert torch.equal(y[:, :4], x)
    torch.testing.assert_close(y[:, 4:], x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, 7, 7))


def test_ma_heatmap_is_score_map_and_logits_its_mean(model_cache, x64):
    model = model_cache("ma")
    with torch.no_grad():
        logits, maps = model.forward_with_maps(x64)
        z = model.space_attention(model.features(x64))
    torch.testing.assert_close(maps, model.classifier(z))
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3)))
    assert list(model.space_attention.parameters()) == []
