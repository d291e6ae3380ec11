"""Adapters from glaclip's public API to the tools people label and inspect data with.

Each module is a thin layer over `Segmenter.from_pretrained` / `predict` behind an optional extra:
`supervision` (`glaclip[supervision]`), `pipeline` (the Hugging Face image-segmentation shape, no
extra), `cvat` (`glaclip[cvat]`), `fiftyone` (`glaclip[fiftyone]`), `labelstudio` (an ML backend server,
`glaclip[labelstudio]`). Importing this package imports none of those tools.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import GlaclipError


def require(module: str, extra: str) -> ModuleType:
    """Import an integration's package, or one clear GlaclipError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise GlaclipError(f"{module} is not installed ({exc}); install it with: pip install 'glaclip[{extra}]'") \
            from None
