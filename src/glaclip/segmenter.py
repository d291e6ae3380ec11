"""The segmenter: image + class names -> per-pixel labels and class probabilities (METHOD.md 1-8)."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .attention import accumulation_dtype, gla_attention, proxyclip_attention
from .devices import dtype_name
from .encoding import ImageEncoding
from .errors import GlaclipError
from .hosts import METHODS, Method, global_keys, global_tokens, local_tokens, smoothed_proxy
from .images import ImageInput, clip_to_imagenet, load_image, preprocess
from .models import DEFAULT_CLIP, DEFAULT_VFM, MissingWeights, load_clip, load_vfm
from .postprocess import area_keep, area_threshold, pamr
from .presets import Preset, get_preset
from .protocols import resolve
from .text import ClassQueries, ClassSpec, TextEncoder, parse_classes, short_context_encoder
from .text_cache import clip_text_cache
from .towers import ClipTower, VfmTower
from .windows import WindowGrid, crop_windows, resize_rows, stitch, token_index, window_grid

_BAND_BYTES = 256 * 2**20  # full-resolution logits and probabilities held at once, per band of rows


class Segmentation:
    """Result for one image, at its original size.

    labels: HxW int64 class indices; probs: CxHxW float32 per-class probabilities (max over each
    class's synonyms); classes: display names in index order; preset: the settings used.
    For large images the labels are computed a band of rows at a time and `probs` only when first
    read (it is the one array whose size grows with classes x pixels).
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray | None, classes: list[str], preset: Preset,
                 probs_fn: Callable[[], np.ndarray] | None = None):
        self.labels = labels
        self._probs = probs
        self._probs_fn = probs_fn
        self.classes = classes
        self.preset = preset

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = self._probs_fn()
        return self._probs

    def shares(self) -> dict[str, float]:
        """Fraction of the image's pixels given to each class."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        return {name: float(c) / self.labels.size for name, c in zip(self.classes, counts)}

    def __repr__(self) -> str:
        return f"Segmentation({self.labels.shape[1]}x{self.labels.shape[0]}, classes={self.classes})"


def class_probabilities(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int,
                        logit_scale: float) -> torch.Tensor:
    """softmax(logit_scale * logits) over all Q queries, then each class's max over its synonyms: C x ..."""
    probs = (logit_scale * logits).softmax(dim=0)
    owner = query_class.to(probs.device)
    return torch.stack([probs[owner == c].amax(dim=0) for c in range(num_classes)])


