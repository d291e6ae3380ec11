"""Post-processing of the stitched logits (BASELINES.md section 1), between the text product and the decision.

`pamr`: pixel-adaptive mask refinement (NACLIP runs it on every data set) on the Q x H x W logits at
the original size, guided by the resized image. `area_threshold`: SCLIP's rule that drops classes
covering too small a share of the non-background argmax area.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TILE = 1024  # PAMR core tile side (pixels); each tile carries a halo of steps * max(dilation)
_CHUNK_BYTES = 256 * 2**20  # logits held per query chunk during PAMR


def _offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _affinity(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """3 x H x W image -> K x H x W softmax affinities to the K = 8 * len(dilations) neighbours."""
    _, h, w = image.shape
    pad = max(dilations)
    padded = F.pad(image[None], [pad] * 4, mode="replicate")[0]
    offsets = _offsets(dilations)
    # per channel std (unbiased) over the centre and its 8 neighbours of every dilation (the centre
    # once per dilation), two passes so that it is as accurate as torch.std
    n = 9 * len(dilations)
    mean = len(dilations) * image
    for dy, dx in offsets:
        mean = mean + _shifted(padded, pad, dy, dx, h, w)
    mean = mean / n
    var = len(dilations) * (image - mean) ** 2
    for dy, dx in offsets:
        var = var + (_shifted(padded, pad, dy, dx, h, w) - mean) ** 2
    scale = 1e-8 + 0.1 * (var / (n - 1)).sqrt()
    del mean, var
    aff = torch.stack([((image - _shifted(padded, pad, dy, dx, h, w)).abs() / scale).mean(dim=0)
                       for dy, dx in offsets])
    return (-aff).softmax(dim=0)


def _pamr_region(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    _, h, w = image.shape
    aff = _affinity(image, dilations)
    pad = max(dilations)
    offsets = _offsets(dilations)
    q = logits.shape[0]
    chunk = max(1, _CHUNK_BYTES // (3 * logits.element_size() * (h + 2 * pad) * (w + 2 * pad)))
    out = torch.empty_like(logits)
    for start in range(0, q, chunk):
        x = logits[start : start + chunk]
        for _ in range(steps):
            padded = F.pad(x[None], [pad] * 4, mode="replicate")[0]
            new = torch.zeros_like(x)
            for k, (dy, dx) in enumerate(offsets):
                new.addcmul_(aff[k][None], _shifted(padded, pad, dy, dx, h, w))
            x = new
        out[start : start + chunk] = x
    return out


@torch.no_grad()
def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int = 10, dilations: tuple[int, ...] = (8, 16),
         tile: int = _TILE) -> torch.Tensor:
    """Refine Q x H x W logits with PAMR guided by a 3 x H x W image (same size), `steps` iterations.

    Large images are processed in tiles of `tile` pixels with a halo of steps * max(dilations)
    pixels, which is exactly the reach of the refinement, so the result equals the untiled one while
    memory stays bounded; query channels are processed in chunks.
    """
    if steps <= 0:
        return logits
    image = image.to(logits.dtype)
    _, h, w = logits.shape
    halo = steps * max(dilations)
    if h <= tile + 2 * halo and w <= tile + 2 * halo:
        return _pamr_region(image, logits, steps, dilations)
    out = torch.empty_like(logits)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, yb, xa, xb = max(y0 - halo, 0), min(y1 + halo, h), max(x0 - halo, 0), min(x1 + halo, w)
            part = _pamr_region(image[:, ya:yb, xa:xb], logits[:, ya:yb, xa:xb], steps, dilations)
            out[:, y0:y1, x0:x1] = part[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    return out


def area_keep(areas: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP's rule on the argmax areas (pixel counts) of C classes: class 0 (background) is always
    kept, a class c >= 1 only if its area is greater than area_thd times the total area of classes >= 1."""
    keep = torch.ones(areas.shape[0], dtype=torch.bool)
    keep[1:] = areas[1:] > area_thd * areas[1:].sum()
    return keep


def area_threshold(class_probs: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP: C x H x W class probabilities; every class c >= 1 whose argmax area is not greater than
    area_thd times the total argmax area of classes >= 1 gets probability 0 everywhere."""
    areas = torch.bincount(class_probs.argmax(dim=0).flatten().cpu(), minlength=class_probs.shape[0])
    return class_probs * area_keep(areas, area_thd).to(class_probs.device, class_probs.dtype)[:, None, None]
