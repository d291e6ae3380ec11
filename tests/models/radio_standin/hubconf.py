"""A stand-in for NVlabs/RADIO's hub entry, for tests without a RADIO checkout (written for glaclip,
no RADIO code): `radio_model(version=...)` returns a tiny model with RADIO's interface (input
conditioner with a `dtype`, `get_nearest_supported_resolution`, `patch_size`, `embed_dim`,
`forward(x, feature_fmt) -> (summary, features)`). `version`: a checkpoint file
`{"args": {"dim": C}, "state_dict": {"base_model.*", "input_conditioner.*"}}` or "tiny-random"."""

import os
from collections import namedtuple

import torch
import torch.nn as nn

dependencies = ["torch"]

Output = namedtuple("Output", ["summary", "features"])
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class Conditioner(nn.Module):
    def __init__(self):
        super().__init__()
        self.dtype = None
        self.register_buffer("norm_mean", torch.tensor(MEAN).view(-1, 1, 1))
        self.register_buffer("norm_std", torch.tensor(STD).view(-1, 1, 1))

    def forward(self, x):
        y = (x - self.norm_mean) / self.norm_std
        return y if self.dtype is None else y.to(self.dtype)


class Base(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 16, 16)
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return t + torch.tanh(self.mix(t))


class TinyRadio(nn.Module):
    patch_size = 16

    def __init__(self, dim):
        super().__init__()
        self.embed_dim = dim
        self.model = Base(dim)
        self.input_conditioner = Conditioner()

    def get_nearest_supported_resolution(self, height, width):
        return (max(int(round(height / 16) * 16), 16), max(int(round(width / 16) * 16), 16))

    def forward(self, x, feature_fmt="NLC"):
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError("The input resolution must be a multiple of 16")
        y = self.model(self.input_conditioner(x))
        feats = y
        if feature_fmt == "NCHW":
            feats = y.transpose(1, 2).reshape(y.shape[0], -1, x.shape[-2] // 16, x.shape[-1] // 16)
        return Output(y.mean(dim=1), feats)


def radio_model(version="", progress=True, **kwargs):
    if os.path.isfile(version):
        chk = torch.load(version, map_location="cpu", weights_only=False)
        model = TinyRadio(chk["args"]["dim"])
        sd = chk["state_dict"]
        model.model.load_state_dict({k[len("base_model."):]: v for k, v in sd.items() if k.startswith("base_model.")})
        model.input_conditioner.load_state_dict({k[len("input_conditioner."):]: v for k, v in sd.items()
                                                 if k.startswith("input_conditioner.")})
        return model
    if version == "tiny-random":
        torch.manual_seed(0)
        return TinyRadio(32)
    raise ValueError(f"unknown version {version!r}")
