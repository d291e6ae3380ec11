"""The options the commands share (typer declarations), their early checks and the model loading every
command does, so `cli.py` (and the `cli_*` modules of single commands) hold only the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..config.registry import preset_names
from ..errors import GlaclipError

ClipOpt = Annotated[Optional[str], typer.Option(
    "--clip", help="open_clip model name, hf-hub:ID or a JSON config (default: the method's own: ViT-B-16-quickgelu; "
    "with MetaCLIP weights for corrclip).", show_default=False)]
ClipWeightsOpt = Annotated[Optional[str], typer.Option(
    "--clip-weights", help="Pretrained tag, local file, or 'random' (env GLACLIP_CLIP_WEIGHTS; default: the method's "
    "own: openai, metaclip_fullcc for corrclip).")]
VfmOpt = Annotated[Optional[str], typer.Option("--vfm", help="timm model name (with tag) or a JSON file (default: "
                                               "the method's, vit_base_patch8_224.dino for all but Trident's "
                                               "vit_base_patch16_224.dino).")]
VfmWeightsOpt = Annotated[Optional[str], typer.Option(
    "--vfm-weights", help="Local file or 'random' (env GLACLIP_VFM_WEIGHTS; default: the timm hub).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.")]


class _MethodOption(typer.models.OptionInfo):
    """`--method`, whose help lists the registry's methods and named presets when the help is built."""

    @property
    def help(self) -> str:
        return f"Method / preset (see `glaclip methods`): {', '.join(preset_names())}."

    @help.setter
    def help(self, value) -> None:  # set by OptionInfo.__init__; the listing above wins
        pass


def _method_option(*names: str) -> typer.models.OptionInfo:
    option = typer.Option(*names)
    option.__class__ = _MethodOption
    return option


MethodOpt = Annotated[str, _method_option("--method", "-m")]
SetOpt = Annotated[List[str], typer.Option("--set", help="Override any preset value, e.g. --set rho=0.6 "
                                           "--set short_side=560. Repeatable.")]
ProtocolOpt = Annotated[Optional[str], typer.Option(
    "--protocol", help="Whose settings: default (the method's own: hosts their authors', others GLA's), host (a GLA "
    "plug-in on its host's protocol), gla, proxyclip, sclip, clearclip, naclip.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the on-disk text-embedding cache "
                                          "(`glaclip cache info`).")]
MasksOpt = Annotated[Optional[Path], typer.Option(
    "--masks", help="Region masks (for corrclip, --set mask_vote=true, or any method with --bank): a folder of id "
    "maps, one per image, NAME.npz (key instance_mask) or 16-bit NAME.png, NAME the image's output name (x_png for "
    "x.png beside x.jpg) or stem, mirroring the input folders, else flat (as the release's region_masks/voc); for "
    "a single image also one file.", show_default=False)]
SamOpt = Annotated[Optional[str], typer.Option(
    "--sam", help="Generate the region masks with SAM 2 instead: sam2-hiera-large (the release's), -base-plus, -small "
    "or -tiny (pip install 'glaclip\\[masks]'). For --method trident: its SAM, sam-vit-b (the default), -l or -h.",
    show_default=False)]
SamWeightsOpt = Annotated[Optional[str], typer.Option(
    "--sam-weights", help="SAM 2 checkpoint file (e.g. sam2_hiera_large.pt) or 'random' (default: the hub's, from "
    "the local cache); alone it means --sam sam2-hiera-large. For --method trident: the SAM checkpoint "
    "(sam_vit_b_01ec64.pth) or 'random'.", show_default=False)]
BankOpt = Annotated[Optional[Path], typer.Option(
    "--bank", help="A memory bank in CorrCLIPv2's layout (the folder holding clip_embeddings/ and vfm_embeddings/, "
    "e.g. the published memory_bank/; pip install 'glaclip\\[bank]'): its support is fused with the logits of any "
    "method (corrclip2 as released; others: --radio-weights, region masks, --set bank_alpha). Default: no bank.",
    show_default=False)]
BankNameOpt = Annotated[Optional[str], typer.Option(
    "--bank-name", help="With --bank: the bank's name in its file names, {name}_metaclip_b.pt ... (default: coco).",
    show_default=False)]
