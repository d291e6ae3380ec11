"""Several methods on one image, side by side: each method's map, time and peak memory (`glaclip compare`).

Each method is loaded, run and released in turn, so its peak memory is its own: from before its
models load to the end of its `predict`. Region masks are read or generated (SAM 2) once, before
the first method that reads them loads, and given to every such method; SAM 2's load, its time and
peak memory are a row of their own. Text embeddings are made before the clock starts, as in
`glaclip bench`.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import GlaclipError
from ..io.pictures import distinct_palette, legend_font, overlay_with_legend
from ..models.devices import resolve_device
from .bench import PeakMemory

__all__ = ["MethodRun", "compare", "comparison_figure", "table_lines"]


@dataclass
class MethodRun:
    """One method's result on the image: its map and what it cost (`seconds`: `predict`; `peak_mb`: its
    models' loading through `predict`; `load_seconds`: loading its models). The row of generated
    masks: SAM 2's generation, load and their peak."""

    method: str
    preset_line: str
    models_line: str
    classes: list[str]
    labels: np.ndarray | None
    seconds: float
    peak_mb: float
    load_seconds: float

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": self.seconds, "peak_mb": self.peak_mb,
                "load_seconds": self.load_seconds, "preset": self.preset_line, "models": self.models_line,
                "classes": self.classes}


def _release(device: torch.device) -> None:
    """Free what the last method held, back to the system (so the next one's peak is its own)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        try:  # glibc keeps freed heap memory, which the next method would reuse without a rise of the RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _masks_row(rgb: np.ndarray, method: str, mask_source: Callable[[], object] | None,
               device: torch.device) -> tuple[np.ndarray, MethodRun]:
    """Load the mask generator (mask_source()), generate the image's masks and release it."""
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        source = mask_source() if mask_source is not None else None
        load_seconds = time.perf_counter() - start
        if source is None:
            raise GlaclipError(f"method {method} needs region masks: give --masks FILE or --sam NAME")
        start = time.perf_counter()
        masks = source.generate(rgb, "the image")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    row = MethodRun(f"masks: {source.generator.name}", source.describe(), "", [], None, seconds, peak.mb, load_seconds)
    del source
    _release(device)
    return masks, row


def compare(rgb: np.ndarray, entries: Sequence[tuple], load: Callable, masks=None,
            mask_source: Callable[[], object] | None = None, echo: Callable[[str], None] | None = None,
            device: str | torch.device = "auto", bank: bool = False) -> list[MethodRun]:
    """Run each method on one H x W x 3 uint8 image.

    entries: (method name, preset, class queries) per method, in order (`protocols.effective`).
    load(preset) -> Segmenter on `device`. masks: an H x W region map for the methods that read
    masks; else mask_source() -> a generating `mask_source.MaskSource` (or None), which loads its
    model, called before the first such method loads: the masks are made once, SAM 2's load, their
    time and peak memory a row of their own. bank: the methods fuse a memory bank's support (all read masks).
    """
    device = resolve_device(device)
    runs: list[MethodRun] = []
    for method, preset, queries in entries:
        _release(device)
        if masks is None and (preset.reads_masks or bank):
            masks, row = _masks_row(rgb, method, mask_source, device)
            runs.append(row)
            if echo is not None:
                echo(f"glaclip: {row.method}: {row.seconds:.2f} s, peak {row.peak_mb:.0f} MiB")
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            seg = load(preset)
            load_seconds = time.perf_counter() - start
            seg.query_embeddings(queries)  # text encoding is not part of the image's time
            start = time.perf_counter()
            result = seg.predict(rgb, queries, masks=masks if seg.needs_masks else None)
            labels = result.labels
            if seg.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        runs.append(MethodRun(method, seg.describe(), seg.models_line(), list(queries.names), labels,
                              seconds, peak.mb, load_seconds))
        if echo is not None:
            echo(f"glaclip: {method}: {seconds:.2f} s, peak {peak.mb:.0f} MiB")
        del seg, result
    _release(device)
    return runs


def table_lines(runs: Sequence[MethodRun]) -> list[str]:
    """A Markdown table of the runs: method, seconds, peak MiB, load seconds."""
    lines = ["| method | seconds | peak MiB | load seconds |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.method} | {r.seconds:.2f} | {r.peak_mb:.0f} | {r.load_seconds:.1f} |")
    return lines


