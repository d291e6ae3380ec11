"""Test-only views into the segmenter's intermediate results (the library has no use for them)."""

import numpy as np
import torch
import torch.nn.functional as F

from glaclip.config.classes import ClassQueries
from glaclip.steps.decision import class_probabilities, labels_from
from glaclip.steps.postprocess import area_threshold
from glaclip.steps.windows import WindowGrid, crop_windows


def whole_decision(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int, logit_scale: float,
                   prob_thd: float, area_thd: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md step 8 on whole-image Q x H x W logits at once: (labels H x W, class probs C x H x W);
    SCLIP's area threshold (`postprocess.area_threshold`) between the synonym max and the argmax."""
    class_probs = class_probabilities(logits, query_class, num_classes, logit_scale)
    if area_thd is not None:
        class_probs = area_threshold(class_probs, area_thd)
    return labels_from(class_probs, prob_thd), class_probs


@torch.no_grad()
def clip_host_tokens(seg, image: torch.Tensor, grid: WindowGrid) -> tuple[torch.Tensor, tuple[int, int]]:
    """CLIP-only methods: final patch tokens of all windows of a resized image (N x D) and the CLIP grid."""
    feats, grid_hw = seg.window_features(crop_windows(image.to(seg.device), grid))
    return seg.final_tokens(feats, grid, grid_hw), grid_hw


@torch.no_grad()
def image_logits(seg, rgb: np.ndarray, queries: ClassQueries) -> tuple[torch.Tensor, torch.Tensor]:
    """Stitched cosine logits Q x H x W at the original image size (steps 1-7), and the resized,
    CLIP-normalised image 1 x 3 x h x w they came from."""
    enc = seg.encode_images([rgb])[0]
    canvas = seg.canvas(enc, queries)
    return F.interpolate(canvas[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0], enc.resized
