"""glaclip: training-free open-vocabulary semantic segmentation with GLA-CLIP.

    from glaclip import Segmenter
    seg = Segmenter.from_pretrained()            # OpenAI CLIP ViT-B/16 + DINO ViT-B/8
    result = seg.predict("street.jpg", ["road", "car; vehicle", "person", "sky"])
    result.labels, result.probs, result.classes, result.preset

The names below are imported when first used (so that `glaclip --help` starts without torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import VERSION as __version__

_HOMES = {  # public name -> the module that defines it
    "Segmenter": "segmenter", "Segmentation": "steps.decision", "ImageEncoding": "steps.encoding",
    "Preset": "config.presets", "WindowConfig": "config.presets", "AttentionConfig": "config.presets",
    "DecisionConfig": "config.presets", "PRESETS": "config.protocols", "get_preset": "config.protocols",
    "resolve": "config.protocols", "effective": "config.protocols", "parse_classes": "config.classes",
    "read_class_file": "config.classes", "GlaclipError": "errors", "pipeline": "integrations.pipeline",
    "Method": "config.registry", "Variant": "config.registry", "register": "config.registry",
    "build_bank": "runs.bank",
}

__all__ = ["Segmenter", "Segmentation", "ImageEncoding", "Preset", "WindowConfig", "AttentionConfig", "DecisionConfig",
           "PRESETS", "get_preset", "resolve", "effective", "parse_classes", "read_class_file", "GlaclipError",
           "pipeline", "Method", "Variant", "register", "build_bank", "__version__"]

if TYPE_CHECKING:
    from .config.classes import parse_classes, read_class_file
    from .config.presets import AttentionConfig, DecisionConfig, Preset, WindowConfig
    from .config.protocols import PRESETS, effective, get_preset, resolve
    from .config.registry import Method, Variant, register
    from .errors import GlaclipError
    from .integrations.pipeline import pipeline
    from .runs.bank import build_bank
    from .segmenter import Segmenter
    from .steps.decision import Segmentation
    from .steps.encoding import ImageEncoding


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'glaclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
