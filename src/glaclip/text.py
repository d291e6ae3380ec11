"""Kept for one release: class lists moved to `glaclip.config.classes`, text encoding to
`glaclip.steps.text`."""

from .config.classes import SYNONYM_SEP, ClassQueries, parse_classes, read_class_file
from .models.towers import short_context_encoder
from .steps.text import FULL_CONTEXT_ENV, TextEncoder, templates, text_encoder

__all__ = ["SYNONYM_SEP", "ClassQueries", "parse_classes", "read_class_file", "short_context_encoder",
           "FULL_CONTEXT_ENV", "TextEncoder", "templates", "text_encoder"]
