import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F

from glaclip.steps.windows import centred_padding, crop_windows, grid_count, stitch, window_grid


@pytest.mark.parametrize("H", [1, 55, 56, 100, 223, 224, 225, 335, 336, 337, 448, 530, 1000])
@pytest.mark.parametrize("W", [50, 224, 448, 2048])
def test_grid_matches_formula(H, W):
    grid = window_grid(H, W, 224, 112, 56)
    assert list(grid.boxes) == reference.step2_windows(H, W)
    assert grid.count == grid_count(H, 224, 112) * grid_count(W, 224, 112)
    covered = np.zeros((H, W), bool)
    for y1, y2, x1, x2 in grid.boxes:
        assert (y2 - y1, x2 - x1) == (min(224, H), min(224, W))
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    ph, pw = grid.padded_size
    assert ph % 56 == 0 and pw % 56 == 0


@pytest.mark.parametrize("n, expected", [(224, (0, 0)), (100, (6, 6)), (50, (3, 3)), (57, (27, 28)), (1, (27, 28))])
def test_centred_padding(n, expected):
    left, right, top, bottom = centred_padding(n, n, 56)
    assert (left, right) == expected == (top, bottom) == reference.pad_amounts(n)


def test_crop_windows_pads_with_zeros_centred():
    img = torch.arange(1 * 3 * 50 * 300, dtype=torch.float32).view(1, 3, 50, 300)
    grid = window_grid(50, 300, 224, 112, 56)
    crops = crop_windows(img, grid)
    assert crops.shape == (2, 3, 56, 224)
    assert (crops[:, :, :3] == 0).all() and (crops[:, :, 53:] == 0).all()
    torch.testing.assert_close(crops[1, :, 3:53], img[0, :, :, 76:300])


def test_stitch_equals_naive_average():
    torch.manual_seed(0)
    H, W = 150, 300
    grid = window_grid(H, W, 224, 112, 56)  # 150x224 windows padded to 168x224
    logits = torch.randn(grid.count, 3, 21, 28, dtype=torch.float64)
    out = stitch(logits, grid)
    total = torch.zeros(3, H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for k, (y1, y2, x1, x2) in enumerate(grid.boxes):
        up = F.interpolate(logits[k : k + 1], size=(168, 224), mode="bilinear", align_corners=False)[0]
        total[:, y1:y2, x1:x2] += up[:, 9:159, :]
        count[y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, total / count)
    assert count.max() == 2  # the two windows overlap
