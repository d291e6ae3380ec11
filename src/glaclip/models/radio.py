"""RADIO (NVlabs/RADIO) as CorrCLIPv2's VFM, loaded through RADIO's own code as torch.hub loads it.

RADIO's code is not part of glaclip (its licence is not ours): `load_radio` runs the `radio_model`
entry point of a RADIO checkout's `hubconf.py` through `torch.hub.load(..., source="local")`, from
`radio_repo` (a `git clone https://github.com/NVlabs/RADIO`), $GLACLIP_RADIO_REPO, or torch.hub's own
cache of NVlabs/RADIO (`<hub dir>/NVlabs_RADIO_main`). Weights: RADIO's resource table (`version=NAME`;
its checkpoint from torch.hub's checkpoint cache, downloaded by RADIO only when the hub answers) or a
checkpoint file as RADIO's hubconf reads it (`{"args": ..., "state_dict": {"base_model.*",
"input_conditioner.*", ...}}`).

`RadioTower` gives RADIO's spatial features of an image in [0, 1] and its resolution snapping.
The model runs in the run's precision, its input conditioner too (RADIO casts the conditioned image
to the conditioner's `dtype`, set to the checkpoint's dtype by its hubconf).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.backbones import DEFAULT_RADIO, RADIO_HUB_REPO, RADIO_MODELS
from ..errors import GlaclipError, MissingWeights, one_line
from . import builder

RADIO_REPO_ENV = "GLACLIP_RADIO_REPO"
_GET_CODE = f"git clone https://github.com/{RADIO_HUB_REPO}; --radio-repo DIR or ${RADIO_REPO_ENV}"


@dataclass
class RadioTower:
    """A RADIO model (RADIO's own `RADIOModel`, or anything with its interface: `input_conditioner`,
    `get_nearest_supported_resolution(h, w)`, `patch_size`, `embed_dim`, and
    `forward(x, feature_fmt='NCHW') -> (summary, features)`)."""

    model: nn.Module
    name: str
    weights: str

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_size)

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def nearest_resolution(self, height: int, width: int) -> tuple[int, int]:
        """RADIO's nearest supported input size (its own rule: multiples of the patch size, Python's
        round, i.e. half to even: 424 -> 416; at least one patch)."""
        res = self.model.get_nearest_supported_resolution(height, width)
        return int(res[0]), int(res[1])

    @torch.no_grad()
    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """1 x 3 x H x W in [0, 1] (H, W multiples of the patch size) -> 1 x C x H/p x W/p: RADIO's
        spatial features (`model(x, feature_fmt='NCHW')`, second output)."""
        out = self.model(x01.to(self.device, self.dtype), feature_fmt="NCHW")
        return out[1]


def radio_grid(radio, rgb: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x C x h x w: RADIO's features of the whole image (input in [0, 1] at RADIO's
    nearest supported resolution, bilinear) on its patch grid, contiguous, in `dtype`."""
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].to(radio.device, dtype) / 255
    snapped = radio.nearest_resolution(rgb.shape[0], rgb.shape[1])
    x = F.interpolate(x, size=snapped, mode="bilinear", align_corners=False)
    return radio.features(x).to(dtype).contiguous()  # as the release: RADIO gives a channels-last view


