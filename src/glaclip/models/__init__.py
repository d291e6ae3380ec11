"""Every frozen network: towers, loading from tags, hubs and files, checkpoints, devices, identity."""

from ..errors import MissingWeights
from .loading import CLIP_WEIGHTS_ENV, RANDOM, VFM_WEIGHTS_ENV, load_clip, load_vfm

__all__ = ["load_clip", "load_vfm", "MissingWeights", "RANDOM", "CLIP_WEIGHTS_ENV", "VFM_WEIGHTS_ENV"]
