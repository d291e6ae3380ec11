"""Reading images of any common kind into HxWx3 uint8 RGB, and METHOD.md step 1 (resize + normalise)."""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import GlaclipError, one_line

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

MAX_PIXELS_ENV = "GLACLIP_MAX_PIXELS"
_OPEN_LOCK = threading.Lock()
DEFAULT_MAX_PIXELS = 50_000_000  # full-resolution logits and probabilities grow with the pixel count


def max_pixels() -> int:
    """The largest image (width x height) accepted: $GLACLIP_MAX_PIXELS, else 50 million."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
        if value <= 0:
            raise ValueError
    except ValueError:
        raise GlaclipError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}") from None
    return value


def check_size(width: int, height: int, what: str = "image", limit: int | None = None) -> None:
    limit = limit or max_pixels()
    if width * height > limit:
        raise GlaclipError(f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                           f"{limit / 1e6:g} (set {MAX_PIXELS_ENV} to raise it; memory grows with the pixel count)")


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(image: ImageInput) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array from a path, PIL image, array or tensor.

    Grayscale, RGBA/LA (alpha dropped), palette, CMYK and 16-bit or float images are converted.
    Arrays may be HxW, HxWx1/3/4; tensors may also be 3xHxW. Floats must lie in [0, 1] (anything
    else is an error); uint8 is 0..255. 16-bit data (uint16 arrays, Pillow's I;16 modes, mode I
    decoded from 16-bit samples such as a 16-bit PNG) is divided by 257 whatever its values; other
    integer arrays (int32, int64, ...) by 257 only when a value exceeds 255, else taken as 0..255.
    """
    if isinstance(image, (str, os.PathLike)):
        img, bits = _open(Path(image), str(image))
        return _pil_to_rgb(img, bits)
    if isinstance(image, Image.Image):
        check_size(*image.size)
        return _pil_to_rgb(image, _bit_depth(image))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        return _array_to_rgb(t.numpy())
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise GlaclipError(f"unsupported image type {type(image).__name__}; give a path, PIL image, array or tensor")


def open_header(path: Path) -> Image.Image:
    """Image.open (the header only) with glaclip's pixel limit in place of Pillow's decompression-bomb
    guard, which Image.open applies from a process-wide setting: the guard is lifted only around the
    header read, one thread at a time. The caller checks the size (`check_size`) before loading."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def not_found(text: str) -> GlaclipError:
    """'image not found' naming the image as the user typed it (Path() would turn '//' into '/')."""
    url = " (URLs are not read: download the image and give its path)" if _URL.match(text) else ""
    return GlaclipError(f"image not found: {text}{url}")


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _open(path: Path, text: str) -> tuple[Image.Image, int | None]:
    """The decoded image and its sample bit depth where it matters (`_bit_depth`, read before decoding)."""
    if not path.exists():
        raise not_found(text)
    if path.is_dir():
        raise GlaclipError(f"expected an image file, got a directory: {text}")
    return _decode(path, text)


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    """The bytes of an image file -> HxWx3 uint8 RGB, exactly as `load_image` reads that file (`name`
    stands for it in messages)."""
    return _pil_to_rgb(*_decode(io.BytesIO(data), name))


def _decode(source, text: str) -> tuple[Image.Image, int | None]:
    try:
        img = open_header(source)
        check_size(*img.size, what=f"image {text}")
        bits = _bit_depth(img)
        img.load()
    except UnidentifiedImageError:
        raise GlaclipError(f"cannot read image {text}: not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise GlaclipError(f"cannot read image {text}: {one_line(exc)}") from None
    return img, bits


def _bit_depth(img: Image.Image) -> int | None:
    """16 for 16-bit samples: the I;16 modes, or mode I decoded from 16-bit raw data (a 16-bit PNG as
    older Pillow opens it); else None (the values decide, `_array_to_rgb`)."""
    if img.mode.startswith("I;16"):
        return 16
    if img.mode != "I":
        return None
    for tile in img.tile or ():  # before decoding: the raw mode of the samples
        args = tile[-1]
        raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
        if isinstance(raw, str) and raw.startswith("I;16"):
            return 16
    if img.format == "PNG" and getattr(img, "filename", None):
        try:
            with open(img.filename, "rb") as f:
                head = f.read(26)
        except OSError:
            return None
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return int(head[24])
    return None


def _pil_to_rgb(img: Image.Image, bits: int | None = None) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not make an image unreadable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.array(img), bits)
    if img.mode != "RGB":
        if "transparency" in img.info:  # palette/gray with a transparent colour: via RGBA, alpha dropped
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """bits: 16 when the data is 16-bit whatever its dtype (uint16 arrays are)."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise GlaclipError(f"image array must be HxW, HxWx3 or HxWx4, got shape {tuple(arr.shape)}")
    arr = arr[..., :3]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise GlaclipError("image is empty (zero height or width)")
    check_size(arr.shape[1], arr.shape[0])
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise GlaclipError("image array contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise GlaclipError(f"float image values must lie in [0, 1], got {lo:g}..{hi:g}; "
                               "pass uint8 for values in 0..255")
        return np.ascontiguousarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        peak = int(arr.max()) if arr.size else 0
        if arr.min() < 0:
            raise GlaclipError("image array has negative values")
        if bits == 16 or arr.dtype.kind == "u" and arr.dtype.itemsize == 2 or peak > 255:  # 16-bit: to 8 bits
            return np.ascontiguousarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise GlaclipError(f"unsupported image array dtype {arr.dtype}")


def resized_shape(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Keep-ratio size: factor = min(max_long/long, short/short_side), rounded half up."""
    factor = min(max_long_side / max(height, width), short_side / min(height, width))
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def preprocess(rgb: np.ndarray, short_side: int, max_long_side: int,
               dtype: torch.dtype = torch.float32, norm: tuple | None = None) -> torch.Tensor:
    """METHOD.md step 1: OpenCV bilinear resize of the uint8 image, then CLIP normalisation -> 1x3xHxW.
    norm: (mean, std) on 0..255 to use instead of CLIP's (a release's own constants)."""
    h, w = resized_shape(rgb.shape[0], rgb.shape[1], short_side, max_long_side)
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != rgb.shape[:2] else rgb
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).to(dtype)
    if norm is None:
        mean = torch.tensor(CLIP_MEAN, dtype=dtype).view(3, 1, 1) * 255.0
        std = torch.tensor(CLIP_STD, dtype=dtype).view(3, 1, 1) * 255.0
    else:
        mean, std = (torch.tensor(v, dtype=dtype).view(3, 1, 1) for v in norm)
    return ((x - mean) / std).unsqueeze(0)


def clip_to_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise Bx3xHxW from CLIP mean/std to ImageNet mean/std (METHOD.md step 3)."""
    def col(v):
        return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * col(CLIP_STD) + col(CLIP_MEAN) - col(IMAGENET_MEAN)) / col(IMAGENET_STD)
