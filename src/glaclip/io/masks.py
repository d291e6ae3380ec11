"""Region-mask files: the class-agnostic region-id maps that mask-guided methods (CorrCLIP) take as input.

A region map is an H x W integer array at the image's original size: pixels sharing an id form one
region, 0 = covered by no mask (the CorrCLIP release's `instance_mask` convention). Files are `.npz`
with the array under the key `instance_mask` (how the release distributes its precomputed masks) or a
single-channel 8- or 16-bit `.png` holding the ids. `load_masks` / `check_masks` return int32 maps;
every problem is one `GlaclipError` line naming the file. Generating masks with SAM 2: `models.sam2`.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import GlaclipError, one_line
from .files import atomic_paths

MASK_KEY = "instance_mask"  # the array's name in a .npz mask file, as the release writes them


MASK_SUFFIXES = (".npz", ".png")


SAVED_SUFFIX = ".masks.npz"  # the masks an output folder keeps beside each image's outputs (`export.output_paths`)


_INT32_MAX = int(np.iinfo(np.int32).max)


_PNG_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B"}  # one channel of integers, read without conversion


# ------------------------------------------------------------------------------------ files and arrays


class MaskSizeError(GlaclipError):
    """A region map of another size than its image's; shape: the map's (H, W)."""

    def __init__(self, message: str, shape: tuple[int, int]):
        super().__init__(message)
        self.shape = shape


def _check_layout(shape: tuple, dtype: np.dtype, size: Sequence[int] | None, what: str) -> None:
    """Shape and dtype rules, checkable from a file's header before its data is read."""
    if len(shape) != 2:
        raise GlaclipError(f"{what} must be an H x W array of region ids, got shape {tuple(shape)}")
    if 0 in shape:
        raise GlaclipError(f"{what} is empty (shape {tuple(shape)})")
    if dtype.kind not in "iu":
        raise GlaclipError(f"{what} holds {dtype} values; region ids must be integers")
    if size is not None and tuple(shape) != (int(size[0]), int(size[1])):
        raise MaskSizeError(f"{what} is {shape[1]}x{shape[0]}, the image is {size[1]}x{size[0]}",
                            (int(shape[0]), int(shape[1])))


