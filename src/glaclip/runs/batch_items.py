"""The items of a `glaclip segment` run as `batch.segment_collection` decodes them: an image with its
masks read from their file, or a saved encoding (which holds its masks) with its source image."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import GlaclipError
from ..io.images import load_image
from ..steps.encoding import ImageEncoding, is_encoding_file
from .collection import Item
from .mask_source import MaskSource


@dataclass
class Loaded:
    """A decoded item: an image (rgb) with its masks when read from a file, or a saved encoding with
    its source image (rgb None when that file is gone)."""

    rgb: object
    enc: ImageEncoding | None = None
    masks: object = None


def source_image(it: Item, loaded: Loaded) -> Path | None:
    """The image file an item was segmented from (for a saved encoding: its image, when still there)."""
    if loaded.enc is None:
        return Path(it.path)
    return Path(loaded.enc.image_path) if loaded.rgb is not None else None


def file_name(it: Item, loaded: Loaded, root: Path) -> str:
    """COCO's file_name: the image's path relative to the input root (for a saved encoding, the path
    of the image it was made from, relative to the root where it lies under it)."""
    image = loaded.enc.image_path if loaded.enc is not None else None
    if not image:
        return it.name
    image = Path(os.path.abspath(image))
    return image.relative_to(root).as_posix() if image.is_relative_to(root) else image.as_posix()


def load_item(item: Item, masks: MaskSource | None = None) -> Loaded:
    """An image as an array with its masks read from their file (when `masks` reads files), or a saved
    encoding (which holds its masks) with its source image (None when that file is gone)."""
    if not is_encoding_file(item.path):
        rgb = load_image(item.path)
        return Loaded(rgb, masks=masks.read(item.path, item.name, rgb.shape[:2]) if masks is not None else None)
    enc = ImageEncoding.load(item.path)
    if masks is not None:  # --masks beside a saved encoding: the API's rule
        enc = masks.onto(enc, item.path, item.name)
    rgb = None
    if enc.image_path and Path(enc.image_path).is_file():
        try:
            rgb = load_image(enc.image_path)
        except GlaclipError:
            rgb = None
    if rgb is not None and rgb.shape[:2] != tuple(enc.size):
        rgb = None  # the file at that path is another image now
    if rgb is None:
        warnings.warn(f"the image of encoding {item.path} ({enc.image_path or 'unknown'}) is gone or changed; "
                      "writing its outputs without the overlay", RuntimeWarning, stacklevel=2)
    return Loaded(rgb, enc)
