"""Loading the frozen CLIP (open_clip) and VFM (timm) towers: files, hub tags, TorchScript, messages.

Weights come from a pretrained tag / hub id (downloaded once into the usual caches), a local
file (`.pt`/`.pth`/`.bin` state dict, `.safetensors`, or for CLIP OpenAI's TorchScript archive),
or ``"random"`` (random initialisation, for trying things out and for tests). An architecture may
also be given as a JSON file: an open_clip model config for CLIP, ``{"model": NAME, "kwargs": {...}}``
for the VFM.

Weights that replace every parameter skip the random initialisation (`checkpoints.assign`: built on
the meta device, the checkpoint's tensors taken in, bit-identical to copying them). A hub file already
in the local cache is used without asking the hub; one that is not is downloaded only when the hub's
name resolves (else `MissingWeights` at once, naming the file to get).
The towers themselves (`ClipTower`, `VfmTower`) live in `towers`; the loading steps every network
shares, in `builder` (this module gives CLIP's and the VFM's `Recipe`).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from ..config.backbones import DEFAULT_CLIP, DEFAULT_CLIP_TAG, DEFAULT_VFM
from ..errors import GlaclipError, MissingWeights, one_line
from . import builder
from .builder import RANDOM, FileFit, Loaded
from .checkpoints import assigning, cached_hub_file, hub_reachable
from .towers import ClipTower, VfmTower

CLIP_WEIGHTS_ENV = "GLACLIP_CLIP_WEIGHTS"


VFM_WEIGHTS_ENV = "GLACLIP_VFM_WEIGHTS"


__all__ = ["CLIP_WEIGHTS_ENV", "VFM_WEIGHTS_ENV", "RANDOM", "load_clip", "load_vfm", "load_towers", "same_weights"]


class _OpenClipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextmanager
def _quiet_open_clip():
    """open_clip logs to the root logger (e.g. "No pretrained weights loaded ... initialized randomly"
    while ours follow); drop its records and warnings only, failures are reported by the callers."""
    quiet = _OpenClipRecords()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(quiet)


# ----------------------------------------------------------------------------------------- CLIP


def load_clip(name: str = DEFAULT_CLIP, weights: str | None = None, device: str | torch.device = "auto",
              dtype: str | torch.dtype = "auto") -> ClipTower:
    """Build an open_clip model and load its weights (tag, file, or "random").

    ``weights=None`` takes $GLACLIP_CLIP_WEIGHTS, else the 'openai' tag (or the model's first tag).
    OpenAI weights always get QuickGELU, whatever the architecture name says.
    """
    return builder.load(CLIP_RECIPE, name, weights, device, dtype)


def _schema(arch: str) -> bool:
    return arch.startswith(("hf-hub:", "local-dir:"))


def _clip_default(arch: str, weights: str | None) -> str | None:
    import open_clip

    weights = weights or os.environ.get(CLIP_WEIGHTS_ENV) or None
    if weights is None and not _schema(arch):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if not tags:
            raise GlaclipError(f"CLIP model {arch!r} has no pretrained tag; pass --clip-weights FILE or 'random'")
        weights = DEFAULT_CLIP_TAG if DEFAULT_CLIP_TAG in tags else tags[0]
    return weights


def _clip_route(arch: str, weights: str | None) -> str:
    return "hub" if _schema(arch) else builder._path_route(arch, weights)


def _clip_fit(arch: str, sd: dict, path: Path, scripted: bool) -> FileFit:
    for extra in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(extra, None)
    options = {"force_quick_gelu": scripted or "quickgelu" in path.name.lower()}
    model = builder.empty(CLIP_RECIPE, arch, options)
    if "attn_mask" in sd and "attn_mask" not in model.state_dict():
        sd.pop("attn_mask")
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    return FileFit(arch, options, sd, model)


def _clip_hub(arch: str, weights: str | None) -> Loaded:
    import open_clip

    if _schema(arch):
        return Loaded(_schema_clip(arch), arch, str(weights))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights not in tags:
        raise GlaclipError(f"CLIP model {arch!r} has no pretrained tag {weights!r}; tags: "
                           f"{', '.join(tags) or 'none'}"
                           " (or pass a weights file)")
    return Loaded(_tagged_clip(arch, weights), arch, str(weights))


def _create_clip(arch: str, where: str = "cpu", options: dict | None = None) -> nn.Module:
    """The architecture alone, randomly initialised on `where` ("meta": empty)."""
    import open_clip

    try:
        with _quiet_open_clip():
            return open_clip.create_model(arch, pretrained=None, load_weights=False, pretrained_text=False,
                                          device=where, **(options or {}))
    except Exception as exc:
        raise GlaclipError(f"cannot build CLIP model {arch!r}: {one_line(exc)}") from None


def clip_checkpoint(model: nn.Module, path: str, rebuild: Callable[[], nn.Module]) -> nn.Module:
    """Load an open_clip checkpoint file with open_clip's own loader (format conversions, position
    embedding resizing), taking its tensors instead of copying them (`assign`)."""
    import open_clip

    with assigning(model, rebuild), _quiet_open_clip():
        open_clip.load_checkpoint(model, path, strict=True)
    return model


def _tagged_clip(arch: str, tag: str) -> nn.Module:
    """open_clip's weights of a pretrained tag: from the local cache, else downloaded if the hub answers."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    quick = bool(cfg.get("quick_gelu"))
    hub = cfg.get("hf_hub", "")
    repo, file = os.path.split(hub) if hub else ("", "")
    if repo:
        where = f"{file or 'open_clip_model.safetensors'} from hub repo {repo}"
    else:
        where = cfg.get("url") or "its checkpoint"
    missing = MissingWeights(f"CLIP {arch}:{tag} (get {where}; --clip-weights FILE or {CLIP_WEIGHTS_ENV})")
    names = [file] if file else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if file.endswith((".bin", ".pth")):
        names.insert(0, file[:-4] + ".safetensors")
    path = cached_hub_file(repo, names) if repo else None
    if path is None:
        if repo and not hub_reachable():
            raise missing
        try:
            with _quiet_open_clip():
                path = open_clip.download_pretrained(cfg)
        except Exception:
            raise missing from None
        if not path:
            raise missing
    options = {"force_quick_gelu": quick}
    model = builder.empty(CLIP_RECIPE, arch, options)
    try:
        return clip_checkpoint(model, path, lambda: _create_clip(arch, "cpu", options))
    except Exception as exc:
        raise GlaclipError(f"CLIP weights {path} for {arch}:{tag} do not load: {one_line(exc)}") from None


