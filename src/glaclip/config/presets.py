"""Presets: every setting a method runs with.

A preset is three small groups of settings (windows, attention, decision) plus the method name.
Every value defaults to METHOD.md; `Preset.describe()` is printed next to every result. The named
presets and the settings of each method on each data set are resolved in `protocols.py`; the
methods themselves are listed in `methods.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

from ..errors import GlaclipError
from .registry import (
    CLIP_LOCAL,
    DEFAULT_METHOD,
    GLOBAL,
    MASK_GLOBAL,
    MASK_LOCAL,
    MASK_RADIO,
    MASK_RADIO_GLOBAL,
    METHODS,
    SAM_GLOBAL,
    VFM_LOCAL,
)

BANK_SETTINGS = ("num_support", "use_aux", "bank_alpha")  # read by bank support (any method with a memory bank)
ALIASES = {"T": "proxy_iters", "S": "short_side", "c": "crop", "s": "stride"}  # METHOD.md's symbols
# the attention and decision settings each family reads (every method reads the window settings and
# DECISION: DecisionConfig also holds Trident's); `Preset.describe` lists these only
DECISION = ("logit_scale", "prob_thd", "area_thd", "pamr_steps", "pamr_dilations", "mask_vote")
GLA = ("rho", "proxy_iters", "dynamic", "dynamic_beta", "alpha_beta", "alpha_gamma", "beta", "gamma", "block_rows",
       "memory_mb")
FAMILY_SETTINGS = {
    GLOBAL: GLA, VFM_LOCAL: ("beta", "gamma", "memory_mb", "token_norm"), CLIP_LOCAL: (), MASK_LOCAL: (),
    MASK_GLOBAL: ("block_rows", "memory_mb"), MASK_RADIO: BANK_SETTINGS,
    MASK_RADIO_GLOBAL: ("block_rows", "memory_mb", *BANK_SETTINGS),
    SAM_GLOBAL: ("beta", "gamma", "cos_fac", "refine_neg_cos", "sam_halves", "sam_refine", "coarse_thresh",
                 "sam_iou_thresh", "minimal_area", "sam_mask_coff"),
}


@dataclass(frozen=True)
class WindowConfig:
    """METHOD.md steps 1-2: resize and sliding windows.

    crop 0: the whole image in one window (no sliding). pad_multiple: a window is zero-padded
    (centred) to a multiple of it; 0: the token backbone's patch size; 1: no padding (a side that
    does not tile into patches is floored by the patch convolution).
    """

    short_side: int = 336
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 112
    pad_multiple: int = 56


@dataclass(frozen=True)
class AttentionConfig:
    """METHOD.md step 5: proxy anchor and (dynamic) normalisation.

    `dynamic=False` uses the fixed `beta`/`gamma`; `dynamic_beta=False` keeps the fixed `beta` with the
    dynamic gamma. `token_norm` (window-local ProxyCLIP only): True subtracts each row's mean and
    thresholds at min(rowmax, 0) (the GLA release's variant); False subtracts ONE scalar mean per
    window as official ProxyCLIP. `block_rows` is how many query rows of the global attention are
    held at once (None: chosen from `memory_mb`); it changes memory, not results.
    """

    rho: float = 0.55
    proxy_iters: int = 2
    dynamic: bool = True
    dynamic_beta: bool = True
    alpha_beta: float = 0.3
    alpha_gamma: float = 30.0
    beta: float = 1.2
    gamma: float = 3.0
    block_rows: int | None = None
    memory_mb: int = 512
    gaussian_std: float = 5.0  # NACLIP's neighbourhood, in patches
    token_norm: bool = True
    cos_fac: float = 1.2  # Trident: SAM attention kept where cos(SAM v) > min(cos_fac x row mean, 0.9)
    refine_neg_cos: bool = True  # Trident: False turns a negative threshold into 0.6
    sam_halves: bool = False  # Trident: SAM on the left and right halves separately (its Cityscapes protocol)
    num_support: int = 20  # CorrCLIPv2: bank neighbours retrieved per region (with a memory bank)


@dataclass(frozen=True)
class DecisionConfig:
    """Post-processing of the logits and METHOD.md step 8.

    pamr_steps > 0 refines the logits with PAMR (BASELINES.md, NACLIP) before the decision;
    area_thd (None: off) is SCLIP's area threshold; then softmax(logit_scale * logits), the max over
    synonyms and the background threshold prob_thd. mask_vote: map correction (CorrCLIP): with region
    masks given, every region but the one of the smallest id takes its most frequent label.
    """

    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    mask_vote: bool = False
    sam_refine: bool = True  # Trident: SAM prompt refinement of the labels
    coarse_thresh: float = 0.2  # Trident: a class (and a pixel) prompts SAM from this probability on
    sam_iou_thresh: float = 0.8  # Trident: SAM masks kept above this predicted IoU (any value: <0 keeps all)
    minimal_area: int = 225  # Trident: smallest component (pixels at half resolution) that prompts SAM
    sam_mask_coff: float = 0.005  # Trident: scale of the mask prompt
    use_aux: bool = True  # CorrCLIPv2 (DMCE): the auxiliary CLIP's store and text beside the main ones, averaged
    bank_alpha: float = 0.5  # CorrCLIPv2: weight of the image's own logits against the bank's support


@dataclass(frozen=True)
class Preset:
    """A method with every setting it runs with.

    protocol/dataset/class_file say where the values came from (protocols.py): the protocol whose
    table row was used ('gla' or a host's), the data set of that row (None: a plain image) and the
    packaged class file of that protocol and data set.
    """

    name: str
    method: str = DEFAULT_METHOD
    window: WindowConfig = field(default_factory=WindowConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    protocol: str = "gla"
    dataset: str | None = None
    class_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings(self, queries: Sequence[str] | None = None) -> dict[str, Any]:
        """The effective settings as one flat JSON-ready object (`glaclip presets --json`)."""
        w, a, d = self.window, self.attention, self.decision
        return {
            "method": self.method, "dataset": self.dataset, "protocol": self.protocol, "preset": self.name,
            "short_side": w.short_side, "max_long_side": w.max_long_side, "crop": w.crop, "stride": w.stride,
            "pad_multiple": w.pad_multiple, "logit_scale": d.logit_scale, "prob_thd": d.prob_thd,
            "area_thd": d.area_thd, "pamr_steps": d.pamr_steps, "pamr_dilations": list(d.pamr_dilations),
            "mask_vote": d.mask_vote,
            "cos_fac": a.cos_fac, "refine_neg_cos": a.refine_neg_cos, "sam_halves": a.sam_halves,
            "sam_refine": d.sam_refine, "coarse_thresh": d.coarse_thresh, "sam_iou_thresh": d.sam_iou_thresh,
            "minimal_area": d.minimal_area, "sam_mask_coff": d.sam_mask_coff,
            "token_norm": a.token_norm, "rho": a.rho, "proxy_iters": a.proxy_iters, "dynamic": a.dynamic,
            "dynamic_beta": a.dynamic_beta, "num_support": a.num_support, "use_aux": d.use_aux,
            "bank_alpha": d.bank_alpha, "class_file": self.class_file,
            "queries": list(queries) if queries is not None else None,
        }

    @property
    def reads_masks(self) -> bool:
        """Whether the method reads region masks (CorrCLIP) or the decision does (mask_vote)."""
        return METHODS[self.method].needs_masks or self.decision.mask_vote

    def describe(self, bank: bool = False) -> str:
        """One line with every setting the method uses (`used_settings`), e.g. for logs and result files;
        bank: with a memory bank's support (its settings listed too)."""
        parts = [f"preset={self.name}", f"method={self.method}", f"protocol={self.protocol}",
                 f"dataset={self.dataset or 'none'}"]
        used = used_settings(self.method, bank)
        for group in (self.window, self.attention, self.decision):
            parts += [f"{f.name}={getattr(group, f.name)}" for f in fields(group) if f.name in used]
        return " ".join(parts)

    def with_overrides(self, **overrides: Any) -> "Preset":
        """A copy with flat overrides, e.g. ``rho=0.6, short_side=560, method="proxyclip"``."""
        if not overrides:
            return self
        groups = {"window": self.window, "attention": self.attention, "decision": self.decision}
        changes: dict[str, dict[str, Any]] = {k: {} for k in groups}
        top: dict[str, Any] = {}
        for key, value in overrides.items():
            key = ALIASES.get(key, key)
            if key in ("name", "method"):
                top[key] = value
                continue
            owner = next((g for g, obj in groups.items() if key in _field_types(obj)), None)
            if owner is None:
                raise GlaclipError(f"unknown setting {key!r}; known: {', '.join(sorted(setting_names()))}")
            changes[owner][key] = _coerce(key, value, _field_types(groups[owner])[key])
        new = replace(self, **top, **{g: replace(groups[g], **c) for g, c in changes.items() if c})
        new.validate()
        return new

    def validate(self) -> None:
        w, a, d = self.window, self.attention, self.decision
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if min(w.short_side, w.max_long_side, w.stride) <= 0 or w.crop < 0 or w.pad_multiple < 0:
            problems.append("window sizes must be positive (crop 0: whole image)")
        if not -1.0 <= a.rho < 1.0:
            problems.append(f"rho must lie in [-1, 1), got {a.rho}")
        if a.proxy_iters < 0:
            problems.append("proxy_iters must be >= 0")
        if a.block_rows is not None and a.block_rows <= 0:
            problems.append("block_rows must be positive")
        if a.memory_mb <= 0:
            problems.append("memory_mb must be positive")
        if a.gaussian_std <= 0:
            problems.append("gaussian_std must be positive")
        if not a.token_norm and self.method in METHODS and METHODS[self.method].family != VFM_LOCAL:
            local = ", ".join(m.name for m in METHODS.values() if m.family == VFM_LOCAL)
            problems.append(f"token_norm=false (one scalar mean per window) applies to the window-local VFM "
                            f"methods only ({local})")
        if d.logit_scale <= 0:
            problems.append(f"logit_scale must be positive, got {d.logit_scale}")
        if not 0.0 <= d.prob_thd <= 1.0:
            problems.append(f"prob_thd must lie in [0, 1], got {d.prob_thd}")
        if d.area_thd is not None and not 0.0 <= d.area_thd <= 1.0:
            problems.append(f"area_thd must lie in [0, 1] (or none), got {d.area_thd}")
        if not 0.0 <= d.coarse_thresh <= 1.0:
            problems.append(f"coarse_thresh must lie in [0, 1], got {d.coarse_thresh}")
        if d.minimal_area < 0 or d.sam_mask_coff < 0:
            problems.append("minimal_area and sam_mask_coff must be >= 0")
        if a.num_support <= 0:
            problems.append("num_support must be positive")
        if not 0.0 <= d.bank_alpha <= 1.0:
            problems.append(f"bank_alpha must lie in [0, 1], got {d.bank_alpha}")
        if d.pamr_steps < 0:
            problems.append("pamr_steps must be >= 0")
        if not d.pamr_dilations or min(d.pamr_dilations) <= 0:
            problems.append("pamr_dilations must be positive integers, e.g. 8,16")
        if problems:
            raise GlaclipError("; ".join(problems))


def _field_types(obj: Any) -> dict[str, Any]:
    return {f.name: f.type for f in fields(obj)}


def _coerce(key: str, value: Any, type_name: str) -> Any:
    """Accept strings (from the CLI) for numeric, boolean and tuple settings; floats must be finite."""
    optional = "None" in str(type_name)
    base = str(type_name).replace(" | None", "")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "off", "auto", "")):
        if optional:
            return None
        raise GlaclipError(f"setting {key!r} cannot be empty")
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base == "int":
            as_float = float(value)
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if base == "float":
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError(value)
            return as_float
        if base.startswith("tuple"):
            items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
            return tuple(_coerce(key, v, "int") for v in items)
    except (TypeError, ValueError):
        raise GlaclipError(f"setting {key!r} needs a {base} value (finite), got {value!r}") from None
    return value


def used_settings(method: str, bank: bool = False) -> set[str]:
    """The settings a method reads: the window settings, its family's (`FAMILY_SETTINGS`), the decision's,
    NACLIP's gaussian_std where it adds the neighbourhood, and with a memory bank (`bank`) the bank
    support's (`BANK_SETTINGS`) (an unknown method or family: all)."""
    entry = METHODS.get(method)
    if entry is None or entry.family not in FAMILY_SETTINGS:
        return set(setting_names())
    return {f.name for f in fields(WindowConfig)} | set(FAMILY_SETTINGS[entry.family]) | set(DECISION) | (
        {"gaussian_std"} if entry.neighbourhood else set()) | (set(BANK_SETTINGS) if bank else set())


def bank_only_settings(method: str, overrides) -> list[str]:
    """The settings among `overrides` (names as given; aliases allowed) that `method` reads only with a
    memory bank (bank support's, for every method whose family does not read them itself)."""
    unused = set(BANK_SETTINGS) - used_settings(method)
    return [k for k in overrides if ALIASES.get(k, k) in unused]


def setting_names() -> list[str]:
    names = ["method"]
    for cls in (WindowConfig, AttentionConfig, DecisionConfig):
        names += [f.name for f in fields(cls)]
    return names
