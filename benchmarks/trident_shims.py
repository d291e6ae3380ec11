"""What benchmarks/trident_release.py puts around Trident's release: importing it from its folder with
the framework stubs of corrclip_shims (mmseg, mmengine), without leaving a trace in this process, and
the release's hard-coded fp16 turned into the run's dtype. See trident_release.py's docstring.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import torch
from corrclip_shims import _stub_modules
from torch import nn

SHADOWED = ("open_clip", "segment_anything", "prompts", "myutils", "seg_utils", "pamr", "trident", "utils",
            "vision_transformer", "mmseg", "mmengine", "openpyxl", "skimage", "lazy_loader")


def _shadowed(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in SHADOWED)


@contextlib.contextmanager
def release_imports(release_dir: str | Path, dino_repo: str | Path, extra_path: str | Path | None = None):
    """Import trident.py from release_dir (its vendored open_clip and segment_anything first on sys.path),
    DINO's vision_transformer from dino_repo; extra_path: a folder holding scikit-image (the release's
    seg_utils needs skimage.measure). Yields (trident module, vision_transformer module, release's
    segment_anything). Restores sys.path, sys.modules and os.environ on exit."""
    release, dino = Path(release_dir).resolve(), Path(dino_repo).resolve()
    for path in (release / "trident.py", dino / "vision_transformer.py"):
        if not path.is_file():
            raise ValueError(f"no {path.name} in {path.parent}")
    saved_path, saved_env = list(sys.path), dict(os.environ)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _shadowed(k)}
    sys.modules.update({k: v for k, v in _stub_modules().items() if k.startswith(("mmseg", "mmengine", "openpyxl"))})
    try:
        sys.path.insert(0, str(dino))
        vit = importlib.import_module("vision_transformer")
        sys.modules.pop("utils", None)  # DINO's utils.py
        sys.path[0] = str(release)
        if extra_path:
            sys.path.append(str(extra_path))
        with contextlib.redirect_stdout(sys.stderr):
            mod = importlib.import_module("trident")
        yield mod, vit, importlib.import_module("segment_anything")
    finally:
        for k in [k for k in sys.modules if _shadowed(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def precision(dtype: torch.dtype):
    """The release's hard-coded precision turned into dtype: Tensor.half / Module.half cast to it; in
    fp64 also Tensor.float (its refinement casts SAM's features and prompts to fp32) and the default
    dtype (its refined-score buffer is a torch.zeros)."""
    t_half, m_half, t_float, default = torch.Tensor.half, nn.Module.half, torch.Tensor.float, torch.get_default_dtype()
    torch.Tensor.half = lambda self, memory_format=torch.preserve_format: self.to(dtype, memory_format=memory_format)
    nn.Module.half = lambda self: self.to(dtype)
    if dtype == torch.float64:
        torch.Tensor.float = lambda self, memory_format=torch.preserve_format: self.to(
            dtype, memory_format=memory_format)
        torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.half, nn.Module.half, torch.Tensor.float = t_half, m_half, t_float
        torch.set_default_dtype(default)
