"""Region masks: the class-agnostic region-id maps that mask-guided methods (CorrCLIP) take as input,
read from files or generated with SAM 2.

A region map is an H x W integer array at the image's original size: pixels sharing an id form one
region, 0 = covered by no mask (the CorrCLIP release's `instance_mask` convention). Files are `.npz`
with the array under the key `instance_mask` (how the release distributes its precomputed masks) or a
single-channel 8- or 16-bit `.png` holding the ids. `load_masks` / `check_masks` return int32 maps;
every problem is one `GlaclipError` line naming the file. Nothing here imports a module above the
Segmenter.

SAM 2 generation (`load_sam2`, optional package `sam2`) follows the release: sam2's automatic mask
generator with its settings (`AMG_SETTINGS`), masks painted by ascending area with ids 1..K (larger
ones overwrite; an id wholly covered by larger masks does not appear, as in the release). Its models
and checkpoints: `sam2_weights`.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
import warnings
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .devices import dtype_name
from .errors import GlaclipError, one_line
from .files import atomic_paths
from .sam2_weights import DEFAULT_SAM, SAM2_MODELS, Sam2Model, quiet, sam2_model

__all__ = ["MASK_KEY", "MASK_SUFFIXES", "load_masks", "check_masks", "MaskSizeError", "as_masks", "save_masks",
           "fingerprint", "paint_masks", "Sam2Model", "SAM2_MODELS", "DEFAULT_SAM", "AMG_SETTINGS", "Sam2Masks",
           "load_sam2"]

MASK_KEY = "instance_mask"  # the array's name in a .npz mask file, as the release writes them
MASK_SUFFIXES = (".npz", ".png")
SAVED_SUFFIX = ".masks.npz"  # the masks an output folder keeps beside each image's outputs (`export.output_paths`)
_INT32_MAX = int(np.iinfo(np.int32).max)
_PNG_MODES = {"1", "L", "P", "I", "I;16", "I;16L", "I;16B"}  # one channel of integers, read without conversion


# ------------------------------------------------------------------------------------ files and arrays


class MaskSizeError(GlaclipError):
    """A region map of another size than its image's; shape: the map's (H, W)."""

    def __init__(self, message: str, shape: tuple[int, int]):
        super().__init__(message)
        self.shape = shape


def _check_layout(shape: tuple, dtype: np.dtype, size: Sequence[int] | None, what: str) -> None:
    """Shape and dtype rules, checkable from a file's header before its data is read."""
    if len(shape) != 2:
        raise GlaclipError(f"{what} must be an H x W array of region ids, got shape {tuple(shape)}")
    if 0 in shape:
        raise GlaclipError(f"{what} is empty (shape {tuple(shape)})")
    if dtype.kind not in "iu":
        raise GlaclipError(f"{what} holds {dtype} values; region ids must be integers")
    if size is not None and tuple(shape) != (int(size[0]), int(size[1])):
        raise MaskSizeError(f"{what} is {shape[1]}x{shape[0]}, the image is {size[1]}x{size[0]}",
                            (int(shape[0]), int(shape[1])))


