"""`glaclip compare IMAGE --methods a,b,...`: several methods on one image, one figure (registered in `cli.app`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .cli_options import (
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    DtypeOpt,
    MasksOpt,
    ProtocolOpt,
    QuietOpt,
    SamOpt,
    SamWeightsOpt,
    SetOpt,
    VfmWeightsOpt,
    check_file_out,
    parse_overrides,
)
from .errors import GlaclipError


def compare_cmd(
    image: str = typer.Argument(..., help="One image file.", show_default=False),
    methods: str = typer.Option(..., "--methods", "-m", help="Comma-separated methods or named presets, e.g. "
                                "gla-proxyclip,proxyclip,corrclip (glaclip methods lists them).", show_default=False),
    classes: List[str] = typer.Option([], "--classes", "-c", help="Comma-separated class names; synonyms of one class "
                                      "joined by ';'. Repeatable."),
    class_file: Optional[Path] = typer.Option(None, "--class-file", "-f", help="One class per line, synonyms "
                                              "separated by '; '."),
    out: Path = typer.Option(Path("compare.png"), "--out", "-o", help="The figure (PNG); its numbers go to the same "
                             "name with .json."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Each method's protocol row for this data set "
                                          "(and its class file when no classes are given), e.g. voc21."),
    protocol: ProtocolOpt = None,
    settings: SetOpt = [],
    columns: int = typer.Option(3, "--columns", min=1, help="Panels per row of the figure."),
    masks: MasksOpt = None,
    sam: SamOpt = None,
    sam_weights: SamWeightsOpt = None,
    clip: ClipOpt = None,
    clip_weights: ClipWeightsOpt = None,
    vfm: Optional[str] = typer.Option(None, "--vfm", help="timm name of the vision foundation model for every method "
                                      "that uses one (default: each method's own)."),
    vfm_weights: VfmWeightsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run several methods on one image with the same classes and weights: writes one figure (the
    image, each method's overlay with its time and peak memory, and a table of them) and prints the
    table. Each method is loaded, run and released in turn; --set applies to every method.
    --sam/--sam-weights name Trident's SAM when trident is among the methods (mask methods then take
    --masks FILE), else the SAM 2 model that makes the region masks."""
    from .compare import compare, comparison_figure, table_lines
    from .devices import resolve_device
    from .files import atomic_paths
    from .images import load_image
    from .mask_source import MaskSource, mask_request, split_sam
    from .methods import METHODS
    from .protocols import effective
    from .segmenter import Segmenter

    say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names or len(set(names)) != len(names):
        raise GlaclipError(f"--methods needs one or more distinct methods, got {methods!r}")
    if classes and class_file:
        raise GlaclipError("give either --classes or --class-file, not both")
    if out.suffix.lower() != ".png":
        raise GlaclipError(f"--out {out}: the figure is a PNG; name it .png")
    overrides = parse_overrides(settings)
    given = class_file or ("\n".join(classes) if classes else None)
    entries = []
    for name in names:
        preset, queries = effective(name, dataset, protocol, overrides, given)
        if queries is None:
            raise GlaclipError("no classes given; use --classes 'cat, dog; puppy, sky' or --class-file FILE")
        entries.append((name, preset, queries))
    readers = [p for _, p, _ in entries if p.reads_masks]
    sam_users = [p for _, p, _ in entries if METHODS[p.method].needs_sam]
    # --sam/--sam-weights: the SAM of the methods that aggregate with one (Trident) when there is one
    # among them (mask methods then take --masks FILE), else the SAM 2 mask generator
    own_sam = split_sam(sam_users[0], sam, sam_weights)[0] if sam_users else {}
    gen_sam, gen_weights = (None, None) if sam_users else (sam, sam_weights)
    request = mask_request(masks, gen_sam, gen_weights, readers[0], one_image=True) if readers else None
    if not readers and (masks is not None or gen_sam is not None or gen_weights is not None):
        say("glaclip: warning: none of these methods reads region masks; --masks/--sam are ignored")
    rgb = load_image(image)
    check_file_out(out)
    region_map = None
    if request is not None and request.path:
        region_map = MaskSource(request).read(image, Path(image).name, rgb.shape[:2])
    models = {k: v for k, v in dict(clip=clip, clip_weights=clip_weights, vfm=vfm, vfm_weights=vfm_weights).items()
              if v is not None}
    dev = resolve_device(device)

    def load(preset):
        extra = own_sam if METHODS[preset.method].needs_sam else {}
        return Segmenter.from_pretrained(preset=preset, device=dev, dtype=dtype, progress=not quiet, **models,
                                         **extra)

    def generator():
        """SAM 2 on the methods' device (`compare` times its load)."""
        if request is None or request.sam is None:
            return None
        from .regions import load_sam2

        sam = None if request.fit else request.sam  # --sam-weights alone: the model the file fits
        source = MaskSource(request, load_sam2(sam, request.sam_weights, device=dev, dtype=dtype))
        say(f"glaclip: region masks {source.describe()}")
        return source

    import open_clip  # noqa: F401  (a library every method imports: not part of the first method's load)

    runs = compare(rgb, entries, load, masks=region_map, mask_source=generator, echo=say, device=dev)
    figure = comparison_figure(rgb, runs, columns=columns)
    numbers = {"image": str(image), "runs": [r.to_dict() for r in runs]}
    with atomic_paths([out, out.with_suffix(".json")]) as (tmp_png, tmp_json):
        figure.save(tmp_png, format="PNG")
        tmp_json.write_text(json.dumps(numbers, indent=1))
    typer.echo("\n".join(table_lines(runs)))
    say(f"glaclip: figure in {out}, numbers in {out.with_suffix('.json')}")
