"""CorrCLIPv2 (the journal extension of CorrCLIP; official code zdk258/CorrCLIP, folder CorrCLIPv2):
CorrCLIP's windows without region merging, correlations from RADIO (CORRCLIP2.md sections 2 and 4).

Per image, once (`prepare`, `radio_map`): the original image in [0, 1] resized bilinearly to RADIO's
nearest supported resolution, RADIO's spatial features, resized bilinearly to the resized CLIP image,
L2-normalised per pixel. Per window (`features`): that map cut at the window's box, padded like the
image (replicate), resized bilinearly to 2x CLIP's patch grid of the padded window (the grid the
correlations live on) and L2-normalised again; then v1's scope reconstruction, region tokens and value
reconstruction (`corrclip.py`) on the RAW region ids (no DBSCAN merging; the padding id 10000 is a
region of its own).

The per-image map also gives the memory bank's region queries (`support_features`, used by the
segmenter with `steps.support`).

`gla-corrclip2` (this project's own combination, `GlaCorrClip2`): the same windows, RADIO features and
CLIP branches, but the scope rule and softmax(4 x cos) over the tokens of ALL windows of the image
(`corrclip.global_scope_attention`, a block of query rows at a time) with the values of all windows.
The region map is the raw ids of the image's one map, so a region continues across windows; the rule's
unsegmented id is the image's smallest, and the window padding (id 10000 in every window) is one
region of its own. Bank support, decision and map correction as CorrCLIPv2. With a single window it is
CorrCLIPv2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GlaclipError
from ..models.radio import radio_map  # moved to models/ (bank support of any method); re-exported
from .corrclip import PAD_ID, _MaskGuided, _rows, global_scope_attention, nearest


def window_features(full: torch.Tensor, grid, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """C x h x w unit features of the resized image -> (B x M x C unit features of the windows on 2x the
    CLIP patch grid of the padded window, that grid): cut, replicate padding, bilinear, L2."""
    ph, pw = grid.padded_size
    size = (ph // patch * 2, pw // patch * 2)
    out = []
    for y1, y2, x1, x2 in grid.boxes:
        w = full[None, :, y1:y2, x1:x2]
        if any(grid.pad):
            w = F.pad(w, grid.pad, mode="replicate")
        w = F.interpolate(w, size=size, mode="bilinear", align_corners=False)
        out.append(F.normalize(w.flatten(2).transpose(1, 2), dim=-1)[0])
    return torch.stack(out), size


class CorrClip2(_MaskGuided):
    """CorrCLIPv2 as released: per window, RADIO's correlations within the raw regions."""

    per_image = True  # all windows of one image (they share the image's RADIO map)
    uses_context = True  # `features` takes the image's context (its RADIO map) and window grid
    mask_pad_id = PAD_ID

    def __init__(self, method, backbones, attention, window_batch=16):
        super().__init__(method, backbones, attention, window_batch)
        if getattr(backbones, "radio", None) is None:
            raise GlaclipError(f"method {method.name} needs RADIO: Segmenter.from_pretrained(..., vfm='c-radio_v3-l', "
                               "vfm_weights=FILE, radio_repo=DIR) or --vfm-weights FILE --radio-repo DIR")

    def prepare(self, rgb, x, window):
        """The image's RADIO map at the resized size (the context of `features` and the bank's queries)."""
        return x, {"radio": radio_map(self.backbones.radio, rgb, tuple(x.shape[-2:]), self.backbones.clip.dtype)}

    def support_features(self, context) -> torch.Tensor:
        return context["radio"]

    def _inputs(self, crops, masks, context, grid) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """The windows' unit RADIO features (B x M x C), their grid and their raw region ids on it (B x M)."""
        if masks is None or context is None or grid is None:
            raise ValueError(f"{self.method.name} needs the windows' region masks, the image's RADIO map and its "
                             "window grid")
        f, vfm_grid = window_features(context["radio"].to(crops.device), grid, self.backbones.clip.patch_size)
        return f, vfm_grid, nearest(masks, vfm_grid).flatten(1)

    def features(self, crops, masks=None, context=None, grid=None):
        f, vfm_grid, ids = self._inputs(crops, masks, context, grid)
        return {"finals": self._scoped(crops, f, ids, vfm_grid)}, vfm_grid

    def final_tokens(self, feats, grid, grid_hw, context=None):
        return feats["finals"].flatten(0, 1)

    def extras(self, context):
        return None


class GlaCorrClip2(CorrClip2):
    """GLA on CorrCLIPv2: raw region ids of one map per image; scope and softmax over all windows' tokens."""

    def features(self, crops, masks=None, context=None, grid=None):
        f, vfm_grid, ids = self._inputs(crops, masks, context, grid)
        b, m = ids.shape
        step = self.window_batch
        branches = [self._clip(crops[s : s + step], ids[s : s + step], vfm_grid) for s in range(0, b, step)]
        v_main, v_spatial, semantic = (torch.cat(t) for t in zip(*branches))
        values = torch.cat([v_main, v_spatial], -1).flatten(0, 1)
        rows = self.attention.block_rows or _rows(b * m, self.attention)
        attended = global_scope_attention(f.flatten(0, 1), ids.flatten(), values, rows)
        main, spatial = attended.view(b, m, -1).chunk(2, dim=-1)
        return {"finals": self._project(main, spatial, semantic)}, vfm_grid


__all__ = ["CorrClip2", "GlaCorrClip2", "radio_map", "window_features"]
