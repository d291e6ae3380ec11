"""Protocols: the settings each method's authors ran on each data set (BASELINES.md section 2).

One table, read by `segment`, `eval`, the demo and `glaclip presets`. A protocol is a host's ('proxyclip',
'sclip', 'clearclip', 'naclip') or GLA's ('gla'); its row for a data set gives the resize short side,
crop/stride (crop 0 = the whole image), logit scale, background threshold, the extras (area threshold,
PAMR, window padding) and the class file. Row None is a plain image (no data set): the protocol's
settings for data sets without a background class.

A method runs its authors' protocol by default: the four hosts their own, every other method
(GLA plug-ins, CLIP baselines) GLA's. `protocol="gla"` puts any method on GLA's protocol;
`protocol="host"` puts a method on its host's (`HOST_OF`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .datasets import ALIASES
from .errors import GlaclipError
from .presets import METHODS, AttentionConfig, DecisionConfig, Preset, WindowConfig

DATASETS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
PROTOCOLS = ("gla", "proxyclip", "sclip", "clearclip", "naclip")

# (short_side, crop, stride, logit_scale, prob_thd) per protocol and data set; crop 0 = whole image.
_P, _S, _C, _N, _G = (336, 336, 112, 40.0, 0.0), (336, 224, 112, 40.0, 0.0), (448, 448, 224, 50.0, 0.0), \
    (336, 224, 112, 40.0, 0.0), (336, 224, 112, 40.0, 0.0)
TABLE: dict[str, dict[str | None, tuple[int, int, int, float, float]]] = {
    "proxyclip": {None: _P, "voc21": (336, 336, 112, 40.0, 0.2), "context60": (336, 336, 112, 40.0, 0.15),
                  "coco_object": (336, 336, 112, 40.0, 0.25), "voc20": _P, "context59": _P, "coco_stuff": _P,
                  "cityscapes": (448, 224, 112, 40.0, 0.0), "ade20k": (448, 336, 112, 40.0, 0.0)},
    "sclip": {None: _S, "voc21": (336, 224, 112, 65.0, 0.1), "context60": (336, 224, 112, 50.0, 0.1),
              "coco_object": (336, 224, 112, 50.0, 0.1), "voc20": _S, "context59": _S,
              "coco_stuff": (448, 224, 112, 40.0, 0.0), "cityscapes": (560, 224, 112, 40.0, 0.0), "ade20k": _S},
    "clearclip": {None: _C, "voc21": (448, 448, 224, 50.0, 0.5), "context60": (448, 448, 224, 50.0, 0.15),
                  "coco_object": (448, 448, 224, 50.0, 0.4), "voc20": _C, "context59": _C, "coco_stuff": _C,
                  "cityscapes": (448, 224, 224, 50.0, 0.0), "ade20k": _C},
    "naclip": {None: _N, "voc21": (336, 0, 112, 40.0, 0.1), "context60": (336, 224, 112, 40.0, 0.1),
               "coco_object": (336, 224, 112, 40.0, 0.1), "voc20": (336, 0, 112, 40.0, 0.0), "context59": _N,
               "coco_stuff": _N, "cityscapes": (560, 224, 112, 40.0, 0.0), "ade20k": _N},
    "gla": {None: _G, "voc21": (336, 224, 112, 40.0, 0.1), "context60": (336, 224, 112, 40.0, 0.1),
            "coco_object": (336, 224, 112, 40.0, 0.1), "voc20": _G, "context59": _G, "coco_stuff": _G,
            "cityscapes": (560, 224, 112, 40.0, 0.0), "ade20k": _G},
}
# Settings a protocol adds on every data set: window padding (56: multiples of 56; 0: the patch size;
# 1: none) and PAMR (NACLIP runs it everywhere).
EXTRAS: dict[str, dict[str, Any]] = {
    "proxyclip": {"pad_multiple": 56}, "sclip": {"pad_multiple": 1}, "clearclip": {"pad_multiple": 0},
    "naclip": {"pad_multiple": 1, "pamr_steps": 10, "pamr_dilations": (8, 16)}, "gla": {"pad_multiple": 56},
}
AREA_THD = {("sclip", "voc21"): 0.1}
# Data sets whose class file differs per protocol (BASELINES.md section 3); others share one file.
CLASS_VARIANTS = {"proxyclip": ("voc21", "voc20", "coco_object"), "clearclip": ("voc21", "voc20", "coco_object")}
# Settings that belong to a method's formula, whatever the protocol.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "proxyclip": {"token_norm": False},  # official ProxyCLIP: one scalar mean per window
    "gla-clearclip-release": {"dynamic_beta": False},  # the release's dynamic-beta path fails; beta 1.2
}
HOST_OF = {
    "proxyclip": "proxyclip", "gla-proxyclip": "proxyclip", "sclip": "sclip", "gla-sclip": "sclip",
    "clearclip": "clearclip", "gla-clearclip": "clearclip", "gla-clearclip-release": "clearclip",
    "naclip": "naclip", "gla-naclip": "naclip",
    "clip": "sclip",  # the unmodified CLIP baseline as SCLIP and NACLIP report it
    "clip-vanilla": "clearclip",  # ClearCLIP's (and the GLA release's) "vanilla" CLIP
    "maskclip": "gla",
}
OWN_PROTOCOL = ("proxyclip", "sclip", "clearclip", "naclip")
# Named presets beyond the method names: (method, overrides).
EXTRA_PRESETS = {"gla-proxyclip-paper": ("gla-proxyclip", {"rho": 0.6})}  # rho as the paper's text states


def protocol_name(method: str, protocol: str | None = None) -> str:
    """The concrete protocol: None/'default' -> the method's own, 'host' -> its host's, or a name."""
    if method not in HOST_OF:
        raise GlaclipError(f"unknown preset or method {method!r}; choose from "
                           f"{', '.join(list(METHODS) + list(EXTRA_PRESETS))}")
    if protocol in (None, "", "default"):
        return method if method in OWN_PROTOCOL else "gla"
    if protocol == "host":
        return HOST_OF[method]
    if protocol not in PROTOCOLS:
        raise GlaclipError(f"unknown protocol {protocol!r}; choose from default, host, {', '.join(PROTOCOLS)}")
    return protocol


def dataset_key(dataset: str | None) -> str | None:
    """A benchmark's canonical name, None for a plain image or a user's folder."""
    if dataset is None:
        return None
    name = ALIASES.get(dataset.lower(), dataset.lower())
    return name if name in DATASETS else None


def class_file(protocol: str, dataset: str | None) -> str | None:
    """The packaged class file (in glaclip/classes) a protocol uses for a data set."""
    if dataset is None:
        return None
    return f"{dataset}-{protocol}.txt" if dataset in CLASS_VARIANTS.get(protocol, ()) else f"{dataset}.txt"


def resolve(method: str, dataset: str | None = None, protocol: str | None = None, **overrides: Any) -> Preset:
    """The preset `method` runs with on `dataset` (None: a plain image) under `protocol`, then overrides.

    `method` may also be a named preset such as 'gla-proxyclip-paper'.
    """
    base_overrides: dict[str, Any] = {}
    if method in EXTRA_PRESETS:
        name = method
        method, base_overrides = EXTRA_PRESETS[method]
    else:
        name = method
    proto = protocol_name(method, protocol)
    ds = dataset_key(dataset)
    short, crop, stride, scale, thd = TABLE[proto][ds]
    extras = dict(EXTRAS[proto])
    window = WindowConfig(short_side=short, crop=crop, stride=stride, pad_multiple=extras.pop("pad_multiple"))
    decision = DecisionConfig(logit_scale=scale, prob_thd=thd, area_thd=AREA_THD.get((proto, ds)), **extras)
    attention = replace(AttentionConfig(), **METHOD_SETTINGS.get(method, {}))
    if ds is not None or proto != protocol_name(method):
        name = f"{name}@{ds or 'image'}:{proto}"
    preset = Preset(name, method, window, attention, decision, protocol=proto, dataset=ds,
                    class_file=class_file(proto, ds))
    preset = preset.with_overrides(**base_overrides, **overrides)
    preset.validate()
    return preset


PRESETS: dict[str, Preset] = {m: resolve(m) for m in METHODS}
PRESETS.update({name: resolve(name) for name in EXTRA_PRESETS})
