"""Web demo (Gradio): upload an image, type class names, see and download the segmentation.

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

from .errors import GlaclipError
from .images import load_image
from .methods import DEFAULT_METHOD, preset_names
from .protocols import effective
from .visualize import colorize, distinct_palette, heatmap, label_image, legend, overlay, overlay_with_legend

EXAMPLE_CLASSES = "sky, road; street, car; vehicle, tree, building; house, grass"


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise GlaclipError("the demo needs Gradio: pip install 'glaclip[demo]'") from None
    return gr


class EncodingCache:
    """The last images' encodings (LRU, bounded in bytes), so a new class list skips the backbones."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, object] = OrderedDict()

    def get_or_make(self, seg, rgb: np.ndarray):
        """(encoding, reused?) of an image under this segmenter's settings."""
        key = hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode() +
                           json.dumps(seg.encoding_identity(), sort_keys=True).encode()).hexdigest()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], True
        enc = seg.encode_images([rgb])[0]
        self._items[key] = enc
        while len(self._items) > 1 and sum(e.nbytes for e in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)
        return enc, False


def run_segmentation(seg, image: np.ndarray, classes_text: str, method: str, prob_thd: float, alpha: float,
                     out_dir: Path, progress=None, encodings: EncodingCache | None = None) -> dict:
    """Everything the page shows for one request; also writes the downloadable files into out_dir.

    progress: optional callable(fraction, desc) told about the text and image steps. encodings: kept
    image encodings; an image seen before (same method and settings) skips the backbones."""
    def step(fraction: float, desc: str) -> None:
        if progress is not None:
            progress(fraction, desc=desc)

    if image is None:
        raise GlaclipError("upload an image first")
    preset, queries = effective(method, overrides={"prob_thd": prob_thd}, classes=classes_text or "")
    chosen = seg.with_preset(preset)
    step(0.05, f"encoding {len(queries.queries)} class names (cached after the first time)")
    chosen.query_embeddings(queries)
    rgb = load_image(image)
    reused = False
    if encodings is not None:
        step(0.35, "encoding the image (CLIP and DINO over the windows), unless seen before")
        enc, reused = encodings.get_or_make(chosen, rgb)
    else:
        step(0.35, "running CLIP and DINO over the image windows")
        enc = chosen.encode_images([rgb])[0]
    result = chosen.predict(enc, queries)
    step(0.9, "drawing the overlay and heat maps")
    palette = distinct_palette(len(queries))
    shares = result.shares()
    share_list = [shares[n] for n in result.classes]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "labels": out_dir / "labels.png",
        "overlay": out_dir / "overlay.png",
        "probs": out_dir / "probs.npz",
        "json": out_dir / "result.json",
    }
    label_image(result.labels, palette).save(files["labels"])
    overlay_with_legend(rgb, result.labels, result.classes, palette, alpha, share_list).save(files["overlay"])
    np.savez_compressed(files["probs"], probs=result.probs.astype(np.float16), labels=result.labels.astype(np.int32),
                        classes=np.array(result.classes))
    files["json"].write_text(json.dumps({
        "classes": [{"index": i, "name": n, "synonyms": list(queries.synonyms[i]), "share": shares[n]}
                    for i, n in enumerate(result.classes)],
        "preset": result.preset.to_dict(), "preset_line": result.preset.describe()}, indent=2))
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


def build_app(seg, problem: str | None = None, default_method: str = DEFAULT_METHOD):
    """The Gradio Blocks app. `seg` is a loaded Segmenter, or None with `problem` saying why."""
    gr = _import_gradio()
    work = Path(tempfile.mkdtemp(prefix="glaclip-demo-"))
    counter = {"n": 0}
    encodings = EncodingCache()

    def on_submit(image, classes_text, method, prob_thd, alpha, progress=gr.Progress(track_tqdm=True)):
        if seg is None:
            raise gr.Error(problem or "no model loaded", print_exception=False)
        counter["n"] += 1
        try:
            r = run_segmentation(seg, image, classes_text, method, float(prob_thd), float(alpha),
                                 work / f"request-{counter['n']}", progress=progress, encodings=encodings)
        except GlaclipError as exc:
            print(f"glaclip: demo request {counter['n']}: {exc}", file=sys.stderr, flush=True)  # one line, no trace
            raise gr.Error(str(exc), print_exception=False) from None
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
                image = gr.Image(type="numpy", image_mode="RGB", label="Image", sources=["upload"],
                                 elem_id="glaclip-image")
                classes = gr.Textbox(value=EXAMPLE_CLASSES, label="Classes", elem_id="glaclip-classes")
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
        run.click(on_submit, [image, classes, method, prob_thd, alpha],
                  [out_overlay, out_legend, out_labels, out_table, out_heat, out_files, out_preset])
    return app


def launch(seg, problem: str | None, host: str = "127.0.0.1", port: int = 7860, method: str = DEFAULT_METHOD,
           block: bool = True):
    app = build_app(seg, problem, method)
    app.queue().launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                       show_error=True, quiet=True)
    return app