def radio_map(radio, rgb: np.ndarray, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """H x W x 3 uint8 -> C x h x w: `radio_grid` resized bilinearly to `size` and L2-normalised per pixel."""
    feats = F.interpolate(radio_grid(radio, rgb, dtype), size=size, mode="bilinear", align_corners=False)
    return F.normalize(feats, dim=1)[0]


def radio_repo_dir(radio_repo: str | os.PathLike | None = None) -> Path:
    """The RADIO checkout to load from: `radio_repo`, $GLACLIP_RADIO_REPO, else torch.hub's cache of
    NVlabs/RADIO; MissingWeights naming what to get when there is none."""
    given = radio_repo or os.environ.get(RADIO_REPO_ENV) or None
    if given is not None:
        path = Path(given).expanduser()
        if not (path / "hubconf.py").is_file():
            raise GlaclipError(f"no RADIO code at {path} (a checkout of {RADIO_HUB_REPO} with its hubconf.py: "
                               f"{_GET_CODE})")
        return path
    hub = Path(torch.hub.get_dir())
    owner, name = RADIO_HUB_REPO.split("/")
    for branch in ("main", "master"):
        path = hub / f"{owner}_{name}_{branch}"
        if (path / "hubconf.py").is_file():
            return path
    raise MissingWeights(f"RADIO code ({_GET_CODE})")


def radio_checkpoint_cache(name: str) -> Path | None:
    """Where torch.hub keeps the checkpoint of a RADIO model of our table (None for other names)."""
    entry = RADIO_MODELS.get(name)
    if entry is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)


def _version(name: str, weights: str | None) -> str:
    """RADIO's `version` argument: a checkpoint file, or the name in RADIO's resource table."""
    if weights == "random":
        raise GlaclipError("RADIO has no random initialisation through its hub entry; give a checkpoint file "
                           "(--vfm-weights FILE: {'args': ..., 'state_dict': ...})")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GlaclipError(f"RADIO weights file not found: {path}")
        return str(path)
    cached = radio_checkpoint_cache(name)
    if cached is not None and not cached.is_file():
        from .checkpoints import hub_reachable

        if not hub_reachable(urlparse(RADIO_MODELS[name].url).hostname or ""):
            raise MissingWeights(f"RADIO {name} (get {RADIO_MODELS[name].url.split('?')[0]} into {cached}, or "
                                 "--vfm-weights FILE)")
    return name


def load_radio(name: str = DEFAULT_RADIO, weights: str | None = None, radio_repo: str | os.PathLike | None = None,
               device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> RadioTower:
    """RADIO through its own hub entry (`radio_model(version=...)`), frozen, in `dtype` on `device`
    (the input conditioner's output dtype too). weights: None (RADIO's resource table, by `name`), a
    checkpoint file, or 'random' (refused: RADIO builds only from a checkpoint)."""
    return builder.load(_recipe(radio_repo), name, weights, device, dtype)


def _recipe(radio_repo: str | os.PathLike | None) -> builder.Recipe:
    """RADIO's steps in the one skeleton: its hub entry reads, builds and loads (a file too), so every
    route is the hub step; the skeleton checks, freezes and wraps."""
    repo: Path | None = None

    def check(name: str) -> str:
        nonlocal repo
        repo = radio_repo_dir(radio_repo)
        return name

    def hub(name: str, weights: str | None) -> builder.Loaded:
        version = _version(name, weights)
        try:
            model = torch.hub.load(str(repo), "radio_model", source="local", version=version, progress=False)
        except MissingWeights:
            raise
        except Exception as exc:
            raise GlaclipError(f"RADIO {name} does not load from {repo} (version {version}): {one_line(exc)}") from None
        for attr in ("input_conditioner", "get_nearest_supported_resolution", "patch_size", "embed_dim"):
            if not hasattr(model, attr):
                raise GlaclipError(f"the RADIO entry of {repo} gave a model without {attr!r}")
        return builder.Loaded(model, name, str(weights or "hub"))

    def make(name: str, where: str, options: dict) -> nn.Module:
        raise GlaclipError("RADIO is built by its own hub entry only")

    def freeze(model: nn.Module, dev: torch.device, dt: torch.dtype) -> nn.Module:
        model.eval().requires_grad_(False)
        model.to(device=dev, dtype=dt)
        model.input_conditioner.dtype = dt  # RADIO casts the conditioned image to this
        return model

    return builder.Recipe("RADIO", check=check, default=lambda name, weights: weights, route=lambda n, w: "hub",
                          make=make, hub=hub, freeze=freeze,
                          wrap=lambda model, name, source, dev, dt: RadioTower(model, name=name, weights=source))
