"""What benchmarks/trident_release.py puts around Trident's release beyond release_common.py: the
modules its folder shadows, its segment_anything alongside, and in fp64 also its fp32 casts turned
into the run's dtype. See trident_release.py's docstring.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch
from release_common import cast_to, framework_stubs, half_as, imported_release

SHADOWED = ("open_clip", "segment_anything", "prompts", "myutils", "seg_utils", "pamr", "trident", "utils",
            "vision_transformer", "mmseg", "mmengine", "openpyxl", "skimage", "lazy_loader")


@contextlib.contextmanager
def release_imports(release_dir: str | Path, dino_repo: str | Path, extra_path: str | Path | None = None):
    """Import trident.py from release_dir (its vendored open_clip and segment_anything first on sys.path),
    DINO's vision_transformer from dino_repo; extra_path: a folder holding scikit-image (the release's
    seg_utils needs skimage.measure). Yields (trident module, vision_transformer module, release's
    segment_anything). Restores sys.path, sys.modules and os.environ on exit."""
    with imported_release(release_dir, dino_repo, "trident", SHADOWED, framework_stubs(), extra_path) as (mod, vit):
        yield mod, vit, importlib.import_module("segment_anything")


@contextlib.contextmanager
def precision(dtype: torch.dtype):
    """The release's hard-coded precision turned into dtype: Tensor.half / Module.half cast to it; in
    fp64 also Tensor.float (its refinement casts SAM's features and prompts to fp32) and the default
    dtype (its refined-score buffer is a torch.zeros)."""
    t_float, default = torch.Tensor.float, torch.get_default_dtype()
    with half_as(dtype):
        if dtype == torch.float64:
            torch.Tensor.float = cast_to(dtype)
            torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.Tensor.float = t_float
            torch.set_default_dtype(default)
