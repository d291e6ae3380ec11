"""Trident (Shi et al., ICCV 2025; official code YuHengsss/Trident): the SAM-aggregated family
(MASKHOSTS.md section 7).

Per image:
  1. the CLIP input is the resized image brought to multiples of the patch size (`clip_input`), cut
     into windows that are batched together;
  2. per window, ProxyCLIP's last layer on the VFM's output tokens (`window_attention`): cosine
     similarities, minus beta x their mean over ALL windows of the image, times gamma, negatives
     masked, softmax over CLIP's last-block values (resized to the VFM grid), out_proj, no residual;
  3. the window tokens are spliced on the image's token canvas, overlaps averaged (`splice`), and
     the canvas is resized bilinearly to SAM's grid;
  4. SAM's last-block attention (read through a hook on the `segment_anything` image encoder's qkv
     projection, `SamTower.encode`) is kept where the cosine of SAM's value vectors exceeds
     min(cos_fac x its row mean, 0.9) (a negative threshold becomes 0.6 unless `refine_neg_cos`),
     averaged over heads and row-normalised (`sam_weights`); it aggregates the canvas tokens;
  5. ln_post and the projection. The logits live on SAM's grid and are resized to the image.
After the decision, the SAM prompt refinement (`trident_refine.sam_refinement`) when `sam_refine`.

SAM sees the original image resized up to multiples of 16 (long side 1024 inside SAM); Cityscapes'
protocol runs it on the left and right halves separately (`sam_halves`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GlaclipError
from ..models.sam import PendingSam, SamImage, SamTower, head_logits
from ..steps.windows import WindowGrid
from .families import Family, vfm_features

# ------------------------------------------------------------------------------------ the steps


def clip_input(x: torch.Tensor, stride: int, crop: int) -> torch.Tensor:
    """1 x 3 x h x w (normalised, resized) -> the release's CLIP input: unchanged when both sides are
    multiples of `stride`; else the long side rounded up to a multiple, the short side scaled with it
    (int()), both rounded up to multiples and at least `crop`, bilinear (align_corners False). (A
    side below `crop` whose image needs no resize, where the release fails, takes the resize too.)"""
    h, w = x.shape[-2:]
    if h % stride == 0 and w % stride == 0 and min(h, w) >= crop:
        return x
    longer = max(h, w)
    target = -(-longer // stride) * stride
    nh, nw = int(h * target / longer), int(w * target / longer)
    nh, nw = max(-(-nh // stride) * stride, crop), max(-(-nw // stride) * stride, crop)
    return F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False)


def window_attention(keys: torch.Tensor, values: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """ProxyCLIP's last layer over the windows of ONE image: keys B x M x C (unit), values B x M x D ->
    B x M x D. (sim - beta x mean) x gamma with ONE mean over all B x M x M similarities, entries
    below 0 masked (a row with none >= 0 keeps its maximum, where the release gives NaN), softmax."""
    acc = torch.float64 if keys.dtype == torch.float64 else torch.float32
    total = keys.new_zeros((), dtype=acc)
    for k in keys:
        total = total + (k @ k.T).to(acc).sum()
    mean = total / (keys.shape[0] * keys.shape[1] ** 2)
    out = values.new_empty(values.shape)
    for b, k in enumerate(keys):
        sim = ((k @ k.T).to(acc) - beta * mean) * gamma
        thresh = sim.amax(dim=-1, keepdim=True).clamp_max(0.0)
        sim = sim.masked_fill(sim < thresh, float("-inf"))
        out[b] = sim.softmax(dim=-1).to(values.dtype) @ values[b]
    return out


def splice(tokens: torch.Tensor, grid_hw: tuple[int, int], grid: WindowGrid, patch: int) -> torch.Tensor:
    """Window tokens (B x M x D on the windows' token grid `grid_hw`) -> D x Hc x Wc: each window put on
    the image's token canvas at its box (in patches of `patch`, times the ratio of the token grid to
    the window's patch grid), overlaps averaged. A token grid that is no multiple of the patch grid is
    resized bilinearly to round(ratio) x the patch grid first (as the release)."""
    b, _, d = tokens.shape
    gh, gw = grid_hw
    wh, ww = grid.window_size
    ph, pw = wh // patch, ww // patch
    maps = tokens.transpose(1, 2).reshape(b, d, gh, gw)
    if gw % pw:
        ratio = int(round(gh / ph))
        maps = F.interpolate(maps, size=(ph * ratio, pw * ratio), mode="bilinear", align_corners=False)
    else:
        ratio = gw // pw
    hc, wc = grid.height // patch * ratio, grid.width // patch * ratio
    canvas = tokens.new_zeros(d, hc, wc)
    count = tokens.new_zeros(1, hc, wc)
    for k, (y1, y2, x1, x2) in enumerate(grid.boxes):
        ys, xs = slice(y1 // patch * ratio, y2 // patch * ratio), slice(x1 // patch * ratio, x2 // patch * ratio)
        canvas[:, ys, xs] += maps[k]
        count[:, ys, xs] += 1
    return canvas / count


def sam_weights(sam: SamImage, attn, cos_fac: float, refine_neg_cos: bool) -> torch.Tensor:
    """SAM's filtered attention over its valid tokens: Nv x Nv rows summing to 1 (Nv = valid grid).

    From the hooked qkv of SAM's last block (`attn`: that block's Attention module): per head the
    softmax attention over all tokens (scaled q-k plus the decomposed relative positions, with
    `segment_anything`'s own function), cut to the valid tokens; kept where the cosine of the value
    vectors exceeds min(cos_fac x its row mean over heads and valid columns, 0.9) (a negative
    threshold becomes 0.6 unless refine_neg_cos); the mean over heads, divided by its row sums.
    One head's N x N matrix at a time (N <= 64 x 64)."""
    qkv = sam.qkv
    acc = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    b, h, w, _ = qkv.shape
    heads = attn.num_heads
    q, k, v = qkv.to(acc).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, h * w, -1)
    hv, wv = sam.valid_grid
    idx = (torch.arange(hv, device=qkv.device)[:, None] * w + torch.arange(wv, device=qkv.device)[None, :]).flatten()
    unit = F.normalize(v[:, idx], dim=-1)
    sims = torch.zeros(idx.numel(), idx.numel(), dtype=acc, device=qkv.device)
    for hd in range(heads):
        sims += unit[hd] @ unit[hd].T
    thresh = cos_fac * (sims / heads).mean(dim=-1, keepdim=True)
    del sims
    if not refine_neg_cos:
        thresh = torch.where(thresh < 0.0, 0.6, thresh)
    thresh = torch.where(thresh > 0.9, 0.9, thresh)
    kept = torch.zeros(idx.numel(), idx.numel(), dtype=acc, device=qkv.device)
    rel = [p.to(acc) for p in (attn.rel_pos_h, attn.rel_pos_w)] if attn.use_rel_pos else None
    for hd in range(heads):
        logits = head_logits(attn, q[hd : hd + 1], k[hd : hd + 1], rel, (h, w))
        probs = logits.softmax(dim=-1)[0][idx][:, idx]
        del logits
        kept += torch.where(unit[hd] @ unit[hd].T > thresh, probs, torch.zeros_like(probs))
    kept = kept / heads
    return kept / kept.sum(dim=-1, keepdim=True)


