"""What the release harnesses (corrclip_release.py, trident_release.py) share: mmseg's input pipeline
reproduced, stand-ins for the frameworks the releases import (mmseg, mmengine, openpyxl), importing a
release and DINO's code from their folders without leaving a trace in this process, the releases'
hard-coded fp16 turned into the run's dtype, the parts of a release object both build the same way,
time and peak memory of a call, seeded random weight files, and the cells of the comparison tables.
What only one release needs stays in its own corrclip_shims.py / trident_shims.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from common import peak_mb
from torch import nn

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
RELEASE_MEAN = (122.771, 116.746, 104.094)  # the releases' SegDataPreProcessor, RGB, 0..255
RELEASE_STD = (68.501, 66.632, 70.323)

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
    """[1,3,H,W] model input and the original (h, w), as the releases' test pipeline makes them."""
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


# ---- framework stand-ins -----------------------------------------------------------------------------

class PixelData:
    """mmengine's PixelData, as far as the releases use it: a holder of `data`."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class DataSample:
    """The fields of mmseg's SegDataSample that predict reads and writes."""

    def __init__(self, img_path: str, ori_shape: tuple[int, int], img_shape: tuple[int, int]):
        self.img_path = img_path
        self.metainfo = {"img_path": img_path, "ori_shape": ori_shape, "img_shape": img_shape}

    def set_data(self, data: dict) -> None:
        self.__dict__.update(data)


def framework_stubs(extra: dict[str, dict] | None = None) -> dict[str, types.ModuleType]:
    """Fresh modules for sys.modules: mmseg (BaseSegmentor as nn.Module, SegDataPreProcessor,
    MODELS.register_module as identity), mmengine (PixelData) and openpyxl (empty); `extra` adds
    modules as {name: attributes}."""
    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()

    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    spec = {"mmseg": {}, "mmseg.models": {}, "mmseg.models.segmentors": {"BaseSegmentor": BaseSegmentor},
            "mmseg.models.data_preprocessor": {"SegDataPreProcessor": SegDataPreProcessor},
            "mmseg.registry": {"MODELS": Registry()}, "mmengine": {},
            "mmengine.structures": {"PixelData": PixelData}, "openpyxl": {}, **(extra or {})}
    mods = {}
    for name, attrs in spec.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mods[name] = mod
    return mods


# ---- importing a release -----------------------------------------------------------------------------

