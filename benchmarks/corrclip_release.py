"""CorrCLIP against its official release (zdk258/CorrCLIP@103bc18, folder CorrCLIPv1): parity and time on CPU.

    python benchmarks/corrclip_release.py --make-inputs REF                 # random weights + masks in REF/
    python benchmarks/corrclip_release.py --release CorrCLIPv1 --dino-repo DINO --image examples/street.png \\
        --masks REF/masks/street.npz --clip-weights REF/clip.pt --vfm-weights REF/dino.pt --dtype fp64 --compare
    ... --save-dir REF            # keep the release's output (REF/street_fp64.npz); --reuse: compare against it

The release is IMPORTED from --release (never copied): `CorrCLIPSegmentation.predict` runs in this
process on CPU; --dino-repo is a checkout of facebookresearch/dino (the release's torch.hub model
`dino_vitb8` = its `vision_transformer.vit_base(patch_size=8)`), loaded with a timm
`vit_base_patch8_224.dino` state dict (same keys). With --compare, glaclip's `method="corrclip"` runs
on the same image, masks and weights, and the script prints max|dprob|, label agreement, time and
peak memory of both; each side runs in its own process (so each peak is its own).

What the harness changes around the release (its files stay untouched; the pieces are in release_common.py,
shared with trident_release.py, and corrclip_shims.py):
- framework stubs in sys.modules, only for mmseg (BaseSegmentor as nn.Module, SegDataPreProcessor,
  MODELS.register_module as identity), mmengine (PixelData as a holder), transformers (the two
  classes it imports) and openpyxl; its other optional imports (EoMT, EntitySeg, SAM 2) fail as
  the release expects. CorrCLIPv1/ goes first on sys.path (its vendored open_clip shadows pip's);
  sys.path, sys.modules and the environment are restored afterwards.
- the object is built with `__new__` + nn.Module.__init__ and the attributes its __init__ sets:
  CLIP = vendored create_model(arch, pretrained=None, precision='fp32') + our checkpoint; DINO as
  above with the hook on blocks[-1].attn.qkv; text by its own generate_category_embeddings;
  instance_mask_path = the folder of the npz (found by the image's stem); no mask generator.
- fp16: the release hard-codes half precision (`.half()` in forward_feature, fp16 models). Here the
  models are fp32 (`.double()` for fp64) and, during predict only, Tensor.half and Module.half
  cast to the run's dtype.
- input: mmseg's pipeline, reproduced: cv2.imread (BGR) -> imrescale to scale (2048, S) (factor
  min(2048/long, S/short), sizes int(x*f + 0.5), cv2 INTER_LINEAR) -> CHW -> bgr_to_rgb,
  (x - mean) / std with the release's constants -> [1,3,H,W]. mmseg's preprocessor gives fp32; for
  fp64 runs the normalised input is fp64 (so the whole release computes in fp64, its window sums too).

Time = the predict call (the release's predict loads the npz itself; glaclip gets the array, its
text embeddings made first, as the release makes them at construction). Peak = the process's
resident set during predict (the peak is reset before it on Linux), models included, MiB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from corrclip_shims import release_imports
from release_common import (  # noqa: F401 (RELEASE_*, SegDataPreProcessor, rescale_size: re-exported for the tests)
    DTYPES,
    RELEASE_MEAN,
    RELEASE_STD,
    DataSample,
    SegDataPreProcessor,
    bare_release,
    cell,
    equal_percent,
    half_as,
    load_dino,
    max_dprob,
    measure,
    mmseg_inputs,
    record_outputs,
    rescale_size,
    write_random_weights,
)
from torch import nn


def build_release(seg_mod, vit_module, *, clip_arch: str, clip_ckpt, dino_ckpt, class_file, masks_dir,
                  prob_thd: float, logit_scale: float, crop: int, stride: int, dtype: torch.dtype):
    """A CorrCLIPSegmentation with the attributes its __init__ sets, from local weight files, on CPU."""
    obj = bare_release(seg_mod.CorrCLIPSegmentation, seg_mod, clip_arch=clip_arch, clip_ckpt=clip_ckpt, dtype=dtype)
    cpu = torch.device("cpu")
    obj.dino = load_dino(vit_module, dino_ckpt, dtype, patch_size=8)
    obj.dino_qkv_output = None
    obj.dino.blocks[-1].attn.qkv.register_forward_hook(obj._hook_fn_forward_qkv)
    obj.dummy = nn.Linear(1, 1)
    obj.generate_category_embeddings(str(class_file), cpu)
    obj.dtype = obj.query_features.dtype
    obj.logit_scale, obj.prob_thd = logit_scale, prob_thd
    obj.slide_stride, obj.slide_crop = stride, crop
    obj.instance_mask_path = str(masks_dir)
    obj.device = cpu
    obj.set_mask_generator(None)
    return obj


def _check_masks(image, masks_npz) -> Path:
    masks = Path(masks_npz)
    if masks.suffix != ".npz" or masks.stem != Path(image).stem:
        raise ValueError(f"the release finds masks as <image stem>.npz: {masks} does not match {image}")
    if not masks.is_file():
        raise ValueError(f"masks not found: {masks}")
    return masks


def run_release(release_dir, *, dino_repo, clip_arch: str = "ViT-B-16-quickgelu", clip_ckpt, dino_ckpt, image,
                masks_npz, class_file, short_side: int = 336, crop: int = 336, stride: int = 112,
                prob_thd: float = 0.2, logit_scale: float = 40.0, dtype: str = "fp32") -> dict:
    """The release's CorrCLIPSegmentation.predict on one image, in this process, on CPU, fp32 or fp64.

    Returns probs (C x H x W: seg_logit after its background merge, before map correction), labels
    (H x W: pred_sem_seg, after map correction), seconds (the predict call), peak_mb (resident set
    during predict), load_peak_mb (before it: imports and model loading) and labels_thd0 (its own
    decision and map correction, postprocess_result, run again on the same logits with prob_thd 0:
    random weights leave every pixel below a VOC threshold, so this is what tests the labels).
    """
    masks = _check_masks(image, masks_npz)
    tdtype = DTYPES[dtype]
    with release_imports(release_dir, dino_repo) as (seg_mod, vit_module), torch.no_grad():
        model = build_release(seg_mod, vit_module, clip_arch=clip_arch, clip_ckpt=clip_ckpt, dino_ckpt=dino_ckpt,
                              class_file=class_file, masks_dir=masks.parent, prob_thd=prob_thd,
                              logit_scale=logit_scale, crop=crop, stride=stride, dtype=tdtype)
        inputs, ori_shape = mmseg_inputs(image, short_side, tdtype)
        sample = DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
        logits = record_outputs(model, "forward_slide")  # its output kept for the prob_thd 0 decision below
        with half_as(tdtype), measure() as m:
            model.predict(inputs, [sample])
        model.prob_thd, again = 0.0, DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
        model.postprocess_result(logits[0], [again])
    return {"probs": sample.seg_logit.data.numpy(), "labels": sample.pred_sem_seg.data[0].numpy(),
            "labels_thd0": again.pred_sem_seg.data[0].numpy(), **m, "input_shape": tuple(inputs.shape[2:])}


def run_glaclip(*, clip_arch: str = "ViT-B-16-quickgelu", clip_ckpt, dino_ckpt, image, masks_npz, class_file,
                short_side: int = 336, crop: int = 336, stride: int = 112, prob_thd: float = 0.2,
                logit_scale: float = 40.0, dtype: str = "fp32") -> dict:
    """glaclip's method='corrclip' on the same inputs: the same keys as run_release."""
    from glaclip import Segmenter, read_class_file

    seg = Segmenter.from_pretrained(method="corrclip", clip=clip_arch, clip_weights=str(clip_ckpt),
                                    vfm="vit_base_patch8_224.dino", vfm_weights=str(dino_ckpt), device="cpu",
                                    dtype=dtype, short_side=short_side, crop=crop, stride=stride,
                                    prob_thd=prob_thd, logit_scale=logit_scale, text_cache=False, progress=False)
    classes = read_class_file(class_file)
    masks = np.load(masks_npz)["instance_mask"]
    seg.query_embeddings(classes)  # the release makes its text embeddings at construction
    with measure() as m:
        enc = seg.encode_image(str(image), masks=masks)  # = predict(image, ...), the encoding kept for prob_thd 0
        out = seg.predict(enc, classes)
    thd0 = seg.predict(enc, classes, prob_thd=0.0)
    return {"probs": _numpy(out.probs), "labels": _numpy(out.labels), "labels_thd0": _numpy(thd0.labels),
            **m}


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


