"""Sliding windows (METHOD.md step 2) and stitching of per-window logits (step 7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WindowGrid:
    """The windows of one image. All windows share one size (min(crop, H) x min(crop, W))."""

    height: int
    width: int
    boxes: tuple[tuple[int, int, int, int], ...]  # (y1, y2, x1, x2) per window, row-major
    pad: tuple[int, int, int, int]  # (left, right, top, bottom) zero padding of every window

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def window_size(self) -> tuple[int, int]:
        y1, y2, x1, x2 = self.boxes[0]
        return y2 - y1, x2 - x1

    @property
    def padded_size(self) -> tuple[int, int]:
        h, w = self.window_size
        left, right, top, bottom = self.pad
        return h + top + bottom, w + left + right


def grid_count(size: int, crop: int, stride: int) -> int:
    return max(size - crop + stride - 1, 0) // stride + 1


def window_grid(height: int, width: int, crop: int, stride: int, pad_multiple: int) -> WindowGrid:
    boxes = []
    for i in range(grid_count(height, crop, stride)):
        for j in range(grid_count(width, crop, stride)):
            y2 = min(i * stride + crop, height)
            y1 = max(y2 - crop, 0)
            x2 = min(j * stride + crop, width)
            x1 = max(x2 - crop, 0)
            boxes.append((y1, y2, x1, x2))
    h, w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    return WindowGrid(height, width, tuple(boxes), centred_padding(h, w, pad_multiple))


def centred_padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding up to the next multiple; the odd pixel goes right/bottom."""
    def split(n):
        extra = (multiple - n % multiple) % multiple
        return extra // 2, extra - extra // 2
    (left, right), (top, bottom) = split(w), split(h)
    return left, right, top, bottom