def decide(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int, logit_scale: float,
           prob_thd: float, area_thd: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md step 8: QxHxW logits -> (labels HxW, class probs CxHxW); SCLIP's area threshold
    (`postprocess.area_threshold`) between the synonym max and the argmax when area_thd is set."""
    class_probs = class_probabilities(logits, query_class, num_classes, logit_scale)
    if area_thd is not None:
        class_probs = area_threshold(class_probs, area_thd)
    return _labels(class_probs, prob_thd), class_probs


def _labels(class_probs: torch.Tensor, prob_thd: float) -> torch.Tensor:
    top, labels = class_probs.max(dim=0)
    if prob_thd > 0:
        labels[top < prob_thd] = 0
    return labels


class Segmenter:
    """GLA-CLIP, its hosts and baselines (see hosts.METHODS) over a frozen CLIP and, for the
    ProxyCLIP family, a frozen VFM."""

    def __init__(self, clip: ClipTower, vfm: VfmTower | None, preset: Preset | None = None, window_batch: int = 16,
                 compile: bool = False, text_cache: bool = True, progress: bool = True):
        """window_batch: windows per backbone forward (memory vs speed; results do not change).
        compile: run the backbones' window forwards through torch.compile (first call compiles).
        text_cache: keep query embeddings on disk across runs (`text_cache.cache_root()`); never for
        random weights. progress: a progress bar when text encoding takes more than 2 s."""
        import open_clip

        self.clip = clip
        self.vfm = vfm
        self.preset = preset or get_preset("gla-proxyclip")
        self.preset.validate()
        self.window_batch = window_batch
        self._instance = uuid.uuid4().hex  # names this segmenter's random weights in encodings
        # The backbone forwards are the only fixed-shape, repeated work; everything else is cheap or global.
        wrap = torch.compile if compile else (lambda f: f)
        self._vfm_features = wrap(vfm.features) if vfm is not None else None
        self._clip_values = wrap(clip.value_tokens)
        self._clip_block_input = wrap(clip.last_block_input)
        self.device = clip.visual.conv1.weight.device
        self.text = TextEncoder(clip.encode_text, open_clip.get_tokenizer(clip.name), self.device,
                                short_encode=None if os.environ.get("GLACLIP_FULL_CONTEXT_TEXT") else
                                short_context_encoder(clip.model), progress=progress)
        if text_cache and clip.weights != "random":
            self.text.disk = clip_text_cache(clip, self.text.prompt_strings)
        self._query_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._check_grids()

    @classmethod
    def from_pretrained(cls, clip: str = DEFAULT_CLIP, clip_weights: str | None = None, vfm: str = DEFAULT_VFM,
                        vfm_weights: str | None = None, method: str = "gla-proxyclip", device: str = "auto",
                        dtype: str = "auto", window_batch: int = 16, compile: bool = False,
                        dataset: str | None = None, protocol: str | None = None, text_cache: bool = True,
                        progress: bool = True, **overrides: Any) -> "Segmenter":
        """Load both models and a preset.

        clip: open_clip model name (or 'hf-hub:...', or an open_clip JSON config file).
        clip_weights: a pretrained tag ('openai'), a local file, or 'random'; None -> $GLACLIP_CLIP_WEIGHTS or 'openai'.
        vfm: timm model name with tag; vfm_weights: a local file, 'random', or None -> $GLACLIP_VFM_WEIGHTS or the hub.
        method: a preset name (`glaclip methods`: 'gla-proxyclip', 'proxyclip', 'clearclip', 'gla-naclip', ...);
            CLIP-only methods load no VFM.
        dataset, protocol: take the settings of that data set's row of the protocol table
            (`protocols.resolve`; protocol None: the method's own, 'host', 'gla' or a host's name).
        overrides: any setting of the preset, e.g. rho=0.6, short_side=560, prob_thd=0.1.
        """
        preset = resolve(method, dataset, protocol, **overrides)
        missing: list[MissingWeights] = []  # name every missing file at once, not one per run
        tower = vfm_tower = None
        try:
            tower = load_clip(clip, clip_weights, device=device, dtype=dtype)
        except MissingWeights as exc:
            missing.append(exc)
        if METHODS[preset.method].needs_vfm:
            try:
                vfm_tower = load_vfm(vfm, vfm_weights, device=tower.visual.conv1.weight.device if tower else device,
                                     dtype=tower.dtype if tower else dtype)
            except MissingWeights as exc:
                missing.append(exc)
        if missing:
            raise MissingWeights.combine(missing)
        return cls(tower, vfm_tower, preset, window_batch=window_batch, compile=compile, text_cache=text_cache,
                   progress=progress)

    def models(self) -> dict:
        """Which models (and weights) this segmenter runs; the VFM is None for CLIP-only methods."""
        vfm = {"model": self.vfm.name, "weights": self.vfm.weights} if self.vfm is not None else None
        return {"clip": {"model": self.clip.name, "weights": self.clip.weights}, "vfm": vfm}

    def models_line(self) -> str:
        m = self.models()
        vfm = f"{m['vfm']['model']}:{m['vfm']['weights']}" if m["vfm"] else "none"
        return (f"clip={m['clip']['model']}:{m['clip']['weights']} vfm={vfm} device={self.device} "
                f"dtype={dtype_name(self.clip.dtype)}")

    @property
    def method(self) -> Method:
        return METHODS[self.preset.method]

    @property
    def token_patch(self) -> int:
        """Patch size of the backbone whose grid carries the tokens (the VFM's, else CLIP's)."""
        return self.vfm.patch_size if self.method.needs_vfm else self.clip.patch_size

    def grid_for(self, height: int, width: int) -> WindowGrid:
        """The windows of a (resized) image under this preset (crop 0: one window, the whole image)."""
        w = self.preset.window
        crop = w.crop or max(height, width)
        return window_grid(height, width, crop, w.stride, w.pad_multiple or self.token_patch)

    def _check_grids(self) -> None:
        if self.method.needs_vfm and self.vfm is None:
            raise GlaclipError(f"method {self.preset.method} needs a VFM; build the segmenter with one")
        # Full windows must tile into patches; a padded small window that does not is floored by the
        # patch convolution (as in the released code) and its logits are resized to the padded size.
        w, p = self.preset.window, self.token_patch
        if w.crop % p:  # crop 0 (whole image) passes
            raise GlaclipError(f"crop {w.crop} must be a multiple of the patch size {p}")

    def with_preset(self, preset: Preset) -> "Segmenter":
        """A segmenter sharing these models (and text cache) with other settings."""
        other = object.__new__(Segmenter)
        other.__dict__.update(self.__dict__)
        other.preset = preset
        other.preset.validate()
        other._check_grids()
        return other

    def query_embeddings(self, queries: ClassQueries) -> torch.Tensor:
        key = queries.queries
        if key not in self._query_cache:
            self._query_cache[key] = self.text.embed(key)
        return self._query_cache[key]

    @torch.no_grad()
    def window_features(self, crops: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """Per-window tensors of B windows (B x 3 x h x w, CLIP-normalised), `window_batch` at a time,
        and the token grid: for VFM methods normalised VFM 'keys' and CLIP 'values' on the VFM grid;
        for CLIP-only methods 'finals' (window-local) or 'key0'.., 'values', 'raw' (GLA)."""
        method, a = self.method, self.preset.attention
        parts: dict[str, list[torch.Tensor]] = {}

        def add(name: str, t: torch.Tensor) -> None:
            parts.setdefault(name, []).append(t)

        for start in range(0, crops.shape[0], self.window_batch):
            batch = crops[start : start + self.window_batch]
            if method.needs_vfm:
                k = self._vfm_features(clip_to_imagenet(batch))
                v = F.interpolate(self._clip_values(batch), size=k.shape[-2:], mode="bilinear", align_corners=False)
                add("keys", F.normalize(k.flatten(2).transpose(1, 2), dim=-1))
                add("values", v.flatten(2).transpose(1, 2))
                grid_hw = tuple(k.shape[-2:])
            else:
                tokens, grid_hw = self._clip_block_input(batch)
                if method.is_global:
                    keys, v, q = global_keys(method, self.clip, tokens)
                    for i, key in enumerate(keys):
                        add(f"key{i}", key)
                    add("values", v)
                    add("raw", q)
                else:
                    add("finals", local_tokens(method, self.clip, tokens, grid_hw, a))
        return {name: torch.cat(ts) for name, ts in parts.items()}, grid_hw

    def final_tokens(self, feats: dict[str, torch.Tensor], grid: WindowGrid, grid_hw: tuple[int, int]) -> torch.Tensor:
        """One image's window features -> its N x D final patch tokens (the attention of step 5)."""
        method, a = self.method, self.preset.attention
        if method.needs_vfm:
            keys, values = feats["keys"], feats["values"]
            if method.is_global:
                out = gla_attention(keys.flatten(0, 1), values.flatten(0, 1), grid.count, a)
            else:
                out = proxyclip_attention(keys, values, a)
            return self.clip.out_proj(out.flatten(0, -2))
        if not method.is_global:
            return feats["finals"].flatten(0, 1)
        keys = [feats[f"key{i}"].flatten(0, 1) for i in range(sum(k.startswith("key") for k in feats))]
        init = None
        if method.smoothed_init:
            index = token_index(grid, grid_hw, self.clip.patch_size).to(self.device)
            init = smoothed_proxy(feats["raw"].flatten(0, 1), index, grid_hw)
        return global_tokens(method, self.clip, keys, feats["values"].flatten(0, 1), grid.count, a, init)

    @torch.no_grad()
    def window_tokens(self, image: torch.Tensor, grid: WindowGrid
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """VFM methods: normalised VFM keys (N x C), CLIP values on the VFM grid (N x D), and that grid."""
        feats, grid_hw = self.window_features(crop_windows(image.to(self.device), grid))
        return feats["keys"].flatten(0, 1), feats["values"].flatten(0, 1), grid_hw

    @torch.no_grad()
    def clip_host_tokens(self, image: torch.Tensor, grid: WindowGrid) -> tuple[torch.Tensor, tuple[int, int]]:
        """CLIP-only methods: final patch tokens of all windows (N x D) and the CLIP grid."""
        feats, grid_hw = self.window_features(crop_windows(image.to(self.device), grid))
        return self.final_tokens(feats, grid, grid_hw), grid_hw

    @torch.no_grad()
    def image_canvas(self, rgb: np.ndarray, queries: ClassQueries) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-7 up to the last resize: cosine logits Q x h x w on the resized image (windows
        stitched) or, for whole-image inference without padding, on the token grid; and the resized,
        CLIP-normalised image 1 x 3 x h' x w'. One bilinear resize takes the logits to the original size."""
        enc = self.encode_images([rgb])[0]
        return self.canvas(enc, queries), enc.resized

    def encoding_identity(self) -> dict:
        """What an image encoding depends on: models (weights), precision, method, window and
        attention settings (the decision settings apply after the text product and may differ)."""
        models = ImageEncoding.model_identity(self.clip, self.vfm)  # weights by content, not by path
        if "random" in (self.clip.weights, self.vfm.weights if self.vfm is not None else None):
            models["random_weights_of"] = self._instance  # random weights: this segmenter's own only
        p = self.preset
        return json.loads(json.dumps({"models": models, "dtype": dtype_name(self.clip.dtype),
                                      "method": p.method, "window": dataclasses.asdict(p.window),
                                      "attention": {k: v for k, v in dataclasses.asdict(p.attention).items()
                                                    if k not in ("block_rows", "memory_mb")}}))

    @torch.no_grad()
    def encode_image(self, image: ImageInput) -> ImageEncoding:
        """Everything before the text product (steps 1-5 and the projection), to be answered with
        `predict(encoding, classes)` for any number of class lists."""
        path = str(image) if isinstance(image, (str, os.PathLike)) else None
        enc = self.encode_images([load_image(image)])[0]
        enc.image_path = path
        return enc

    @torch.no_grad()
    def encode_images(self, rgbs: list[np.ndarray], max_windows: int | None = None) -> list[ImageEncoding]:
        """`encode_image` of several images, the windows of consecutive images of one window size
        sharing backbone forwards (up to max_windows, default 4 x window_batch, at a time); the
        attention stays per image."""
        w = self.preset.window
        acc = accumulation_dtype(self.clip.dtype)
        prepared = []
        for rgb in rgbs:
            x = preprocess(rgb, w.short_side, w.max_long_side, acc)
            prepared.append((rgb.shape[:2], x, self.grid_for(x.shape[2], x.shape[3])))
        limit = max_windows or 4 * self.window_batch
        identity = self.encoding_identity()
        out = []
        i = 0
        while i < len(prepared):
            j, total = i + 1, prepared[i][2].count
            while (j < len(prepared) and prepared[j][2].padded_size == prepared[i][2].padded_size
                   and total + prepared[j][2].count <= limit):
                total += prepared[j][2].count
                j += 1
            crops = torch.cat([crop_windows(x.to(self.device), grid) for _, x, grid in prepared[i:j]])
            feats, (gh, gw) = self.window_features(crops)
            offset = 0
            for size, x, grid in prepared[i:j]:
                mine = {k: v[offset : offset + grid.count] for k, v in feats.items()}
                offset += grid.count
                final = self.final_tokens(mine, grid, (gh, gw))
                emb = F.normalize(self.clip.head(final).to(acc), dim=-1).view(grid.count, gh, gw, -1)
                out.append(ImageEncoding(emb, grid, tuple(size), x, identity))
            i = j
        return out

    def check_encoding(self, enc: ImageEncoding) -> None:
        """Refuse an encoding made with other models, method or settings."""
        mine = self.encoding_identity()
        if enc.identity != mine:
            differ = sorted(k for k in set(mine) | set(enc.identity) if mine.get(k) != enc.identity.get(k))
            raise GlaclipError(f"this image encoding differs from this segmenter in: {', '.join(differ)}; encode the "
                               "image again with this segmenter")

    def canvas(self, enc: ImageEncoding, queries: ClassQueries) -> torch.Tensor:
        """The text product of an encoding: logits Q x h x w stitched on the resized image (or on the
        token grid for whole-image inference), before the final resize."""
        text = self.query_embeddings(queries).to(enc.embeddings.device, enc.embeddings.dtype)
        logits = (enc.embeddings @ text.T).permute(0, 3, 1, 2)
        if self.preset.window.crop == 0 and not any(enc.grid.pad):  # whole image: the grid straight to the original
            return logits[0]
        return stitch(logits, enc.grid)

    @torch.no_grad()
    def image_logits(self, rgb: np.ndarray, queries: ClassQueries) -> tuple[torch.Tensor, torch.Tensor]:
        """Stitched cosine logits Q x H x W at the original image size (steps 1-7), and the resized,
        CLIP-normalised image 1 x 3 x h x w they came from."""
        canvas, x = self.image_canvas(rgb, queries)
        return F.interpolate(canvas[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0], x

    def band_logits(self, canvas: torch.Tensor, resized: torch.Tensor, size: tuple[int, int], start: int, stop: int,
                    preset: Preset | None = None) -> torch.Tensor:
        """Rows start..stop-1 of the refined full-resolution logits (Q x rows x W): the canvas resized
        bilinearly to `size`, then PAMR when the preset switches it on, computed on the band widened by
        PAMR's reach (steps x largest dilation) so that the rows equal those of the whole image."""
        d = (preset or self.preset).decision
        h, w = size
        if d.pamr_steps <= 0:
            return resize_rows(canvas, h, w, start, stop)
        halo = d.pamr_steps * max(d.pamr_dilations)
        a, b = max(start - halo, 0), min(stop + halo, h)
        guide = resize_rows(resized[0].to(self.device, canvas.dtype), h, w, a, b)
        refined = pamr(guide, resize_rows(canvas, h, w, a, b), d.pamr_steps, tuple(d.pamr_dilations))
        return refined[:, start - a : stop - a]

    def predict(self, image: ImageInput, classes: Iterable[ClassSpec] | str | ClassQueries,
                prob_thd: float | None = None) -> Segmentation:
        """Segment one image into the given classes.

        image: path, PIL image, HxWx3 uint8 array, tensor (floats in [0, 1]), or an ImageEncoding
        from `encode_image` (then only the text product and the decision run). classes: names,
        synonym lists, or one string in the class syntax ("sky, car; vehicle, road": commas or
        newlines separate classes, ';' synonyms). prob_thd (default: the preset's): pixels whose top
        class probability is below it get index 0, so put a background class first when using it.
        """
        queries = classes if isinstance(classes, ClassQueries) else parse_classes(classes)
        preset = self.preset if prob_thd is None else self.preset.with_overrides(prob_thd=prob_thd)
        if isinstance(image, ImageEncoding):
            self.check_encoding(image)
            enc = image
        else:
            enc = self.encode_images([load_image(image)])[0]
        return self._decide_bands(self.canvas(enc, queries), enc.resized, enc.size, queries, preset)

    def predict_many(self, images: list[ImageInput], classes: Iterable[ClassSpec] | str | ClassQueries,
                     prob_thd: float | None = None, max_windows: int | None = None) -> list[Segmentation]:
        """`predict` for several images, their windows sharing backbone forwards (same results)."""
        queries = classes if isinstance(classes, ClassQueries) else parse_classes(classes)
        preset = self.preset if prob_thd is None else self.preset.with_overrides(prob_thd=prob_thd)
        encs = self.encode_images([load_image(im) for im in images], max_windows)
        return [self._decide_bands(self.canvas(enc, queries), enc.resized, enc.size, queries, preset) for enc in encs]

    @torch.no_grad()
    def _decide_bands(self, canvas: torch.Tensor, resized: torch.Tensor, size: tuple[int, int],
                      queries: ClassQueries, preset: Preset) -> Segmentation:
        """Post-processing and decision a band of rows at a time: memory stays bounded whatever the
        number of classes and pixels (the area threshold, a global rule, takes a first pass)."""
        d = preset.decision
        h, w = size
        owner = torch.tensor(queries.query_class)
        c = len(queries)
        rows = max(1, _BAND_BYTES // (4 * (2 * canvas.shape[0] + c) * w))
        bands = [(y, min(y + rows, h)) for y in range(0, h, rows)]

        def band_probs(y0: int, y1: int) -> torch.Tensor:
            logits = self.band_logits(canvas, resized, size, y0, y1, preset)
            return class_probabilities(logits, owner, c, d.logit_scale)

        keep = None
        if d.area_thd is not None:
            areas = torch.zeros(c, dtype=torch.int64)
            for y0, y1 in bands:
                areas += torch.bincount(band_probs(y0, y1).argmax(dim=0).flatten().cpu(), minlength=c)
            keep = area_keep(areas, d.area_thd)

        def finish(p: torch.Tensor) -> torch.Tensor:
            return p if keep is None else p * keep.to(p.device, p.dtype)[:, None, None]

        labels = np.empty((h, w), dtype=np.int64)
        eager = len(bands) == 1 or c * h * w * 4 <= _BAND_BYTES
        out_dtype = np.float64 if canvas.dtype == torch.float64 else np.float32  # fp64 only for verification
        probs = np.empty((c, h, w), dtype=out_dtype) if eager else None
        for y0, y1 in bands:
            p = finish(band_probs(y0, y1))
            labels[y0:y1] = _labels(p, d.prob_thd).cpu().numpy()
            if eager:
                probs[:, y0:y1] = p.cpu().numpy()

        def all_probs() -> np.ndarray:
            out = np.empty((c, h, w), dtype=out_dtype)
            for y0, y1 in bands:
                out[:, y0:y1] = finish(band_probs(y0, y1)).cpu().numpy()
            return out

        return Segmentation(labels, probs, list(queries.names), preset, probs_fn=None if eager else all_probs)
