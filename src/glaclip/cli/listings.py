"""The text of `glaclip methods` and `glaclip datasets`: what the registries hold, one line each."""

from __future__ import annotations

from typing import Iterator


def method_lines() -> Iterator[str]:
    """Each method with its paper, protocol and preset values; then the known CLIP, VFM, SAM (Trident) and
    SAM 2 (region masks) models."""
    from ..config.backbones import CLIP_BACKBONES, DEFAULT_SAM, DEFAULT_SAM2, SAM2_MODELS, SAM_MODELS, VFM_BACKBONES
    from ..config.protocols import PRESETS, protocol_name
    from ..config.registry import METHODS

    for m in METHODS.values():
        tower = " [VFM: RADIO, --vfm-weights FILE --radio-repo DIR]" if m.needs_radio else \
            "" if m.needs_vfm else " [CLIP only, no VFM]"
        yield f"{m.name:21s} {m.recipe}" + tower + (
            " [region masks: --masks or --sam]" if m.needs_masks else "")
        yield (f"{'':21s} protocol: {protocol_name(m.name)} (host: {protocol_name(m.name, 'host')}); "
               f"{PRESETS[m.name].describe()}")
    yield "\nCLIP backbones (--clip NAME --clip-weights TAG):"
    for title, (name, tag) in CLIP_BACKBONES.items():
        yield f"  {title:28s} --clip {name} --clip-weights {tag}"
    yield "VFM backbones (--vfm NAME):"
    for title, name in VFM_BACKBONES.items():
        yield f"  {title:28s} --vfm {name}"
    yield "SAM models for Trident (--sam NAME --sam-weights FILE):"
    for name, (_, filename) in SAM_MODELS.items():
        yield f"  {name:28s} {filename}" + (" (default)" if name == DEFAULT_SAM else "")
    yield "SAM 2 models that generate region masks (--sam NAME --sam-weights FILE; default: the hub's file):"
    for name, spec in SAM2_MODELS.items():
        yield f"  {name:28s} {spec.filename} from {spec.hub_id}" + (" (default)" if name == DEFAULT_SAM2 else "")


def dataset_lines() -> Iterator[str]:
    """Each data set's expected layout and the class file each protocol uses on it."""
    from ..config.datasets import IGNORE_INDEX, SPECS
    from ..config.protocols import DATASETS, PROTOCOLS, class_file

    for spec in SPECS.values():
        yield (f"{spec.name:12s} {spec.title}; root .../{spec.root_hint}: {spec.img_dir}/*{spec.img_suffix}, "
               f"{spec.ann_dir}/*{spec.ann_suffix}" + (f", {spec.split_file}" if spec.split_file else "")
               + (" (the label maps name the images)" if spec.from_labels else "")
               + (", reduce_zero_label" if spec.reduce_zero_label else "")
               + (f", ignore {spec.ignore_index}" if spec.ignore_index != IGNORE_INDEX else ""))
        if spec.name not in DATASETS:
            yield f"{'':12s} class file: {spec.classes}; no protocol rows: each protocol's plain-image settings"
            continue
        files: dict[str, list[str]] = {}
        for proto in PROTOCOLS:
            files.setdefault(class_file(proto, spec.name), []).append(proto)
        yield f"{'':12s} class files: " + "; ".join(f"{f} ({', '.join(p)})" for f, p in files.items())
    yield "folder       your own: ROOT/images/*, ROOT/labels/<stem>.png, ROOT/classes.txt"
