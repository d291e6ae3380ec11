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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import GlaclipError
from .families import Family, _vfm_features
from .trident_refine import SAM_STRIDE, sam_size
from .windows import WindowGrid

SAM_MODELS = {"sam-vit-b": ("vit_b", "sam_vit_b_01ec64.pth"), "sam-vit-l": ("vit_l", "sam_vit_l_0b3195.pth"),
              "sam-vit-h": ("vit_h", "sam_vit_h_4b8939.pth")}
DEFAULT_SAM = "sam-vit-b"
_NEEDS_SAM = "Trident needs the segment-anything package: pip install 'glaclip[trident]'"


# ------------------------------------------------------------------------------------ SAM tower


@dataclass
class SamImage:
    """SAM's view of one image part: the image embedding (1 x 256 x 64 x 64), the last block's qkv
    projection output (1 x 64 x 64 x 3D), SAM's input size (long side 1024) and the part's size."""

    features: torch.Tensor
    qkv: torch.Tensor | None
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def valid_grid(self) -> tuple[int, int]:
        """SAM's tokens that cover the image (the rest is padding): input size // 16."""
        return self.input_size[0] // SAM_STRIDE, self.input_size[1] // SAM_STRIDE


@dataclass
class SamContext:
    """One image's SAM state: the parts aggregated over (one, or the left and right halves) and the
    whole image's state for the prompt refinement."""

    parts: list[SamImage]
    whole: SamImage


class PendingSam:
    """An image's SAM state, computed when first asked for (`value`), so that a batch of images does
    not hold every image's SAM tensors at once."""

    def __init__(self, sam: "SamTower", rgb: np.ndarray, halves: bool):
        self._args: tuple | None = (sam, rgb, halves)
        self._value: SamContext | None = None

    @property
    def value(self) -> SamContext:
        if self._value is None:
            sam, rgb, halves = self._args
            self._value, self._args = sam.context(rgb, halves), None
        return self._value