def _validated(arr: np.ndarray, size: Sequence[int] | None, what: str) -> np.ndarray:
    _check_layout(arr.shape, arr.dtype, size, what)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise GlaclipError(f"{what} has negative ids (smallest {lo}); ids are 0 (no mask) or positive")
    if hi > _INT32_MAX:
        raise GlaclipError(f"{what} has ids up to {hi}, over the int32 limit {_INT32_MAX}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_masks(masks: Any, size: Sequence[int] | None = None, what: str = "mask map") -> np.ndarray:
    """A region map given to the API (numpy array, torch tensor, PIL image of mode I;16/I/L/P) of
    non-negative integer ids, 0 = no mask, as a C-contiguous H x W int32 array. size: the image's
    original (H, W) or None. Wrong shape, size or dtype, negative ids or ids over int32: GlaclipError,
    one line starting with `what`."""
    if isinstance(masks, torch.Tensor):
        t = masks.detach()
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise GlaclipError(f"{what} holds {dtype_name(t.dtype)} values; region ids must be integers")
        arr = t.cpu().numpy()
    elif isinstance(masks, Image.Image):
        if masks.mode not in _PNG_MODES:
            raise GlaclipError(f"{what} is a PIL image of mode {masks.mode}; region ids need one integer channel "
                               "(mode I;16, I, L or P)")
        arr = np.asarray(masks)
    elif isinstance(masks, np.ndarray):
        arr = masks
    else:
        try:
            arr = np.asarray(masks)
        except ValueError:  # ragged nested lists
            arr = np.empty(0, dtype=object)
        if arr.dtype == object:
            raise GlaclipError(f"{what}: unsupported type {type(masks).__name__}; give an H x W integer array")
    if arr.dtype == np.bool_ and isinstance(masks, Image.Image):
        arr = arr.astype(np.uint8)  # mode "1": ids 0/1
    return _validated(arr, size, what)


def load_masks(path: str | Path, size: Sequence[int] | None = None) -> np.ndarray:
    """An H x W int32 region-id map from a `.npz` (array `instance_mask`, any integer dtype) or a
    single-channel 8/16-bit `.png` (ids as stored, no colour conversion). size: the image's original
    (H, W); another size is an error ("FILE: mask map is WxH, the image is WxH"), as are missing or
    corrupt files, a missing key, wrong shape or dtype, negative ids or ids over int32: one line
    naming the file."""
    path = Path(path)
    if not path.exists():
        raise GlaclipError(f"mask file not found: {path}")
    if not path.is_file():
        raise GlaclipError(f"mask file {path} is not a file")
    what = f"{path}: mask map"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arr = _read_npz(path, size, what)
    elif suffix == ".png":
        arr = _read_png(path, size, what)
    else:
        raise GlaclipError(f"{path}: mask files are .npz (array '{MASK_KEY}') or .png (8/16-bit id map)")
    return _validated(arr, size, what)


def _read_npz(path: Path, size: Sequence[int] | None, what: str) -> np.ndarray:
    member = MASK_KEY + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                keys = ", ".join(n[:-4] if n.endswith(".npy") else n for n in names) or "none"
                raise GlaclipError(f"{path}: no '{MASK_KEY}' array in this .npz (keys found: {keys})")
            with zf.open(member) as f:  # the header first: wrong maps fail before their data is read
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            _check_layout(shape, dtype, size, what)
            with zf.open(member) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    except GlaclipError:
        raise
    except Exception as exc:  # zip, zlib, header and memory errors of a corrupt file
        raise GlaclipError(f"{path}: not a readable .npz mask file ({one_line(exc, 160)})") from None


def _read_png(path: Path, size: Sequence[int] | None, what: str) -> np.ndarray:
    from .images import check_size, open_header

    try:
        img = open_header(path)  # glaclip's pixel limit in place of Pillow's bomb guard, as for images
        if img.format != "PNG":
            raise GlaclipError(f"{path}: not a PNG file (it is {img.format or 'of unknown format'})")
        if img.mode not in _PNG_MODES:
            raise GlaclipError(f"{path}: a mask PNG must hold one channel of region ids (8- or 16-bit), "
                               f"this one is {img.mode}")
        _check_layout((img.size[1], img.size[0]), np.dtype(np.int32), size, what)
        check_size(*img.size, what=f"mask file {path}")
        img.load()
        arr = np.asarray(img)
    except GlaclipError:
        raise
    except Exception as exc:  # Pillow's many errors for truncated or garbled files
        raise GlaclipError(f"{path}: not a readable PNG mask file ({one_line(exc, 160)})") from None
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def as_masks(masks: Any, size: Sequence[int]) -> torch.Tensor:
    """An H x W integer region-id map (numpy, torch, PIL) at the image's size -> int32 CPU tensor
    (`check_masks`: one line for a wrong size, dtype or id range)."""
    return torch.from_numpy(check_masks(masks, size, what="region mask map"))


def save_masks(path: str | Path, masks: Any) -> None:
    """Write a region map atomically (temporary name, then rename) as `.npz` (compressed, int32 under
    `instance_mask`) or 16-bit `.png` (ids over 65535 are an error). `load_masks` reads it back exactly.
    A file already at `path` is replaced: whether that is allowed is the caller's decision."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise GlaclipError(f"{path}: mask files are .npz or .png")
    arr = check_masks(masks, None, what=f"mask map for {path}")
    if suffix == ".png" and int(arr.max()) > 65535:
        raise GlaclipError(f"{path}: ids up to {int(arr.max())} do not fit a 16-bit PNG; save the masks as .npz")
    try:
        with atomic_paths([path]) as (tmp,):
            if suffix == ".npz":
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **{MASK_KEY: arr})
            else:
                Image.fromarray(arr.astype(np.uint16)).save(tmp, format="PNG")
    except OSError as exc:
        raise GlaclipError(f"cannot write {path}: {one_line(exc)}") from None


def fingerprint(masks: Any) -> str:
    """A short hex digest (sha256, 16 characters) of a region map's shape and int32 ids: equal maps,
    equal fingerprints, whatever integer dtype or container they came in."""
    arr = np.ascontiguousarray(check_masks(masks), dtype="<i4")
    h = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]};".encode())
    h.update(arr)
    return h.hexdigest()[:16]


def paint_masks(anns: Iterable[dict], size: Sequence[int]) -> np.ndarray:
    """SAM-style annotations (dicts with 'segmentation': H x W bool, 'area') -> an H x W int32 id map:
    sorted by area ascending (stable: equal areas keep their order), painted with ids 1..K in that
    order (larger masks overwrite smaller ones), 0 where no mask is."""
    out = np.zeros((int(size[0]), int(size[1])), dtype=np.int32)
    for i, ann in enumerate(sorted(anns, key=lambda a: a["area"]), start=1):
        out[ann["segmentation"]] = i
    return out


# ------------------------------------------------------------------------------------------ SAM 2


# the release's automatic-mask-generator settings (CorrCLIPv1 set_mask_generator); all others sam2's defaults
AMG_SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.4, "stability_score_thresh": 0.4, "multimask_output": False}
_NEEDS_SAM2 = "SAM 2 mask generation needs the sam2 package: pip install 'glaclip[masks]'"


def _sam2():
    """(build_sam2, SAM2AutomaticMaskGenerator), or the one-line install hint."""
    try:
        with quiet():
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
            from sam2.build_sam import build_sam2
    except ImportError:
        raise GlaclipError(_NEEDS_SAM2) from None
    return build_sam2, SAM2AutomaticMaskGenerator


class Sam2Masks:
    """SAM 2's automatic mask generator with the release's settings; `generate` gives region-id maps.

    Made by `load_sam2`. One image at a time (a lock serialises threads: the predictor holds the
    image's features while it runs)."""

    def __init__(self, model: torch.nn.Module, generator_cls, name: str, weights: str, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.name, self.weights, self.device, self.dtype = model, name, weights, device, dtype
        with quiet():  # its image transforms are TorchScript: a deprecation warning per module
            self.generator = generator_cls(model, **AMG_SETTINGS)
        self._instance = uuid.uuid4().hex  # random weights: this generator's own, never another process's
        self._lock = threading.Lock()
        _release_attention(model.sam_mask_decoder)

    @property
    def identity(self) -> dict:
        """What the masks depend on: model name, weights by content ('random' plus this instance's id for
        random weights), precision and generator settings (JSON-serialisable)."""
        from .text_cache import model_fingerprints, weights_fingerprint

        ident = {"generator": "sam2-amg", "model": self.name, "dtype": dtype_name(self.dtype),
                 "settings": dict(AMG_SETTINGS)}
        if self.weights == "random":
            ident.update(weights="random", random_weights_of=self._instance)
        else:
            prints = model_fingerprints(self.model, {
                "weights": lambda: weights_fingerprint(self.model.state_dict().items())})
            ident["weights"] = prints["weights"]
        return ident

    def generate(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB image (original size) -> H x W int32 region-id map (0 = no mask)."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                and rgb.size > 0):
            got = f"{rgb.dtype} {tuple(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise GlaclipError(f"SAM 2 mask generation needs an H x W x 3 uint8 RGB array, got {got}")
        half = self.device.type == "cuda" and self.dtype != torch.float32  # the release: fp16 autocast on CUDA
        cast = torch.autocast(device_type="cuda", dtype=self.dtype) if half else nullcontext()
        with self._lock, quiet(), torch.inference_mode(), cast:
            anns = self.generator.generate(np.ascontiguousarray(rgb))
        return paint_masks(anns, rgb.shape[:2])


def _release_attention(decoder: torch.nn.Module) -> None:
    """Run SAM 2's mask decoder with the attention kernels the release's copy of sam2 allows there (its
    utils/misc.py get_sdpa_settings, which sam2 1.1.0 dropped; kernels round differently, ~1e-5 in the
    logits, enough to move a mask's edge pixel). Decided as there from CUDA's presence: Flash alone on a
    GPU 0 of compute capability >= 8, else math (+ memory-efficient below 7); no CUDA: math and
    memory-efficient (math on the CPU). A failing kernel allows all from then on, as there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION]
    if torch.cuda.is_available():
        major = torch.cuda.get_device_properties(0).major
        kernels = [SDPBackend.FLASH_ATTENTION] if major >= 8 else kernels[: 1 if major >= 7 else 2]
    inner, state = decoder.forward, {"all": False}

    def forward(*args, **kwargs):
        if not state["all"]:
            try:
                with sdpa_kernel(kernels):
                    return inner(*args, **kwargs)
            except RuntimeError:
                state["all"] = True
        return inner(*args, **kwargs)

    decoder.forward = forward  # an instance attribute: the weights and their names are untouched


def _sam_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """fp16 (the release; 'auto') or bf16 on CUDA, else fp32: sam2 has no half-precision CPU path (its
    layer norms refuse mixed dtypes) and no fp64 one."""
    from .devices import resolve_dtype

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resolve_dtype's fp16-on-CPU advice: not used here
        dt = resolve_dtype(dtype, device)  # validates the name
    return dt if device.type == "cuda" and dt in (torch.float16, torch.bfloat16) else torch.float32


def load_sam2(name: str | None = DEFAULT_SAM, weights: str | Path | None = None,
              device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Sam2Masks:
    """Build SAM 2 (`SAM2_MODELS` name) and its automatic mask generator with the release's settings.

    weights: None -> the model's checkpoint from the Hugging Face hub (local cache first; none and no
    hub: `MissingWeights`, naming the hub repo and file); a checkpoint file (`{"model": state_dict}`
    as released, or a plain state dict); or "random" (random initialisation, for tests). A file of
    another architecture than `name`: one line naming both; name None: the one the file fits.
    device/dtype: as elsewhere ('auto': CUDA in fp16 autocast as the release, else the CPU in fp32)."""
    from .devices import resolve_device

    if name is not None and name not in SAM2_MODELS:
        raise GlaclipError(f"unknown SAM 2 model {name!r}; use one of {', '.join(SAM2_MODELS)}")
    build_sam2, generator_cls = _sam2()
    dev = resolve_device(device)
    dt = _sam_dtype(dtype, dev)
    name, model, source = sam2_model(name, weights, build_sam2)
    model = model.eval().requires_grad_(False).to(device=dev, dtype=dt)
    return Sam2Masks(model, generator_cls, name, source, dev, dt)