RadioRepoOpt = Annotated[Optional[Path], typer.Option(
    "--radio-repo", help="A checkout of NVlabs/RADIO whose hubconf builds RADIO (env GLACLIP_RADIO_REPO; default: "
    "torch.hub's cache of NVlabs/RADIO): corrclip2's VFM (--vfm c-radio_v3-l --vfm-weights FILE), or the bank's "
    "queries of any other method with --bank.", show_default=False)]
RadioOpt = Annotated[Optional[str], typer.Option(
    "--radio", help="With --bank, for methods other than corrclip2 (whose RADIO is --vfm): the RADIO model whose "
    "features query the bank (default: c-radio_v3-l).", show_default=False)]
RadioWeightsOpt = Annotated[Optional[str], typer.Option(
    "--radio-weights", help="With --bank, for methods other than corrclip2 (--vfm-weights there): RADIO's checkpoint "
    "file (default: RADIO's resource table through torch.hub's checkpoint cache).", show_default=False)]
BankClipOpt = Annotated[Optional[str], typer.Option(
    "--bank-clip", help="With --bank, for methods other than corrclip2 (which uses its own CLIP's text): the CLIP "
    "whose text answers the bank's main store; its architecture names the store file (default: ViT-B-16-quickgelu, "
    "the published stores' MetaCLIP).", show_default=False)]
BankClipWeightsOpt = Annotated[Optional[str], typer.Option(
    "--bank-clip-weights", help="The --bank-clip's weights: a pretrained tag or a file (default: metaclip_fullcc).",
    show_default=False)]
AuxClipOpt = Annotated[Optional[str], typer.Option(
    "--aux-clip", help="With --bank: the auxiliary CLIP of DMCE, whose store is averaged in (the release's: "
    "hf-hub:apple/DFN2B-CLIP-ViT-B-16); default: none (no DMCE).", show_default=False)]
