"""glaclip: training-free open-vocabulary semantic segmentation with GLA-CLIP.

    from glaclip import Segmenter
    seg = Segmenter.from_pretrained()            # OpenAI CLIP ViT-B/16 + DINO ViT-B/8
    result = seg.predict("street.jpg", ["road", "car; vehicle", "person", "sky"])
    result.labels, result.probs, result.classes, result.preset
"""

from .errors import GlaclipError
from .integrations.pipeline import pipeline
from .presets import AttentionConfig, DecisionConfig, Preset, WindowConfig
from .protocols import PRESETS, effective, get_preset, resolve
from .segmenter import Segmentation, Segmenter
from .text import parse_classes, read_class_file

__version__ = "0.1.0"

__all__ = [
    "Segmenter", "Segmentation", "Preset", "PRESETS", "get_preset", "WindowConfig", "AttentionConfig",
    "DecisionConfig", "GlaclipError", "resolve", "effective", "parse_classes", "read_class_file", "pipeline",
    "__version__",
]