# ---- inputs for a comparison -------------------------------------------------------------------------

def random_masks(h: int, w: int, seed: int, regions: int = 12, cover: bool = False) -> np.ndarray:
    """A random-looking id map: rectangles and ellipses with sparse ids in 1..399 painted in turn over 0
    (cover=True: over the smallest id instead, so the map has no 0 and that id acts as unsegmented)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 400), size=regions + 1, replace=False)).astype(np.int32)
    out = np.full((h, w), ids[0] if cover else 0, np.int32)
    yy, xx = np.mgrid[:h, :w]
    for v in rng.permutation(ids[1:]):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.08, 0.35) * h, rng.uniform(0.08, 0.35) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if rng.random() < 0.5 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        out[inside] = v
    return out


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def make_inputs(folder: str | Path, image: str | Path = "examples/street.png") -> None:
    """Seeded random weights (clip.pt: open_clip ViT-B-16-quickgelu, dino.pt: timm vit_base_patch8_224.dino),
    masks/<stem>.npz for the image (with 0) and for a resized copy images/<stem>_small.png (without 0)."""
    import cv2
    import open_clip
    import timm

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    write_random_weights(folder, {"clip.pt": lambda: open_clip.create_model("ViT-B-16-quickgelu", pretrained=None),
                                  "dino.pt": lambda: timm.create_model("vit_base_patch8_224.dino", pretrained=False)})
    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {image}")
    stem = Path(image).stem
    small = folder / "images" / f"{stem}_small.png"
    cv2.imwrite(str(small), cv2.resize(bgr, (317, 211), interpolation=cv2.INTER_AREA))
    _save_npz(folder / "masks" / f"{stem}.npz", instance_mask=random_masks(*bgr.shape[:2], seed=1))
    _save_npz(folder / "masks" / f"{stem}_small.npz", instance_mask=random_masks(211, 317, seed=2, cover=True))
    print(f"wrote {folder}/clip.pt, dino.pt, images/{small.name}, masks/{stem}.npz, masks/{small.stem}.npz")


# ---- the command -------------------------------------------------------------------------------------

def _release_output(a: argparse.Namespace, case: dict, saved: Path | None) -> dict:
    """The release's output for a case: read from `saved` (--reuse), or run (and saved there when given)."""
    from common import isolated

    if a.reuse and saved and saved.is_file():
        with np.load(saved) as z:
            print(f"the release's output read from {saved}", file=sys.stderr)
            return {k: z[k] if z[k].ndim else z[k].item() for k in z.files}
    rel = isolated(_release_case, a.release, a.dino_repo, case, timeout=a.timeout)
    if "error" not in rel and saved:
        _save_npz(saved, **{k: np.asarray(v) for k, v in rel.items()})
        print(f"saved the release's output to {saved}", file=sys.stderr)
    return rel