def aggregate(canvas: torch.Tensor, sam: SamImage, attn, cos_fac: float, refine_neg_cos: bool) -> torch.Tensor:
    """D x Hc x Wc canvas -> hv x wv x D: resized bilinearly to SAM's valid grid, weighted by `sam_weights`."""
    hv, wv = sam.valid_grid
    tokens = F.interpolate(canvas[None], size=(hv, wv), mode="bilinear", align_corners=False)[0]
    weights = sam_weights(sam, attn, cos_fac, refine_neg_cos).to(canvas.dtype)
    return (weights @ tokens.flatten(1).T).view(hv, wv, -1)


# ------------------------------------------------------------------------------------ the family


class Trident(Family):
    """Trident as released: ProxyCLIP per window (one mean over the image's windows), the windows
    spliced on the image, aggregated by SAM's filtered attention; logits on SAM's grid."""

    per_image = True
    single_map = True  # one token map per image (SAM's grid), resized straight to the image

    def __init__(self, method, backbones, attention, window_batch=16):
        super().__init__(method, backbones, attention, window_batch)
        if getattr(backbones, "sam", None) is None:
            raise GlaclipError(f"method {method.name} needs SAM: Segmenter.from_pretrained(..., sam='sam-vit-b', "
                               "sam_weights=FILE) or --sam sam-vit-b --sam-weights FILE")
        self.sam: SamTower = backbones.sam

    def prepare(self, rgb: np.ndarray, x: torch.Tensor, window) -> tuple[torch.Tensor, PendingSam]:
        """The CLIP input (`clip_input`) and the image's SAM state (`SamTower.context`, when needed)."""
        if window.crop == 0 or window.pad_multiple > 1 and window.crop % window.pad_multiple:
            raise GlaclipError(f"trident splices unpadded windows: crop ({window.crop}) must be a positive multiple "
                               f"of pad_multiple ({window.pad_multiple})")
        return (clip_input(x, self.backbones.clip.patch_size, window.crop),
                PendingSam(self.sam, rgb, self.attention.sam_halves))

    def features(self, crops, masks=None):
        step = self.window_batch
        parts = [vfm_features(self.backbones, crops[i : i + step]) for i in range(0, crops.shape[0], step)]
        keys, values = torch.cat([p[0]["keys"] for p in parts]), torch.cat([p[0]["values"] for p in parts])
        attended = window_attention(keys, values, self.attention.beta, self.attention.gamma)
        return {"tokens": self.backbones.clip.out_proj(attended)}, parts[0][1]

    def final_tokens(self, feats, grid, grid_hw, pending: PendingSam | None = None):
        if pending is None:
            raise ValueError("Trident's final tokens need the image's SAM state (from `prepare`)")
        context = pending.value
        clip = self.backbones.clip
        canvas = splice(feats["tokens"], grid_hw, grid, clip.patch_size)
        attn = self.sam.model.image_encoder.blocks[-1].attn
        a = self.attention
        if len(context.parts) == 1:
            out = aggregate(canvas, context.parts[0], attn, a.cos_fac, a.refine_neg_cos)
        else:  # halves: the canvas split at its middle column, each half on its own SAM grid
            half = canvas.shape[-1] // 2
            out = torch.cat([aggregate(c, s, attn, a.cos_fac, a.refine_neg_cos)
                             for c, s in zip((canvas[..., :half], canvas[..., half:]), context.parts)], dim=1)
        for part in context.parts:
            part.qkv = None  # used: not kept with the batch's other images
        return out.flatten(0, 1)

    def layout(self, grid, grid_hw, pending):
        """One map on SAM's grid, recorded as a single window covering the resized image."""
        context = pending.value
        hv = context.parts[0].valid_grid[0]
        wv = sum(p.valid_grid[1] for p in context.parts)
        return WindowGrid(grid.height, grid.width, ((0, grid.height, 0, grid.width),), (0, 0, 0, 0)), (1, hv, wv)

    def extras(self, pending: PendingSam) -> dict[str, torch.Tensor]:
        return {"sam_features": pending.value.whole.features}

    def refine(self, seg, enc, preset):
        """The SAM prompt refinement of the labels (`trident_refine.refine_segmentation`) when sam_refine."""
        if not preset.decision.sam_refine:
            return seg
        from .trident_refine import refine_segmentation

        return refine_segmentation(seg, enc, self.sam, preset.decision)