def _validated(arr: np.ndarray, size: Sequence[int] | None, what: str) -> np.ndarray:
    _check_layout(arr.shape, arr.dtype, size, what)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise GlaclipError(f"{what} has negative ids (smallest {lo}); ids are 0 (no mask) or positive")
    if hi > _INT32_MAX:
        raise GlaclipError(f"{what} has ids up to {hi}, over the int32 limit {_INT32_MAX}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_masks(masks: Any, size: Sequence[int] | None = None, what: str = "mask map") -> np.ndarray:
    """A region map given to the API (numpy array, torch tensor, PIL image of mode I;16/I/L/P) of
    non-negative integer ids, 0 = no mask, as a C-contiguous H x W int32 array. size: the image's
    original (H, W) or None. Wrong shape, size or dtype, negative ids or ids over int32: GlaclipError,
    one line starting with `what`."""
    if isinstance(masks, torch.Tensor):
        t = masks.detach()
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            kind = str(t.dtype).removeprefix("torch.")
            raise GlaclipError(f"{what} holds {kind} values; region ids must be integers")
        arr = t.cpu().numpy()
    elif isinstance(masks, Image.Image):
        if masks.mode not in _PNG_MODES:
            raise GlaclipError(f"{what} is a PIL image of mode {masks.mode}; region ids need one integer channel "
                               "(mode I;16, I, L or P)")
        arr = np.asarray(masks)
    elif isinstance(masks, np.ndarray):
        arr = masks
    else:
        try:
            arr = np.asarray(masks)
        except ValueError:  # ragged nested lists
            arr = np.empty(0, dtype=object)
        if arr.dtype == object:
            raise GlaclipError(f"{what}: unsupported type {type(masks).__name__}; give an H x W integer array")
    if arr.dtype == np.bool_ and isinstance(masks, Image.Image):
        arr = arr.astype(np.uint8)  # mode "1": ids 0/1
    return _validated(arr, size, what)


def load_masks(path: str | Path, size: Sequence[int] | None = None) -> np.ndarray:
    """An H x W int32 region-id map from a `.npz` (array `instance_mask`, any integer dtype) or a
    single-channel 8/16-bit `.png` (ids as stored, no colour conversion). size: the image's original
    (H, W); another size is an error ("FILE: mask map is WxH, the image is WxH"), as are missing or
    corrupt files, a missing key, wrong shape or dtype, negative ids or ids over int32: one line
    naming the file."""
    path = Path(path)
    if not path.exists():
        raise GlaclipError(f"mask file not found: {path}")
    if not path.is_file():
        raise GlaclipError(f"mask file {path} is not a file")
    what = f"{path}: mask map"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arr = _read_npz(path, size, what)
    elif suffix == ".png":
        arr = _read_png(path, size, what)
    else:
        raise GlaclipError(f"{path}: mask files are .npz (array '{MASK_KEY}') or .png (8/16-bit id map)")
    return _validated(arr, size, what)


def _read_npz(path: Path, size: Sequence[int] | None, what: str) -> np.ndarray:
    member = MASK_KEY + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                keys = ", ".join(n[:-4] if n.endswith(".npy") else n for n in names) or "none"
                raise GlaclipError(f"{path}: no '{MASK_KEY}' array in this .npz (keys found: {keys})")
            with zf.open(member) as f:  # the header first: wrong maps fail before their data is read
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            _check_layout(shape, dtype, size, what)
            with zf.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    except GlaclipError:
        raise
    except Exception as exc:  # zip, zlib, header and memory errors of a corrupt file
        raise GlaclipError(f"{path}: not a readable .npz mask file ({one_line(exc, 160)})") from None


def _read_png(path: Path, size: Sequence[int] | None, what: str) -> np.ndarray:
    from .images import check_size, open_header

    try:
        img = open_header(path)  # glaclip's pixel limit in place of Pillow's bomb guard, as for images
        if img.format != "PNG":
            raise GlaclipError(f"{path}: not a PNG file (it is {img.format or 'of unknown format'})")
        if img.mode not in _PNG_MODES:
            raise GlaclipError(f"{path}: a mask PNG must hold one channel of region ids (8- or 16-bit), "
                               f"this one is {img.mode}")
        _check_layout((img.size[1], img.size[0]), np.dtype(np.int32), size, what)
        check_size(*img.size, what=f"mask file {path}")
        img.load()
        arr = np.asarray(img)
    except GlaclipError:
        raise
    except Exception as exc:  # Pillow's many errors for truncated or garbled files
        raise GlaclipError(f"{path}: not a readable PNG mask file ({one_line(exc, 160)})") from None
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def as_masks(masks: Any, size: Sequence[int]) -> torch.Tensor:
    """An H x W integer region-id map (numpy, torch, PIL) at the image's size -> int32 CPU tensor
    (`check_masks`: one line for a wrong size, dtype or id range)."""
    return torch.from_numpy(check_masks(masks, size, what="region mask map"))


def save_masks(path: str | Path, masks: Any) -> None:
    """Write a region map atomically (temporary name, then rename) as `.npz` (compressed, int32 under
    `instance_mask`) or 16-bit `.png` (ids over 65535 are an error). `load_masks` reads it back exactly.
    A file already at `path` is replaced: whether that is allowed is the caller's decision."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise GlaclipError(f"{path}: mask files are .npz or .png")
    arr = check_masks(masks, None, what=f"mask map for {path}")
    if suffix == ".png" and int(arr.max()) > 65535:
        raise GlaclipError(f"{path}: ids up to {int(arr.max())} do not fit a 16-bit PNG; save the masks as .npz")
    try:
        with atomic_paths([path]) as (tmp,):
            if suffix == ".npz":
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **{MASK_KEY: arr})
            else:
                Image.fromarray(arr.astype(np.uint16)).save(tmp, format="PNG")
    except OSError as exc:
        raise GlaclipError(f"cannot write {path}: {one_line(exc)}") from None


def fingerprint(masks: Any) -> str:
    """A short hex digest (sha256, 16 characters) of a region map's shape and int32 ids: equal maps,
    equal fingerprints, whatever integer dtype or container they came in."""
    arr = np.ascontiguousarray(check_masks(masks), dtype="<i4")
    h = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]};".encode())
    h.update(arr)
    return h.hexdigest()[:16]


def paint_masks(anns: Iterable[dict], size: Sequence[int]) -> np.ndarray:
    """SAM-style annotations (dicts with 'segmentation': H x W bool, 'area') -> an H x W int32 id map:
    sorted by area ascending (stable: equal areas keep their order), painted with ids 1..K in that
    order (larger masks overwrite smaller ones), 0 where no mask is."""
    out = np.zeros((int(size[0]), int(size[1])), dtype=np.int32)
    for i, ann in enumerate(sorted(anns, key=lambda a: a["area"]), start=1):
        out[ann["segmentation"]] = i
    return out


def exif_note(image, shape: tuple[int, int], size: tuple[int, int]) -> str:
    """What a mask map of `shape` (H, W) has to do with the EXIF orientation of an image (a file or
    PIL image) displayed at `size`: '' when it has none."""
    from PIL import Image

    try:
        if isinstance(image, Image.Image):
            orientation = image.getexif().get(0x0112, 1)
        else:
            from .images import open_header

            with open_header(Path(image)) as img:
                orientation = img.getexif().get(0x0112, 1)
    except Exception:  # not a readable image (an array, a gone file): nothing to say
        return ""
    if orientation not in range(2, 9):
        return ""
    if orientation >= 5 and tuple(shape) == (size[1], size[0]):
        return ("; the mask map matches the image before its EXIF rotation: mask maps follow the displayed "
                "(EXIF-rotated) orientation")
    return " (the image's size as displayed, after its EXIF rotation)"
