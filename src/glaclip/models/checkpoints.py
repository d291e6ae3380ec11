"""Checkpoint mechanics shared by the loaders (`models`): reading weight files, the local hub cache,
and putting a checkpoint's tensors into a model built without initialising its parameters.

A model built with its parameters on the meta device (`build`) has shapes but no memory; `assign` gives it the
checkpoint's own tensors (memory-mapped where the file format allows), each converted to the
dtype and contiguous layout of the parameter it replaces -- what copying the weights into a
randomly initialised model gives, bit for bit, without the random initialisation.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
import zipfile
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import GlaclipError

HUB_HOST = "huggingface.co"


def hub_reachable(host: str = HUB_HOST) -> bool:
    """False when the hub is off (HF_HUB_OFFLINE) or its name does not resolve: a download would only
    retry connections for a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def cached_hub_file(repo: str, names: list[str]) -> str | None:
    """The first of `names` in the local hub cache of `repo` (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str):
            return path
    return None


@contextmanager
def _meta_parameters():
    """Within (this thread only): every parameter a module registers is replaced by one of the same
    shape on the meta device, so initialising it costs nothing. Buffers are made for real; should the
    builder then move the model to the meta device, they are put back as they were made."""
    me = threading.get_ident()
    buffers: dict[tuple[int, str], tuple[nn.Module, torch.Tensor]] = {}

    def param_to_meta(module, name, param):
        if param is not None and threading.get_ident() == me and not param.is_meta:
            return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        return None

    def keep_buffer(module, name, buffer):
        if buffer is not None and threading.get_ident() == me and not buffer.is_meta:
            buffers[id(module), name] = (module, buffer)

    hooks = [nn.modules.module.register_module_parameter_registration_hook(param_to_meta),
             nn.modules.module.register_module_buffer_registration_hook(keep_buffer)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
    for (_, name), (module, buffer) in buffers.items():
        now = module._buffers.get(name)
        if now is not None and now.is_meta and now.shape == buffer.shape:
            module._buffers[name] = buffer.to(now.dtype)


def build(make: Callable[[str], nn.Module], empty: bool) -> nn.Module:
    """make(device) -> module. empty: parameters on the meta device (no memory, no random
    initialisation) for weights that replace them all; a real build where that is not possible."""
    if empty:
        try:
            with _meta_parameters():
                return make("meta")
        except Exception:  # an architecture that reads its own parameters' values while it is built
            pass
    return make("cpu")


def assign(model: nn.Module, sd: dict[str, torch.Tensor], rebuild: Callable[[], nn.Module],
           strict: bool = True):
    """Load `sd` by taking its tensors (no copy where dtype and layout already match), each in the
    dtype and (contiguous) layout of the parameter it replaces, as copying into it would give. A
    tensor the checkpoint does not hold and that is still on the meta device (a buffer derived from
    parameters while building) is taken from a real build."""
    own = model.state_dict()
    sd = {k: v.to(own[k].dtype).contiguous() if k in own else v for k, v in sd.items()}
    result = nn.Module.load_state_dict(model, sd, strict=strict, assign=True)
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # slow, but only for architectures that need it
        ref = rebuild()
        real = dict(chain(ref.named_parameters(), ref.named_buffers()))
        for name in left:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, real[name])
    return result


@contextmanager
def assigning(model: nn.Module, rebuild: Callable[[], nn.Module]):
    """Within: a library's own checkpoint loader calling model.load_state_dict assigns (`assign`)."""
    model.load_state_dict = lambda sd, strict=True, **_: assign(model, sd, rebuild, strict)
    try:
        yield model
    finally:
        del model.load_state_dict


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str,
              rebuild: Callable[[], nn.Module]) -> None:
    """`assign` a file's state dict after checking that it fits: one line naming what is missing,
    unexpected or of the wrong shape otherwise."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        raise GlaclipError(f"{what} weights {path} do not fit the architecture: " + ", ".join(parts))
    assign(model, sd, rebuild)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def read_state_dict(path: Path, what: str) -> tuple[dict[str, torch.Tensor], bool]:
    """State dict from .safetensors, a torch pickle (optionally under 'state_dict'/'model'), or a
    TorchScript archive. Returns (state_dict, was_torchscript)."""
    if not path.is_file():
        raise GlaclipError(f"{what} weights file not found: {path}")
    scripted = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")  # memory-mapped
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
            scripted = True
        else:
            sd = _torch_load(path)
    except Exception:  # every reader raises its own types (and advice) for garbled files
        raise GlaclipError(f"{path} is not a {what} weights file (not readable as safetensors, a PyTorch "
                           "state dict or a TorchScript archive)") from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GlaclipError(f"{what} weights {path} hold no state dict of tensors")
    prefixes = ("module.", "backbone.")
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd), scripted


def _torch_load(path: Path):
    """torch.load, memory-mapped where the file's format allows (all but the pre-1.6 legacy format)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(str(path), map_location="cpu", weights_only=True)