def _agreement(rel: dict, ours: dict) -> tuple[str, str, str]:
    """(max |dprob|, labels equal, labels equal at prob_thd 0 with the number of labels there)."""
    if "error" in rel or "error" in ours:
        return "-", "-", "-"
    if rel["probs"].shape != ours["probs"].shape:
        return f"shapes {rel['probs'].shape} vs {ours['probs'].shape}", "-", "-"
    thd0 = "-"
    if "labels_thd0" in rel:
        thd0 = f"{equal_percent(rel['labels_thd0'], ours['labels_thd0'])} ({len(np.unique(rel['labels_thd0']))} labels)"
    return max_dprob(rel, ours), equal_percent(rel["labels"], ours["labels"]), thd0


def compare_rows(a: argparse.Namespace) -> list[str]:
    """Every dtype x short side: the release (and glaclip with --compare), each in its own process."""
    from common import isolated, machine_line, write_text

    lines = [f"Machine: {machine_line('cpu')}; {a.image}; masks {a.masks}; classes {a.class_file}; crop {a.crop}, "
             f"stride {a.stride}, prob_thd {a.prob_thd}, logit_scale {a.logit_scale}.", "",
             "| dtype | short side | input | release s | release peak MiB | glaclip s | glaclip peak MiB | "
             "max abs dprob | labels equal | labels equal, prob_thd 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype in a.dtypes:
        for size in a.sizes:
            case = dict(clip_arch=a.clip, clip_ckpt=a.clip_weights, dino_ckpt=a.vfm_weights, image=a.image,
                        masks_npz=a.masks, class_file=a.class_file, short_side=size, crop=a.crop,
                        stride=a.stride, prob_thd=a.prob_thd, logit_scale=a.logit_scale, dtype=dtype)
            saved = Path(a.save_dir) / f"{Path(a.image).stem}_{dtype}{'' if size == 336 else f'_s{size}'}.npz" \
                if a.save_dir else None
            rel = _release_output(a, case, saved)
            ours = isolated(_glaclip_case, case, timeout=a.timeout) if a.compare else {"error": "-"}
            dprob, agree, thd0 = _agreement(rel, ours)
            shape = "x".join(map(str, rel.get("input_shape", ("?",))))
            mib = "{:.0f}"
            lines.append(f"| {dtype} | {size} | {shape} | {cell(rel, 'seconds')} | {cell(rel, 'peak_mb', mib)} | "
                         f"{cell(ours, 'seconds')} | {cell(ours, 'peak_mb', mib)} | {dprob} | {agree} | {thd0} |")
            print(lines[-1], flush=True)
    if a.out:
        write_text(a.out, lines)
    return lines


def _release_case(release: str, dino_repo: str, kwargs: dict) -> dict:
    return run_release(release, dino_repo=dino_repo, **kwargs)


def _glaclip_case(kwargs: dict) -> dict:
    return run_glaclip(**kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-inputs", metavar="DIR", help="write seeded random weights and masks to DIR, then stop")
    ap.add_argument("--release", help="the release's CorrCLIPv1 folder (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--dino-repo", help="a checkout of facebookresearch/dino (vision_transformer.py)")
    ap.add_argument("--image", default="examples/street.png")
    ap.add_argument("--masks", help="<image stem>.npz with key instance_mask (an id map at the image's size)")
    ap.add_argument("--clip", default="ViT-B-16-quickgelu")
    ap.add_argument("--clip-weights", help="open_clip state dict of --clip")
    ap.add_argument("--vfm-weights", help="timm vit_base_patch8_224.dino state dict")
    ap.add_argument("--class-file", help="default: the release's configs/cls_voc21.txt")
    ap.add_argument("--dtype", dest="dtypes", action="append", choices=sorted(DTYPES), help="repeatable (default fp32)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[336], help="short sides to resize to (default 336)")
    ap.add_argument("--crop", type=int, default=336)
    ap.add_argument("--stride", type=int, default=112)
    ap.add_argument("--prob-thd", type=float, default=0.2)
    ap.add_argument("--logit-scale", type=float, default=40.0)
    ap.add_argument("--compare", action="store_true", help="also run glaclip's corrclip and compare")
    ap.add_argument("--save-dir", help="save the release's probs and labels as <stem>_<dtype>[_s<size>].npz")
    ap.add_argument("--reuse", action="store_true", help="read the release's output from --save-dir where saved "
                    "(its time and peak as measured then) instead of running it again")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    ap.add_argument("--timeout", type=float, default=14400,
                    help="seconds per case (the release encodes its text at full context: slow on a busy CPU)")
    a = ap.parse_args()
    if a.make_inputs:
        make_inputs(a.make_inputs, a.image)
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("release", "dino_repo", "masks", "clip_weights", "vfm_weights")
               if not getattr(a, k)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}")
    a.dtypes = a.dtypes or ["fp32"]
    a.class_file = a.class_file or str(Path(a.release) / "configs" / "cls_voc21.txt")
    for path in (a.image, a.clip_weights, a.vfm_weights, a.class_file):
        if not Path(path).is_file():
            raise SystemExit(f"not found: {path}")
    try:
        _check_masks(a.image, a.masks)
        with release_imports(a.release, a.dino_repo):
            pass
    except (ValueError, ImportError) as exc:
        raise SystemExit(f"{type(exc).__name__}: {exc}") from None
    compare_rows(a)


if __name__ == "__main__":
    main()