def comparison_figure(rgb: np.ndarray, runs: Sequence[MethodRun], columns: int = 3, alpha: float = 0.5,
                      panel_width: int = 640) -> Image.Image:
    """The image and each method's overlay (with its legend and its time and peak memory as a
    title), `columns` panels a row, then the table of `table_lines`. A class name has one colour in
    every panel."""
    names: list[str] = []
    for r in runs:
        names += [n for n in r.classes if n not in names]
    colours = dict(zip(names, distinct_palette(len(names))))
    scale = min(1.0, panel_width / rgb.shape[1])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    panels = [("image", Image.fromarray(small))]
    for r in runs:
        if r.labels is None:
            continue
        labels = np.asarray(Image.fromarray(r.labels.astype(np.int32)).resize(size, Image.NEAREST))
        palette = np.array([colours[n] for n in r.classes], dtype=np.uint8).reshape(-1, 3)
        shares = np.bincount(labels.ravel(), minlength=len(r.classes)) / labels.size
        panels.append((f"{r.method}: {r.seconds:.2f} s, {r.peak_mb:.0f} MiB",
                       overlay_with_legend(small, labels, r.classes, palette, alpha, shares)))
    title_font = legend_font(18, [p[0] for p in panels])
    title_h, pad = 30, 8
    cell_w = size[0] + 2 * pad
    cell_h = max(p.height for _, p in panels) + title_h + pad
    cols = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // cols)
    header = ["method", "seconds", "peak MiB", "load seconds"]
    cells = [header] + [[r.method, f"{r.seconds:.2f}", f"{r.peak_mb:.0f}", f"{r.load_seconds:.1f}"] for r in runs]
    table_font = legend_font(16, [c for row in cells for c in row])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_w = [max(int(probe.textlength(row[j], font=table_font)) for row in cells) + 24 for j in range(len(header))]
    line_h = 22
    width = max(cols * cell_w, 2 * pad + sum(col_w))
    canvas = Image.new("RGB", (width, rows * cell_h + len(cells) * line_h + 3 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, panel) in enumerate(panels):
        x, y = (k % cols) * cell_w + pad, (k // cols) * cell_h
        draw.text((x, y + title_h // 2), title, fill=(0, 0, 0), font=title_font, anchor="lm")
        canvas.paste(panel, (x, y + title_h))
    y = rows * cell_h + pad
    for i, row in enumerate(cells):
        x = pad
        for j, text in enumerate(row):
            if j:  # numbers right-aligned in their column
                draw.text((x + col_w[j] - 12, y), text, fill=(0, 0, 0), font=table_font, anchor="ra")
            else:
                draw.text((x, y), text, fill=(0, 0, 0), font=table_font)
            x += col_w[j]
        if i == 0:
            draw.line([(pad, y + line_h - 3), (pad + sum(col_w), y + line_h - 3)], fill=(0, 0, 0))
        y += line_h
    return canvas


# bank support's model arguments: for every method with a bank; RADIO's own and the bank CLIP's not for corrclip2
# (its RADIO is its VFM: --radio/--radio-weights replace its --vfm/--vfm-weights here; its text is its own)
BANK_OPTIONS = ("radio_repo", "aux_clip", "aux_clip_weights", "bank", "bank_name", "radio", "radio_weights",
                "bank_clip", "bank_clip_weights")


def compare_image(image, names: Sequence[str], classes, out: Path, dataset: str | None = None,
                  protocol: str | None = None, overrides: dict | None = None, masks=None, sam: str | None = None,
                  sam_weights: str | None = None, models: dict | None = None, device: str = "auto",
                  dtype: str = "auto", columns: int = 3, progress: bool = True,
                  say: Callable[[str], None] = lambda msg: None, check_out: Callable = lambda out: None) -> list:
    """`glaclip compare`: the methods `names` on one image, each loaded, run and released in turn; writes
    the figure `out` (PNG) and its numbers beside it (.json), atomically, and returns the runs.

    classes: the class syntax or a class file (None: the data set's); models: from_pretrained's model
    arguments for every method; masks/sam/sam_weights: routed as every command routes them
    (`mask_source.route`). Everything is checked before the first model loads (`check_out(out)`
    included)."""
    from ..config.protocols import effective
    from ..config.registry import METHODS
    from ..io.files import atomic_paths
    from ..io.images import load_image
    from ..segmenter import Segmenter
    from .mask_source import MaskSource, route

    if not names or len(set(names)) != len(names):
        raise GlaclipError(f"--methods needs one or more distinct methods, got {','.join(names)!r}")
    entries = []
    for name in names:
        preset, queries = effective(name, dataset, protocol, overrides or {}, classes)
        if queries is None:
            raise GlaclipError("no classes given; use --classes 'cat, dog; puppy, sky' or --class-file FILE")
        entries.append((name, preset, queries))
    bank = (models or {}).get("bank") is not None
    routed = route([p for _, p, _ in entries], masks, sam, sam_weights, one_image=True, bank=bank)
    request = routed.request
    if routed.ignored:
        say("glaclip: warning: none of these methods reads region masks; --masks/--sam are ignored")
    rgb = load_image(image)
    check_out(out)
    region_map = None
    if request is not None and request.path:
        region_map = MaskSource(request).read(image, Path(image).name, rgb.shape[:2])
    dev = resolve_device(device)

    def load(preset):
        extra = routed.sam if METHODS[preset.method].needs_sam else {}
        own = dict(models or {})
        if METHODS[preset.method].needs_radio:
            for key, vfm_key in (("radio", "vfm"), ("radio_weights", "vfm_weights")):
                if own.get(key) is not None:
                    own[vfm_key] = own[key]
            own = {k: v for k, v in own.items() if k not in BANK_OPTIONS[-4:]}  # RADIO's and the bank CLIP's
        elif not bank:
            own = {k: v for k, v in own.items() if k not in BANK_OPTIONS}
        return Segmenter.from_pretrained(preset=preset, device=dev, dtype=dtype, progress=progress, **own, **extra)

    def generator():
        """SAM 2 on the methods' device (`compare` times its load)."""
        if request is None or request.sam is None:
            return None
        from ..models.sam2 import load_sam2

        source = MaskSource(request, load_sam2(None if request.fit else request.sam, request.sam_weights,
                                               device=dev, dtype=dtype))
        say(f"glaclip: region masks {source.describe()}")
        return source

    from ..models.loading import import_libraries

    import_libraries()  # what every method imports is not part of the first method's load
    runs = compare(rgb, entries, load, masks=region_map, mask_source=generator, echo=say, device=dev, bank=bank)
    figure = comparison_figure(rgb, runs, columns=columns)
    numbers = {"image": str(image), "runs": [r.to_dict() for r in runs]}
    with atomic_paths([out, out.with_suffix(".json")]) as (tmp_png, tmp_json):
        figure.save(tmp_png, format="PNG")
        tmp_json.write_text(json.dumps(numbers, indent=1))
    return runs
