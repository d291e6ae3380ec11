"""Command line: `glaclip segment`, `glaclip eval`, `glaclip compare`, `glaclip presets`, `glaclip datasets`,
`glaclip labelstudio`."""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from ..config.registry import DEFAULT_METHOD
from ..errors import GlaclipError
from .bank import bank_app
from .cache import cache_app
from .compare import compare_cmd
from .evaluate import evaluate_cmd
from .labelstudio import labelstudio_cmd
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

app = typer.Typer(
    help="Training-free open-vocabulary semantic segmentation with GLA-CLIP (frozen CLIP + frozen DINO).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def segment(
    images: List[str] = typer.Argument(..., help="Images: files, folders (recursive), glob patterns "
                                       "('photos/**/*.jpg'), @list.txt (one path per line), or "
                                       "NAME.encoding.safetensors files from --save-encoding.", show_default=False),
    classes: List[str] = typer.Option([], "--classes", "-c", help="Comma-separated class names; synonyms of one class "
                                      "joined by ';' (e.g. 'sky, car; vehicle, person'). Repeatable."),
    class_file: Optional[Path] = typer.Option(None, "--class-file", "-f", help="One class per line, synonyms "
                                              "separated by '; '."),
    out: Path = typer.Option(Path("glaclip_out"), "--out", "-o", help="Output folder (mirrors the inputs' folders)."),
    method: MethodOpt = DEFAULT_METHOD,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Use this benchmark's protocol row (and its "
                                          "class file when no classes are given), e.g. voc21."),
    protocol: ProtocolOpt = None,
    prob_thd: Optional[float] = typer.Option(None, "--prob-thd", help="Pixels whose top probability is below this get "
                                             "class 0 (list a background class first)."),
    settings: SetOpt = [],
    save_probs: bool = typer.Option(False, "--save-probs", help="Also write per-class probabilities (.npz, fp16)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Opacity of the colours in the overlay."),
    export: Optional[str] = typer.Option(None, "--export", help="coco: also write OUT/coco.json (one RLE mask per "
                                         "class present per image). fiftyone: also write OUT/fiftyone/, a FiftyOne "
                                         "ImageSegmentationDirectory (data/: the images, hard-linked or copied; "
                                         "labels/: the label maps) with classes.json (mask value -> class)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: recompute every image, then remove the "
                                   "earlier run's files not rewritten (default: a rerun resumes, skipping finished "
                                   "images)."),
    batch_images: int = typer.Option(0, "--batch-images", min=0, help="Consecutive images whose windows share one "
                                     "backbone forward (results do not change); 0: 4 on CUDA, 1 on CPU (measured no "
                                     "faster there)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Threads decoding images ahead."),
    processes: int = typer.Option(1, "--processes", min=1, help="Split the images across N processes on this "
                                  "machine (one GPU each where there are GPUs), as `torchrun --standalone "
                                  "--nproc-per-node N` does, but a failure ends in glaclip's one line per process "
                                  "rather than torchrun's report."),
    save_encoding: bool = typer.Option(False, "--save-encoding", help="Also write NAME.encoding.safetensors: segment "
                                       "it later with other classes (glaclip segment NAME.encoding.safetensors -c ...) "
                                       "without running the backbones again."),
    masks: MasksOpt = None,
    sam: SamOpt = None,
    sam_weights: SamWeightsOpt = None,
    save_masks: bool = typer.Option(False, "--save-masks", help="With --sam: also write NAME.masks.npz, the "
                                    "region masks each image was segmented with (key instance_mask)."),
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
    """Segment images, folders or whole collections into the given classes.

    Writes, per image, NAME_labels.png (palette PNG, value = class index), NAME_overlay.png (colours
    over the image, legend below), NAME.json (per-class pixel shares and every setting), and with
    --save-probs NAME_probs.npz, mirroring the input folders under --out; then summary.csv/.json (and
    coco.json with --export coco, fiftyone/ with --export fiftyone). A rerun resumes; --processes K
    (or torchrun --nproc-per-node K) shards the images. Images that cannot be read, or whose region
    masks are missing or unfit, are listed in the summary and the exit code is non-zero.
    """
    from ..config.protocols import effective
    from ..models.devices import rank_device
    from ..runs.batch import Options, segment_collection
    from ..runs.collection import barrier, collect, leave, shard_or_launch
    from ..runs.mask_source import check_encoding_masks, open_masks, route
    from ..runs.runlock import hold
    from ..steps.encoding import is_encoding_file

    overrides = parse_overrides(settings)
    if prob_thd is not None:
        overrides["prob_thd"] = prob_thd
    if classes and class_file:
        raise GlaclipError("give either --classes or --class-file, not both")
    # one class syntax: commas and newlines separate classes; no classes: the data set's packaged file
    given = class_file or ("\n".join(classes) if classes else None)
    preset, queries = effective(method, dataset, protocol, overrides, given)
    if queries is None:
        raise GlaclipError("no classes given; use --classes 'cat, dog; puppy, sky' or --class-file FILE")
    if export not in (None, "coco", "fiftyone"):
        raise GlaclipError(f"--export takes coco or fiftyone, not {export!r}")
    banked = radio_options([preset], bank, bank_name, radio_repo, aux_clip, aux_clip_weights, radio, radio_weights,
                           bank_clip, bank_clip_weights, overrides)
    items = collect(images)
    routed = route([preset], masks, sam, sam_weights, save_masks, one_image=len(items) == 1,
                   carried=all(is_encoding_file(it.path) for it in items), bank=bank is not None)
    own_sam, request = routed.sam, routed.request
    check_encoding_masks(request, items)
    check_writable(out)
    shard = shard_or_launch(processes, out)
    if shard is None:  # the ranks ran
        return
    with hold(out) if shard.rank == 0 else nullcontext():  # one run at a time per --out
        device = rank_device(shard, device)
        seg = build_segmenter(clip, clip_weights, vfm, vfm_weights, preset, device, dtype, quiet or shard.rank != 0,
                    compile=compile, text_cache=not no_cache, masks=request, **own_sam, **banked)
        source = open_masks(request, seg, dtype, echo=None if quiet or shard.rank else say)
        opts = Options(save_probs=save_probs, alpha=alpha, export=export, workers=workers, overwrite=overwrite,
                       batch_images=batch_images or (4 if seg.device.type == "cuda" else 1),
                       save_encoding=save_encoding, masks=source, save_masks=bool(request and request.save))
        result = segment_collection(seg, items, queries, out, opts, shard=shard, progress=not quiet,
                                    echo=None if quiet else say)
        if shard.rank == 0 and not quiet:
            say(f"glaclip: {len(items) - result.get('failed', 0)} of {len(items)} images segmented into {out}"
                 + (f"; summary in {out / 'summary.csv'}" if "summary" in result else ""))
        failed = result.get("failed", len(result["failures"]))
        first = result["failures"][0] if result["failures"] else "see summary.csv"
        others = " (others were written)" if failed < len(items) else ""
        msg = None if not failed else f"{failed} of {len(items)} images failed{others}: {first}" \
            if shard.rank == 0 else f"process {shard.rank}: {failed} of its images failed: {first}"
        if shard.distributed:  # every rank's line is out before any rank exits (the launcher stops the rest then)
            if msg:
                say(f"glaclip: error: {msg}")
            barrier(shard)
            leave(shard)
            if msg:
                raise typer.Exit(2)
        elif msg:
            raise GlaclipError(msg)


