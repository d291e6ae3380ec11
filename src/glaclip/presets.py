"""Named hyperparameter presets.

A preset is three small groups of settings (windows, attention, decision) plus the method name.
Every value defaults to METHOD.md; `Preset.describe()` is printed next to every result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import GlaclipError

METHODS = ("gla-proxyclip", "proxyclip", "clip", "maskclip", "sclip", "clearclip", "naclip", "gla-clearclip",
           "gla-sclip", "gla-naclip")  # recipes in hosts.py
ALIASES = {"T": "proxy_iters", "S": "short_side", "c": "crop", "s": "stride"}  # METHOD.md's symbols


@dataclass(frozen=True)
class WindowConfig:
    """METHOD.md steps 1-2: resize and sliding windows. pad_multiple 0: the token backbone's patch size."""

    short_side: int = 336
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 112
    pad_multiple: int = 56


@dataclass(frozen=True)
class AttentionConfig:
    """METHOD.md step 5: proxy anchor and (dynamic) normalisation.

    `dynamic=False` uses the fixed `beta`/`gamma`. `block_rows` is how many query rows of the
    global attention are held at once (None: chosen from `memory_mb`); it changes memory, not results.
    """

    rho: float = 0.55
    proxy_iters: int = 2
    dynamic: bool = True
    alpha_beta: float = 0.3
    alpha_gamma: float = 30.0
    beta: float = 1.2
    gamma: float = 3.0
    block_rows: int | None = None
    memory_mb: int = 512
    gaussian_std: float = 5.0  # NACLIP's neighbourhood, in patches


@dataclass(frozen=True)
class DecisionConfig:
    """METHOD.md step 8: softmax temperature and background threshold."""

    logit_scale: float = 40.0
    prob_thd: float = 0.0


@dataclass(frozen=True)
class Preset:
    name: str
    method: str = "gla-proxyclip"
    window: WindowConfig = field(default_factory=WindowConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line with every hyperparameter, e.g. for logs and result files."""
        parts = [f"preset={self.name}", f"method={self.method}"]
        for group in (self.window, self.attention, self.decision):
            parts += [f"{f.name}={getattr(group, f.name)}" for f in fields(group)]
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
        if min(w.short_side, w.max_long_side, w.crop, w.stride) <= 0 or w.pad_multiple < 0:
            problems.append("window sizes must be positive")
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
        if not 0.0 <= d.prob_thd <= 1.0:
            problems.append(f"prob_thd must lie in [0, 1], got {d.prob_thd}")
        if problems:
            raise GlaclipError("; ".join(problems))


def _field_types(obj: Any) -> dict[str, Any]:
    return {f.name: f.type for f in fields(obj)}


def _coerce(key: str, value: Any, type_name: str) -> Any:
    """Accept strings (from the CLI) for numeric and boolean settings."""
    base = str(type_name).replace(" | None", "")
    if value is None:
        if "None" in str(type_name):
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
            if isinstance(value, str) and value.lower() in ("none", "auto", ""):
                if "None" in str(type_name):
                    return None
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError(value)
            return int(as_float)
        if base == "float":
            return float(value)
    except (TypeError, ValueError):
        raise GlaclipError(f"setting {key!r} needs a {base} value, got {value!r}") from None
    return value


def setting_names() -> list[str]:
    names = ["method"]
    for cls in (WindowConfig, AttentionConfig, DecisionConfig):
        names += [f.name for f in fields(cls)]
    return names


PRESETS: dict[str, Preset] = {
    # The released configuration (its run script leaves rho at the program default 0.55).
    "gla-proxyclip": Preset("gla-proxyclip"),
    # The value stated in the paper's text.
    "gla-proxyclip-paper": Preset("gla-proxyclip-paper", attention=AttentionConfig(rho=0.6)),
    # The window-local host without GLA.
    "proxyclip": Preset("proxyclip", method="proxyclip"),
}
# CLIP-only hosts (recipes in hosts.py): windows padded to the CLIP patch size, METHOD.md's other defaults.
for _name in ("clip", "maskclip", "sclip", "clearclip", "naclip", "gla-clearclip", "gla-sclip", "gla-naclip"):
    PRESETS[_name] = Preset(_name, method=_name, window=WindowConfig(pad_multiple=0))


def get_preset(name: str, **overrides: Any) -> Preset:
    """A named preset (or a method name) with optional flat overrides."""
    if name not in PRESETS:
        raise GlaclipError(f"unknown preset or method {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].with_overrides(**overrides)
