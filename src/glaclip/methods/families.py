"""Method families: how a method turns the windows of an image into final patch tokens.

A family is a small strategy object with one interface, built for one method (`methods.Method`) and
one attention setting over the backbones of a segmenter:

    features(crops, masks)                B windows -> {name: B x ... tensors}, token grid (gh, gw)
    final_tokens(features, grid, grid_hw) one image's windows -> N x D final patch tokens
    embed(final)                          N x D final tokens -> N x E embeddings (default: ln_post, projection)

`features` runs per batch of windows (the segmenter batches windows of several images and splits the
tensors per image by their first dimension; a family with `per_image` gets all windows of one image
at once); `final_tokens` runs per image, so it may attend across all of an image's windows. The names
of the feature tensors are the family's own. `masks` (B x h x w region ids of the windows, padding
`mask_pad_id`) is given to the families that need it (`needs_masks`), else None.

Families: window-local from a VFM (ProxyCLIP), window-local from CLIP's own q/k (CLIP, MaskCLIP,
SCLIP, ClearCLIP, NACLIP), global over all windows (GLA, on VFM keys or on CLIP's q/k), and the
mask-guided ones (CorrCLIP and GLA on it, in `corrclip.py`; CorrCLIPv2 and GLA on it, in
`corrclip2.py`), and the SAM-aggregated one (Trident, in `trident.py`: per-image hooks `prepare`,
`layout`, `extras`, `identity`, `refine`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config.presets import AttentionConfig
from ..config.registry import (
    CLIP_LOCAL,
    GLOBAL,
    MASK_GLOBAL,
    MASK_LOCAL,
    MASK_RADIO,
    MASK_RADIO_GLOBAL,
    SAM_GLOBAL,
    VFM_LOCAL,
    Method,
)
from ..io.images import clip_to_imagenet
from ..models.towers import ClipTower, VfmTower
from ..steps.windows import WindowGrid, token_index
from .attention import gla_attention, proxyclip_attention
from .hosts import global_keys, local_tokens, smoothed_proxy

Features = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Backbones:
    """The frozen towers and their window forwards (possibly compiled), shared by every family."""

    clip: ClipTower
    vfm: VfmTower | None
    vfm_features: Callable[[torch.Tensor], torch.Tensor] | None  # ImageNet-normalised crops -> B x C x gh x gw
    clip_values: Callable[[torch.Tensor], torch.Tensor]  # crops -> B x D x gh' x gw' (last block's values)
    clip_block_input: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int]]]  # tokens entering the last block
    sam: Any = None  # trident.SamTower for the SAM-aggregated family
    radio: Any = None  # models.radio.RadioTower for CorrCLIPv2


class Family:
    """Base of the strategies: per-window features -> one image's final patch tokens."""

    per_image = False  # True: `features` gets all windows of one image in one call
    mask_pad_id = 0  # region id of window padding in the masks given to `features`
    single_map = False  # True: one token map per image (`layout`), resized straight to the image (no stitching)
    uses_context = False  # True (per-image families): `features(crops, masks, context=, grid=)` gets `prepare`'s

    def __init__(self, method: Method, backbones: Backbones, attention: AttentionConfig, window_batch: int = 16):
        self.method, self.backbones, self.attention = method, backbones, attention
        self.window_batch = window_batch  # windows per backbone forward, for families that batch themselves

    @property
    def needs_masks(self) -> bool:
        return self.method.needs_masks

    def features(self, crops: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[Features, tuple[int, int]]:
        raise NotImplementedError

    def final_tokens(self, feats: Features, grid: WindowGrid, grid_hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, final: torch.Tensor) -> torch.Tensor:
        return self.backbones.clip.head(final)

    # Per-image hooks of the families that need more than the windows (Trident: SAM); defaults do nothing.
    def prepare(self, rgb, x: torch.Tensor, window) -> tuple[torch.Tensor, Any]:
        """The original image (H x W x 3 uint8) and its resized CLIP input -> (the CLIP input to cut into
        windows, a per-image context for `final_tokens`, or None)."""
        return x, None

    def layout(self, grid: WindowGrid, grid_hw: tuple[int, int], context: Any
               ) -> tuple[WindowGrid, tuple[int, int, int]]:
        """The encoding's window grid and token layout (windows, gh, gw) of `final_tokens`' output."""
        return grid, (grid.count, *grid_hw)

    def support_features(self, context: Any) -> torch.Tensor | None:
        """C x h x w unit features of the resized image for a memory bank's region queries (CorrCLIPv2: RADIO's)."""
        return None

    def extras(self, context: Any) -> dict[str, torch.Tensor] | None:
        """Tensors an encoding keeps for the steps after the decision (`refine`)."""
        return None

    def refine(self, seg, enc, preset):
        """A Segmentation after the decision -> the final one (Trident: SAM prompt refinement)."""
        return seg


def vfm_features(b: Backbones, crops: torch.Tensor) -> tuple[Features, tuple[int, int]]:
    """Normalised VFM keys and CLIP values resized to the VFM grid: B x L x C and B x L x D."""
    k = b.vfm_features(clip_to_imagenet(crops))
    v = F.interpolate(b.clip_values(crops), size=k.shape[-2:], mode="bilinear", align_corners=False)
    return {"keys": F.normalize(k.flatten(2).transpose(1, 2), dim=-1),
            "values": v.flatten(2).transpose(1, 2)}, tuple(k.shape[-2:])


class VfmLocal(Family):
    """ProxyCLIP: VFM affinities as attention over CLIP's values, within each window."""

    def features(self, crops, masks=None):
        return vfm_features(self.backbones, crops)

    def final_tokens(self, feats, grid, grid_hw):
        out = proxyclip_attention(feats["keys"], feats["values"], self.attention)
        return self.backbones.clip.out_proj(out.flatten(0, -2))


class ClipLocal(Family):
    """A CLIP recipe on the last block within each window (`hosts.local_tokens`); nothing to do per image."""

    def features(self, crops, masks=None):
        tokens, grid_hw = self.backbones.clip_block_input(crops)
        return {"finals": local_tokens(self.method, self.backbones.clip, tokens, grid_hw, self.attention)}, grid_hw

    def final_tokens(self, feats, grid, grid_hw):
        return feats["finals"].flatten(0, 1)


class Global(Family):
    """GLA: every token attends to the tokens of all windows (proxy anchor, dynamic normalisation),
    keyed by the VFM or by CLIP's q and/or k (one GLA attention per key, summed)."""

    def features(self, crops, masks=None):
        if self.method.needs_vfm:
            return vfm_features(self.backbones, crops)
        tokens, grid_hw = self.backbones.clip_block_input(crops)
        keys, values, raw = global_keys(self.method, self.backbones.clip, tokens)
        feats = {f"key{i}": key for i, key in enumerate(keys)}
        feats["values"] = values
        if self.method.smoothed_init:
            feats["raw"] = raw
        return feats, grid_hw

    def final_tokens(self, feats, grid, grid_hw):
        clip = self.backbones.clip
        keys = [t for name, t in feats.items() if name.startswith("key")]  # 'keys' (VFM) or 'key0', 'key1', ...
        init = None
        if self.method.smoothed_init:
            index = token_index(grid, grid_hw, clip.patch_size).to(feats["raw"].device)
            init = smoothed_proxy(feats["raw"].flatten(0, 1), index, grid_hw)
        values = feats["values"].flatten(0, 1)
        attended = sum(gla_attention(k.flatten(0, 1), values, grid.count, self.attention, init) for k in keys)
        return clip.out_proj(attended)


# A family's class, or "module:Class" for the families in their own module (imported when first used).
FAMILIES: dict[str, type[Family] | str] = {VFM_LOCAL: VfmLocal, CLIP_LOCAL: ClipLocal, GLOBAL: Global,
                                           MASK_LOCAL: "corrclip:CorrClip", MASK_GLOBAL: "corrclip:GlaCorrClip",
                                           SAM_GLOBAL: "trident:Trident", MASK_RADIO: "corrclip2:CorrClip2",
                                           MASK_RADIO_GLOBAL: "corrclip2:GlaCorrClip2"}


def family_for(method: Method, backbones: Backbones, attention: AttentionConfig, window_batch: int = 16) -> Family:
    """The strategy object that runs `method` with these settings."""
    cls = FAMILIES[method.family]
    if isinstance(cls, str):
        module, name = cls.split(":")
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    return cls(method, backbones, attention, window_batch)