AuxClipWeightsOpt = Annotated[Optional[str], typer.Option(
    "--aux-clip-weights", help="With --bank: the auxiliary CLIP's weights file (alone: a QuickGELU ViT-B/16).",
    show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the backbone forwards (pays off over many "
                                          "images of one size, mostly on GPU).")]


def parse_overrides(settings: List[str]) -> dict:
    """--set KEY=VALUE pairs -> {key: value} (dashes in keys read as underscores)."""
    out = {}
    for s in settings:
        key, sep, value = s.partition("=")
        if not sep or not key.strip():
            raise GlaclipError(f"--set takes KEY=VALUE, got {s!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def check_writable(folder: Path, name: str | None = None) -> None:
    """Fail before any model loads when the output folder cannot be made or written (name: how
    messages call it; default: --out FOLDER)."""
    import tempfile

    name = name or f"--out {folder}"
    if folder.exists() and not folder.is_dir():
        raise GlaclipError(f"{name} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise GlaclipError(f"cannot write to {name}: {exc.strerror or exc}") from None


def check_file_out(out: Path) -> None:
    """`check_writable` for an output file and its .json sibling: their folder, and no folder in their place."""
    if out.is_dir():
        raise GlaclipError(f"--out {out} is a folder; name a file in it")
    if out.with_suffix(".json").is_dir():
        raise GlaclipError(f"--out {out}: {out.with_suffix('.json')}, where its numbers go, is a folder")
    check_writable(out.parent, f"the folder of --out {out} ({out.parent})")


def say(msg: str) -> None:
    typer.echo(msg, err=True)


def _announce(seg, quiet: bool) -> None:
    if not quiet:
        say(f"glaclip: {seg.describe()}")
        say(f"glaclip: {seg.models_line()}")


def build_segmenter(clip, clip_weights, vfm, vfm_weights, preset, device, dtype, quiet=False, masks=None, **kwargs):
    """The segmenter every command builds from its model options and an effective preset
    (`protocols.effective`); prints its settings unless quiet. masks: the command's checked
    `MaskRequest`, whose missing SAM 2 weights are named with the segmenter's."""
    from ..runs.mask_source import load_segmenter
    from ..segmenter import Segmenter

    seg = load_segmenter(masks, lambda: Segmenter.from_pretrained(
        clip=clip, clip_weights=clip_weights, vfm=vfm, vfm_weights=vfm_weights, preset=preset, device=device,
        dtype=dtype, progress=not quiet, **kwargs))
    _announce(seg, quiet)
    return seg


def _is_weights_file(value: str) -> bool:
    """A weights value that names a file rather than a pretrained tag (as `models.builder.looks_like_path`)."""
    import os

    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar"))


def radio_options(presets, bank: Path | None = None, bank_name: str | None = None, radio_repo: Path | None = None,
                  aux_clip: str | None = None, aux_clip_weights: str | None = None, radio: str | None = None,
                  radio_weights: str | None = None, bank_clip: str | None = None,
                  bank_clip_weights: str | None = None, overrides: dict | None = None) -> dict:
    """The RADIO and memory-bank options (CorrCLIPv2's, and bank support of any method) checked before any
    model loads -> from_pretrained's keyword arguments (only those given). presets: the run's presets;
    overrides: its --set values (bank support's settings need --bank for a method other than corrclip2)."""
    from ..config.presets import bank_only_settings
    from ..config.registry import METHODS

    given = {"bank": bank, "bank_name": bank_name, "radio_repo": radio_repo, "aux_clip": aux_clip,
             "aux_clip_weights": aux_clip_weights, "radio": radio, "radio_weights": radio_weights,
             "bank_clip": bank_clip, "bank_clip_weights": bank_clip_weights}
    given = {k: v for k, v in given.items() if v is not None}
    cc2 = any(METHODS[p.method].needs_radio for p in presets)  # CorrCLIPv2: RADIO is its VFM
    others = any(not METHODS[p.method].needs_radio for p in presets)

    def flags(keys) -> str:
        return ", ".join("--" + k.replace("_", "-") for k in keys)

    unused = sorted({k for p in presets for k in bank_only_settings(p.method, overrides or {})})
    if bank is None and unused and not cc2:
        raise GlaclipError(f"--set {', '.join(unused)}: settings of bank support; they need --bank DIR")
    if not given:
        return {}
    own = [k for k in ("radio", "radio_weights", "bank_clip", "bank_clip_weights") if k in given]
    if own and not others:
        names = "/".join(sorted({p.method for p in presets}))
        raise GlaclipError(f"{flags(own)}: not for --method {names}, whose RADIO is --vfm/--vfm-weights and whose "
                           "bank answers its own CLIP's text")
    if bank is None and not cc2:
        raise GlaclipError(f"{flags(given)}: options of bank support; they need --bank DIR")
    if bank is not None and not Path(bank).expanduser().is_dir():
        raise GlaclipError(f"--bank {bank}: folder not found (the folder holding clip_embeddings/ and vfm_embeddings/)")
    if radio_repo is not None and not (Path(radio_repo).expanduser() / "hubconf.py").is_file():
        raise GlaclipError(f"--radio-repo {radio_repo}: no hubconf.py there (git clone https://github.com/NVlabs/RADIO)")
    if aux_clip_weights not in (None, "random") and not Path(aux_clip_weights).expanduser().is_file():
        raise GlaclipError(f"--aux-clip-weights {aux_clip_weights}: file not found")
    if radio_weights is not None and not Path(radio_weights).expanduser().is_file():
        raise GlaclipError(f"--radio-weights {radio_weights}: file not found (a RADIO checkpoint such as "
                           "c-radio_v3-l.pth)")
    if bank_clip_weights is not None and _is_weights_file(bank_clip_weights) and \
            not Path(bank_clip_weights).expanduser().is_file():
        raise GlaclipError(f"--bank-clip-weights {bank_clip_weights}: file not found")
    if bank is None and ("aux_clip" in given or "aux_clip_weights" in given or "bank_name" in given):
        raise GlaclipError("--aux-clip, --aux-clip-weights and --bank-name need --bank")
    if bank is None and own:
        raise GlaclipError(f"{flags(own)}: options of bank support; they need --bank DIR")
    return {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
