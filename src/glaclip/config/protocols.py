"""Protocols: the settings each method's authors ran on each data set (BASELINES.md section 2).

One table, read by `segment`, `eval`, the demo and `glaclip presets`. A protocol is a host's ('proxyclip',
'sclip', 'clearclip', 'naclip') or GLA's ('gla'); its row for a data set gives the resize short side,
crop/stride (crop 0 = the whole image), logit scale, background threshold, the extras (area threshold,
PAMR, window padding) and the class file. Row None is a plain image (no data set): the protocol's
settings for data sets without a background class.

A method runs its registry entry's protocol by default (`methods.Method.protocol`: the four hosts their
own, every other method GLA's). `protocol="gla"` puts any method on GLA's protocol; `protocol="host"`
puts a method on its host's (`Method.host`).

This module also resolves presets: `resolve` gives the preset of a method (or named preset) on a data
set under a protocol, `effective` that preset with its class list, and `PRESETS` every named preset
on a plain image, as the registry lists them at the time.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterable, Iterator, Mapping, Union

from ..errors import GlaclipError
from .classes import ClassQueries, ClassSpec, parse_classes, read_class_file
from .datasets import ALIASES, SPECS, dataset_names, packaged_classes
from .presets import AttentionConfig, DecisionConfig, Preset, WindowConfig
from .registry import METHODS, VARIANTS, get_method, preset_names

Classes = Union[ClassQueries, str, "os.PathLike[str]", Iterable[ClassSpec], None]

# Data sets with a row in every protocol. Other known data sets (ade847, context459: no paper of these
# methods gives their settings) run with the protocol's plain-image row (None) and their own class file.
DATASETS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")
PROTOCOLS = ("gla", "proxyclip", "sclip", "clearclip", "naclip", "corrclip", "corrclip2", "trident")

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
    "corrclip": {None: _P, "voc21": (336, 336, 112, 40.0, 0.2), "context60": (336, 336, 112, 40.0, 0.15),
                 "coco_object": (336, 336, 112, 40.0, 0.25), "voc20": _P, "context59": _P, "coco_stuff": _P,
                 "cityscapes": (448, 224, 112, 40.0, 0.0), "ade20k": (448, 336, 112, 40.0, 0.0)},
    # CorrCLIPv2 (CorrCLIPv2/configs/cfg_*.py): as v1 but Cityscapes short side 784
    "corrclip2": {None: _P, "voc21": (336, 336, 112, 40.0, 0.2), "context60": (336, 336, 112, 40.0, 0.15),
                  "coco_object": (336, 336, 112, 40.0, 0.25), "voc20": _P, "context59": _P, "coco_stuff": _P,
                  "cityscapes": (784, 224, 112, 40.0, 0.0), "ade20k": (448, 336, 112, 40.0, 0.0)},
    # Trident (configs/cfg_*.py): crop 336, stride 224 (VOC20 112); a plain image as its base config
    "trident": {None: (448, 336, 224, 40.0, 0.0), "voc21": (448, 336, 224, 40.0, 0.2),
                "context60": (576, 336, 224, 40.0, 0.15), "coco_object": (448, 336, 224, 40.0, 0.25),
                "voc20": (336, 336, 112, 40.0, 0.0), "context59": (576, 336, 224, 40.0, 0.0),
                "coco_stuff": (448, 336, 224, 40.0, 0.0), "cityscapes": (688, 336, 224, 40.0, 0.0),
                "ade20k": (576, 336, 224, 40.0, 0.0)},
    "gla": {None: _G, "voc21": (336, 224, 112, 40.0, 0.1), "context60": (336, 224, 112, 40.0, 0.1),
            "coco_object": (336, 224, 112, 40.0, 0.1), "voc20": _G, "context59": _G, "coco_stuff": _G,
            "cityscapes": (560, 224, 112, 40.0, 0.0), "ade20k": _G},
}
# Settings a protocol adds on every data set: window padding (56: multiples of 56; 0: the patch size;
# 1: none), PAMR (NACLIP runs it everywhere) and map correction by region masks (CorrCLIP).
EXTRAS: dict[str, dict[str, Any]] = {
    "proxyclip": {"pad_multiple": 56}, "sclip": {"pad_multiple": 1}, "clearclip": {"pad_multiple": 0},
    "naclip": {"pad_multiple": 1, "pamr_steps": 10, "pamr_dilations": (8, 16)}, "gla": {"pad_multiple": 56},
    "corrclip": {"pad_multiple": 56, "mask_vote": True}, "corrclip2": {"pad_multiple": 56, "mask_vote": True},
    "trident": {"pad_multiple": 56},
}
# Settings of single rows (protocol, data set): Trident's refinement threshold and SAM attention filter.
ROW_SETTINGS: dict[tuple[str, str | None], dict[str, Any]] = {
    ("trident", None): {"coarse_thresh": 0.2}, ("trident", "voc21"): {"coarse_thresh": 0.2},
    ("trident", "context60"): {"coarse_thresh": 0.15}, ("trident", "coco_object"): {"coarse_thresh": 0.25},
    ("trident", "voc20"): {"coarse_thresh": 0.2, "cos_fac": 0.0}, ("trident", "context59"): {"coarse_thresh": 0.15},
    ("trident", "coco_stuff"): {"coarse_thresh": 0.05},
    ("trident", "cityscapes"): {"coarse_thresh": 0.1, "cos_fac": 3.0, "refine_neg_cos": False, "sam_halves": True},
    ("trident", "ade20k"): {"coarse_thresh": 0.05, "refine_neg_cos": False},
}
AREA_THD = {("sclip", "voc21"): 0.1}
# Data sets whose class file differs per protocol (BASELINES.md section 3); others share one file.
CLASS_VARIANTS = {"proxyclip": ("voc21", "voc20", "coco_object"), "clearclip": ("voc21", "voc20", "coco_object"),
                  "corrclip": DATASETS, "corrclip2": DATASETS, "trident": ("voc21", "voc20", "coco_object")}


def protocol_name(method: str, protocol: str | None = None) -> str:
    """The concrete protocol: None/'default' -> the method's own, 'host' -> its host's, or a name."""
    entry = get_method(method)
    if protocol in (None, "", "default"):
        proto = entry.protocol
    elif protocol == "host":
        proto = entry.host
    elif protocol not in PROTOCOLS:
        raise GlaclipError(f"unknown protocol {protocol!r}; choose from default, host, {', '.join(PROTOCOLS)}")
    else:
        proto = protocol
    if proto not in TABLE:
        raise GlaclipError(f"method {method!r} names protocol {proto!r}, which has no rows in protocols.TABLE")
    return proto


def dataset_key(dataset: str | None) -> str | None:
    """A benchmark's canonical name (a protocol row), None for a plain image, a user's folder or a known
    data set without protocol rows."""
    if dataset is None:
        return None
    name = ALIASES.get(dataset.lower(), dataset.lower())
    return name if name in DATASETS else None


def benchmark_key(dataset: str | None) -> str | None:
    """`dataset_key`, refusing names that are neither a known data set nor 'folder' (a user's own data set)."""
    key = dataset_key(dataset)
    if dataset is not None and key is None and ALIASES.get(dataset.lower(), dataset.lower()) not in SPECS \
            and dataset.lower() != "folder":
        raise GlaclipError(f"unknown dataset {dataset!r}; choose from {', '.join(dataset_names())}")
    return key


def class_file(protocol: str, dataset: str | None) -> str | None:
    """The packaged class file (in glaclip/classes) a protocol uses for a data set."""
    if dataset is None:
        return None
    return f"{dataset}-{protocol}.txt" if dataset in CLASS_VARIANTS.get(protocol, ()) else SPECS[dataset].classes


def resolve(method: str, dataset: str | None = None, protocol: str | None = None, **overrides: Any) -> Preset:
    """The preset `method` runs with on `dataset` (None: a plain image) under `protocol`, then overrides.

    `method` may also be a named preset such as 'gla-proxyclip-paper' (`methods.VARIANTS`).
    """
    name = method
    if method in VARIANTS:
        method, overrides = VARIANTS[name].method, {**VARIANTS[name].overrides, **overrides}
    proto = protocol_name(method, protocol)
    ds = benchmark_key(dataset)
    # a known data set without rows (ade847, context459): the plain-image row, the data set's class file
    rowless = None if ds or dataset is None or dataset.lower() == "folder" else ALIASES.get(dataset.lower(),
                                                                                              dataset.lower())
    short, crop, stride, scale, thd = TABLE[proto][ds]
    extras = dict(EXTRAS[proto])
    window = WindowConfig(short_side=short, crop=crop, stride=stride, pad_multiple=extras.pop("pad_multiple"))
    decision = DecisionConfig(logit_scale=scale, prob_thd=thd, area_thd=AREA_THD.get((proto, ds)), **extras)
    attention = replace(AttentionConfig(), **METHODS[method].settings)
    if ds is not None or rowless or proto != protocol_name(method):
        name = f"{name}@{ds or rowless or 'image'}:{proto}"
    preset = Preset(name, method, window, attention, decision, protocol=proto, dataset=ds,
                    class_file=class_file(proto, ds or rowless))
    preset = preset.with_overrides(**{**ROW_SETTINGS.get((proto, ds), {}), **overrides})
    preset.validate()
    return preset


def effective(method: str, dataset: str | None = None, protocol: str | None = None,
              overrides: Mapping[str, Any] | None = None, classes: Classes = None
              ) -> tuple[Preset, ClassQueries | None]:
    """What a run uses: the preset (`resolve`) and the class list, with `preset.class_file` saying where
    the classes came from.

    classes: None -> the packaged class file of the protocol's row for `dataset` (None when there is
    no data set); a path (os.PathLike) -> that class file; a string -> the class syntax
    ("sky, car; vehicle": commas or newlines separate classes, ';' synonyms); names, synonym lists
    or ClassQueries -> those. dataset: a benchmark name or alias, 'folder' (no protocol row) or None.
    """
    preset = resolve(method, dataset, protocol, **dict(overrides or {}))
    if classes is None:
        return preset, packaged_classes(preset.class_file) if preset.class_file else None
    if isinstance(classes, os.PathLike):
        return replace(preset, class_file=os.fspath(classes)), read_class_file(classes)
    queries = classes if isinstance(classes, ClassQueries) else parse_classes(classes)
    return replace(preset, class_file=None), queries


def get_preset(name: str, **overrides: Any) -> Preset:
    """A named preset (a method name or a named variant, see `glaclip presets`) with optional flat overrides."""
    return resolve(name).with_overrides(**overrides)


class _Presets(Mapping[str, Preset]):
    """Every named preset on a plain image, read from the registry when asked (so registered methods appear)."""

    def __getitem__(self, name: str) -> Preset:
        if name not in METHODS and name not in VARIANTS:
            raise KeyError(name)
        return resolve(name)

    def __iter__(self) -> Iterator[str]:
        return iter(preset_names())

    def __len__(self) -> int:
        return len(preset_names())

    def __repr__(self) -> str:
        return f"PRESETS({', '.join(self)})"


PRESETS: Mapping[str, Preset] = _Presets()
