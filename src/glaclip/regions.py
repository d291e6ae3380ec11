"""Kept for one release: region-mask files moved to `glaclip.io.masks`, SAM 2 generation to
`glaclip.models.sam2`, mask lookup to `glaclip.runs.mask_lookup`."""

from .config.backbones import DEFAULT_SAM2, SAM2_MODELS, Sam2Model
from .io.masks import (
                       MASK_KEY,
                       MASK_SUFFIXES,
                       MaskSizeError,
                       as_masks,
                       check_masks,
                       fingerprint,
                       load_masks,
                       paint_masks,
                       save_masks,
)
from .models.sam2 import AMG_SETTINGS, Sam2Masks, load_sam2
from .runs.mask_lookup import mask_file_for

DEFAULT_SAM = DEFAULT_SAM2

__all__ = ["MASK_KEY", "MASK_SUFFIXES", "load_masks", "check_masks", "MaskSizeError", "as_masks", "save_masks",
           "fingerprint", "paint_masks", "Sam2Model", "SAM2_MODELS", "DEFAULT_SAM", "AMG_SETTINGS", "Sam2Masks",
           "load_sam2", "mask_file_for"]