@dataclass
class SamTower:
    """A `segment_anything` Sam model (frozen); `encode` runs its image encoder with a hook."""

    model: Any
    name: str
    weights: str

    def __post_init__(self):
        # segment_anything encodes prompt coordinates in float32 whatever the model's precision: in fp64
        # its random Fourier features stay float32 (their products are then promoted to fp64)
        if self.dtype == torch.float64:
            self.model.prompt_encoder.pe_layer.float()

    @property
    def dtype(self) -> torch.dtype:
        return self.model.image_encoder.patch_embed.proj.weight.dtype

    @property
    def decoder_dtype(self) -> torch.dtype:
        return next(self.model.mask_decoder.parameters()).dtype

    def predictor(self):
        from segment_anything import SamPredictor

        return SamPredictor(self.model)

    def encode(self, rgb: np.ndarray, keep_qkv: bool = True) -> SamImage:
        """H x W x 3 uint8 RGB (already a multiple of 16) -> its SamImage, as SamPredictor.set_image
        computes it; the last block's qkv output is captured by a forward hook when keep_qkv."""
        blk = self.model.image_encoder.blocks[-1]
        if getattr(blk, "window_size", 0) != 0:
            raise GlaclipError(f"SAM {self.name}: its last image-encoder block is not a global-attention block")
        captured: dict[str, torch.Tensor] = {}
        handle = blk.attn.qkv.register_forward_hook(lambda mod, inp, out: captured.__setitem__("qkv", out))
        try:
            predictor = self.predictor()
            predictor.set_image(np.ascontiguousarray(rgb))
        finally:
            handle.remove()
        return SamImage(predictor.features, captured["qkv"] if keep_qkv else None,
                        tuple(predictor.input_size), tuple(predictor.original_size))

    def context(self, rgb: np.ndarray, halves: bool = False) -> SamContext:
        """The SAM state of an original image: resized up to multiples of 16 (OpenCV bilinear), then
        encoded whole, or as its left and right halves plus (for the refinement) whole."""
        part = sam_input(rgb)
        if not halves:
            whole = self.encode(part)
            return SamContext([whole], replace(whole, qkv=None))
        w = part.shape[1]
        parts = [self.encode(part[:, : w // 2]), self.encode(part[:, w // 2 :])]
        return SamContext(parts, self.encode(part, keep_qkv=False))

    def identity(self) -> dict:
        from .encoding import _digest
        from .text_cache import model_fingerprints, weights_fingerprint

        parts = {"structure": lambda: _digest(repr(self.model))}
        if self.weights != "random":
            parts["weights"] = lambda: weights_fingerprint(list(self.model.state_dict().items()))
        prints = model_fingerprints(self.model, parts)
        return {"model": self.name, "structure": prints["structure"], "weights": prints.get("weights", "random")}


def sam_input(rgb: np.ndarray) -> np.ndarray:
    """The image SAM sees: each side rounded up to a multiple of 16, OpenCV bilinear resize."""
    h, w = rgb.shape[:2]
    th, tw = sam_size(h, w)
    return cv2.resize(rgb, (tw, th)) if (th, tw) != (h, w) else rgb


def _segment_anything():
    try:
        import segment_anything
    except ImportError:
        raise GlaclipError(_NEEDS_SAM) from None
    return segment_anything


def load_sam(name: str = DEFAULT_SAM, weights: str | Path | None = None, device: str | torch.device = "auto",
             dtype: str | torch.dtype = "auto") -> SamTower:
    """Build SAM (`SAM_MODELS` name) with `segment_anything.sam_model_registry`; weights: a checkpoint
    file (the release's format: the registry model's state dict), or 'random' (tests). None:
    `MissingWeights` naming the file. In fp16/bf16 the prompt encoder and mask decoder stay fp32 (as
    the release); in fp32/fp64 everything runs in that precision."""
    from .checkpoints import build, load_into, read_state_dict
    from .devices import resolve_device, resolve_dtype
    from .models import MissingWeights

    if name not in SAM_MODELS:
        raise GlaclipError(f"unknown SAM model {name!r}; use one of {', '.join(SAM_MODELS)}")
    kind, filename = SAM_MODELS[name]
    registry = _segment_anything().sam_model_registry
    dev = resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)

    def make(where: str):
        return registry[kind](checkpoint=None)

    if weights is None:
        raise MissingWeights(f"SAM {name} ({filename} from the segment-anything release; --sam-weights FILE, "
                             "or 'random' to try)")
    if str(weights) == "random":
        model, source = make("cpu"), "random"
    else:
        path = Path(weights).expanduser()
        sd, _ = read_state_dict(path, "SAM")  # one line for a missing or unreadable file
        model = build(make, empty=True)
        load_into(model, sd, path, "SAM", lambda: make("cpu"))
        source = str(weights)
    model = model.eval().requires_grad_(False).to(device=dev, dtype=dt)
    if dt in (torch.float16, torch.bfloat16):
        model.prompt_encoder.float()
        model.mask_decoder.float()
    return SamTower(model, name, source)


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
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

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
        logits = (q[hd : hd + 1] * attn.scale) @ k[hd : hd + 1].transpose(-2, -1)
        if rel is not None:
            logits = add_decomposed_rel_pos(logits, q[hd : hd + 1], rel[0], rel[1], (h, w), (h, w))
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
        parts = [_vfm_features(self.backbones, crops[i : i + step]) for i in range(0, crops.shape[0], step)]
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

    def identity(self) -> dict:
        return {"sam": self.sam.identity()}

    def refine(self, seg, enc, preset):
        """The SAM prompt refinement of the labels (`trident_refine.refine_segmentation`) when sam_refine."""
        if not preset.decision.sam_refine:
            return seg
        from .trident_refine import refine_segmentation

        return refine_segmentation(seg, enc, self.sam, preset.decision)


__all__ = ["Trident", "SamTower", "SamImage", "SamContext", "load_sam", "sam_input", "clip_input",
           "window_attention", "splice", "sam_weights", "aggregate", "SAM_MODELS", "DEFAULT_SAM"]
