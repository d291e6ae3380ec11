"""Image encodings: everything of an image that the class list does not touch, kept to answer many
class lists (segment-anything's set_image / predict split).

The per-window, L2-normalised token embeddings (windows x gh x gw x E) are all that the text product
needs; interpolation, stitching and resizing are linear in the logits, so they run after the
product on Q channels, and no full-resolution feature map (H x W x E) is ever built. The resized
image is kept for PAMR's guide. An encoding records the models, method and the settings that shaped
it; another segmenter refuses it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GlaclipError
from ..io.files import ENCODING_SUFFIX
from ..models.devices import dtype_name
from .windows import WindowGrid

FORMAT = 2  # 2: weights identified by content, a checksum of the tensors in the metadata


SUFFIX = ENCODING_SUFFIX


EXTRA = "extra."  # prefix of a method's extra tensors in a saved encoding


@dataclass(repr=False)
class ImageEncoding:
    """embeddings: windows x gh x gw x E unit vectors (float32, or float64 for fp64 models);
    grid: the windows on the resized image; size: the original (height, width); resized: the resized,
    CLIP-normalised image 1 x 3 x h x w; identity: what made it (`Segmenter.encoding_identity`,
    with the region masks' fingerprint for mask-guided methods); image_path: the source file, when
    known (for overlays); masks: the image's H x W int32 region-id map when it was given; extras: tensors
    a method keeps for its steps after the decision (Trident: SAM's image embedding 'sam_features')."""

    embeddings: torch.Tensor
    grid: WindowGrid
    size: tuple[int, int]
    resized: torch.Tensor
    identity: dict
    image_path: str | None = None
    masks: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        n, gh, gw, e = self.embeddings.shape
        return (f"ImageEncoding(size={self.size[0]}x{self.size[1]}, resized={self.grid.height}x{self.grid.width}, "
                f"windows={n}, tokens={gh}x{gw}x{e}, dtype={dtype_name(self.embeddings.dtype)}, "
                f"method={self.identity.get('method')}, image_path={self.image_path!r})")

    @staticmethod
    def model_identity(clip, vfm, sam=None, radio=None, aux_clip=None, bank_clip=None) -> dict:
        """The models an encoding depends on, by content (`models.identity.towers_identity`): per tower
        its name, a hash of its module structure and of the weights the image path uses (CLIP's image
        tower, the whole VFM, Trident's SAM, RADIO, an auxiliary or bank CLIP's text tower when given), hashed
        once per loaded model. Where the weights came from (a path, a tag) is not part of it; random
        weights are not hashed."""
        from ..models.identity import towers_identity

        return towers_identity(clip, vfm, sam, radio, aux_clip, bank_clip)

    def with_masks(self, masks) -> "ImageEncoding":
        """This encoding with region masks given beside it (`Segmenter.predict(encoding, masks=...)`):
        the masks it was made with must be these (else one line); one made without masks takes them."""
        if masks is None:
            return self
        from ..io.masks import as_masks

        given = as_masks(masks, self.size)
        if self.masks is None:
            return dataclasses.replace(self, masks=given)
        if not torch.equal(given, self.masks.to(torch.int32).cpu()):
            raise GlaclipError("these region masks differ from the ones the image encoding was made with; encode "
                               "the image again with them")
        return self

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.embeddings, self.resized, *(self.extras or {}).values()])

    def save(self, path: str | Path) -> Path:
        """Write as safetensors (tensors + JSON metadata), atomically."""
        from ..io.files import atomic_paths

        path = Path(path)
        with atomic_paths([path]) as (tmp,):
            self.save_to(tmp)
        return path

    def save_to(self, path: Path) -> None:
        """Write to exactly this path (no temporary file; `save` is the atomic form). An existing file
        keeps its mode; a new one gets the umask's, as every output."""
        from safetensors.torch import save

        tensors = {"embeddings": self.embeddings.detach().cpu().contiguous(),
                   "resized": self.resized.detach().cpu().contiguous()}
        if self.masks is not None:
            tensors["masks"] = self.masks.detach().cpu().to(torch.int32).contiguous()
        for name, t in (self.extras or {}).items():
            tensors[EXTRA + name] = t.detach().cpu().contiguous()
        meta = {"format": str(FORMAT), "identity": json.dumps(self.identity), "size": json.dumps(list(self.size)),
                "grid": json.dumps({"height": self.grid.height, "width": self.grid.width,
                                    "boxes": [list(b) for b in self.grid.boxes], "pad": list(self.grid.pad)}),
                "image_path": self.image_path or "", "checksum": _checksum(tensors)}
        with open(path, "wb") as f:  # safetensors' save_file would make the file 0600
            f.write(save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "ImageEncoding":
        """Read an encoding written by `save`; a damaged one (checksum, non-finite values, shapes that
        do not fit its window grid) is refused with one line naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise GlaclipError(f"encoding not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                # copied out of the file: a tensor at the file's (header-dependent) offset may be misaligned
                # for the matrix kernels, which then round differently (1e-7 in float32)
                tensors = {k: f.get_tensor(k).clone() for k in names if k in ("embeddings", "resized", "masks")
                           or k.startswith(EXTRA)}
        except Exception:
            meta = None
        if meta is None or "format" not in meta or not {"embeddings", "resized"} <= names or \
                not {n for n in names if not n.startswith(EXTRA)} <= {"embeddings", "resized", "masks"}:
            raise GlaclipError(f"{path} is not a glaclip image encoding (written by --save-encoding / "
                               "ImageEncoding.save)")
        if meta["format"] != str(FORMAT):
            raise GlaclipError(f"image encoding {path} has format {meta['format']!r}, this glaclip reads "
                               f"format {FORMAT}; encode the image again")
        try:
            g = json.loads(meta["grid"])
            grid = WindowGrid(int(g["height"]), int(g["width"]), tuple(tuple(int(v) for v in b) for b in g["boxes"]),
                              tuple(int(v) for v in g["pad"]))
            size = tuple(int(v) for v in json.loads(meta["size"]))
            identity = json.loads(meta["identity"])
            checksum = meta["checksum"]
        except (KeyError, TypeError, ValueError):
            raise GlaclipError(f"image encoding {path} is damaged (its metadata does not parse); "
                               "encode the image again") from None
        problem = _problem(tensors, grid, size, identity, checksum)
        if problem:
            raise GlaclipError(f"image encoding {path} is damaged ({problem}); encode the image again")
        extras = {k[len(EXTRA) :]: v for k, v in tensors.items() if k.startswith(EXTRA)} or None
        return cls(tensors["embeddings"], grid, size, tensors["resized"], identity, meta.get("image_path") or None,
                   tensors.get("masks"), extras)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    from ..models.identity import weights_fingerprint

    return weights_fingerprint(sorted(tensors.items()))


def _problem(tensors: dict[str, torch.Tensor], grid: WindowGrid, size: tuple, identity, checksum: str) -> str:
    """What is wrong with a loaded encoding, or ''."""
    emb, resized = tensors["embeddings"], tensors["resized"]
    if _checksum(tensors) != checksum:
        return "its tensors do not match the checksum in its metadata"
    if emb.dtype not in (torch.float32, torch.float64) or resized.dtype != emb.dtype:
        return f"tensor types {emb.dtype}, {resized.dtype}"
    if not isinstance(identity, dict) or len(size) != 2 or min(size) < 1:
        return "its metadata is incomplete"
    if any(len(b) != 4 for b in grid.boxes):
        return "its window grid is inconsistent"
    boxes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in grid.boxes}
    if (not grid.boxes or len(boxes) != 1 or len(grid.pad) != 4 or min(grid.pad) < 0 or
            any(not (0 <= y1 < y2 <= grid.height and 0 <= x1 < x2 <= grid.width) for y1, y2, x1, x2 in grid.boxes)):
        return "its window grid is inconsistent"
    ph, pw = grid.padded_size
    if (emb.ndim != 4 or emb.shape[0] != grid.count or not (1 <= emb.shape[1] <= ph and 1 <= emb.shape[2] <= pw)
            or emb.shape[3] < 1):
        return f"embeddings of shape {tuple(emb.shape)} do not fit its {grid.count} windows of {ph}x{pw}"
    if tuple(resized.shape) != (1, 3, grid.height, grid.width):
        return f"resized image of shape {tuple(resized.shape)} does not fit its {grid.height}x{grid.width} grid"
    if not (torch.isfinite(emb).all() and torch.isfinite(resized).all()):
        return "non-finite values"
    masks = tensors.get("masks")
    if masks is not None and (masks.dtype != torch.int32 or tuple(masks.shape) != tuple(size)):
        return f"region masks of shape {tuple(masks.shape)} do not fit the image's {size[1]}x{size[0]}"
    return ""


def is_encoding_file(path: str | Path) -> bool:
    return str(path).endswith(SUFFIX)
