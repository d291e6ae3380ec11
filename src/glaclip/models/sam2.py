"""SAM 2 for region-mask generation: checkpoints (the hub's file, local cache first; which `SAM2_MODELS`
architecture a file fits), loading, and the release's automatic mask generator (`Sam2Masks`, settings
`AMG_SETTINGS`): masks painted by ascending area with ids 1..K (larger ones overwrite; an id wholly
covered by larger masks does not appear, as in the CorrCLIP release)."""

from __future__ import annotations

import threading
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ..config.backbones import DEFAULT_SAM2, SAM2_MODELS
from ..errors import GlaclipError, one_line, require
from ..io.masks import paint_masks
from . import builder
from .checkpoints import cached_hub_file, hub_reachable
from .devices import dtype_name

# ------------------------------------------------------------------------------------------ SAM 2


# the release's automatic-mask-generator settings (CorrCLIPv1 set_mask_generator); all others sam2's defaults
AMG_SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.4, "stability_score_thresh": 0.4, "multimask_output": False}
# CorrCLIPv2's bank builder (mb/generate_mask.py BUILD_KWARGS['sam2']; points_per_side left at sam2's 32)
BUILDER_AMG_SETTINGS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.7, "multimask_output": True}


def _sam2():
    """(build_sam2, SAM2AutomaticMaskGenerator), or the one-line install hint."""
    with quiet():
        build = require("sam2.build_sam", "masks", "SAM 2 mask generation")
        amg = require("sam2.automatic_mask_generator", "masks", "SAM 2 mask generation")
    return build.build_sam2, amg.SAM2AutomaticMaskGenerator


class Sam2Masks:
    """SAM 2's automatic mask generator with the release's settings; `generate` gives region-id maps.

    Made by `load_sam2`. One image at a time (a lock serialises threads: the predictor holds the
    image's features while it runs)."""

    def __init__(self, model: torch.nn.Module, generator_cls, name: str, weights: str, device: torch.device,
                 dtype: torch.dtype):
        self.model, self.name, self.weights, self.device, self.dtype = model, name, weights, device, dtype
        self._generator_cls = generator_cls
        self.configure(AMG_SETTINGS)
        self._instance = uuid.uuid4().hex  # random weights: this generator's own, never another process's
        self._lock = threading.Lock()
        _release_attention(model.sam_mask_decoder)

    def configure(self, settings: dict) -> "Sam2Masks":
        """Use these automatic-mask-generator settings (the others sam2's defaults) from now on."""
        with quiet():  # its image transforms are TorchScript: a deprecation warning per module
            self.generator = self._generator_cls(self.model, **settings)
        self.settings = dict(settings)
        return self

    @property
    def identity(self) -> dict:
        """What the masks depend on: model name, weights by content ('random' plus this instance's id for
        random weights), precision and generator settings (JSON-serialisable)."""
        from .identity import model_fingerprints, weights_fingerprint

        ident = {"generator": "sam2-amg", "model": self.name, "dtype": dtype_name(self.dtype),
                 "settings": dict(self.settings)}
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


