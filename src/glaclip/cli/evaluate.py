"""`glaclip eval`: a benchmark or a folder of labelled images (registered in `cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config.registry import DEFAULT_METHOD
from .options import (
    AuxClipOpt,
    AuxClipWeightsOpt,
    BankClipOpt,
    BankClipWeightsOpt,
    BankNameOpt,
    BankOpt,
    ClipOpt,
    ClipWeightsOpt,
    CompileOpt,
    DeviceOpt,
    DtypeOpt,
    MasksOpt,
    MethodOpt,
    NoCacheOpt,
    ProtocolOpt,
    QuietOpt,
    RadioOpt,
    RadioRepoOpt,
    RadioWeightsOpt,
    SamOpt,
    SamWeightsOpt,
    SetOpt,
    VfmOpt,
    VfmWeightsOpt,
    build_segmenter,
    check_writable,
    parse_overrides,
    radio_options,
    say,
)


def evaluate_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="voc21, voc20, context60, context59, coco_object, "
                                "coco_stuff, cityscapes, ade20k, ade847, context459, or folder.", show_default=False),
    data_root: Path = typer.Option(..., "--data-root", help="The prepared data set folder (e.g. .../VOCdevkit/VOC2012);"
                                   " for 'folder': one with images/, labels/ and classes.txt.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default: runs/DATASET-METHOD)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a killed run in --out."),
    class_file: Optional[Path] = typer.Option(None, "--class-file", "-f", help="Replace the data set's class names."),
    label_suffix: str = typer.Option(".png", "--label-suffix", help="folder: label file = image stem + this."),
    reduce_zero_label: bool = typer.Option(False, "--reduce-zero-label", help="folder: label 0 is ignored, k -> k-1."),
    ignore_index: Optional[int] = typer.Option(None, "--ignore-index", help="Label value left out of the metrics "
                                               "(default: 65535 for ade847 and context459, else 255)."),
    method: MethodOpt = DEFAULT_METHOD,
    protocol: ProtocolOpt = None,
    settings: SetOpt = [],
    masks: MasksOpt = None,
    sam: SamOpt = None,
    sam_weights: SamWeightsOpt = None,
    clip: ClipOpt = None,
    clip_weights: ClipWeightsOpt = None,
    vfm: VfmOpt = None,
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
    compile: CompileOpt = False,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate on a benchmark or a folder of images + label maps: mIoU, Boundary IoU, aAcc, mAcc, BER.

    Writes OUT/results.json (per-class IoU/Boundary IoU/Acc, confusion matrix, settings) and OUT/results.md;
    progress is kept in OUT/progress so an interrupted run resumes where it stopped. Under torchrun
    --nproc-per-node K the images are split across K processes. --masks DIR: each image's mask file
    by its path under the data set's image folder, mirrored, else flat by stem.
    """
    from ..config.protocols import effective
    from ..models.devices import rank_device
    from ..runs.collection import shard_from_env
    from ..runs.datasets import open_dataset
    from ..runs.evaluate import evaluate, to_markdown
    from ..runs.mask_source import open_masks, route

    # the protocol's row for this data set, then --set; bad settings fail before the models load
    own = class_file or (Path(data_root) / "classes.txt" if dataset.lower() == "folder" else None)
    overrides = parse_overrides(settings)
    preset, _ = effective(method, dataset, protocol, overrides, own)
    banked = radio_options([preset], bank, bank_name, radio_repo, aux_clip, aux_clip_weights, radio, radio_weights,
                           bank_clip, bank_clip_weights, overrides)
    routed = route([preset], masks, sam, sam_weights, bank=bank is not None)
    own_sam, request = routed.sam, routed.request
    ds = open_dataset(dataset, data_root, class_file=class_file, label_suffix=label_suffix,
                      reduce_zero=reduce_zero_label, ignore_index=ignore_index, packaged=preset.class_file)
    shard = shard_from_env()
    device = rank_device(shard, device)
    out = out or Path("runs") / (f"{ds.spec.name}-{method}" + ("" if protocol in (None, "default") else f"-{protocol}"))
    check_writable(out)
    seg = build_segmenter(clip, clip_weights, vfm, vfm_weights, preset, device, dtype, quiet or shard.rank != 0,
                compile=compile, text_cache=not no_cache, masks=request, **own_sam, **banked)
    source = open_masks(request, seg, dtype, echo=None if quiet or shard.rank else say)
    result = evaluate(seg, ds, out, limit=limit, resume=resume, progress=not quiet, shard=shard, masks=source)
    if shard.rank == 0 and not quiet:
        typer.echo(to_markdown(result).split("\n\n| class")[0])
        say(f"glaclip: wrote {out / 'results.json'} and {out / 'results.md'}")
