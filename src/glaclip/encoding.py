"""Image encodings: everything of an image that the class list does not touch, kept to answer many
class lists (segment-anything's set_image / predict split).

The per-window, L2-normalised token embeddings (windows x gh x gw x E) are all that the text product
needs; interpolation, stitching and resizing are linear in the logits, so they run after the
product on Q channels, and no full-resolution feature map (H x W x E) is ever built. The resized
image is kept for PAMR's guide. An encoding records the models, method and the settings that shaped
it; another segmenter refuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import GlaclipError
from .windows import WindowGrid

FORMAT = 1
SUFFIX = ".encoding.safetensors"  # also collection.ENCODING_SUFFIX


@dataclass
class ImageEncoding:
    """embeddings: windows x gh x gw x E unit vectors (float32, or float64 for fp64 models);
    grid: the windows on the resized image; size: the original (height, width); resized: the resized,
    CLIP-normalised image 1 x 3 x h x w; identity: what made it (`Segmenter.encoding_identity`);
    image_path: the source file, when known (for overlays)."""

    embeddings: torch.Tensor
    grid: WindowGrid
    size: tuple[int, int]
    resized: torch.Tensor
    identity: dict
    image_path: str | None = None

    @property
    def nbytes(self) -> int:
        return self.embeddings.numel() * self.embeddings.element_size() + \
            self.resized.numel() * self.resized.element_size()

    def save(self, path: str | Path) -> Path:
        """Write as safetensors (tensors + JSON metadata), atomically."""
        from .visualize import atomic_paths

        path = Path(path)
        with atomic_paths([path]) as (tmp,):
            self.save_to(tmp)
        return path

    def save_to(self, path: Path) -> None:
        """Write to exactly this path (no temporary file; `save` is the atomic form)."""
        from safetensors.torch import save_file

        meta = {"format": str(FORMAT), "identity": json.dumps(self.identity), "size": json.dumps(list(self.size)),
                "grid": json.dumps({"height": self.grid.height, "width": self.grid.width,
                                    "boxes": [list(b) for b in self.grid.boxes], "pad": list(self.grid.pad)}),
                "image_path": self.image_path or ""}
        tensors = {"embeddings": self.embeddings.detach().cpu().contiguous(),
                   "resized": self.resized.detach().cpu().contiguous()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "ImageEncoding":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise GlaclipError(f"encoding not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb, resized = f.get_tensor("embeddings"), f.get_tensor("resized")
            if meta.get("format") != str(FORMAT):
                raise ValueError(f"format {meta.get('format')!r}")
            g = json.loads(meta["grid"])
            grid = WindowGrid(g["height"], g["width"], tuple(tuple(b) for b in g["boxes"]), tuple(g["pad"]))
            return cls(emb, grid, tuple(json.loads(meta["size"])), resized, json.loads(meta["identity"]),
                       meta.get("image_path") or None)
        except GlaclipError:
            raise
        except Exception:
            raise GlaclipError(f"{path} is not a glaclip image encoding (written by --save-encoding / "
                               "ImageEncoding.save)") from None


def is_encoding_file(path: str | Path) -> bool:
    return str(path).endswith(SUFFIX)
