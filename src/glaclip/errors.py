"""The one exception type users see: its message is a complete, single-line explanation."""

from __future__ import annotations

import importlib
from types import ModuleType


class GlaclipError(Exception):
    """A problem with the user's input, files or environment (never a bug in glaclip)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MissingWeights(GlaclipError):
    """Weights neither in the local cache nor downloadable; str() is one short line naming the file."""

    def __init__(self, part: str):
        self.part = part
        super().__init__(f"weights not in the local cache and not downloadable: {part}")

    @classmethod
    def combine(cls, errors: list["MissingWeights"]) -> "MissingWeights":
        return cls("; ".join(e.part for e in errors))


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import an optional package's module, or one GlaclipError naming the extra that installs it (every
    optional import goes through here). what: what needs it ("the demo"), for the message."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0].replace("_", "-")
        if what is not None:
            raise GlaclipError(f"{what} needs the {package} package: pip install 'glaclip[{extra}]'") from None
        raise GlaclipError(f"{module} is not installed ({exc}); install it with: pip install 'glaclip[{extra}]'") \
            from None
