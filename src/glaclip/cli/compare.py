"""`glaclip compare IMAGE --methods a,b,...`: several methods on one image, one figure (registered in `cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import GlaclipError
from .options import (
    AuxClipOpt,
    AuxClipWeightsOpt,
    BankClipOpt,
    BankClipWeightsOpt,
    BankNameOpt,
    BankOpt,
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    DtypeOpt,
    MasksOpt,
    ProtocolOpt,
    QuietOpt,
    RadioOpt,
    RadioRepoOpt,
    RadioWeightsOpt,
    SamOpt,
    SamWeightsOpt,
    SetOpt,
    VfmWeightsOpt,
    check_file_out,
    parse_overrides,
    radio_options,
)


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
    bank: BankOpt = None,
    bank_name: BankNameOpt = None,
    radio_repo: RadioRepoOpt = None,
    aux_clip: AuxClipOpt = None,
    aux_clip_weights: AuxClipWeightsOpt = None,
    radio: RadioOpt = None,
    radio_weights: RadioWeightsOpt = None,
    bank_clip: BankClipOpt = None,
    bank_clip_weights: BankClipWeightsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run several methods on one image with the same classes and weights: writes one figure (the
    image, each method's overlay with its time and peak memory, and a table of them) and prints the
    table. Each method is loaded, run and released in turn; --set applies to every method.
    --sam/--sam-weights name Trident's SAM when trident is among the methods (mask methods then take
    --masks FILE), else the SAM 2 model that makes the region masks."""
    if out.suffix.lower() != ".png":
        raise GlaclipError(f"--out {out}: the figure is a PNG; name it .png")
    if classes and class_file:
        raise GlaclipError("give either --classes or --class-file, not both")
    from ..config.protocols import resolve
    from ..runs.compare import compare_image, table_lines

    say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    models = {k: v for k, v in dict(clip=clip, clip_weights=clip_weights, vfm=vfm, vfm_weights=vfm_weights).items()
              if v is not None}
    names = [m.strip() for m in methods.split(",") if m.strip()]
    models.update(radio_options([resolve(n) for n in names], bank, bank_name, radio_repo, aux_clip, aux_clip_weights,
                                radio, radio_weights, bank_clip, bank_clip_weights, parse_overrides(settings)))
    runs = compare_image(image, names,
                         class_file or ("\n".join(classes) if classes else None), out, dataset=dataset,
                         protocol=protocol, overrides=parse_overrides(settings), masks=masks, sam=sam,
                         sam_weights=sam_weights, models=models, device=device, dtype=dtype, columns=columns,
                         progress=not quiet, say=say, check_out=check_file_out)
    typer.echo("\n".join(table_lines(runs)))
    say(f"glaclip: figure in {out}, numbers in {out.with_suffix('.json')}")
