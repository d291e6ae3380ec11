"""SAM 2 checkpoints for `regions.load_sam2`: the hub's file (local cache first), whether it can be had
at all (checked before any model loads), and which `SAM2_MODELS` architecture a file fits (its tensors'
names and shapes against each architecture built on the meta device)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from .checkpoints import build, cached_hub_file, hub_reachable, load_into, read_state_dict
from .errors import GlaclipError, one_line


class Sam2Model(NamedTuple):
    """A SAM 2 checkpoint: the sam2 package's config name, its Hugging Face repository and file."""

    config: str
    hub_id: str
    filename: str


SAM2_MODELS = {  # as sam2 1.1.0's build_sam.HF_MODEL_ID_TO_FILENAMES (the SAM 2.0 checkpoints the release used)
    "sam2-hiera-tiny": Sam2Model("configs/sam2/sam2_hiera_t.yaml", "facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt"),
    "sam2-hiera-small": Sam2Model("configs/sam2/sam2_hiera_s.yaml", "facebook/sam2-hiera-small",
                                  "sam2_hiera_small.pt"),
    "sam2-hiera-base-plus": Sam2Model("configs/sam2/sam2_hiera_b+.yaml", "facebook/sam2-hiera-base-plus",
                                      "sam2_hiera_base_plus.pt"),
    "sam2-hiera-large": Sam2Model("configs/sam2/sam2_hiera_l.yaml", "facebook/sam2-hiera-large",
                                  "sam2_hiera_large.pt"),
}
DEFAULT_SAM = "sam2-hiera-large"


@contextmanager
def quiet():
    """sam2, hydra and torch warn on import, build and generation (deprecations, kernels): not shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _missing(name: str):
    from .models import MissingWeights

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


def sam2_model(name: str | None, weights, build_sam2) -> tuple[str, torch.nn.Module, str]:
    """(model name, model, weights' source) for `load_sam2`: random, the hub's checkpoint or a file.
    A file that fits another architecture than `name`: one line naming both; name None: the
    architecture the file fits (none: what differs from the nearest is reported)."""

    def make(arch: str, where: str) -> torch.nn.Module:
        try:
            with quiet():
                return build_sam2(SAM2_MODELS[arch].config, None, device=where, apply_postprocessing=False)
        except Exception as exc:
            raise GlaclipError(f"cannot build SAM 2 {arch}: {one_line(exc)}") from None

    if str(weights) == "random":
        return name or DEFAULT_SAM, make(name or DEFAULT_SAM, "cpu"), "random"
    if weights is None:
        name = name or DEFAULT_SAM
        path, source = hub_checkpoint(name), SAM2_MODELS[name].hub_id
    else:
        path, source = Path(weights).expanduser(), str(weights)
    sd, _ = read_state_dict(path, "SAM 2")  # one line for a missing or unreadable file
    wanted = name or DEFAULT_SAM
    model = build(lambda where: make(wanted, where), empty=True)  # the checkpoint replaces every parameter
    shapes = _shapes(sd)
    if _shapes(model.state_dict()) != shapes:
        others = ((n, build(lambda where, n=n: make(n, where), empty=True)) for n in SAM2_MODELS if n != wanted)
        fit = next(((n, m) for n, m in others if _shapes(m.state_dict()) == shapes), None)
        if fit is not None and name is not None:
            raise GlaclipError(f"--sam-weights {path} fits {fit[0]}, not {name}: give --sam {fit[0]}")
        if fit is None and name is None:  # fits none: what differs from the nearest
            fit = min(((n, build(lambda where, n=n: make(n, where), empty=True)) for n in SAM2_MODELS),
                      key=lambda nm: len(set(_shapes(nm[1].state_dict()).items()) ^ set(shapes.items())))
        if fit is not None:
            wanted, model = fit
    load_into(model, sd, path, "SAM 2", lambda: make(wanted, "cpu"))
    return wanted, model, source
