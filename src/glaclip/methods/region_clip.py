"""The CLIP region stores of a memory bank (issue 28): one image and its region-id map -> one CLIP
vector per region, as CorrCLIPv2's bank builder computes them (CorrCLIPv2/memory_bank_builder/
generate_clip_embeddings.py, CORRCLIP2.md section 7). No files: the caller writes the rows.

`region_features(clip, dino, rgb, ids)`:
  1. the image (H x W x 3 uint8 RGB, EXIF already applied: `io.images.load_image`) resized keep-ratio to
     short side 448 / long side at most 2048 (OpenCV bilinear, `io.images.preprocess`) and normalised
     with the release's constants (`config.registry.CORRCLIP_NORM`); the id map resized nearest to it;
  2. windows crop 336 / stride 112 (`steps.windows.window_grid`), each padded (centred) to a multiple
     of 56, image with 0 and ids with `corrclip.PAD_ID` (10000);
  3. per window, CorrCLIP's forward without region merging (`_MaskGuided._scoped`, CorrCLIPv2's) on
     the correlations of DINO ViT-B/8: q + k of its last block, no CLS, L2, on the DINO grid, the input
     ImageNet-normalised from the CLIP-unnormalised window (`_MaskGuided._vfm`); the final embeddings
     [M x E] on the DINO grid, NOT L2-normalised per token;
  4. windows resized bilinearly to the padded window, padding cut off, summed with a count and averaged
     (`steps.windows.stitch`; the sum in the towers' dtype, the count in fp32 (fp64 for fp64 towers),
     as the release's fp16 sum and fp32 count);
  5. the average resized bilinearly to the ORIGINAL image size, a band of rows at a time
     (`steps.windows.region_sums`), each pixel cast to the towers' dtype (the release's `.half()`);
  6. per region id except 0, ascending (= the manifest's order; a boolean stack: per slice): the mean
     over its pixels at the original size, cast to the towers' dtype, L2-normalised, cast to `dtype`
     (the stores' fp16).

Where this differs from deployment (CorrCLIPv2's segmentor, `methods/corrclip2.py`, which shares steps
2-3's code): correlations from DINO ViT-B/8 q + k on DINO's grid (deployment: RADIO's features resized
to 2x CLIP's grid); short side 448 whatever the data set (deployment: the protocol's, 336 for VOC);
no per-token L2 and no text product (deployment normalises each token and stitches the logits; here
the raw embeddings are stitched); the average resized to the ORIGINAL size and pooled there (deployment
stitches on the resized image; its bank queries pool RADIO at the resized size); only the region mean
is L2-normalised, never the pixels; id 0 skipped (deployment's queries take every id, 0 included).

Where this differs from the release's builder in numbers only: the region mean sums in float64 over
bands of rows (the release: torch's `mean(0)` of the whole original-size map in the towers' dtype; fp16
on its GPU, where CUDA accumulates in fp32), so memory stays bounded for large photographs (the release
holds E x H x W at the original size). Equal to float64 rounding; see benchmarks/bank_clip_release.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config.registry import CORRCLIP_NORM
from ..errors import GlaclipError
from ..io.images import preprocess
from ..io.masks import check_masks
from ..models.towers import ClipTower, VfmTower
from ..steps.windows import crop_masks, crop_windows, region_sums, stitch, window_grid
from .attention import accumulation_dtype
from .corrclip import PAD_ID, _MaskGuided, nearest
from .families import Backbones

SHORT_SIDE, MAX_LONG_SIDE = 448, 2048  # the builder's mmcv.imrescale scale (2048, slide_short)
CROP, STRIDE, PAD_MULTIPLE = 336, 112, 56  # slide_crop, slide_stride, compute_padsize(H, W, 56)


class _Windows(_MaskGuided):
    """CorrCLIP's window forward without merging, on DINO's q + k (the bank builder's encode_image)."""

    def __init__(self, clip: ClipTower, dino: VfmTower, window_batch: int):
        super().__init__(None, Backbones(clip, dino, dino.last_qk, clip.value_tokens, clip.last_block_input),
                         None, window_batch)

    def features(self, crops, masks=None):
        f, vfm_grid = self._vfm(crops)
        return self._scoped(crops, f, nearest(masks, vfm_grid).flatten(1), vfm_grid), vfm_grid


@torch.no_grad()
def region_features(clip: ClipTower, dino: VfmTower, rgb: np.ndarray, ids, dtype: torch.dtype = torch.float16, *,
                    short_side: int = SHORT_SIDE, crop: int = CROP, stride: int = STRIDE,
                    pad_multiple: int = PAD_MULTIPLE, max_long_side: int = MAX_LONG_SIDE, window_batch: int = 8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's CLIP region vectors as the bank builder computes them (module docstring).

    clip: the store's CLIP (MetaCLIP / DFN ViT-B/16 or L/14); dino: DINO ViT-B/8 (`vit_base_patch8_224.dino`),
    same device and dtype family; rgb: H x W x 3 uint8 RGB; ids: H x W integer region ids (0: no region), or
    an N x H x W boolean stack (the release paints slice i with id i + 1 for the windows, later slices over
    earlier ones, and pools each slice whole). Returns (R region ids ascending, 0 excluded, or the slice
    numbers 0..N-1, int64 CPU; R x E unit vectors in `dtype` on the towers' device). An image without
    regions gives (0,), (0 x E)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise GlaclipError(f"region_features needs an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    size = rgb.shape[:2]
    stack = None
    if np.ndim(ids) == 3:  # a boolean N x H x W stack: painted 1..N in slice order for the windows
        stack = torch.from_numpy(np.ascontiguousarray(ids))
        if stack.dtype != torch.bool or tuple(stack.shape[1:]) != tuple(size):
            raise GlaclipError(f"a region stack must be N x {size[0]} x {size[1]} boolean, got {stack.dtype} "
                               f"{tuple(stack.shape)}")
        id_map = torch.zeros(size, dtype=torch.int32)
        for i, m in enumerate(stack):
            id_map[m] = i + 1
    else:
        id_map = torch.from_numpy(check_masks(ids, size, what="region id map"))
    device, tower = clip.visual.conv1.weight.device, clip.dtype
    acc = accumulation_dtype(tower)
    if stack is not None:
        values = torch.arange(stack.shape[0], dtype=torch.int64)
    else:
        values = torch.unique(id_map)
        values = values[values != 0]
    width = clip.visual.output_dim
    if values.numel() == 0:
        return values.long(), torch.zeros(0, width, dtype=dtype, device=device)

    x = preprocess(rgb, short_side, max_long_side, acc, CORRCLIP_NORM).to(device)
    h, w = x.shape[-2:]
    grid = window_grid(h, w, crop, stride, pad_multiple)
    crops = crop_windows(x, grid)
    masks = crop_masks(nearest(id_map[None].to(device), (h, w)), grid, PAD_ID)
    family = _Windows(clip, dino, window_batch)
    parts = [family.features(crops[s : s + window_batch], masks[s : s + window_batch])
             for s in range(0, grid.count, window_batch)]
    finals, (gh, gw) = torch.cat([p[0] for p in parts]), parts[0][1]
    window_maps = finals.transpose(1, 2).reshape(grid.count, -1, gh, gw)
    average = stitch(window_maps, grid, count_dtype=acc)  # E x h x w, in acc
    sums, counts = region_sums(average, (stack if stack is not None else id_map).to(device),
                               pixel=lambda band: band.to(tower))  # each pixel in the towers' dtype
    if bool((counts == 0).any()):
        raise GlaclipError(f"slice {int(torch.nonzero(counts == 0)[0])} of the region stack covers no pixel")
    return values.long(), F.normalize((sums / counts[:, None]).to(tower), dim=-1).to(dtype)


__all__ = ["region_features", "SHORT_SIDE", "CROP", "STRIDE", "PAD_MULTIPLE"]
