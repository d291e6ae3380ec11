"""Model identity by content: fingerprints of a model's tensors (memoised per loaded model while its
parameters are untouched), used by every run, encoding and cache that records which weights it used."""

from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Callable, Iterable

import torch


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def weights_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of the names, shapes, dtypes and bytes of the given tensors."""
    h = hashlib.blake2b(digest_size=20)
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_MEMO: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, dict]]" = weakref.WeakKeyDictionary()


_MEMO_LOCK = threading.Lock()


def _stamp(model: torch.nn.Module) -> tuple | None:
    """What changes when the model does: its module types, and each parameter's and buffer's storage,
    version (bumped by in-place changes), type and device. None when tensors track no version."""
    try:
        return (tuple(type(m) for m in model.modules()),
                tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in model.parameters()),
                tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in model.buffers()))
    except RuntimeError:  # inference-mode tensors
        return None


def model_fingerprints(model: torch.nn.Module, parts: dict[str, Callable[[], str]]) -> dict[str, str]:
    """{part: compute()} for fingerprints of parts of a loaded model (e.g. `weights_fingerprint` of its
    text tensors), each computed once per loaded model: the values are kept on `model` until one of
    its tensors changes in place, is replaced or moved, or a module is swapped; then computed again."""
    stamp = _stamp(model)
    if stamp is None:
        return {part: compute() for part, compute in parts.items()}
    with _MEMO_LOCK:
        held = _MEMO.get(model)
        if held is None or held[0] != stamp:
            held = _MEMO[model] = (stamp, {})
        for part, compute in parts.items():
            if part not in held[1]:
                held[1][part] = compute()
        return {part: held[1][part] for part in parts}


def tower_identity(tower, tensors: Callable[[], list] | None = None, part: str = "weights") -> dict:
    """A loaded tower (CLIP, VFM, SAM: anything with `model`, `name`, `weights`) by content: its name, a
    hash of its module structure (sizes, activations) and a hash of its weights (`tensors()`, default
    the whole state dict), each hashed once per loaded model; random weights are not hashed. `part`
    names the hash among the model's memoised fingerprints. Where the weights came from is not part of it."""
    model = tower.model
    parts = {"structure": lambda: digest(repr(model))}
    if tower.weights != "random":
        parts[part] = lambda: weights_fingerprint(tensors() if tensors else list(model.state_dict().items()))
    prints = model_fingerprints(model, parts)
    return {"model": tower.name, "structure": prints["structure"], "weights": prints.get(part, "random")}


def clip_image_identity(clip) -> dict:
    """A CLIP tower by its image tower's weights (every tensor but the text tower's)."""

    def image_tensors() -> list:
        text = {k for k, _ in clip.text_tensors()}
        return [(k, v) for k, v in clip.model.state_dict().items() if k not in text]

    return tower_identity(clip, image_tensors, "image weights")


def towers_identity(clip, vfm=None, sam=None, radio=None, aux_clip=None, bank_clip=None) -> dict:
    """The identity of every tower a segmenter runs: CLIP by its image tower's weights (the text tower is
    the text cache's and a run's own part), the VFM (None when the method loads none) and, when loaded,
    Trident's SAM, CorrCLIPv2's RADIO (whole model) and its auxiliary CLIP (by its text tower, the only
    part it runs), and a bank-support CLIP (`bank_clip`, by its text tower too)."""

    out = {"clip": clip_image_identity(clip),
           "vfm": tower_identity(vfm, part="image weights") if vfm is not None else None}
    if sam is not None:
        out["sam"] = tower_identity(sam)
    if radio is not None:
        out["radio"] = tower_identity(radio)
    if aux_clip is not None:
        out["aux_clip"] = tower_identity(aux_clip, aux_clip.text_tensors, "text weights")
    if bank_clip is not None:
        out["bank_clip"] = tower_identity(bank_clip, bank_clip.text_tensors, "text weights")
    return out