def load_sam2(name: str | None = DEFAULT_SAM2, weights: str | Path | None = None,
              device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Sam2Masks:
    """Build SAM 2 (`SAM2_MODELS` name) and its automatic mask generator with the release's settings.

    weights: None -> the model's checkpoint from the Hugging Face hub (local cache first; none and no
    hub: `MissingWeights`, naming the hub repo and file); a checkpoint file (`{"model": state_dict}`
    as released, or a plain state dict); or "random" (random initialisation, for tests). A file of
    another architecture than `name`: one line naming both; name None: the one the file fits.
    device/dtype: as elsewhere ('auto': CUDA in fp16 autocast as the release, else the CPU in fp32)."""
    return builder.load(_recipe(), name, weights, device, dtype)


def _recipe() -> builder.Recipe:
    build_sam2, generator_cls = None, None

    def check(name: str | None) -> str | None:
        nonlocal build_sam2, generator_cls
        if name is not None and name not in SAM2_MODELS:
            raise GlaclipError(f"unknown SAM 2 model {name!r}; use one of {', '.join(SAM2_MODELS)}")
        build_sam2, generator_cls = _sam2()
        return name

    def make(arch: str | None, where: str, options: dict) -> torch.nn.Module:
        arch = arch or DEFAULT_SAM2
        try:
            with quiet():
                return build_sam2(SAM2_MODELS[arch].config, None, device=where, apply_postprocessing=False)
        except Exception as exc:
            raise GlaclipError(f"cannot build SAM 2 {arch}: {one_line(exc)}") from None

    def route(name, weights) -> str:
        return "random" if str(weights) == builder.RANDOM else "hub" if weights is None else "file"

    def hub(name: str | None, weights: None) -> tuple[Path, str]:
        name = name or DEFAULT_SAM2
        return hub_checkpoint(name), SAM2_MODELS[name].hub_id

    recipe = builder.Recipe(
        "SAM 2", check=check, default=lambda name, weights: weights, route=route, make=make, hub=hub,
        fit=lambda name, sd, path, scripted: fit_file(recipe, name, sd, path), dtype=_sam_dtype,
        wrap=lambda model, name, source, dev, dt: Sam2Masks(model, generator_cls, name or DEFAULT_SAM2, source,
                                                            dev, dt))
    return recipe


@contextmanager
def quiet():
    """sam2, hydra and torch warn on import, build and generation (deprecations, kernels): not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _missing(name: str):
    from ..errors import MissingWeights

    spec = SAM2_MODELS[name]
    return MissingWeights(f"SAM 2 {name} (get {spec.filename} from hub repo {spec.hub_id}; "
                          f"--sam-weights FILE, or 'random' to try)")


def hub_missing(name: str):
    """`MissingWeights` naming the hub checkpoint of SAM 2 `name` when it is neither in the local cache
    nor downloadable (hub off or unresolvable), else None; nothing is downloaded."""
    spec = SAM2_MODELS[name]
    if cached_hub_file(spec.hub_id, [spec.filename]) is not None or hub_reachable():
        return None
    return _missing(name)


def hub_checkpoint(name: str) -> Path:
    """The checkpoint from the local Hugging Face cache, else downloaded when the hub answers."""
    spec = SAM2_MODELS[name]
    path = cached_hub_file(spec.hub_id, [spec.filename])
    if path is not None:
        return Path(path)
    if not hub_reachable():
        raise _missing(name)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.hub_id, spec.filename))
    except Exception:
        raise _missing(name) from None


def _shapes(tensors) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def fit_file(recipe: builder.Recipe, name: str | None, sd: dict, path: Path) -> builder.FileFit:
    """Which `SAM2_MODELS` architecture a checkpoint fits. A file that fits another architecture than
    `name`: one line naming both; name None: the architecture the file fits (none: the nearest, so
    that loading reports what differs from it)."""
    wanted = name or DEFAULT_SAM2
    model = builder.empty(recipe, wanted)  # the checkpoint replaces every parameter
    shapes = _shapes(sd)
    if _shapes(model.state_dict()) != shapes:
        others = ((n, builder.empty(recipe, n)) for n in SAM2_MODELS if n != wanted)
        fit = next(((n, m) for n, m in others if _shapes(m.state_dict()) == shapes), None)
        if fit is not None and name is not None:
            raise GlaclipError(f"--sam-weights {path} fits {fit[0]}, not {name}: give --sam {fit[0]}")
        if fit is None and name is None:  # fits none: what differs from the nearest
            fit = min(((n, builder.empty(recipe, n)) for n in SAM2_MODELS),
                      key=lambda nm: len(set(_shapes(nm[1].state_dict()).items()) ^ set(shapes.items())))
        if fit is not None:
            wanted, model = fit
    return builder.FileFit(wanted, {}, sd, model)
