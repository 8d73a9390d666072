"""kim2021 alignment module and warping; the lungheart U-Net and its Dice loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrdist.models import build_model
from cxrdist.models.alignment import (
    affine_matrix,
    invert_affine,
    smooth,
    transform_points,
    warp,
    warp_maps_back,
)
from cxrdist.models.unet import dice_per_channel, soft_dice_loss, union_mask

IDENTITY = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])


def _blobs(size: int = 32) -> torch.Tensor:
    """Three anisotropic Gaussian blobs at non-collinear points: an image every affine parameter changes."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(size, size)
    for cx, cy, sx, sy in [(-0.35, -0.3, 0.18, 0.1), (0.3, -0.2, 0.1, 0.2), (0.0, 0.4, 0.25, 0.12)]:
        img += torch.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2)
    return img.view(1, 1, size, size)


def test_identity_init_leaves_images_unchanged():
    torch.manual_seed(0)
    model = build_model("alignment").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        params = model(x)
    assert torch.equal(params, IDENTITY.expand(2, -1))
    # align_corners=False: the identity grid hits pixel centres; only float32 rounding of the grid remains
    # (~1e-6 px, times the image gradient): tolerance 1e-4 on N(0, 1) pixels.
    torch.testing.assert_close(warp(x, params), x, atol=1e-4, rtol=0)
    assert model.fc.weight.abs().sum() == 0 and model.fc.bias.abs().sum() == 0


def test_affine_matrix_is_kim2021_eq6():
    params = torch.tensor([[1.2, 0.8, 0.1, -0.3, 0.5]])
    c, s = torch.cos(torch.tensor(0.5)), torch.sin(torch.tensor(0.5))
    expected = torch.tensor([[[1.2 * c, -0.8 * s, 0.1], [1.2 * s, 0.8 * c, -0.3]]])
    torch.testing.assert_close(affine_matrix(params), expected)


def test_invert_affine_composes_to_identity():
    params = torch.tensor([[1.2, 0.8, 0.1, -0.3, 0.5], [0.9, 1.1, -0.2, 0.05, -0.3]])
    theta = affine_matrix(params)
    points = torch.rand(2, 5, 2) * 2 - 1
    back = transform_points(invert_affine(theta), transform_points(theta, points))
    torch.testing.assert_close(back, points, atol=1e-6, rtol=0)
    torch.testing.assert_close(invert_affine(invert_affine(theta)), theta, atol=1e-6, rtol=0)


def test_box_is_warped_to_inverse_corners_and_back():
    size = 64
    box = torch.zeros(1, 1, size, size)
    box[..., 16:40, 20:44] = 1  # rows 16..39, cols 20..43
    params = torch.tensor([[1.25, 0.8, 0.1, -0.2, 0.0]])
    aligned = warp(box, params)
    # aligned(p) = box(A p): the box shows up where A⁻¹ sends its corners (pixel edges in [-1, 1] coordinates)
    corners = torch.tensor([[[20, 16], [44, 40]]], dtype=torch.float32) / size * 2 - 1
    lo, hi = transform_points(invert_affine(affine_matrix(params)), corners)[0]
    rows, cols = torch.nonzero(aligned[0, 0] > 0.5, as_tuple=True)
    found_lo = torch.stack([cols.min(), rows.min()]).float() / size * 2 - 1
    found_hi = torch.stack([cols.max() + 1, rows.max() + 1]).float() / size * 2 - 1
    pixel = 2 / size
    assert (found_lo - lo).abs().max() <= pixel and (found_hi - hi).abs().max() <= pixel
    # and the inverse warp brings it back (bilinear twice blurs the edges: IoU of the thresholded masks)
    back = warp_maps_back(aligned, params) > 0.5
    iou = (back & (box > 0.5)).sum() / (back | (box > 0.5)).sum()
    assert iou > 0.9


def test_known_affine_is_recovered_by_optimising_the_five_params():
    torch.manual_seed(0)
    image = _blobs(32)
    truth = torch.tensor([[1.15, 0.9, 0.12, -0.1, 0.25]])
    target = smooth(warp(image, truth), k=2)
    params = IDENTITY.clone().requires_grad_(True)
    opt = torch.optim.Adam([params], lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(smooth(warp(image, params), k=2), target)
        loss.backward()
        opt.step()
    assert (params.detach() - truth).abs().max() < 0.03, params


def test_smooth_is_pool_then_bilinear_upsample():
    x = torch.randn(2, 3, 64, 64)
    y = smooth(x, k=16)
    assert y.shape == x.shape
    torch.testing.assert_close(F.avg_pool2d(y, 16), F.avg_pool2d(x, 16), atol=0.25, rtol=0)
    const = torch.full((1, 1, 32, 32), 3.0)
    torch.testing.assert_close(smooth(const), const)


def test_alignment_param_count():
    # ResNet-18 minus its 1000-class fc plus a 5-output fc
    assert sum(p.numel() for p in build_model("alignment").parameters()) == 11_689_512 - 513_000 + 512 * 5 + 5


def test_unet_shapes_and_count():
    model = build_model("unet").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    widths = [32, 64, 128, 256, 512]

    def double(cin: int, cout: int) -> int:
        return 9 * cin * cout + 9 * cout * cout + 4 * cout

    enc = sum(double(a, b) for a, b in zip([3, 32, 64, 128, 256], widths))
    dec = sum(4 * w * (w // 2) + w // 2 + double(w, w // 2) for w in widths[1:])
    assert sum(p.numel() for p in model.parameters()) == enc + dec + 32 * 3 + 3 == 7_763_107
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 40, 40))
    small = build_model("unet", base_width=8, depth=2, in_chans=1)
    assert small(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16)


def test_soft_dice():
    target = (torch.rand(2, 3, 32, 32) > 0.5).float()
    perfect = (target * 2 - 1) * 30
    assert soft_dice_loss(perfect, target) < 1e-4
    assert soft_dice_loss(-perfect, target) > 0.99
    dice = dice_per_channel(target, target)
    torch.testing.assert_close(dice, torch.ones(3))
    empty = torch.zeros(1, 3, 8, 8)
    torch.testing.assert_close(dice_per_channel(empty, empty), torch.ones(3))  # empty predicted empty: Dice 1


def test_union_mask():
    logits = torch.full((1, 3, 2, 2), -5.0)
    logits[0, 0, 0, 0] = 5.0
    logits[0, 2, 1, 1] = 5.0
    assert union_mask(logits).tolist() == [[[[1.0, 0.0], [0.0, 1.0]]]]