@contextlib.contextmanager
def imported_release(release_dir: str | Path, dino_repo: str | Path | None, module: str, shadowed: Iterable[str],
                     stubs: dict[str, types.ModuleType], extra_path: str | Path | None = None):
    """Import `module` from release_dir (the folder first on sys.path, so its vendored packages shadow
    pip's) with `stubs` in sys.modules, after DINO's vision_transformer from dino_repo (None: no DINO,
    CorrCLIPv2); extra_path is appended to sys.path. Every module under a name in `shadowed` is set
    aside first and dropped at the end. Yields (release module, vision_transformer module or None);
    restores sys.path, sys.modules and os.environ on exit (the release's modules keep working through
    their own references)."""
    release = Path(release_dir).resolve()
    dino = Path(dino_repo).resolve() if dino_repo is not None else None
    for path in (release / f"{module}.py", *([dino / "vision_transformer.py"] if dino else [])):
        if not path.is_file():
            raise ValueError(f"no {path.name} in {path.parent}")
    tops = tuple(shadowed)

    def is_shadowed(name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in tops)

    saved_path, saved_env = list(sys.path), dict(os.environ)
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if is_shadowed(k)}
    sys.modules.update(stubs)
    try:
        vit = None
        if dino is not None:
            sys.path.insert(0, str(dino))
            vit = importlib.import_module("vision_transformer")
            sys.modules.pop("utils", None)  # DINO's utils.py: not to be confused with anything of the release
            sys.path[0] = str(release)
        else:
            sys.path.insert(0, str(release))
        if extra_path:
            sys.path.append(str(extra_path))
        with contextlib.redirect_stdout(sys.stderr):  # "EoMT is not installed" etc.
            mod = importlib.import_module(module)
        yield mod, vit
    finally:
        for k in [k for k in sys.modules if is_shadowed(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)


# ---- precision ---------------------------------------------------------------------------------------

def cast_to(dtype: torch.dtype) -> Callable:
    """A replacement for Tensor.half / Tensor.float that casts to dtype instead."""
    return lambda self, memory_format=torch.preserve_format: self.to(dtype, memory_format=memory_format)


class ModuleProxy(types.ModuleType):
    """A module standing in for another: its own attributes first, the rest from the original."""

    def __init__(self, original, **overrides):
        super().__init__(original.__name__)
        self.__dict__.update(overrides)
        self._original = original

    def __getattr__(self, name):
        return getattr(self._original, name)


@contextlib.contextmanager
def half_as(dtype: torch.dtype):
    """Tensor.half / Module.half cast to dtype instead (the release's hard-coded fp16, patched away)."""
    t_half, m_half = torch.Tensor.half, nn.Module.half
    torch.Tensor.half = cast_to(dtype)
    nn.Module.half = lambda self: self.to(dtype)
    try:
        yield
    finally:
        torch.Tensor.half, nn.Module.half = t_half, m_half


# ---- building a release object -----------------------------------------------------------------------

def bare_release(cls: type, mod, *, clip_arch: str, clip_ckpt, dtype: torch.dtype):
    """An instance of the release's segmentor class without its __init__ (`__new__` + nn.Module.__init__),
    holding what both releases' __init__ set alike: `clip` (the vendored create_model(clip_arch,
    pretrained=None, precision='fp32') with our checkpoint, frozen, in dtype), `tokenizer`, and
    `unnorm` / `norm` with CLIP's and ImageNet's constants. The caller sets the rest."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    clip = mod.create_model(clip_arch, pretrained=None, precision="fp32")
    clip.load_state_dict(torch.load(clip_ckpt, map_location="cpu", weights_only=True), strict=True)
    obj.clip = clip.eval().to(dtype).requires_grad_(False)
    obj.tokenizer = mod.tokenizer.tokenize
    obj.unnorm = mod.UnNormalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    obj.norm = mod.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return obj


def load_dino(vit_module, weights: str | Path, dtype: torch.dtype, patch_size: int = 8) -> nn.Module:
    """DINO's own ViT-B (as torch.hub 'dino_vitb8' / 'dino_vitb16' builds it) with a timm
    vit_base_patch{8,16}_224.dino state dict (same keys), frozen, in dtype."""
    model = vit_module.vit_base(patch_size=patch_size, num_classes=0)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # timm's head is empty (num_classes 0)
    model.load_state_dict(state, strict=True)
    return model.eval().to(dtype).requires_grad_(False)


def record_outputs(obj, name: str) -> list:
    """Wrap obj's method `name` so that every value it returns is also appended to the returned list."""
    outputs, method = [], getattr(obj, name)
    setattr(obj, name, lambda *args, **kwargs: outputs.append(method(*args, **kwargs)) or outputs[-1])
    return outputs


# ---- time and peak memory ----------------------------------------------------------------------------

def reset_peak() -> None:
    """Reset this process's peak resident set (Linux; elsewhere the peak stays the process's)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def measure():
    """Yields a dict that gets load_peak_mb (the resident set's peak before: imports and models),
    seconds (the block) and peak_mb (the peak during the block; reset first on Linux), MiB, CPU."""
    m = {"load_peak_mb": peak_mb("cpu")}
    reset_peak()
    start = time.perf_counter()
    yield m
    m["seconds"] = time.perf_counter() - start
    m["peak_mb"] = peak_mb("cpu")


# ---- inputs ------------------------------------------------------------------------------------------

def write_random_weights(folder: Path, builds: dict[str, Callable[[], nn.Module]]) -> None:
    """folder/name = the state dict of build() after torch.manual_seed(0), for each name not there yet."""
    for name, build in builds.items():
        if (folder / name).exists():
            print(f"kept {folder / name}")
            continue
        torch.manual_seed(0)
        tmp = folder / f".{name}.tmp"
        torch.save(build().state_dict(), tmp)
        tmp.replace(folder / name)


# ---- the tables --------------------------------------------------------------------------------------

def cell(r: dict, key: str, fmt: str = "{:.1f}") -> str:
    """r[key] formatted, or the case's error."""
    return r["error"] if "error" in r else fmt.format(r[key])


def max_dprob(rel: dict, ours: dict) -> str:
    """max |release probs - glaclip probs|, in fp64."""
    return f"{np.abs(rel['probs'].astype(np.float64) - ours['probs']).max():.2e}"


def equal_percent(a: np.ndarray, b: np.ndarray) -> str:
    """The share of equal labels, in percent."""
    return f"{(a == b).mean() * 100:.4f}%"