def _schema_clip(arch: str) -> nn.Module:
    """An 'hf-hub:' or 'local-dir:' model: config and weights from a hub repo (cached copy first) or a folder."""
    import open_clip

    missing = None
    if arch.startswith("hf-hub:"):
        repo = arch[len("hf-hub:"):]
        missing = MissingWeights(f"CLIP {arch} (get it from hub repo {repo}; --clip-weights FILE or "
                                 f"{CLIP_WEIGHTS_ENV})")
        config = cached_hub_file(repo, ["open_clip_config.json"])
        if config and cached_hub_file(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            arch = "local-dir:" + os.path.dirname(config)  # the cached snapshot: no request to the hub
        elif not hub_reachable():
            raise missing
    try:
        with _quiet_open_clip():
            return open_clip.create_model(arch, pretrained_text=False)
    except Exception as exc:
        if missing is not None:
            raise missing from None
        raise GlaclipError(f"cannot load CLIP model {arch!r}: {one_line(exc)}") from None


def _resolve_clip_name(name: str) -> str:
    import open_clip

    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise GlaclipError(f"CLIP architecture file not found: {path}")
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise GlaclipError(f"CLIP architecture file {path} is not valid JSON: {one_line(exc)}") from None
        open_clip.add_model_config(path)
        return path.stem
    if name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models():
        return name
    close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
    raise GlaclipError(f"unknown CLIP model {name!r}{hint}")


# ------------------------------------------------------------------------------------------ VFM


def load_vfm(name: str = DEFAULT_VFM, weights: str | None = None, device: str | torch.device = "auto",
             dtype: str | torch.dtype = "auto") -> VfmTower:
    """Build a timm ViT (any image size) and load its weights (hub tag, file, or "random").

    ``weights=None`` takes $GLACLIP_VFM_WEIGHTS, else the hub weights of the tagged name.
    Files may be timm's own checkpoints or the original DINO release (same key names).
    """
    return builder.load(VFM_RECIPE, name, weights, device, dtype)


def _create_vfm(arch: tuple[str, dict], where: str, options: dict) -> nn.Module:
    """timm builds on the default device (the skeleton's meta context when empty), whatever `where` says."""
    import timm

    name, kwargs = arch
    try:
        return timm.create_model(name, pretrained=options.get("pretrained", False), **kwargs)
    except Exception as exc:
        raise GlaclipError(f"cannot build VFM {name!r}: {one_line(exc)}") from None


def _vfm_route(arch: tuple[str, dict], weights: str | None) -> str:
    return "random" if weights == RANDOM else "file" if weights is not None else "hub"


def _vfm_fit(arch: tuple[str, dict], sd: dict, path: Path, scripted: bool) -> FileFit:
    model = builder.empty(VFM_RECIPE, arch)
    return FileFit(arch, {}, _timm_filter(model, sd), model)


def _vfm_hub(arch: tuple[str, dict], weights: None):
    import timm

    name = arch[0]
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    where = f"model.safetensors from hub repo {repo}" if repo else getattr(cfg, "url", None) or "its checkpoint"
    missing = MissingWeights(f"VFM {name} (get {where}; --vfm-weights FILE or {VFM_WEIGHTS_ENV})")
    if repo:
        return Path(_hub_vfm_file(repo, missing)), "hub"
    try:  # weights from a URL: timm's own download and loading
        return Loaded(_create_vfm(arch, "cpu", {"pretrained": True}), arch, "hub")
    except GlaclipError:
        raise missing from None


def _hub_vfm_file(repo: str, missing: MissingWeights) -> str:
    """timm's weights file of a hub repo: the cached copy, else downloaded if the hub answers."""
    names = ["model.safetensors", "pytorch_model.bin"]
    path = cached_hub_file(repo, names)
    if path is not None:
        return path
    if not hub_reachable():
        raise missing
    from huggingface_hub import hf_hub_download

    for name in names:
        try:
            return hf_hub_download(repo, name)
        except Exception:
            continue
    raise missing


def _resolve_vfm_name(name: str) -> tuple[str, dict]:
    """(timm name, build kwargs) of a name or an architecture JSON file; any image size, no head."""
    import timm

    kwargs: dict = {}
    if name.endswith(".json"):
        path = Path(name)
        try:
            spec = json.loads(path.read_text())
            name, kwargs = spec["model"], dict(spec.get("kwargs", {}))
        except FileNotFoundError:
            raise GlaclipError(f"VFM architecture file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GlaclipError(f"VFM architecture file {path} needs JSON {{\"model\": NAME, \"kwargs\": {{...}}}}: "
                               f"{one_line(exc)}") from None
    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(pretrained=True), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GlaclipError(f"unknown VFM {name!r}{hint}")
    kwargs.update(dynamic_img_size=True, num_classes=0)
    return name, kwargs


def _timm_filter(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Let timm's own converter map foreign key names (e.g. the original DINO checkpoint), and drop
    classifier heads the feature extractor does not have."""
    import importlib

    try:
        module = importlib.import_module(type(model).__module__)
        filt = getattr(module, "checkpoint_filter_fn", None)
        if filt is not None:
            sd = filt(sd, model)
    except Exception:
        pass
    own = model.state_dict()
    return {k: v for k, v in sd.items() if k in own or not k.startswith(("head.", "fc."))}


CLIP_RECIPE = builder.Recipe(
    "CLIP", check=_resolve_clip_name, default=_clip_default, route=_clip_route, make=_create_clip,
    hub=_clip_hub, fit=_clip_fit, wrap=lambda model, arch, source, dev, dt: ClipTower(model, name=arch, weights=source))

VFM_RECIPE = builder.Recipe(
    "VFM", check=_resolve_vfm_name, default=lambda arch, weights: weights or os.environ.get(VFM_WEIGHTS_ENV) or None,
    route=_vfm_route, make=_create_vfm, hub=_vfm_hub, fit=_vfm_fit,
    wrap=lambda model, arch, source, dev, dt: VfmTower(model, name=arch[0], weights=source))


def import_libraries() -> None:
    """Import open_clip and timm now (they take seconds), e.g. so that a timing does not count them."""
    import open_clip  # noqa: F401
    import timm  # noqa: F401


def same_weights(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Whether two (model, weights) pairs name the same loaded model before loading: the same model name and
    the same weights (one pretrained tag, or one file by its real path); never for weights left to a
    default (None) or 'random' (each load differs)."""
    (name_a, weights_a), (name_b, weights_b) = a, b
    if name_a != name_b or weights_a is None or weights_b is None or RANDOM in (weights_a, weights_b):
        return False
    if builder.looks_like_path(weights_a) or builder.looks_like_path(weights_b):
        return os.path.realpath(os.path.expanduser(weights_a)) == os.path.realpath(os.path.expanduser(weights_b))
    return weights_a == weights_b


def load_towers(wanted: Mapping[str, tuple[str, str | None]], device: str | torch.device = "auto",
                dtype: str | torch.dtype = "auto", options: Mapping[str, dict] | None = None) -> dict:
    """Every tower a method declares, in one call: `wanted` maps "clip", "vfm", "sam", "radio", "aux_clip" and
    "bank_clip" (a CLIP whose text tower alone runs, as "aux_clip") to
    (name, weights), `options` a tower to more keyword arguments of its loader (RADIO's radio_repo)
    (CLIP first: the others take its device and precision). Every missing weights file is named at once
    (one `MissingWeights`), not one per attempt."""
    from .radio import load_radio
    from .sam import load_sam

    loaders = {"clip": load_clip, "vfm": load_vfm, "sam": load_sam, "radio": load_radio, "aux_clip": load_clip,
               "bank_clip": load_clip}
    towers: dict = {}
    missing: list[MissingWeights] = []
    for kind, (name, weights) in wanted.items():
        clip = towers.get("clip")
        try:
            towers[kind] = loaders[kind](name, weights, device=clip.visual.conv1.weight.device if clip else device,
                                         dtype=clip.dtype if clip else dtype, **(options or {}).get(kind, {}))
        except MissingWeights as exc:
            missing.append(exc)
    if missing:
        raise MissingWeights.combine(missing)
    return towers
