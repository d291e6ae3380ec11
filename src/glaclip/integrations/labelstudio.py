"""Label Studio (https://labelstud.io): an ML backend that pre-labels a project's images.

    pip install 'glaclip[labelstudio]'
    glaclip labelstudio --port 9090 --url http://LABEL_STUDIO:8080 [--method ...]   # then connect http://HOST:9090

The protocol is the one Label Studio speaks to ML backends (`label_studio/ml/api_connector.py`):
GET /health, POST /setup (-> model_version), POST /predict ({"tasks", "label_config"} -> one
prediction per task, in order), GET /versions, POST /webhook (acknowledged; nothing is trained).

Classes come from the project's label config: the first BrushLabels (-> brush masks) or
PolygonLabels (-> polygons) control that points at an Image. Each of its `<Label value="...">` is one
class, in order; the value is sent back unchanged and read in glaclip's class syntax, so ';'
separates synonyms (`value="car; vehicle"`), and a label's `hint` attribute adds more synonyms
(`<Label value="car" hint="vehicle; automobile"/>`). Every class present in the label map becomes one
brush region (Label Studio's "rle" format, `brush_rle`), or one polygon per connected part in percent
coordinates; each region's score is the class's mean probability over its mask, the prediction's the
mean over all pixels of the probability of the class each pixel got. model_version =
`method-<12 hex digits>` of the models (weights by content) and every setting.

Images (`sources.ImageSource`): Label Studio's files (/data/upload/..., /data/local-files/?d=...) from
the URL the operator names (--url / LABEL_STUDIO_URL) with the API key (--api-key /
LABEL_STUDIO_API_KEY: a legacy token or a personal access token, else the token /setup sends), never
from a host a request names; other URLs only from --allow-host hosts, local files only under
--allow-root folders; every read within a total deadline and a size limit. An image is read and
decoded before the models are taken, so a slow or hostile one holds up no other request. A task
that fails gets `{"error": "..."}` (no "result", so Label Studio skips it and logs the line) and the
line is printed here; the other tasks are predicted.
"""

from __future__ import annotations

import hashlib
import json
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..config.classes import ClassQueries, parse_classes
from ..errors import GlaclipError, one_line, require
from ..io.images import decode_bytes
from ..segmenter import Segmenter
from .sources import ImageSource

__all__ = ["Backend", "ImageSource", "LabelConfig", "brush_rle", "create_app", "model_version", "parse_label_config",
           "prediction", "serve"]

CONTROLS = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}


@dataclass(frozen=True)
class LabelConfig:
    """What glaclip reads from a project's label config (`parse_label_config`)."""

    kind: str  # "brushlabels" or "polygonlabels" (the result type)
    from_name: str  # the control's name
    to_name: str  # the Image's name
    data_key: str  # the task data key of the image ($image -> "image")
    labels: tuple[str, ...]  # each Label's value, in order: the class index's label
    queries: ClassQueries


