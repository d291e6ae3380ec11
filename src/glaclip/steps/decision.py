"""From the text product to the result: full-resolution logits, post-processing and METHOD.md step 8.

`decide` takes the stitched logits of one image (its canvas) to a `Segmentation` at the image's own
size, a band of rows at a time so that memory stays bounded whatever the number of classes and
pixels: each band is resized bilinearly from the canvas, refined by PAMR when the preset switches it
on (`band_logits`, on the band widened by PAMR's reach), turned into class probabilities
(softmax(logit_scale * logits), max over each class's synonyms) and into labels (argmax, background
threshold). The area threshold (SCLIP), a rule over the whole image, is a first pass over the bands
(`area_hook`) whose per-class keep mask then applies to every band. Map correction by region masks
(CorrCLIP, `mask_vote`) changes the labels only: the probabilities stay those of the decision.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from ..config.classes import ClassQueries
from ..config.presets import DecisionConfig, Preset
from ..errors import GlaclipError
from .postprocess import area_keep, mask_vote, pamr
from .windows import resize_rows

_BAND_BYTES = 256 * 2**20  # full-resolution logits and probabilities held at once, per band of rows


class Segmentation:
    """Result for one image, at its original size.

    labels: HxW int64 class indices; probs: CxHxW float32 per-class probabilities (max over each
    class's synonyms); classes: display names in index order; preset: the settings used.
    For large images the labels are computed a band of rows at a time and `probs` only when first
    read (it is the one array whose size grows with classes x pixels).
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray | None, classes: list[str], preset: Preset,
                 probs_fn: Callable[[], np.ndarray] | None = None,
                 rows_fn: Callable[[int, int], np.ndarray] | None = None, bands: list[tuple[int, int]] | None = None):
        self.labels = labels
        self._probs = probs
        self._probs_fn = probs_fn
        self._rows_fn = rows_fn  # rows y0..y1-1 of the probabilities, for the `bands` (lazy results only)
        self._bands = bands
        self.classes = classes
        self.preset = preset
        self.extras: dict[str, np.ndarray] = {}  # a method's own outputs, e.g. Trident's refined 'sam_scores'

    @property
    def sam_scores(self) -> np.ndarray | None:
        """Trident's refined per-class scores (C x H x W) when its refinement changed the labels (kept for
        one release: `extras["sam_scores"]`)."""
        return self.extras.get("sam_scores")

    @property
    def probs(self) -> np.ndarray:
        if self._probs is None:
            self._probs = self._probs_fn()
        return self._probs

    def prob_bands(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """The probabilities a band of rows at a time, (y0, y1, C x (y1 - y0) x W), without building
        the whole C x H x W array of a large image when it has not been read yet."""
        if self._probs is None and self._rows_fn is not None:
            for y0, y1 in self._bands:
                yield y0, y1, self._rows_fn(y0, y1)
        else:
            yield 0, self.labels.shape[0], self.probs

    def mean_probs(self) -> np.ndarray:
        """Each class's probability averaged over the pixels labelled with it (C, float64; NaN for a
        class no pixel has): the confidence the integrations report for a class's mask."""
        c = len(self.classes)
        sums, counts = np.zeros(c), np.zeros(c)
        for y0, y1, p in self.prob_bands():
            lab = self.labels[y0:y1]
            own = np.take_along_axis(p, lab[None], axis=0)[0]  # each pixel's probability of its own label
            sums += np.bincount(lab.ravel(), weights=own.ravel().astype(np.float64), minlength=c)
            counts += np.bincount(lab.ravel(), minlength=c)
        with np.errstate(invalid="ignore"):
            return sums / counts

    def to_supervision(self):
        """This result as `supervision.Detections`, one detection per class present (needs the extra
        `glaclip[supervision]`; see `glaclip.integrations.supervision`)."""
        from ..integrations.supervision import to_detections

        return to_detections(self)

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


def labels_from(class_probs: torch.Tensor, prob_thd: float) -> torch.Tensor:
    """Argmax over the classes (C x ... -> ...); where the top probability is below prob_thd, index 0."""
    top, labels = class_probs.max(dim=0)
    if prob_thd > 0:
        labels[top < prob_thd] = 0
    return labels


def band_logits(canvas: torch.Tensor, resized: torch.Tensor, size: tuple[int, int], start: int, stop: int,
                decision: DecisionConfig) -> torch.Tensor:
    """Rows start..stop-1 of the refined full-resolution logits (Q x rows x W): the canvas resized
    bilinearly to `size`, then PAMR when `decision.pamr_steps` > 0, computed on the band widened by
    PAMR's reach (steps x largest dilation) so that the rows equal those of the whole image.
    resized: the resized, CLIP-normalised image (1 x 3 x h x w), PAMR's guide."""
    h, w = size
    if decision.pamr_steps <= 0:
        return resize_rows(canvas, h, w, start, stop)
    halo = decision.pamr_steps * max(decision.pamr_dilations)
    a, b = max(start - halo, 0), min(stop + halo, h)
    guide = resize_rows(resized[0].to(canvas.device, canvas.dtype), h, w, a, b)
    refined = pamr(guide, resize_rows(canvas, h, w, a, b), decision.pamr_steps, tuple(decision.pamr_dilations))
    return refined[:, start - a : stop - a]


def area_hook(band_probs: Callable[[int, int], torch.Tensor], bands: list[tuple[int, int]], num_classes: int,
              decision: DecisionConfig) -> torch.Tensor | None:
    """SCLIP's area threshold over the whole image: the per-class keep mask (C, bool) from the argmax
    areas of every band, or None when the preset has no area threshold."""
    if decision.area_thd is None:
        return None
    areas = torch.zeros(num_classes, dtype=torch.int64)
    for y0, y1 in bands:
        areas += torch.bincount(band_probs(y0, y1).argmax(dim=0).flatten().cpu(), minlength=num_classes)
    return area_keep(areas, decision.area_thd)


@torch.no_grad()
def decide(canvas: torch.Tensor, resized: torch.Tensor, size: tuple[int, int], queries: ClassQueries,
           preset: Preset, masks: torch.Tensor | np.ndarray | None = None) -> Segmentation:
    """One image's canvas (Q x h x w stitched logits) -> its Segmentation at `size` (H, W), a band of
    rows at a time (probabilities of large images computed again, band by band, when read).
    masks: the image's H x W region-id map, for map correction when `preset.decision.mask_vote`."""
    d = preset.decision
    if d.mask_vote and masks is None:
        raise GlaclipError("mask_vote needs region masks (masks=..., --masks DIR or --sam NAME)")
    h, w = size
    owner = torch.tensor(queries.query_class)
    c = len(queries)
    rows = max(1, _BAND_BYTES // (4 * (2 * canvas.shape[0] + c) * w))
    bands = [(y, min(y + rows, h)) for y in range(0, h, rows)]

    def band_probs(y0: int, y1: int) -> torch.Tensor:
        return class_probabilities(band_logits(canvas, resized, size, y0, y1, d), owner, c, d.logit_scale)

    keep = area_hook(band_probs, bands, c, d)

    def finish(p: torch.Tensor) -> torch.Tensor:
        return p if keep is None else p * keep.to(p.device, p.dtype)[:, None, None]

    labels = np.empty((h, w), dtype=np.int64)
    eager = len(bands) == 1 or c * h * w * 4 <= _BAND_BYTES
    out_dtype = np.float64 if canvas.dtype == torch.float64 else np.float32  # fp64 only for verification
    probs = np.empty((c, h, w), dtype=out_dtype) if eager else None
    for y0, y1 in bands:
        p = finish(band_probs(y0, y1))
        labels[y0:y1] = labels_from(p, d.prob_thd).cpu().numpy()
        if eager:
            probs[:, y0:y1] = p.cpu().numpy()
    if d.mask_vote:
        labels = mask_vote(labels, np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks))

    def all_probs() -> np.ndarray:
        out = np.empty((c, h, w), dtype=out_dtype)
        for y0, y1 in bands:
            out[:, y0:y1] = finish(band_probs(y0, y1)).cpu().numpy()
        return out

    def rows(y0: int, y1: int) -> np.ndarray:
        return finish(band_probs(y0, y1)).cpu().numpy().astype(out_dtype, copy=False)

    return Segmentation(labels, probs, list(queries.names), preset, probs_fn=None if eager else all_probs,
                        rows_fn=None if eager else rows, bands=bands)
