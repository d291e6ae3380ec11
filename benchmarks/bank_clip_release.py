"""The CLIP region stores of a memory bank against CorrCLIPv2's builder (zdk258/CorrCLIP@103bc18,
CorrCLIPv2/memory_bank_builder/generate_clip_embeddings.py): region vectors on CPU, fp64 and fp32.

    python benchmarks/bank_clip_release.py --make-inputs REF       # random weights, 2 images, their region maps
    python benchmarks/bank_clip_release.py --release CorrCLIPv2 --dino-repo DINO --inputs REF --out REF/bank.md

--make-inputs writes, seeded: clip.pt (open_clip ViT-B-16-quickgelu, the `meta_b` store's architecture,
random), dino.pt (timm vit_base_patch8_224.dino, random: the keys of DINO's own ViT-B/8), images/
street.png (examples/street.png resized to 212 x 256: 448 x 541, 2 x 3 windows) and images/street_odd.png
(301 x 424: 448 x 631, 2 x 4 windows), masks/<stem>.npz (key instance_mask: random ids with 0).
--short-side S passes the builder's own --slide_short S (and short_side=S to glaclip): 336 gives 1 x 2
and 1 x 3 windows, for a CPU run in minutes rather than an hour (real-size DINO ViT-B/8 at 336 x 336 is
about 0.4 TFLOP a window).

The builder is IMPORTED from --release (never copied) and its `FeatureExtractor.extract_from_paths` (the
per-image function) runs in this process, then glaclip's `methods.region_clip.region_features` on the same
image file (`io.images.load_image`), region map and weights; the table gives, per dtype and image, the max
|difference| of the region vectors before the stores' fp16 cast, their max |1 - norm|, and how many rows
are bit-identical after casting both sides' vectors to fp16.

What the harness changes around the builder (its files stay untouched):
- stand-ins in sys.modules for what is not installed here: `mmcv.imrescale` (scale (2048, S), keep ratio:
  factor min(2048/long, S/short), sizes int(x * f + 0.5), cv2.resize INTER_LINEAR, as mmcv computes it;
  release_common.rescale_size), `mmcv.transforms.to_tensor` (torch.from_numpy), `mmengine.fileio`,
  `mmengine.logging` and `prettytable` (names only), mmseg's `IoUMetric` / `METRICS` (myutils.py imports
  them for a metric), openpyxl, and detectron2's `read_image` (unused) / `_apply_exif_orientation`
  (PIL.ImageOps.exif_transpose; the images here have no EXIF orientation);
- at import: sys.argv = the builder's command line (`--img <images> --clip meta_b`), the working directory
  restored after its `os.chdir`, and `torch.cuda.device_count()` answering 1 (its SAVE_INTERVAL divides by it);
- the builder module's `torch` is a proxy whose `hub.load('facebookresearch/dino:main', 'dino_vitb8')`
  gives DINO's own ViT-B/8 (from --dino-repo) with dino.pt (release_common.load_dino), `cuda.empty_cache`
  does nothing and `float16` is the run's dtype (its accumulation buffer is created as torch.float16);
- its `create_model` builds the vendored `ViT-B-16-quickgelu` with pretrained=None, precision fp32,
  loads clip.pt, and casts to the run's dtype (it asks for metaclip_fullcc weights in fp16; with
  `run_release(clip='dfn_b')`, for hf-hub:apple/DFN2B-CLIP-ViT-B-16, a QuickGELU ViT-B/16 too);
- FeatureExtractor('cpu'): its own __init__ (the hook on DINO's last qkv, the normalisation constants),
  under torch.set_default_dtype(run dtype) so that an fp64 run's mean/std are fp64;
- during both, Tensor.half / Module.half cast to the run's dtype (release_common.half_as) and, in fp64
  runs, Tensor.float too (its image is made `.float()` before normalisation): the whole builder computes
  in the run's dtype, and its final `.half()` leaves the vector uncast (the harness casts it to fp16).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from release_common import (
    DTYPES,
    ModuleProxy,
    cast_to,
    half_as,
    imported_release,
    load_dino,
    rescale_size,
    write_random_weights,
)

SHADOWED = ("open_clip", "myutils", "manifest", "pt_store", "generate_clip_embeddings", "mmcv", "mmengine", "mmseg",
            "openpyxl", "prettytable", "detectron2", "vision_transformer", "utils", "prompts")
CLIP_ARCH = "ViT-B-16-quickgelu"
CLIP_MODELS = {"meta_b": CLIP_ARCH, "dfn_b": "hf-hub:apple/DFN2B-CLIP-ViT-B-16"}  # --clip: the model it asks for
IMAGES = {"street": (212, 256), "street_odd": (301, 424)}  # h, w


# ---- inputs ------------------------------------------------------------------------------------------

def make_inputs(folder: str | Path, image: str | Path = "examples/street.png") -> None:
    import cv2
    import open_clip
    import timm
    from corrclip_release import _save_npz, random_masks

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    write_random_weights(folder, {"clip.pt": lambda: open_clip.create_model(CLIP_ARCH, pretrained=None),
                                  "dino.pt": lambda: timm.create_model("vit_base_patch8_224.dino", pretrained=False)})
    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {image}")
    for seed, (stem, (h, w)) in enumerate(IMAGES.items(), start=1):
        cv2.imwrite(str(folder / "images" / f"{stem}.png"), cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA))
        _save_npz(folder / "masks" / f"{stem}.npz", instance_mask=random_masks(h, w, seed=seed))
    print(f"wrote {folder}/clip.pt, dino.pt, images/*.png, masks/*.npz")


# ---- the builder -------------------------------------------------------------------------------------

def _stubs() -> dict[str, types.ModuleType]:
    import cv2
    from PIL import ImageOps

    def imrescale(img, scale, interpolation="bilinear", return_scale=False, backend="cv2"):
        if interpolation != "bilinear" or backend != "cv2" or return_scale:
            raise ValueError("harness: only the builder's imrescale call is provided")
        h, w = rescale_size(img.shape[0], img.shape[1], min(scale), max(scale))
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)

    class _Named:
        def __init__(self, *a, **k):
            raise RuntimeError("stub: not available in this harness")

    class _Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    def unavailable(*a, **k):
        raise RuntimeError("stub: not available in this harness")

    spec = {"mmcv": {"imrescale": imrescale}, "mmcv.transforms": {"to_tensor": lambda a: torch.from_numpy(a)},
            "mmengine": {}, "mmengine.fileio": {}, "mmengine.logging": {"MMLogger": _Named, "print_log": print},
            "prettytable": {"PrettyTable": _Named}, "openpyxl": {}, "mmseg": {}, "mmseg.evaluation": {},
            "mmseg.evaluation.metrics": {}, "mmseg.evaluation.metrics.iou_metric": {"IoUMetric": object},
            "mmseg.registry": {"METRICS": _Registry()}, "detectron2": {}, "detectron2.data": {},
            "detectron2.data.detection_utils": {"read_image": unavailable,
                                                "_apply_exif_orientation": ImageOps.exif_transpose}}
    mods = {}
    for name, attrs in spec.items():
        mods[name] = types.ModuleType(name)
        mods[name].__dict__.update(attrs)
    return mods


@contextlib.contextmanager
def builder(release_dir, dino_repo, images_dir: Path, short_side: int = 448, clip: str = "meta_b"):
    """The builder module imported (see the module docstring) with --clip `clip`; sys.argv, cwd and
    torch.cuda restored after."""
    argv, cwd, count = list(sys.argv), os.getcwd(), torch.cuda.device_count
    sys.argv = ["generate_clip_embeddings.py", "--img", str(images_dir), "--clip", clip,
                "--slide_short", str(short_side)]
    torch.cuda.device_count = lambda: 1
    try:
        with imported_release(Path(release_dir) / "memory_bank_builder", dino_repo, "generate_clip_embeddings",
                              SHADOWED, _stubs()) as (mod, vit):
            os.chdir(cwd)
            torch.cuda.device_count = count
            yield mod, vit
    finally:
        sys.argv, torch.cuda.device_count = argv, count
        os.chdir(cwd)


def run_release(release_dir, dino_repo, inputs: Path, dtype: str, short_side: int = 448, *, clip: str = "meta_b",
                weights: Path | None = None, images: dict[str, tuple[Path, Path]] | None = None
                ) -> dict[str, list[torch.Tensor]]:
    """{key: the builder's region vectors (its list, in the run's dtype, before the fp16 cast)}. clip: its
    --clip (meta_b, or dfn_b: the hub's DFN2B ViT-B/16 built as ViT-B-16-quickgelu), weights: that CLIP's
    file (default inputs/clip.pt), images: {key: (image, mask file)} (default IMAGES under inputs)."""
    tdtype = DTYPES[dtype]
    inputs = Path(inputs)
    weights = inputs / "clip.pt" if weights is None else weights
    if images is None:
        images = {s: (inputs / "images" / f"{s}.png", inputs / "masks" / f"{s}.npz") for s in IMAGES}
    with builder(release_dir, dino_repo, inputs / "images", short_side, clip) as (mod, vit):
        vendored = mod.create_model.__module__

        def create_model(model_type, pretrained=None, precision="fp32", **kwargs):
            if model_type != CLIP_MODELS[clip]:
                raise ValueError(f"harness: no weights for {model_type}")
            model = sys.modules[vendored].create_model(CLIP_ARCH, pretrained=None, precision="fp32")
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
            return model.to(tdtype)

        def hub_load(repo, entry, *a, **k):
            if (repo, entry) != ("facebookresearch/dino:main", "dino_vitb8"):
                raise ValueError(f"harness: only dino_vitb8 is provided, not {repo} {entry}")
            return load_dino(vit, inputs / "dino.pt", tdtype, patch_size=8)

        no_cuda = types.SimpleNamespace(empty_cache=lambda: None, is_available=lambda: False)
        saved = mod.create_model, mod.torch
        mod.create_model = create_model
        mod.torch = ModuleProxy(torch, hub=types.SimpleNamespace(load=hub_load), cuda=no_cuda, float16=tdtype)
        t_float, default = torch.Tensor.float, torch.get_default_dtype()
        out = {}
        try:
            with half_as(tdtype), torch.no_grad():
                if tdtype == torch.float64:
                    torch.Tensor.float = cast_to(tdtype)
                torch.set_default_dtype(tdtype)
                try:
                    extractor = mod.FeatureExtractor(device="cpu")
                finally:
                    torch.set_default_dtype(default)
                for key, (image, mask) in images.items():
                    out[key] = [f.to(tdtype) for f in extractor.extract_from_paths(str(image), str(mask))]
        finally:
            torch.Tensor.float = t_float
            mod.create_model, mod.torch = saved
    return out


def run_glaclip(inputs: Path, dtype: str, short_side: int = 448) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{stem: (ids, region vectors in the run's dtype)} from glaclip's region_features."""
    from glaclip.io.images import load_image
    from glaclip.methods.region_clip import region_features
    from glaclip.models.loading import load_clip, load_vfm

    inputs = Path(inputs)
    clip = load_clip(CLIP_ARCH, str(inputs / "clip.pt"), device="cpu", dtype=dtype)
    dino = load_vfm("vit_base_patch8_224.dino", str(inputs / "dino.pt"), device="cpu", dtype=dtype)
    out = {}
    for stem in IMAGES:
        ids = np.load(inputs / "masks" / f"{stem}.npz")["instance_mask"]
        rgb = load_image(inputs / "images" / f"{stem}.png")
        out[stem] = region_features(clip, dino, rgb, ids, DTYPES[dtype], short_side=short_side)
    return out


def compare(rel: list[torch.Tensor], ours: tuple[torch.Tensor, torch.Tensor], ids: np.ndarray) -> dict:
    want_ids = sorted(v for v in np.unique(ids).tolist() if v != 0)
    r = torch.stack(rel).double()
    o = ours[1].double()
    rh, oh = torch.stack(rel).to(torch.float16), ours[1].to(torch.float16)
    same_rows = int((rh == oh).all(dim=1).sum())
    differ = (rh != oh)
    return {"regions": len(want_ids), "ids_equal": ours[0].tolist() == want_ids, "max_abs": float((r - o).abs().max()),
            "norm": float((o.norm(dim=1) - 1).abs().max()), "fp16_rows_equal": same_rows,
            "fp16_elements_differ": int(differ.sum()),
            "fp16_max_ulp": int((rh.view(torch.int16).int() - oh.view(torch.int16).int()).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-inputs", metavar="DIR")
    ap.add_argument("--release", help="the release's CorrCLIPv2 folder (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--dino-repo", help="a checkout of facebookresearch/dino (vision_transformer.py)")
    ap.add_argument("--inputs", help="the folder --make-inputs wrote")
    ap.add_argument("--dtype", dest="dtypes", action="append", choices=sorted(DTYPES), help="repeatable (default both)")
    ap.add_argument("--short-side", type=int, default=448, help="the builder's --slide_short (default 448, its own)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    a = ap.parse_args()
    if a.make_inputs:
        make_inputs(a.make_inputs)
        return
    if not (a.release and a.dino_repo and a.inputs):
        raise SystemExit("missing --release, --dino-repo or --inputs")
    import time

    from common import machine_line, write_text

    lines = [f"Machine: {machine_line('cpu')}; random ViT-B-16-quickgelu + DINO ViT-B/8; short side "
             f"{a.short_side}, crop 336, stride 112.", "",
             "| dtype | image | regions | ids equal | max abs diff | max abs(1 - norm) | fp16 rows bit-identical | "
             "fp16 elements differing (max ulp) | release s (both images) | glaclip s (both) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype in a.dtypes or ["fp64", "fp32"]:
        t = time.perf_counter()
        rel = run_release(a.release, a.dino_repo, Path(a.inputs), dtype, a.short_side)
        t_rel = time.perf_counter() - t
        t = time.perf_counter()
        ours = run_glaclip(Path(a.inputs), dtype, a.short_side)
        t_ours = time.perf_counter() - t
        for stem in IMAGES:
            c = compare(rel[stem], ours[stem], np.load(Path(a.inputs) / "masks" / f"{stem}.npz")["instance_mask"])
            lines.append(f"| {dtype} | {stem} | {c['regions']} | {c['ids_equal']} | {c['max_abs']:.2e} | "
                         f"{c['norm']:.1e} | {c['fp16_rows_equal']}/{c['regions']} | {c['fp16_elements_differ']} "
                         f"({c['fp16_max_ulp']}) | {t_rel:.0f} | {t_ours:.0f} |")
            print(lines[-1], flush=True)
    if a.out:
        write_text(a.out, lines)


if __name__ == "__main__":
    main()
