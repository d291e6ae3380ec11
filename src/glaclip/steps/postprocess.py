"""Post-processing of the stitched logits (BASELINES.md section 1), between the text product and the decision.

`pamr`: pixel-adaptive mask refinement (NACLIP runs it on every data set) on the Q x H x W logits at
the original size, guided by the resized image. `area_threshold`: SCLIP's rule that drops classes
covering too small a share of the non-background argmax area. `mask_vote`: CorrCLIP's map correction
of the labels by region masks (after the decision).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_TILE = 1728  # PAMR core tile side (pixels); with the default halo (10 steps x 16) a tile spans 2048 pixels
_CHUNK_BYTES = 256 * 2**20  # padded logits held per query chunk during PAMR (two buffers)
_STRIP_BYTES = 8 * 2**20  # working set of one band of rows in PAMR's inner loops, meant to stay in cache


def _offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _replicate_border(buf: torch.Tensor, pad: int) -> None:
    """Fill the `pad`-wide border of ... x (h + 2 pad) x (w + 2 pad) from its interior, as replicate padding."""
    h, w = buf.shape[-2] - 2 * pad, buf.shape[-1] - 2 * pad
    buf[..., :pad, pad : pad + w] = buf[..., pad : pad + 1, pad : pad + w]
    buf[..., pad + h :, pad : pad + w] = buf[..., pad + h - 1 : pad + h, pad : pad + w]
    buf[..., :pad] = buf[..., pad : pad + 1]
    buf[..., pad + w :] = buf[..., pad + w - 1 : pad + w]


def _strip_rows(channels: int, width: int, element_size: int) -> int:
    """Rows per band in the inner loops: `channels` planes of `width` pixels stay within _STRIP_BYTES."""
    return max(1, _STRIP_BYTES // (channels * width * element_size))


def _affinity(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """3 x H x W image -> K x H x W softmax affinities to the K = 8 * len(dilations) neighbours.

    Computed a band of rows at a time (the same operations per pixel as on the whole image)."""
    _, h, w = image.shape
    pad = max(dilations)
    padded = F.pad(image[None], [pad] * 4, mode="replicate")[0]
    offsets = _offsets(dilations)
    n = 9 * len(dilations)
    out = image.new_empty(len(offsets), h, w)
    rows = _strip_rows(4 * len(offsets) + 12, w + 2 * pad, image.element_size())
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)

        def shifted(dy: int, dx: int) -> torch.Tensor:
            return padded[:, pad + r0 + dy : pad + r1 + dy, pad + dx : pad + dx + w]

        centre = image[:, r0:r1]
        # per channel std (unbiased) over the centre and its 8 neighbours of every dilation (the centre
        # once per dilation), two passes so that it is as accurate as torch.std
        mean = len(dilations) * centre
        for dy, dx in offsets:
            mean = mean + shifted(dy, dx)
        mean = mean / n
        var = len(dilations) * (centre - mean) ** 2
        for dy, dx in offsets:
            var = var + (shifted(dy, dx) - mean) ** 2
        scale = 1e-8 + 0.1 * (var / (n - 1)).sqrt()
        aff = torch.stack([((centre - shifted(dy, dx)).abs() / scale).mean(dim=0) for dy, dx in offsets])
        out[:, r0:r1] = (-aff).softmax(dim=0)
    return out


def _pamr_region(image: torch.Tensor, logits: torch.Tensor, steps: int, dilations: tuple[int, ...]) -> torch.Tensor:
    """PAMR on one region held whole: per step, every band of output rows takes its K weighted
    neighbours while they are in cache, from one replicate-padded buffer into another (no copies)."""
    _, h, w = image.shape
    aff = _affinity(image, dilations)
    pad = max(dilations)
    offsets = _offsets(dilations)
    q = logits.shape[0]
    chunk = min(q, max(1, _CHUNK_BYTES // (2 * logits.element_size() * (h + 2 * pad) * (w + 2 * pad))))
    src = logits.new_empty(chunk, h + 2 * pad, w + 2 * pad)
    dst = torch.empty_like(src)
    out = torch.empty_like(logits)
    for start in range(0, q, chunk):
        c = min(chunk, q - start)
        a, b = src[:c], dst[:c]
        a[:, pad : pad + h, pad : pad + w] = logits[start : start + c]
        _replicate_border(a, pad)
        rows = _strip_rows(2 * c + 2 * len(offsets), w + 2 * pad, logits.element_size())
        for _ in range(steps):
            for r0 in range(0, h, rows):
                r1 = min(r0 + rows, h)
                target = b[:, pad + r0 : pad + r1, pad : pad + w]
                for k, (dy, dx) in enumerate(offsets):
                    neighbour = a[:, pad + r0 + dy : pad + r1 + dy, pad + dx : pad + dx + w]
                    if k == 0:
                        torch.mul(aff[k, r0:r1], neighbour, out=target)
                    else:
                        target.addcmul_(aff[k, r0:r1], neighbour)
            _replicate_border(b, pad)
            a, b = b, a
        out[start : start + c] = a[:, pad : pad + h, pad : pad + w]
    return out


@torch.no_grad()
def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int = 10, dilations: tuple[int, ...] = (8, 16),
         tile: int = _TILE) -> torch.Tensor:
    """Refine Q x H x W logits with PAMR guided by a 3 x H x W image (same size), `steps` iterations.

    An image of more than (tile + 2 halo)^2 pixels, halo = steps * max(dilations) (exactly the reach
    of the refinement), is processed in tiles of `tile` pixels widened by the halo, so the result
    equals the untiled one while memory stays bounded; query channels are processed in chunks.
    """
    if steps <= 0:
        return logits
    image = image.to(logits.dtype)
    _, h, w = logits.shape
    halo = steps * max(dilations)
    if h * w <= (tile + 2 * halo) ** 2:
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


def mask_vote(labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """CorrCLIP's map correction: every region of the H x W id map `masks` except the one with the
    smallest id (the pixels covered by no mask) takes its most frequent label; ties go to the smallest
    label (what the release's torch.mode gives on CPU). Returns a new H x W label map."""
    ids, region = np.unique(masks, return_inverse=True)
    region = region.reshape(labels.shape)
    if len(ids) < 2:
        return labels.copy()
    c = int(labels.max()) + 1
    counts = np.bincount((region.astype(np.int64) * c + labels).ravel(), minlength=len(ids) * c).reshape(len(ids), c)
    winner = counts.argmax(axis=1)  # first maximum: the smallest label among ties
    return np.where(region > 0, winner[region], labels)
