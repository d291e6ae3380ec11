"""Method families (one module each) and attention variants; the registry API is re-exported here
(it lives in `config.registry`, which needs no torch)."""

from ..config.registry import METHODS, Method, Variant, register

__all__ = ["METHODS", "Method", "Variant", "register"]