@app.command()
def datasets() -> None:
    """List the supported data sets, their expected layout and the class file each protocol uses."""
    from .listings import dataset_lines

    for line in dataset_lines():
        typer.echo(line)


@app.command()
def bench(
    sizes: List[str] = typer.Option(["336x448", "560x1120"], "--size", help="HEIGHTxWIDTH of a random test image "
                                    "(resized by the preset as any image). Repeatable."),
    method: MethodOpt = DEFAULT_METHOD,
    dense: bool = typer.Option(True, "--dense/--no-dense", help="Also run the global attention as one naive dense "
                               "N x N matrix."),
    clip: ClipOpt = None,
    clip_weights: str = typer.Option("random", "--clip-weights", help="Pretrained tag, local file, or 'random' "
                                     "(the default: speed does not depend on the values)."),
    vfm: VfmOpt = None,
    vfm_weights: str = typer.Option("random", "--vfm-weights", help="Local file or 'random' (the default)."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """How fast is this machine: time and peak memory of one image per size, beside naive dense attention.

    Text embeddings are made first and not timed. Maintainer benchmarks (sizes x methods, latency,
    throughput, charts) are the scripts in the repository's benchmarks/ folder.
    """
    from ..runs.bench import bench as run_bench
    from ..runs.bench import parse_size
    from ..segmenter import Segmenter

    for size in sizes:
        parse_size(size)
    seg = Segmenter.from_pretrained(clip=clip, clip_weights=clip_weights, vfm=vfm, vfm_weights=vfm_weights,
                                    method=method, device=device, dtype=dtype, progress=False)
    typer.echo(f"{seg.models_line()} method={method}")
    run_bench(seg, sizes, dense=dense, echo=typer.echo)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0 for all)."),
    port: int = typer.Option(7860, "--port", help="Port to serve on."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Randomly initialised models: try the page "
                                        "without any download (labels are meaningless)."),
    method: MethodOpt = DEFAULT_METHOD,
    sam: SamOpt = None,
    sam_weights: SamWeightsOpt = None,
    clip: ClipOpt = None,
    clip_weights: ClipWeightsOpt = None,
    vfm: VfmOpt = None,
    vfm_weights: VfmWeightsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    no_cache: NoCacheOpt = False,
) -> None:
    """Start the web demo (needs: pip install 'glaclip\\[demo]').

    Without weights and without network the page still opens and says which files to provide. Methods
    that read region masks take an uploaded mask file, or generate them with --sam NAME --sam-weights FILE.
    """
    from ..integrations.demo import import_gradio, launch

    import_gradio()
    if random_weights:
        clip_weights, vfm_weights = "random", "random"
    from ..config.protocols import effective
    from ..runs.mask_source import open_masks, route

    preset = effective(method)[0]
    routed = route([preset], sam=sam, sam_weights=sam_weights, optional=True)
    if routed.ignored:
        say(f"glaclip: warning: method {method} reads no region masks; --sam/--sam-weights are ignored")
    request = routed.request
    seg, problem, source = None, None, None
    try:
        seg = build_segmenter(clip, clip_weights, vfm, vfm_weights, preset, device, dtype, text_cache=not no_cache,
                    masks=request, **routed.sam)
        source = open_masks(request, seg, dtype, echo=say)
    except GlaclipError as exc:  # missing weights (SAM 2's too): the page opens and names the files
        seg, problem = None, str(exc)
        say(f"glaclip: {problem}")
    say(f"glaclip: demo on http://{host}:{port} (Ctrl+C to stop)")
    launch(seg, problem, host, port, method, sam=source)


