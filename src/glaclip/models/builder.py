"""The one skeleton every frozen network is loaded through (CLIP, VFM, SAM, SAM 2, RADIO):

    name check -> device and precision -> which weights (given, environment, default tag)
    -> 'random' | a file | the hub -> read the file -> build empty -> load -> freeze -> tower.

A kind of network is a `Recipe`: the steps that differ between libraries (how a name is checked, how
an architecture is built, what a hub answer is, how a file's keys are mapped). Everything else, and
every message about a missing, unreadable or ill-fitting file, is here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoints import build, load_into, read_state_dict
from .devices import resolve_device, resolve_dtype

RANDOM = "random"

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(value: str) -> bool:
    """A weights value that names a file rather than a tag."""
    return os.sep in value or value.endswith(_WEIGHT_SUFFIXES) or Path(value).exists()


@dataclass(frozen=True)
class Loaded:
    """What the file or hub step gives back: the model with its weights, the architecture it is
    (a file may decide it), and where the weights came from (shown in messages and manifests)."""

    model: nn.Module
    arch: Any
    source: str


@dataclass(frozen=True)
class FileFit:
    """A file's state dict made ready for an architecture: the architecture (a file may pick it), the
    build options it needs (e.g. QuickGELU for OpenAI's archives), the state dict to load, and the
    empty model when fitting had to build it already."""

    arch: Any
    options: dict
    state: dict
    model: nn.Module | None = None


def _path_route(arch: Any, weights: str | None) -> str:
    if weights == RANDOM:
        return "random"
    return "file" if weights is not None and looks_like_path(str(weights)) else "hub"


def _plain_freeze(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _as_is(arch: Any, state: dict, path: Path, scripted: bool) -> FileFit:
    return FileFit(arch, {}, state)


@dataclass(frozen=True)
class Recipe:
    """The steps of one kind of network (`what` names it in messages: "CLIP", "VFM", "SAM", "SAM 2").

    check(name) -> arch: the architecture, or one line (unknown name, with close matches).
    default(arch, weights) -> weights: what None means (an environment variable, a default tag), or
        `MissingWeights` where there is no default.
    route(arch, weights) -> "random" | "file" | "hub".
    make(arch, device, options) -> module with random parameters (device "meta": empty).
    hub(arch, weights) -> `Loaded`, or (Path, source) for a checkpoint file the hub step fetched.
    fit(arch, state, path, scripted) -> `FileFit`: a file's keys mapped for the architecture.
    dtype(dtype, device), freeze(model, device, dtype), wrap(model, arch, source, device, dtype).
    """

    what: str
    check: Callable[[Any], Any]
    default: Callable[[Any, Any], Any]
    make: Callable[[Any, str, dict], nn.Module]
    wrap: Callable[[nn.Module, Any, str, torch.device, torch.dtype], Any]
    hub: Callable[[Any, Any], Any] | None = None
    route: Callable[[Any, Any], str] = _path_route
    fit: Callable[[Any, dict, Path, bool], FileFit] = _as_is
    dtype: Callable[[Any, torch.device], torch.dtype] = resolve_dtype
    freeze: Callable[[nn.Module, torch.device, torch.dtype], nn.Module] = _plain_freeze


def load(recipe: Recipe, name: Any, weights: Any, device: str | torch.device = "auto",
         dtype: str | torch.dtype = "auto") -> Any:
    """Load one network the recipe's way: see the module docstring for the steps."""
    dev = resolve_device(device)
    dt = recipe.dtype(dtype, dev)
    arch = recipe.check(name)
    weights = recipe.default(arch, weights)
    route = recipe.route(arch, weights)
    if route == "random":
        loaded = Loaded(recipe.make(arch, "cpu", {}), arch, RANDOM)
    elif route == "file":
        loaded = from_file(recipe, arch, Path(str(weights)).expanduser(), str(weights))
    else:
        got = recipe.hub(arch, weights)
        loaded = got if isinstance(got, Loaded) else from_file(recipe, arch, Path(got[0]), got[1])
    model = recipe.freeze(loaded.model, dev, dt)
    return recipe.wrap(model, loaded.arch, loaded.source, dev, dt)


def from_file(recipe: Recipe, arch: Any, path: Path, source: str) -> Loaded:
    """Read a weights file (one line when missing or unreadable), fit it to the architecture, build
    the architecture empty and take the file's tensors (one line naming what does not fit)."""
    state, scripted = read_state_dict(path, recipe.what)
    fit = recipe.fit(arch, state, path, scripted)
    model = fit.model if fit.model is not None else empty(recipe, fit.arch, fit.options)
    load_into(model, fit.state, path, recipe.what, lambda: recipe.make(fit.arch, "cpu", fit.options))
    return Loaded(model, fit.arch, source)


def empty(recipe: Recipe, arch: Any, options: dict | None = None) -> nn.Module:
    """The architecture with its parameters on the meta device (no memory, no initialisation)."""
    return build(lambda where: recipe.make(arch, where, options or {}), empty=True)
