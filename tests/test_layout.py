"""Tokens <-> feature maps: round trips, prefix tokens, non-square grids, grid inference, resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_rcka.features.layout import FeatureSpec, fmap_to_tokens, infer_grid, pooled_spec, resample, to_fmap, tokens_to_fmap


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 2, 5])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (5, 3)])
def test_tokens_to_fmap_places_patch_tokens_row_major_after_prefix(num_prefix_tokens: int, grid: tuple[int, int]):
    h, w = grid
    tokens = torch.randn(5, num_prefix_tokens + h * w, 7)
    fmap = tokens_to_fmap(tokens, grid, num_prefix_tokens)
    assert fmap.shape == (5, 7, h, w)
    for row in range(h):
        for col in range(w):
            torch.testing.assert_close(fmap[:, :, row, col], tokens[:, num_prefix_tokens + row * w + col])


@pytest.mark.parametrize("grid", [(4, 4), (2, 6)])
def test_round_trip_fmap_tokens_fmap(grid: tuple[int, int]):
    fmap = torch.randn(5, 7, *grid)
    tokens = fmap_to_tokens(fmap)
    assert tokens.shape == (5, grid[0] * grid[1], 7)
    assert torch.equal(tokens_to_fmap(tokens, grid), fmap)
    with_cls = torch.cat([torch.randn(5, 2, 7), tokens], dim=1)
    assert torch.equal(tokens_to_fmap(with_cls, grid, num_prefix_tokens=2), fmap)


def test_tokens_to_fmap_rejects_wrong_token_count():
    with pytest.raises(ValueError, match=r"N = 18 \(2 prefix \+ 4x4 patches\), got shape \(5, 17, 7\)"):
        tokens_to_fmap(torch.randn(5, 17, 7), (4, 4), num_prefix_tokens=2)
    with pytest.raises(ValueError):
        fmap_to_tokens(torch.randn(5, 17, 7))


@pytest.mark.parametrize(
    ("num_patch_tokens", "image_size", "expected"),
    [
        (16, None, (4, 4)),
        (196, (224, 224), (14, 14)),
        (24, (32, 48), (4, 6)),
        (24, (48, 32), (6, 4)),
        (16, (36, 36), (4, 4)),  # 36 px with 8 px patches: the patch embedding floors to 4
        (20, (33, 40), (4, 5)),
        (210, (105, 420), (7, 30)),  # 14 px patches: 7.5 rows floored to 7, 30 columns
        (10, (36, 100), (2, 5)),  # a patch embedding that pads: 24 px patches, 1.5 x 4.2 rounded up
        (14, (17, 100), (2, 7)),  # 16 px patches padded, 1.06 x 6.25 rounded up: no flooring stride makes 2 x 7
    ],
)
def test_infer_grid(num_patch_tokens: int, image_size, expected):
    assert infer_grid(num_patch_tokens, image_size) == expected


@pytest.mark.parametrize(
    ("num_patch_tokens", "image_size", "message"),
    [
        (24, None, "no square grid"),
        (18, (32, 32), "aspect ratio"),
        (17, (32, 48), "aspect ratio"),
        (0, None, "cannot lay out"),
    ],
)
def test_infer_grid_errors(num_patch_tokens: int, image_size, message: str):
    with pytest.raises(ValueError, match=message):
        infer_grid(num_patch_tokens, image_size)


def test_resample_identity_returns_input():
    fmap = torch.randn(5, 3, 4, 6)
    assert resample(fmap, (4, 6)) is fmap


def test_resample_down_averages_blocks():
    # factor 4: bilinear sampling would read only the middle of each block (at factor 2 it coincides)
    fmap = torch.randn(5, 3, 8, 12)
    expected = fmap.reshape(5, 3, 2, 4, 3, 4).mean(dim=(3, 5))
    torch.testing.assert_close(resample(fmap, (2, 3)), expected)


def test_resample_up_is_bilinear():
    fmap = torch.randn(5, 3, 2, 3)
    out = resample(fmap, (4, 6))
    torch.testing.assert_close(out, F.interpolate(fmap, size=(4, 6), mode="bilinear", align_corners=False))
    # averaging the upsampled 2x2 blocks does not give back the input exactly, but the mean is kept
    torch.testing.assert_close(out.mean(dim=(2, 3)), fmap.mean(dim=(2, 3)))


@pytest.mark.parametrize(("source", "target"), [((8, 2), (4, 4)), ((5, 5), (2, 2)), ((1, 1), (3, 2))])
def test_resample_mixed_and_uneven_sizes_keep_constants(source, target):
    fmap = torch.arange(5.0 * 3).reshape(5, 3, 1, 1).expand(5, 3, *source).contiguous()
    out = resample(fmap, target)
    assert out.shape == (5, 3, *target)
    torch.testing.assert_close(out, fmap[:, :, :1, :1].expand_as(out))


def test_to_fmap_for_each_layout():
    tokens = torch.randn(5, 2 + 6, 7)
    spec = FeatureSpec("nlc", 7, (2, 3), num_prefix_tokens=2)
    assert torch.equal(to_fmap(tokens, spec), tokens_to_fmap(tokens, (2, 3), 2))
    fmap = torch.randn(5, 7, 2, 3)
    assert to_fmap(fmap, FeatureSpec("nchw", 7, (2, 3))) is fmap
    pooled = torch.randn(5, 7)
    assert torch.equal(to_fmap(pooled, pooled_spec(7)), pooled[:, :, None, None])


def test_to_fmap_rejects_a_tensor_that_does_not_match_the_spec():
    with pytest.raises(ValueError, match="does not match"):
        to_fmap(torch.randn(5, 17, 7), FeatureSpec("nlc", 7, (4, 4), num_prefix_tokens=2))
    with pytest.raises(ValueError, match="does not match"):
        to_fmap(torch.randn(5, 8, 4, 4), FeatureSpec("nchw", 7, (4, 4)))


def test_feature_spec_shape_and_validation():
    assert FeatureSpec("nlc", 36, (4, 6), num_prefix_tokens=2).shape == (26, 36)
    assert FeatureSpec("nchw", 36, [4, 6]).shape == (36, 4, 6)
    assert FeatureSpec("nchw", 36, [4, 6]).grid == (4, 6)
    with pytest.raises(ValueError, match="layout"):
        FeatureSpec("nhwc", 36, (4, 4))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        FeatureSpec("nchw", 36, (4, 4), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="positive"):
        FeatureSpec("nchw", 36, (0, 4))


# the grid must follow the image's aspect ratio in width too
def test_a_grid_whose_width_misses_the_aspect_ratio_is_refused():
    from hf_rcka.features.layout import infer_grid

    with pytest.raises(ValueError, match="aspect ratio"):
        infer_grid(20, (20, 200))  # 1.4 x 14 at one stride: neither 1 x 20 nor 2 x 10 is that image's grid


@pytest.mark.parametrize(("num_tokens", "image_size", "expected"), [
    (14, (16, 40), ((2, 6), 2)),  # 8 px patches and 2 prefix tokens, not a rounded 2 x 7 grid
    (19, (37, 112), ((2, 7), 5)),  # 16 px patches, a class token and 4 registers
    (197, (224, 224), ((14, 14), 1)),
])
def test_a_token_grid_without_a_patch_size_takes_the_fewest_prefix_tokens_near_their_stride(num_tokens, image_size,
                                                                                           expected):
    """A count that still holds prefix tokens fits a grid rounded at another stride: the grid near
    the stride the count implies comes first (timm models give no patch size)."""
    from hf_rcka.features.hidden_states import _token_grid

    assert _token_grid(num_tokens, image_size, None) == expected
