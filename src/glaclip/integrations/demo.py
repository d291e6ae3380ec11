"""Web demo (Gradio): upload an image, type class names, see and download the segmentation.

Methods that read region masks (corrclip, or mask_vote) take an uploaded mask file (npz/png, read by
`regions.load_masks`) or, when the demo was started with --sam NAME --sam-weights FILE, generate them.

Needs the optional extra: ``pip install 'glaclip[demo]'``. Start it with ``glaclip demo``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..config.protocols import effective
from ..config.registry import DEFAULT_METHOD, preset_names
from ..errors import GlaclipError, require
from ..io.export import image_record, output_paths, write_image_outputs
from ..io.images import load_image
from ..io.pictures import colorize, distinct_palette, heatmap, legend, overlay

EXAMPLE_CLASSES = "sky, road; street, car; vehicle, tree, building; house, grass"
PREVIEW_SIDE = 1024  # longest side of the upload's preview in the page


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return require("gradio", "demo", "the demo")


class EncodingCache:
    """The last images' encodings (LRU, bounded in bytes), so a new class list skips the backbones."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, object] = OrderedDict()
        self._generated: OrderedDict[str, np.ndarray] = OrderedDict()  # SAM 2 masks of the last images

    def generated(self, sam, rgb: np.ndarray) -> np.ndarray:
        """The masks `sam` generates for an image, made once per image (the last 8 kept)."""
        key = hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()
        if key not in self._generated:
            self._generated[key] = sam.generate(rgb, "the upload")
            while len(self._generated) > 8:
                self._generated.popitem(last=False)
        return self._generated[key]

    def get_or_make(self, seg, rgb: np.ndarray, masks: np.ndarray | None = None):
        """(encoding, reused?) of an image (and its region masks) under this segmenter's settings."""
        key = hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode() + (b"" if masks is None else masks.tobytes()) +
                           json.dumps(seg.encoding_identity(), sort_keys=True).encode()).hexdigest()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        enc = seg.encode_images([rgb], masks=[masks])[0]
        self._items[key] = enc
        while len(self._items) > 1 and sum(e.nbytes for e in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return enc, False


def load_upload(path: str | os.PathLike | None) -> np.ndarray:
    """An uploaded file through the CLI's image reader (formats, pixel limit checked on the header,
    before any decoding). Errors name the upload, not the server's temporary path."""
    if path is None:
        raise GlaclipError("upload an image first")
    try:
        return load_image(Path(path))
    except GlaclipError as exc:
        raise GlaclipError(str(exc).replace(str(path), Path(path).name)) from None


def preview(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """The image shrunk (by whole-pixel striding) to at most `side` pixels on its longest side."""
    step = max(1, -(-max(rgb.shape[:2]) // side))
    return np.ascontiguousarray(rgb[::step, ::step])


def region_masks(seg, rgb: np.ndarray, upload: str | os.PathLike | None, sam=None,
                 encodings: EncodingCache | None = None) -> np.ndarray | None:
    """The region masks of a request: None when `seg`'s method reads none; else the uploaded file
    (npz/png) or, without one, what `sam` (a `mask_source.MaskSource` that generates) makes."""
    if not seg.needs_masks:
        return None
    if upload is not None:
        from ..io.masks import load_masks

        try:
            return load_masks(Path(upload), rgb.shape[:2])
        except GlaclipError as exc:
            raise GlaclipError(str(exc).replace(str(upload), Path(upload).name)) from None
    if sam is None:
        raise GlaclipError(f"{seg.preset.method} needs region masks: upload a mask file (.npz with instance_mask, "
                           "or a 16-bit .png id map), or start the demo with --sam NAME --sam-weights FILE")
    return encodings.generated(sam, rgb) if encodings is not None else sam.generate(rgb, "the upload")


def _upload_name(image) -> str:
    """The name the downloads and the JSON's "image" carry: the upload's file name ("image" for an
    array or a name that is no file name)."""
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else ""
    return name if Path(name).stem not in ("", ".", "..") else "image"


def run_segmentation(seg, image: np.ndarray | str | os.PathLike | None, classes_text: str, method: str,
                     prob_thd: float, alpha: float, out_dir: Path, progress=None,
                     encodings: EncodingCache | None = None, masks: str | os.PathLike | None = None,
                     sam=None) -> dict:
    """Everything the page shows for one request; also writes the downloadable files into out_dir,
    as `glaclip segment` does for one image (`export`: NAME_labels.png, NAME_overlay.png, NAME.json
    in the CLI's layout, NAME_probs.npz; NAME is the upload's file name without its suffix).

    image: an RGB array or an uploaded file's path (read by `load_upload`). progress: optional
    callable(fraction, desc) told about the text and image steps. encodings: kept
    image encodings; an image seen before (same method and settings) skips the backbones.
    masks, sam: an uploaded region-mask file, or the SAM 2 source (`region_masks`)."""
    def step(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(fraction, desc=desc)

    if image is None:
        raise GlaclipError("upload an image first")
    rgb = load_upload(image) if isinstance(image, (str, os.PathLike)) else load_image(image)
    preset, queries = effective(method, overrides={"prob_thd": prob_thd}, classes=classes_text or "")
    chosen = seg.with_preset(preset)
    step(0.05, f"encoding {len(queries.queries)} class names (cached after the first time)")
    chosen.query_embeddings(queries)
    regions = region_masks(chosen, rgb, masks, sam, encodings)
    reused = False
    if encodings is not None:
        step(0.35, "encoding the image (CLIP and DINO over the windows), unless seen before")
        enc, reused = encodings.get_or_make(chosen, rgb, regions)
    else:
        step(0.35, "running CLIP and DINO over the image windows")
        enc = chosen.encode_images([rgb], masks=[regions])[0]
    result = chosen.predict(enc, queries)
    step(0.9, "drawing the overlay and heat maps")
    palette = distinct_palette(len(queries))
    shares = result.shares()
    share_list = [shares[n] for n in result.classes]
    name = _upload_name(image)
    files = output_paths(out_dir, Path(name).stem, save_probs=True)
    preset = chosen.preset
    record = image_record(name, result.labels, result.classes, queries.synonyms, palette,
                          preset.settings(queries.queries), preset.to_dict(), preset.describe(), chosen.models())
    write_image_outputs(files, rgb, result.labels, result.classes, palette, alpha, record, result.probs)
    return {
        "overlay": overlay(rgb, result.labels, palette, alpha),
        "legend": np.asarray(legend(result.classes, palette, max(rgb.shape[1], 320), share_list)),
        "labels": colorize(result.labels, palette),
        "table": [[n, round(100 * s, 2)] for n, s in sorted(zip(result.classes, share_list), key=lambda t: -t[1])],
        "heatmaps": [(heatmap(result.probs[i]), n) for i, n in enumerate(result.classes)],
        "files": [str(p) for p in files.values()],
        "preset_line": result.preset.describe(),
        "reused": reused,
    }


def method_choices() -> list[str]:
    """The methods and named presets the page offers (`methods.preset_names`)."""
    return preset_names()


def build_app(seg, problem: str | None = None, default_method: str = DEFAULT_METHOD, sam=None):
    """The Gradio Blocks app. `seg` is a loaded Segmenter, or None with `problem` saying why; sam: a
    `mask_source.MaskSource` generating region masks (None: only uploaded mask files)."""
    gr = import_gradio()
    work = Path(tempfile.mkdtemp(prefix="glaclip-demo-"))
    counter = {"n": 0}
    encodings = EncodingCache()

    def refuse(what: str, exc: GlaclipError):
        print(f"glaclip: demo {what}: {exc}", file=sys.stderr, flush=True)  # one line, no trace
        return gr.Error(str(exc), print_exception=False)

    def on_upload(path):
        if path is None:
            return None
        try:
            return preview(load_upload(path))
        except GlaclipError as exc:
            raise refuse("upload", exc) from None

    def on_submit(image, classes_text, method, prob_thd, alpha, masks, progress=gr.Progress(track_tqdm=True)):
        if seg is None:
            raise gr.Error(problem or "no model loaded", print_exception=False)
        counter["n"] += 1
        try:
            r = run_segmentation(seg, image, classes_text, method, float(prob_thd), float(alpha),
                                 work / f"request-{counter['n']}", progress=progress, encodings=encodings,
                                 masks=masks, sam=sam)
        except GlaclipError as exc:
            raise refuse(f"request {counter['n']}", exc) from None
        note = ("Image encoding reused: only the class list was re-scored (the backbones did not run again). "
                if r["reused"] else "")
        return (r["overlay"], r["legend"], r["labels"], r["table"], r["heatmaps"], r["files"],
                f"{note}`{r['preset_line']}`")

    with gr.Blocks(title="glaclip: GLA-CLIP open-vocabulary segmentation") as app:
        gr.Markdown("## glaclip: open-vocabulary segmentation with GLA-CLIP\n"
                    "Upload an image, list class names separated by commas (synonyms of one class joined by `;`), "
                    "and press **Segment**.")
        if problem:
            gr.Markdown(f"**The model is not loaded:** {problem}", elem_id="glaclip-problem")
        elif "random" in (seg.clip.weights, seg.vfm.weights if seg.vfm is not None else None):
            gr.Markdown("**Random weights:** the page works end to end but the labels mean nothing.",
                        elem_id="glaclip-random")
        with gr.Row():
            with gr.Column():
                # a file, not gr.Image: Gradio would decode the upload itself, before our checks
                image = gr.File(label="Image (PNG, JPEG, WebP, TIFF, BMP, ...)", type="filepath",
                                elem_id="glaclip-image")
                shown = gr.Image(label="Uploaded image", type="numpy", interactive=False, format="png",
                                 elem_id="glaclip-upload")
                classes = gr.Textbox(value=EXAMPLE_CLASSES, label="Classes", elem_id="glaclip-classes")
                masks = gr.File(label="Region masks for corrclip / mask_vote (.npz instance_mask or 16-bit .png; "
                                + (f"else generated by SAM 2 {sam.request.sam})" if sam is not None else "required)"),
                                type="filepath", elem_id="glaclip-masks")
                with gr.Row():
                    method = gr.Dropdown(method_choices(), value=default_method, label="Method / preset",
                                         elem_id="glaclip-method")
                    prob_thd = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Background threshold (prob_thd)",
                                         elem_id="glaclip-thd")
                    alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="glaclip-alpha")
                run = gr.Button("Segment", variant="primary", elem_id="glaclip-run")
            with gr.Column():
                out_overlay = gr.Image(label="Overlay", type="numpy", elem_id="glaclip-overlay", format="png")
                out_legend = gr.Image(label="Legend", type="numpy", elem_id="glaclip-legend", format="png")
        with gr.Row():
            out_labels = gr.Image(label="Label map", type="numpy", elem_id="glaclip-labels", format="png")
            out_table = gr.Dataframe(headers=["class", "share %"], label="Per-class pixel shares",
                                     elem_id="glaclip-shares")
        out_heat = gr.Gallery(label="Per-class probability", columns=4, elem_id="glaclip-heatmaps")
        out_files = gr.File(label="Downloads (label PNG, overlay PNG, probabilities .npz, JSON)", file_count="multiple",
                            elem_id="glaclip-files")
        out_preset = gr.Markdown(elem_id="glaclip-preset")
        image.change(on_upload, [image], [shown])
        run.click(on_submit, [image, classes, method, prob_thd, alpha, masks],
                  [out_overlay, out_legend, out_labels, out_table, out_heat, out_files, out_preset])
    return app


def launch(seg, problem: str | None, host: str = "127.0.0.1", port: int = 7860, method: str = DEFAULT_METHOD,
           block: bool = True, sam=None):
    app = build_app(seg, problem, method, sam)
    app.queue().launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                       show_error=True, quiet=True)
    return app
