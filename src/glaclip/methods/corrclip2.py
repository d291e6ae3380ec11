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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GlaclipError
from ..models.radio import radio_map  # moved to models/ (bank support of any method); re-exported
from .corrclip import PAD_ID, _MaskGuided, nearest, scope_weights


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

    def features(self, crops, masks=None, context=None, grid=None):
        if masks is None or context is None or grid is None:
            raise ValueError("CorrCLIPv2 needs the windows' region masks, the image's RADIO map and its window grid")
        clip = self.backbones.clip
        f, vfm_grid = window_features(context["radio"].to(crops.device), grid, clip.patch_size)
        ids = nearest(masks, vfm_grid).flatten(1)
        out = []
        step = self.window_batch
        for s in range(0, crops.shape[0], step):
            v_main, v_spatial, semantic = self._clip(crops[s : s + step], ids[s : s + step], vfm_grid)
            for b in range(v_main.shape[0]):
                w = scope_weights(f[s + b], ids[s + b])
                out.append(self._project(w @ v_main[b], w @ v_spatial[b], semantic[b]))
        return {"finals": torch.stack(out)}, vfm_grid

    def final_tokens(self, feats, grid, grid_hw, context=None):
        return feats["finals"].flatten(0, 1)

    def extras(self, context):
        return None


__all__ = ["CorrClip2", "radio_map", "window_features"]
