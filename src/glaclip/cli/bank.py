"""`glaclip bank build`: a memory bank from your own images (a sub-command group of `cli.app`)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from ..config.backbones import DEFAULT_AUX_CLIP, DEFAULT_BANK_CLIP, DEFAULT_RADIO, DEFAULT_VFM
from ..errors import GlaclipError
from .options import DeviceOpt, DtypeOpt, QuietOpt, RadioRepoOpt, _is_weights_file, check_writable, say

bank_app = typer.Typer(help="Memory banks of region features (CorrCLIPv2's files) from your own unlabeled images.",
                       no_args_is_help=True)


@bank_app.command("build")
def bank_build_cmd(
    images: List[Path] = typer.Argument(..., help="Folders of images (recursive; .png .jpg .jpeg .bmp .tiff, as "
                                        "the release's builder).", show_default=False),
    name: str = typer.Option(..., "--name", help="The bank's name in its file names ({name}_metaclip_b.pt ...); "
                             "segment with --bank-name NAME.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The bank folder (manifests/, clip_embeddings/, "
                             "vfm_embeddings/); segment with --bank OUT.", show_default=False),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of region masks, {stem}.npz (key "
                                         "instance_mask: an H x W id map, 0 = no region, or an N x H x W boolean "
                                         "stack) or 16-bit {stem}.png id maps, of the images' size. Images without "
                                         "one are not in the bank.", show_default=False),
    sam: Optional[str] = typer.Option(None, "--sam", help="Instead of --masks: generate them with SAM 2 "
                                      "(sam2-hiera-large, -base-plus, -small, -tiny; the release builder's settings) "
                                      "into OUT/masks/NAME/ (pip install 'glaclip\\[masks]').", show_default=False),
    sam_weights: Optional[str] = typer.Option(None, "--sam-weights", help="SAM 2's checkpoint file (default: the "
                                              "hub's, from the local cache); alone it implies the model it fits.",
                                              show_default=False),
    clip: str = typer.Option(DEFAULT_BANK_CLIP[0], "--clip", help="The main CLIP (open_clip name, hf-hub:ID or a "
                             "JSON config): the store {name}_metaclip_b.pt (ViT-L-14-quickgelu: _metaclip_l)."),
    clip_weights: Optional[str] = typer.Option(None, "--clip-weights", help="Its weights: a pretrained tag or a file "
                                               "(default: metaclip_fullcc, the release's MetaCLIP).",
                                               show_default=False),
    aux_clip: str = typer.Option(DEFAULT_AUX_CLIP[0], "--aux-clip", help="The auxiliary CLIP (DMCE's "
                                 "DFN): the store {name}_dfnclip_b.pt; 'none': no auxiliary store."),
    aux_clip_weights: Optional[str] = typer.Option(None, "--aux-clip-weights", help="Its weights file (default: "
                                                   "the hub's).", show_default=False),
    vfm: str = typer.Option(DEFAULT_RADIO, "--vfm", help="The RADIO model of the VFM store and index "
                            "({name}_radiov3.pt / .faiss)."),
    vfm_weights: Optional[str] = typer.Option(None, "--vfm-weights", help="RADIO's checkpoint file (default: RADIO's "
                                              "resource table through torch.hub's checkpoint cache).",
                                              show_default=False),
    radio_repo: RadioRepoOpt = None,
    dino: str = typer.Option(DEFAULT_VFM, "--dino", help="The DINO whose q + k correlations the CLIP "
                             "stores use (the release: DINO ViT-B/8)."),
    dino_weights: Optional[str] = typer.Option(None, "--dino-weights", help="Its weights file (default: the timm "
                                               "hub).", show_default=False),
    clip_key: Optional[str] = typer.Option(None, "--clip-key", help="The main store's key in its file name, for a "
                                           "CLIP the release has no name for.", show_default=False),
    aux_clip_key: Optional[str] = typer.Option(None, "--aux-clip-key", help="The auxiliary store's key.",
                                               show_default=False),
    vfm_key: Optional[str] = typer.Option(None, "--vfm-key", help="The VFM store's and index's key.",
                                          show_default=False),
    slide_short: int = typer.Option(448, "--slide-short", min=56, help="The CLIP stores' image short side (the "
                                    "release's --slide_short)."),
    slide_crop: int = typer.Option(336, "--slide-crop", min=56, help="The CLIP stores' window size (the release's "
                                   "--slide_crop; stride 112)."),
    train_size: int = typer.Option(1 << 18, "--train-size", min=256, help="Above this many regions the index trains "
                                   "on a seeded sample of this many (at least 39 per list)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove the bank's files and build it again (default: a "
                                   "rerun resumes and adds new images)."),
    processes: int = typer.Option(1, "--processes", min=1, help="Split each step's images across N processes on "
                                  "this machine (one GPU each where there are GPUs), as torchrun --nproc-per-node N; "
                                  "the files equal a one-process build."),
    workers: int = typer.Option(2, "--workers", min=1, help="Threads decoding images ahead."),
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Build a memory bank from a folder of images and their region masks (--masks, or --sam to generate
    them), in CorrCLIPv2's files.

    Writes OUT/manifests/NAME.manifest.txt and NAME.images.tsv, OUT/clip_embeddings/NAME_metaclip_b.pt
    and NAME_dfnclip_b.pt, OUT/vfm_embeddings/NAME_radiov3.pt and NAME_radiov3.faiss, and
    OUT/NAME.glaclip-bank.json (what built it). A rerun resumes an interrupted build and adds the
    images that are new; other models or settings are refused (--overwrite starts over). Then:
    glaclip segment IMAGES --method corrclip2 --bank OUT --bank-name NAME.
    """
    from ..config.backbones import bank_keys
    from ..runs.bank import build_bank, check_masks_or_sam, check_name, mask_files, scan, summary_lines
    from ..runs.collection import leave, shard_or_launch
    from ..runs.runlock import hold

    check_name(name)
    aux = None if aux_clip.lower() == "none" else aux_clip
    if aux is None and aux_clip_weights:
        raise GlaclipError("--aux-clip-weights given with --aux-clip none")
    bank_keys(clip, aux, vfm, {"main": clip_key, "aux": aux_clip_key, "vfm": vfm_key})  # checked before models load
    for option, path in (("--clip-weights", clip_weights), ("--aux-clip-weights", aux_clip_weights),
                         ("--vfm-weights", vfm_weights), ("--dino-weights", dino_weights)):
        if path and _is_weights_file(path) and not Path(path).expanduser().is_file():
            raise GlaclipError(f"{option} {path}: file not found")
    if masks is None and sam is None and sam_weights is None:
        raise GlaclipError("region masks: give --masks DIR (mask files) or --sam NAME --sam-weights FILE (SAM 2 "
                           "generates them)")
    check_masks_or_sam(masks, sam, sam_weights)
    every = scan(images)  # folders and duplicate stems checked before any model loads
    if masks is not None:
        mask_files(every, masks)
    check_writable(out)
    shard = shard_or_launch(processes, out)
    if shard is None:  # the ranks ran
        return
    from ..models.devices import rank_device

    with hold(out) if shard.rank == 0 else nullcontext():
        report = build_bank(images, name, out, masks, clip=clip, clip_weights=clip_weights, aux_clip=aux,
                            aux_clip_weights=aux_clip_weights, vfm=vfm, vfm_weights=vfm_weights, radio_repo=radio_repo,
                            dino=dino, dino_weights=dino_weights, clip_key=clip_key, aux_clip_key=aux_clip_key,
                            vfm_key=vfm_key, sam=sam, sam_weights=sam_weights, device=rank_device(shard, device),
                            dtype=dtype, overwrite=overwrite, shard=shard, train_size=train_size,
                            short_side=slide_short, crop=slide_crop, workers=workers, progress=not quiet, echo=say)
    if shard.rank == 0 and not quiet:
        for line in summary_lines(report):
            say(line)
        say(f"glaclip: segment with --bank {out} --bank-name {name}")
    leave(shard)
