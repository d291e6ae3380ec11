"""Building a memory bank's VFM region store from images and their region masks (CorrCLIPv2's
mb/generate_vfm_embeddings.py, CORRCLIP2.md section 7), without orchestration (no resume, no
workers): one image's region vectors, and a loop that streams them into the store in manifest order.

Per image, the builder's recipe:
  1. the image file decoded with its EXIF orientation applied, RGB (`io.images.load_image`; the
     release: PIL convert('RGB') then detectron2's EXIF transpose, the same pixels);
  2. RADIO's features as the deployment extractor gives them (x / 255, bilinear to RADIO's nearest
     supported size, forward, spatial features: `models.radio.radio_grid`), bilinear back to the
     original size (H, W) and L2-normalised per pixel (the release's `F.interpolate(..., mode='bilinear')`
     has align_corners False), a band of rows at a time (the release holds C x H x W: 1.2 GiB at
     640 x 480 for C = 1024);
  3. the mask resized (nearest, as float ids) to the feature map only if the sizes differ;
  4. per region (an id map's nonzero ids ascending, or a boolean stack's slices) the mean of its
     pixels' unit features, not renormalised, stored as float16; id 0 has no row.
The features are computed in the RADIO tower's dtype (the release: fp16 autocast on CUDA); the
means accumulate in float64 over the bands (the release: torch's float32 `mean(0)`; CUDA's fp16 mean
accumulates in float32 too), are rounded to float32 and then to float16: equal to the release's rows
up to the rounding of its float32 sums, which moves a float16 row element only when it lies within a
float32 ulp of a float16 rounding boundary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GlaclipError
from ..io.bank import read_store
from ..io.bank_manifest import ImageRow, count_regions, read_region_masks
from ..io.bank_store import append_store
from ..io.images import load_image
from ..models.radio import radio_grid
from ..steps.windows import region_sums


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask array brought to `size` (H, W) as the builder does when the sizes differ: nearest
    (torch's legacy `nearest`) over the ids as float32; unchanged when the size is already right."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    t = torch.from_numpy(np.ascontiguousarray(masks))
    stack = t[:, None] if t.ndim == 3 else t[None, None]
    out = F.interpolate(stack.float(), size=size, mode="nearest")
    out = out[:, 0] if t.ndim == 3 else out[0, 0]
    return out.to(t.dtype).numpy()


def region_means(feats: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    """C x h x w RADIO features and an H x W id map (or N x H x W boolean stack) -> K x C float16: the
    features resized bilinearly to H x W and L2-normalised per pixel, a band of rows at a time
    (`steps.windows.region_sums`: memory bounded whatever the image size), then per region in manifest
    order the mean of its pixels (float64 sums, rounded to float32 as the release's mean, then to
    float16), not renormalised."""
    m = torch.from_numpy(np.ascontiguousarray(masks)).to(feats.device)
    sums, counts = region_sums(feats, m, pixel=lambda band: F.normalize(band, dim=0))
    if bool((counts == 0).any()):
        raise GlaclipError("a region lost every pixel when its mask was resized to the feature map")
    return (sums / counts[:, None]).to(torch.float32).to("cpu", torch.float16)


@torch.no_grad()
def vfm_region_vectors(radio, image, masks, expected: int | None = None) -> torch.Tensor:
    """One image's rows of the VFM store (K x C float16, the module's recipe). image: a path, PIL image
    or array (EXIF orientation applied to files); masks: a mask file (`io.bank_manifest.read_region_masks`)
    or array. expected: the image's region count in the manifest; another count is a GlaclipError."""
    rgb = load_image(image)
    arr = read_region_masks(masks) if isinstance(masks, (str, os.PathLike)) else np.asarray(masks)
    if expected is not None and count_regions(arr) != expected:
        raise GlaclipError(f"the masks of {image} have {count_regions(arr)} regions, the manifest {expected} "
                           "(were the masks changed after the manifest was written?)")
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    vectors = region_means(radio_grid(radio, rgb, radio.dtype)[0], resize_masks(arr, size))
    if expected is not None and vectors.shape[0] != expected:
        raise GlaclipError(f"the masks of {image} resized to the image's {size[1]}x{size[0]} keep "
                           f"{vectors.shape[0]} regions, the manifest has {expected}")
    return vectors


def write_vfm_store(radio, rows: Iterable[ImageRow], image_of: Callable[[str], object],
                    masks_of: Callable[[str], object], store_path: str | Path, dim: int | None = None,
                    on_message: Callable[[str], None] | None = None) -> tuple[int, int]:
    """The VFM store at store_path brought up to a manifest's images (`Manifest.images`, in order):
    rows already in the store are kept, the images from the store's row count on are computed with
    `vfm_region_vectors` and appended, streamed one image at a time (never the whole store in memory).
    image_of / masks_of: stem -> image and mask file. Returns (rows before, rows after)."""
    path = Path(store_path)
    have = read_store(path).shape[0] if path.exists() else 0
    todo = [r for r in rows if r.start + r.count > have]
    if todo and todo[0].start != have:
        raise GlaclipError(f"memory bank store {path} has {have} rows, which end inside image {todo[0].stem} "
                           f"(ids {todo[0].start}..{todo[0].start + todo[0].count - 1}): not this manifest's store?")

    def vectors() -> Iterator[torch.Tensor]:
        expect = have
        for i, r in enumerate(todo):
            if r.start != expect:
                raise GlaclipError(f"image {r.stem} starts at id {r.start}, the store is at row {expect}")
            if on_message is not None:
                on_message(f"[{i + 1}/{len(todo)}] {r.stem}: {r.count} regions")
            yield vfm_region_vectors(radio, image_of(r.stem), masks_of(r.stem), r.count)
            expect += r.count

    if not todo:
        return have, have
    return append_store(path, vectors(), dim if dim is not None else int(radio.dim))
