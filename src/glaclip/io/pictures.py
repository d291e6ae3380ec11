"""Pictures of a segmentation: palettes, label PNGs, overlays with a legend (files: `files.py`)."""

from __future__ import annotations

import colorsys
import functools
import shutil
import subprocess
import warnings
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def distinct_palette(n: int) -> np.ndarray:
    """n x 3 uint8 colours, well separated in hue, lightness alternating so neighbours differ."""
    golden = 0.618033988749895
    colours = []
    for i in range(n):
        hue = (i * golden) % 1.0
        light = (0.45, 0.6, 0.35)[i % 3]
        sat = (0.85, 0.65)[(i // 3) % 2]
        colours.append([round(255 * c) for c in colorsys.hls_to_rgb(hue, light, sat)])
    return np.array(colours, dtype=np.uint8).reshape(n, 3)


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (bits of the class index spread over R, G and B)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def dataset_palette(name: str) -> np.ndarray | None:
    """The conventional colours of a benchmark ('voc21', 'voc20', 'context60', 'cityscapes', 'ade20k')."""
    import json
    from importlib import resources

    if name in ("voc21", "context60"):
        return voc_palette(256)
    if name in ("voc20", "context59"):
        return voc_palette(256)[1:]
    data = json.loads(resources.files("glaclip").joinpath("classes", "palettes.json").read_text())
    return np.array(data[name], dtype=np.uint8) if name in data else None


def palette_for(num_classes: int, name: str | None = None) -> np.ndarray:
    """A data set's palette when it has one for this many classes, else `distinct_palette`."""
    pal = dataset_palette(name) if name else None
    return pal[:num_classes] if pal is not None and len(pal) >= num_classes else distinct_palette(num_classes)


def heatmap(prob: np.ndarray) -> np.ndarray:
    """H x W probabilities in [0, 1] -> H x W x 3 uint8 (dark blue -> red -> yellow)."""
    p = np.clip(np.nan_to_num(prob.astype(np.float32)), 0.0, 1.0)
    stops = np.array([[0.0, 10, 10, 60], [0.35, 60, 40, 180], [0.65, 220, 50, 50], [1.0, 255, 230, 60]])
    return np.stack([np.interp(p, stops[:, 0], stops[:, k]) for k in (1, 2, 3)], axis=-1).round().astype(np.uint8)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[labels]


def label_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Palette PNG ('P' mode, pixel value = class index) for up to 256 classes, else 16-bit grayscale."""
    if len(palette) <= 256:
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(palette)] = palette
        img.putpalette(flat.ravel().tolist())
        return img
    return Image.fromarray(labels.astype(np.uint16))


def _default_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@functools.lru_cache(maxsize=64)
def font_file_for(chars: str) -> str | None:
    """An installed font file (found through fontconfig) whose glyphs cover every character in `chars`."""
    fc_list = shutil.which("fc-list")
    if not fc_list or not chars:
        return None
    pattern = ":charset=" + " ".join(f"{ord(c):x}" for c in sorted(set(chars)))
    try:
        out = subprocess.run([fc_list, pattern, "file", "style"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    entries = [line.split(":", 1) for line in out.splitlines() if line.strip()]
    files = [(f.strip(), style) for f, *rest in entries for style in (rest or [""])]
    files = [(f, st) for f, st in files if f.lower().endswith((".ttf", ".otf", ".ttc"))]
    if not files:
        return None
    regular = [f for f, st in files if any(w in st for w in ("Regular", "Book", "Medium"))]
    return sorted(regular or [f for f, _ in files], key=lambda f: ("Sans" not in f, "Mono" in f, len(f), f))[0]


_warned_glyphs: set[str] = set()


def legend_font(size: int, texts: Sequence[str] = ()) -> ImageFont.ImageFont:
    """Pillow's default font for ASCII text; otherwise an installed font covering the text's characters
    (or as many as one font covers), with one warning per run for characters no font covers."""
    wide = "".join(sorted({c for t in texts for c in t if ord(c) > 126 and not c.isspace()}))
    if not wide:
        return _default_font(size)
    path = font_file_for(wide)
    missing = ""
    if path is None:  # no single font has them all: take the one covering the most, name the rest
        best = ""
        for c in wide:
            if font_file_for(best + c):
                best += c
        path = font_file_for(best) if best else None
        missing = "".join(c for c in wide if c not in best)
    if missing and missing not in _warned_glyphs:
        _warned_glyphs.add(missing)
        warnings.warn(f"no installed font has the characters {missing!r} of the class names; they show as boxes "
                      "in the overlay legend (install a font that has them, e.g. Debian's fonts-noto-cjk)",
                      RuntimeWarning, stacklevel=3)
    try:
        return ImageFont.truetype(path, size) if path else _default_font(size)
    except OSError:
        return _default_font(size)


def legend(classes: Sequence[str], palette: np.ndarray, width: int, shares: Sequence[float] | None = None,
           only_present: bool = True) -> Image.Image:
    """A strip of colour swatches with class names (and pixel shares), wrapped to `width` pixels."""
    size = max(12, min(24, width // 40))
    font = legend_font(size, classes)
    items = []
    for i, name in enumerate(classes):
        if shares is not None and only_present and shares[i] <= 0:
            continue
        text = name if shares is None else f"{name} {100 * shares[i]:.1f}%"
        items.append((palette[i], text))
    pad, box = size // 2, size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows, row, x = [], [], pad
    for colour, text in items:
        w = box + pad // 2 + int(probe.textlength(text, font=font)) + 2 * pad
        if row and x + w > width:
            rows.append(row)
            row, x = [], pad
        row.append((colour, text, x))
        x += w
    if row:
        rows.append(row)
    line = box + pad
    strip = Image.new("RGB", (width, max(1, len(rows)) * line + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, entries in enumerate(rows):
        y = pad + r * line
        for colour, text, x0 in entries:
            draw.rectangle([x0, y, x0 + box, y + box], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
            draw.text((x0 + box + pad // 2, y + box // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return strip


def overlay(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the label colours over the image."""
    mixed = (1 - alpha) * rgb.astype(np.float32) + alpha * colorize(labels, palette).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def overlay_with_legend(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str], palette: np.ndarray,
                        alpha: float = 0.5, shares: Sequence[float] | None = None) -> Image.Image:
    """Overlay on top, legend strip below; the image part keeps the original size."""
    top = Image.fromarray(overlay(rgb, labels, palette, alpha))
    strip = legend(classes, palette, top.width, shares)
    out = Image.new("RGB", (top.width, top.height + strip.height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(strip, (0, top.height))
    return out