def parse_label_config(xml: str) -> LabelConfig:
    """The first BrushLabels / PolygonLabels control over an Image, its labels as classes (module doc)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise GlaclipError(f"the label config is not valid XML: {exc}") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    for el in root.iter():
        if el.tag not in CONTROLS:
            continue
        targets = [t.strip() for t in el.get("toName", "").split(",") if t.strip() in images]
        if not targets or not el.get("name"):
            continue
        value = images[targets[0]]
        if not value.startswith("$") or len(value) < 2:
            raise GlaclipError(f"Image {targets[0]!r} takes its URL from {value!r}; glaclip needs a task data "
                               "field such as value=\"$image\"")
        labels, synonyms = [], []
        for lab in el.iter("Label"):
            name = lab.get("value")
            if name is None:
                raise GlaclipError(f"a <Label> of {el.get('name')!r} has no value")
            parts = [" ".join(p.split()) for p in (name + ";" + lab.get("hint", "")).split(";")]
            labels.append(name)
            group: dict[str, str] = {}
            for part in parts:  # each synonym once (case-insensitively), in order
                if part:
                    group.setdefault(part.lower(), part)
            if not group:
                raise GlaclipError(f"empty class name in label {name!r}")
            synonyms.append(list(group.values()))
        if not labels:
            raise GlaclipError(f"{el.tag} {el.get('name')!r} has no <Label> children: they are the classes")
        return LabelConfig(CONTROLS[el.tag], el.get("name"), targets[0], value[1:], tuple(labels),
                           parse_classes(synonyms))
    raise GlaclipError("the label config has no BrushLabels or PolygonLabels control pointing at an Image; "
                       "glaclip predicts brush masks or polygons")


_RLE_HEADER = "{:032b}" + f"{8 - 1:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))


def brush_rle(mask: np.ndarray) -> list[int]:
    """A boolean H x W mask in Label Studio's brush "rle" format, byte for byte as its own encoder
    (`label_studio_sdk.converter.brush.mask2rle` of the mask as 0/255) writes it.

    The format (rle-pack) packs, most significant bit first: the number of values (32 bits: 4 per
    pixel, RGBA, row by row, each channel 255 inside the mask and 0 outside), the word size minus 1
    (5 bits: 8), the four run-length field sizes minus 1 (4 bits each: 3, 4, 8, 16); then one token
    per run of equal values: 1 (a repeat), the field index (2 bits), run length minus 1 in that
    field's bits, the value (8 bits). Runs of up to 8, 16, 256 values take fields 0, 1, 2; longer
    runs take field 3, split into pieces of 65536 while over 65536. Zero bits pad the end to whole
    bytes, a full zero byte when already whole (as Label Studio's encoder does).
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0 or flat.size * 4 >= 2**32:
        raise GlaclipError(f"Label Studio's brush format holds 1 to {2**30 - 1} pixels, not {flat.size}")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4  # 4 channel values per pixel
    values = np.where(flat[starts], 255, 0)
    pieces = np.where(lengths > 256, (lengths - 1) // 65536 + 1, 1)  # field 3 runs: full pieces + the rest
    run = np.repeat(np.arange(len(lengths)), pieces)
    last = np.r_[run[1:] != run[:-1], True]
    tok_len = np.where(last, lengths[run] - (pieces[run] - 1) * 65536, 65536)
    field = np.select([lengths[run] <= 8, lengths[run] <= 16, lengths[run] <= 256], [0, 1, 2], 3)
    bits = np.array([3, 4, 8, 16])[field]
    code = (((np.int64(4) | field) << bits) | (tok_len - 1)) << 8 | values[run]  # 1, field, length - 1, value
    width = 3 + bits + 8
    header = _RLE_HEADER.format(flat.size * 4)
    offset = len(header) + np.concatenate([[0], np.cumsum(width)[:-1]])
    total = len(header) + int(width.sum())
    stream = np.zeros(total + 8 - total % 8, np.uint8)
    stream[: len(header)] = np.frombuffer(header.encode(), np.uint8) - ord("0")
    for j in range(int(width.max())):  # bit j of every token at least j + 1 bits wide
        has = width > j
        stream[offset[has] + j] = (code[has] >> (width[has] - 1 - j)) & 1
    return np.packbits(stream).tolist()


def model_version(seg: Segmenter) -> str:
    """`method-<12 hex>`: a digest of the models (weights by content) and every setting of the preset."""
    ident = {"encoding": seg.encoding_identity(), "settings": seg.preset.settings()}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return f"{seg.preset.method}-{digest[:12]}"


def prediction(seg_result, config: LabelConfig, version: str) -> dict:
    """One task's prediction (`Segmentation` -> {"result": regions, "score", "model_version"})."""
    from ..io.export import mask_polygons

    labels = seg_result.labels
    height, width = labels.shape
    scores = seg_result.mean_probs()
    present, counts = np.unique(labels, return_counts=True)
    regions = []
    for c in present.tolist():
        mask = labels == c
        common = {"from_name": config.from_name, "to_name": config.to_name, "type": config.kind,
                  "original_width": width, "original_height": height, "image_rotation": 0,
                  "score": float(scores[c])}
        if config.kind == "brushlabels":
            regions.append(dict(common, id=f"glaclip-{c}", value={
                "format": "rle", "rle": brush_rle(mask), "brushlabels": [config.labels[c]]}))
            continue
        for k, flat in enumerate(mask_polygons(mask)):
            points = [[x * 100.0 / width, y * 100.0 / height] for x, y in zip(flat[0::2], flat[1::2])]
            regions.append(dict(common, id=f"glaclip-{c}-{k}", value={
                "points": points, "closed": True, "polygonlabels": [config.labels[c]]}))
    score = float((counts * scores[present]).sum() / labels.size)
    return {"result": regions, "score": score, "model_version": version}


class Backend:
    """The ML backend's logic over a loaded segmenter, apart from the web framework."""

    def __init__(self, segmenter: Segmenter, source: ImageSource | None = None, prob_thd: float | None = None,
                 echo: Callable[[str], None] = lambda line: None):
        if segmenter.needs_masks:
            raise GlaclipError(f"method {segmenter.preset.method} reads region masks, which the Label Studio "
                               "backend does not make; use a method without them")
        self.segmenter = segmenter
        self.source = source or ImageSource()
        self.prob_thd = prob_thd
        self.echo = echo
        self.version = model_version(segmenter)
        self._lock = threading.Lock()  # one prediction at a time on the models

    def setup(self, body: dict) -> dict:
        """/setup: check the label config, remember the project's token; -> model_version. The hostname
        it names is not used: images come only from where the operator said (`sources`)."""
        config = parse_label_config(str(body.get("schema") or ""))
        self.source.remember(str(body.get("project", "")), body.get("access_token"))
        said = str(body.get("hostname") or "").rstrip("/")
        if said and said != self.source.url:
            self.echo(f"project {body.get('project')}: /setup names Label Studio at {said}; files are fetched "
                      f"only from --url ({self.source.url or 'not given'})")
        self.echo(f"project {body.get('project')}: {config.kind} {config.from_name!r} with "
                  f"{len(config.labels)} classes: {', '.join(config.labels)}")
        return {"model_version": self.version}

    def predict(self, body: dict) -> dict:
        """/predict: one entry per task, in order: a prediction, or {"error": "one line"}."""
        tasks = body.get("tasks")
        tasks = tasks if isinstance(tasks, list) else []
        try:
            config = parse_label_config(str(body.get("label_config") or ""))
        except GlaclipError as exc:
            config, problem = None, str(exc)
        results = []
        for task in tasks:
            ident = task.get("id", "?") if isinstance(task, dict) else "?"
            try:
                if config is None:
                    raise GlaclipError(problem)
                results.append(self._predict_task(task, config, body.get("project")))
            except Exception as exc:  # one task's failure, whatever it is, is that task's alone
                why = one_line(exc) if isinstance(exc, GlaclipError) else f"internal error: {type(exc).__name__}: " \
                    f"{one_line(exc)}"
                line = f"task {ident}: {why}"
                self.echo(line)
                results.append({"error": line})
        failed = sum("error" in r for r in results)
        self.echo(f"project {body.get('project')}: {len(tasks) - failed} of {len(tasks)} tasks predicted")
        return {"results": results, "model_version": self.version}

    def _predict_task(self, task: Any, config: LabelConfig, project: str | None) -> dict:
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or config.data_key not in data:
            raise GlaclipError(f"the task has no data field {config.data_key!r} (the Image's value)")
        value = data[config.data_key]
        rgb = decode_bytes(self.source.read(value, project), value)
        with self._lock:  # the models, one prediction at a time: taken only once the image is in memory
            seg = self.segmenter.predict(rgb, config.queries, prob_thd=self.prob_thd)
        return prediction(seg, config, self.version)


def create_app(backend: Backend):
    """The FastAPI application serving `backend` (the routes Label Studio calls; module docstring)."""
    fastapi = require("fastapi", "labelstudio")
    JSONResponse = require("fastapi.responses", "labelstudio").JSONResponse

    app = fastapi.FastAPI(title="glaclip Label Studio ML backend", docs_url=None, redoc_url=None)
    # every route but /predict is async, on the event loop: /predict's worker threads, however many are
    # busy (reading a slow image, waiting for the models), never keep /health from answering
    status = {"status": "UP", "model_class": "glaclip", "model_version": backend.version}

    @app.get("/")
    @app.get("/health")
    async def health() -> dict:
        return status

    @app.post("/setup")
    async def setup(body: dict = fastapi.Body(...)):
        try:
            return backend.setup(body)
        except GlaclipError as exc:
            backend.echo(f"setup of project {body.get('project')}: {exc}")
            return JSONResponse({"error": str(exc)}, status_code=422)

    @app.post("/validate")
    async def validate(body: dict = fastapi.Body(...)):
        try:
            parse_label_config(str(body.get("config") or ""))
        except GlaclipError as exc:
            return JSONResponse({"status": "error", "error": str(exc)}, status_code=422)
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict = fastapi.Body(...)) -> dict:
        return backend.predict(body)

    @app.get("/versions")
    async def versions() -> dict:
        return {"versions": [backend.version], "model_version": backend.version}

    @app.post("/webhook")
    async def webhook() -> dict:  # Label Studio posts its events (START_TRAINING, ...) here; glaclip does not train
        return {}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {}

    return app


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 9090) -> None:
    """Serve `backend` with uvicorn until interrupted."""
    uvicorn = require("uvicorn", "labelstudio")
    uvicorn.run(create_app(backend), host=host, port=port, log_level="warning")