@app.command()
def methods() -> None:
    """List the segmentation methods, the paper each follows, and the preset values each uses."""
    from .listings import method_lines

    for line in method_lines():
        typer.echo(line)


@app.command()
def presets(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Show this method's effective settings."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="... on this data set's protocol row."),
    protocol: ProtocolOpt = None,
    settings: SetOpt = [],
    as_json: bool = typer.Option(False, "--json", help="One JSON object (method, dataset, protocol, short_side, crop, "
                                 "stride, logit_scale, prob_thd, area_thd, pamr_steps, ..., class_file, queries)."),
) -> None:
    """List the named presets, or the effective settings of one method on one data set."""
    from ..config.protocols import PRESETS, effective

    if method is None and (dataset or protocol or settings or as_json):
        raise GlaclipError("--dataset, --protocol, --set and --json need --method")
    if method is None:
        for preset in PRESETS.values():
            typer.echo(preset.describe())
        return
    preset, classes = effective(method, dataset, protocol, parse_overrides(settings))
    queries = classes.queries if classes is not None else None
    if as_json:
        typer.echo(json.dumps(preset.settings(queries), indent=2))
    else:
        typer.echo(preset.describe() + (f" class_file={preset.class_file} queries={len(queries)}" if queries else ""))


app.add_typer(cache_app, name="cache")
app.add_typer(bank_app, name="bank")
app.command("compare")(compare_cmd)
app.command("eval")(evaluate_cmd)
app.command("labelstudio")(labelstudio_cmd)


@app.command()
def version() -> None:
    """Print the glaclip version."""
    from ..config import VERSION as __version__

    typer.echo(__version__)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    say(f"glaclip: warning: {' '.join(str(message).split())}")


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        app()
    except GlaclipError as exc:
        say(f"glaclip: error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        say("glaclip: interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("GLACLIP_DEBUG"):
            raise
        say(f"glaclip: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
             "(set GLACLIP_DEBUG=1 for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
