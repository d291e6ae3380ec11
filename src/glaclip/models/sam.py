"""SAM (segment-anything) for Trident: the tower (`SamTower`: image embedding and the last block's qkv
through a hook), its input size, and loading from the release's checkpoint files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..config.backbones import DEFAULT_SAM, SAM_MODELS
from ..errors import GlaclipError, require

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
        return _segment_anything().SamPredictor(self.model)

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
        from .identity import tower_identity

        return tower_identity(self)


def sam_input(rgb: np.ndarray) -> np.ndarray:
    """The image SAM sees: each side rounded up to a multiple of 16, OpenCV bilinear resize."""
    h, w = rgb.shape[:2]
    th, tw = sam_size(h, w)
    return cv2.resize(rgb, (tw, th)) if (th, tw) != (h, w) else rgb


def _segment_anything():
    return require("segment_anything", "masks", "Trident")


def load_sam(name: str = DEFAULT_SAM, weights: str | Path | None = None, device: str | torch.device = "auto",
             dtype: str | torch.dtype = "auto") -> SamTower:
    """Build SAM (`SAM_MODELS` name) with `segment_anything.sam_model_registry`; weights: a checkpoint
    file (the release's format: the registry model's state dict), or 'random' (tests). None:
    `MissingWeights` naming the file. In fp16/bf16 the prompt encoder and mask decoder stay fp32 (as
    the release); in fp32/fp64 everything runs in that precision."""
    from . import builder

    return builder.load(_recipe(), name, weights, device, dtype)


def _recipe():
    from ..errors import MissingWeights
    from . import builder

    def check(name: str) -> str:
        if name not in SAM_MODELS:
            raise GlaclipError(f"unknown SAM model {name!r}; use one of {', '.join(SAM_MODELS)}")
        _segment_anything()  # the install hint before anything else
        return name

    def default(name: str, weights):
        if weights is None:
            raise MissingWeights(f"SAM {name} ({SAM_MODELS[name][1]} from the segment-anything release; "
                                 "--sam-weights FILE, or 'random' to try)")
        return weights

    def make(name: str, where: str, options: dict):
        return _segment_anything().sam_model_registry[SAM_MODELS[name][0]](checkpoint=None)

    def freeze(model, dev: torch.device, dt: torch.dtype):
        model = model.eval().requires_grad_(False).to(device=dev, dtype=dt)
        if dt in (torch.float16, torch.bfloat16):
            model.prompt_encoder.float()
            model.mask_decoder.float()
        return model

    return builder.Recipe(
        "SAM", check=check, default=default, make=make, freeze=freeze,
        route=lambda name, weights: "random" if str(weights) == builder.RANDOM else "file",
        wrap=lambda model, name, source, dev, dt: SamTower(model, name, source))


SAM_STRIDE = 16  # SAM's patch size: the original image is resized up to multiples of it


def sam_size(h: int, w: int) -> tuple[int, int]:
    """The size of the image SAM sees: each side rounded up to a multiple of 16."""
    return -(-h // SAM_STRIDE) * SAM_STRIDE, -(-w // SAM_STRIDE) * SAM_STRIDE


def head_logits(attn, q: torch.Tensor, k: torch.Tensor, rel: list[torch.Tensor] | None,
                size: tuple[int, int]) -> torch.Tensor:
    """One head's attention logits of a SAM image-encoder block (`attn`, its Attention module): scaled
    q-k plus, when `rel` = (rel_pos_h, rel_pos_w), the decomposed relative positions, computed with
    segment_anything's own function over the token grid `size`."""
    add_decomposed_rel_pos = require("segment_anything.modeling.image_encoder", "masks",
                                     "Trident").add_decomposed_rel_pos
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if rel is not None:
        logits = add_decomposed_rel_pos(logits, q, rel[0], rel[1], size, size)
    return logits
