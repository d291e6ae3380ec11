"""What benchmarks/corrclip_release.py puts around CorrCLIP's release: mmseg's input pipeline reproduced,
stubs of the frameworks the release imports (mmseg, mmengine, transformers, openpyxl), importing the
release and DINO's code from their folders without leaving a trace in this process, and the release's
hard-coded fp16 turned into the run's dtype. See corrclip_release.py's docstring for the whole list.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

RELEASE_MEAN = (122.771, 116.746, 104.094)  # CorrCLIPSegmentation's SegDataPreProcessor, RGB, 0..255
RELEASE_STD = (68.501, 66.632, 70.323)
SHADOWED = ("open_clip", "sam2", "eomt", "CropFormer", "prompts", "myutils", "corrclip_segmentor", "utils",
            "vision_transformer", "mmseg", "mmengine", "transformers", "openpyxl")

# ---- input pipeline (mmseg's, reproduced) ------------------------------------------------------------

def rescale_size(h: int, w: int, short_side: int, long_side: int = 2048) -> tuple[int, int]:
    """mmcv.imrescale's output (h, w) for scale (long_side, short_side), keep_ratio."""
    f = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


class SegDataPreProcessor:
    """mmseg's SegDataPreProcessor at test time (no padding): bgr_to_rgb, float, (x - mean) / std, stack."""

    def __init__(self, mean, std, bgr_to_rgb: bool = False, dtype: torch.dtype = torch.float32, **_):
        self.mean = torch.tensor(mean, dtype=dtype).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=dtype).view(-1, 1, 1)
        self.bgr_to_rgb, self.dtype = bgr_to_rgb, dtype

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        if self.bgr_to_rgb:
            images = [x[[2, 1, 0], ...] for x in images]
        return torch.stack([(x.to(self.dtype) - self.mean) / self.std for x in images])


def mmseg_inputs(image: str | Path, short_side: int, dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int]]:
    """[1,3,H,W] model input and the original (h, w), as the release's test pipeline makes them."""
    import cv2

    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {image}")
    h, w = bgr.shape[:2]
    nh, nw = rescale_size(h, w, short_side)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    chw = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    pre = SegDataPreProcessor(RELEASE_MEAN, RELEASE_STD, bgr_to_rgb=True, dtype=dtype)
    return pre([chw]), (h, w)


# ---- importing the release ---------------------------------------------------------------------------

class PixelData:
    """mmengine's PixelData, as far as the release uses it: a holder of `data`."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class DataSample:
    """The fields of mmseg's SegDataSample that predict reads and writes."""

    def __init__(self, img_path: str, ori_shape: tuple[int, int], img_shape: tuple[int, int]):
        self.img_path = img_path
        self.metainfo = {"img_path": img_path, "ori_shape": ori_shape, "img_shape": img_shape}

    def set_data(self, data: dict) -> None:
        self.__dict__.update(data)


def _stub_modules() -> dict[str, types.ModuleType]:
    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()

    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("stub: not available in this harness")

        from_pretrained = classmethod(lambda cls, *a, **k: cls())

    spec = {"mmseg": {}, "mmseg.models": {}, "mmseg.models.segmentors": {"BaseSegmentor": BaseSegmentor},
            "mmseg.models.data_preprocessor": {"SegDataPreProcessor": SegDataPreProcessor},
            "mmseg.registry": {"MODELS": Registry()}, "mmengine": {},
            "mmengine.structures": {"PixelData": PixelData},
            "transformers": {"AutoImageProcessor": _Unavailable, "Mask2FormerForUniversalSegmentation": _Unavailable},
            "openpyxl": {}}
    mods = {}
    for name, attrs in spec.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mods[name] = mod
    return mods


def _shadowed(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in SHADOWED)


@contextlib.contextmanager
def release_imports(release_dir: str | Path, dino_repo: str | Path):
    """Import corrclip_segmentor from release_dir with the framework stubs, DINO's vision_transformer
    from dino_repo; yields (corrclip_segmentor, vision_transformer). Restores sys.path, sys.modules
    and os.environ on exit (the release's modules keep working through their own references)."""
    release, dino = Path(release_dir).resolve(), Path(dino_repo).resolve()
    for path in (release / "corrclip_segmentor.py", dino / "vision_transformer.py"):
        if not path.is_file():
            raise ValueError(f"no {path.name} in {path.parent}")
    saved_path, saved_env = list(sys.path), dict(os.environ)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _shadowed(k)}
    sys.modules.update(_stub_modules())
    try:
        sys.path.insert(0, str(dino))
        vit = importlib.import_module("vision_transformer")
        sys.modules.pop("utils", None)  # DINO's utils.py: not to be confused with anything of the release
        sys.path[0] = str(release)
        with contextlib.redirect_stdout(sys.stderr):  # "EoMT is not installed" etc.
            seg = importlib.import_module("corrclip_segmentor")
        yield seg, vit
    finally:
        for k in [k for k in sys.modules if _shadowed(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def half_as(dtype: torch.dtype):
    """Tensor.half / Module.half cast to dtype instead (the release's hard-coded fp16, patched away)."""
    t_half, m_half = torch.Tensor.half, nn.Module.half
    torch.Tensor.half = lambda self, memory_format=torch.preserve_format: self.to(dtype, memory_format=memory_format)
    nn.Module.half = lambda self: self.to(dtype)
    try:
        yield
    finally:
        torch.Tensor.half, nn.Module.half = t_half, m_half