def crop_windows(image: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """1x3xHxW -> Bx3xhxw: every window, zero-padded (centred) to the padded size."""
    crops = torch.cat([image[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in grid.boxes])
    if any(grid.pad):
        crops = F.pad(crops, grid.pad)
    return crops


def crop_masks(masks: torch.Tensor, grid: WindowGrid, pad_id: int) -> torch.Tensor:
    """1 x h x w region ids on the resized image -> B x ph x pw: every window, centred padding with pad_id."""
    crops = torch.cat([masks[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in grid.boxes])
    if any(grid.pad):
        crops = F.pad(crops, grid.pad, value=pad_id)
    return crops


def stitch(window_logits: torch.Tensor, grid: WindowGrid, count_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Bx QxhxW window logits on any grid -> QxHxW image logits.

    Each window's logits are resized bilinearly to the padded window size, the padding is cut off,
    and the windows are summed into the canvas and divided by the overlap count. count_dtype: the
    count's dtype (default the logits'; the division promotes, as the bank builder's fp32 count does).
    """
    ph, pw = grid.padded_size
    wh, ww = grid.window_size
    left, _, top, _ = grid.pad
    q = window_logits.shape[1]
    canvas = window_logits.new_zeros(q, grid.height, grid.width)
    count = window_logits.new_zeros(1, grid.height, grid.width, dtype=count_dtype)
    for k, (y1, y2, x1, x2) in enumerate(grid.boxes):
        up = F.interpolate(window_logits[k : k + 1], size=(ph, pw), mode="bilinear", align_corners=False)[0]
        canvas[:, y1:y2, x1:x2] += up[:, top : top + wh, left : left + ww]
        count[:, y1:y2, x1:x2] += 1
    return canvas / count


def token_index(grid: WindowGrid, grid_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """Image-pixel index (y * W + x) of the top-left pixel of every token (windows x gh x gw, row-major),
    as the GLA release labels tokens; a token whose top-left pixel lies in the padding gets 0 (the
    release pads its index map with zeros)."""
    gh, gw = grid_hw
    h, w = grid.window_size
    left, _, top, _ = grid.pad
    py = torch.arange(gh) * patch - top
    px = torch.arange(gw) * patch - left
    inside = ((py >= 0) & (py < h))[:, None] & ((px >= 0) & (px < w))[None, :]
    out = []
    for y1, _, x1, _ in grid.boxes:
        idx = (y1 + py)[:, None] * grid.width + (x1 + px)[None, :]
        out.append(torch.where(inside, idx, torch.zeros_like(idx)))
    return torch.stack(out).flatten()


def _bilinear_taps(in_size: int, out_size: int, start: int, stop: int, dtype: torch.dtype, device):
    """Source indices and weights of output positions start..stop-1, as F.interpolate(mode='bilinear',
    align_corners=False) computes them for a resize of in_size to out_size."""
    # PyTorch's kernel evaluates scale * (dst + 0.5) - 0.5 as one fused multiply-add in `dtype`:
    # exact products in float64, one rounding
    scale = torch.tensor(in_size / out_size, dtype=dtype).double()
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = (scale * (dst + 0.5) - 0.5).to(dtype).clamp_min(0)
    i0 = src.to(torch.int64).clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    l1 = src - i0.to(dtype)
    return i0.to(device), i1.to(device), (1 - l1).to(device), l1.to(device)


def resize_rows(canvas: torch.Tensor, out_h: int, out_w: int, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop-1 of F.interpolate(canvas[None], (out_h, out_w), mode='bilinear',
    align_corners=False)[0] without building the whole output (Q x (stop-start) x out_w)."""
    q, h, w = canvas.shape
    y0, y1, ly0, ly1 = _bilinear_taps(h, out_h, start, stop, canvas.dtype, canvas.device)
    x0, x1, lx0, lx1 = _bilinear_taps(w, out_w, 0, out_w, canvas.dtype, canvas.device)
    top, bottom = canvas[:, y0], canvas[:, y1]  # Q x rows x w

    def cols(rows):
        return rows[:, :, x0] * lx0 + rows[:, :, x1] * lx1

    return cols(top) * ly0[:, None] + cols(bottom) * ly1[:, None]


BAND_BYTES = 64 * 2**20  # resized features held at once (a band of rows) while pooling regions


def region_sums(canvas: torch.Tensor, regions: torch.Tensor, pixel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per region the sum and pixel count of `canvas` (C x h x w) resized bilinearly (align_corners
    False) to the regions' size, a band of rows at a time (`BAND_BYTES`), so the resized C x H x W never
    exists.

    regions: H x W integer ids (regions: the nonzero ids ascending; 0 belongs to none) or an N x H x W
    boolean stack (slice i, slices may overlap). pixel: applied to each band (C x rows x W) before
    summing (the builders' per-pixel cast or L2). Returns (R x C sums, R counts), float64 (float32 on
    MPS, which has no float64): a region's mean is the same whatever the band height, to float64 rounding."""
    c = canvas.shape[0]
    stack = regions.dtype == torch.bool and regions.ndim == 3
    H, W = regions.shape[-2:]
    wide = torch.float32 if canvas.device.type == "mps" else torch.float64
    if stack:
        n = regions.shape[0]
        flat = regions.reshape(n, -1)
    else:
        values = torch.unique(regions)
        values = values[values != 0]
        n = values.numel()
        ids = regions.reshape(-1).to(values.dtype)
        pos = torch.searchsorted(values, ids).clamp_max(max(n - 1, 0))
        member = (values[pos] == ids) if n else torch.zeros_like(ids, dtype=torch.bool)
        index = torch.where(member, pos, torch.full_like(pos, n))  # row n: id 0, discarded
    sums = torch.zeros(n + 1, c, dtype=wide, device=canvas.device)
    rows = max(1, BAND_BYTES // (8 * (c + (n if stack else 0)) * W))
    for y in range(0, H, rows):
        y2 = min(y + rows, H)
        band = resize_rows(canvas, H, W, y, y2)
        if pixel is not None:
            band = pixel(band)
        band = band.reshape(c, -1).T.to(wide)  # pixels x C
        if stack:
            sums[:n] += flat[:, y * W : y2 * W].to(wide) @ band
        else:
            sums.index_add_(0, index[y * W : y2 * W], band)
    counts = flat.sum(1).to(wide) if stack else torch.bincount(index, minlength=n + 1)[:n].to(wide)
    return sums[:n], counts
