"""Trident against its official release (YuHengsss/Trident@a93b346): parity and time on CPU.

    python benchmarks/trident_release.py --make-inputs REF          # seeded random weights in REF/
    python benchmarks/trident_release.py --release Trident --dino-repo DINO --skimage DEPS \\
        --image examples/street.png --clip-weights REF/clip.pt --vfm-weights REF/dino16.pt \\
        --sam-weights REF/sam_vit_b.pt --class-file REF/classes.txt --dtype fp64 --compare

The release is IMPORTED from --release (never copied): its `Trident.predict` runs in this process on
CPU; --dino-repo is a checkout of facebookresearch/dino (the release's torch.hub `dino_vitb16` =
its `vision_transformer.vit_base(patch_size=16)`), loaded with a timm `vit_base_patch16_224.dino`
state dict; --skimage a folder holding scikit-image (the release's seg_utils labels components with
it; `pip install --no-deps --target DEPS scikit-image lazy_loader`). With --compare, glaclip's
`method="trident"` runs on the same image and weights; both sides run in their own processes.

What the harness changes around the release (its files stay untouched):
- framework stubs for mmseg and mmengine (release_common); the release's folder first on sys.path
  (its vendored open_clip and segment_anything, which keeps the last block's attention and values);
- the object is built with `__new__` + nn.Module.__init__ and the attributes its __init__ sets:
  CLIP = vendored create_model('ViT-B-16-quickgelu', pretrained=None) + our checkpoint (the
  architecture of its 'ViT-B/16' + 'openai'), DINO as above, SAM = its vendored
  sam_model_registry['vit_b'] + our checkpoint, text embeddings by the loop of its __init__;
- fp16: the release hard-codes half precision; here the models are fp32 (fp64: `.double()`) and during
  predict Tensor.half / Module.half cast to the run's dtype, in fp64 also Tensor.float and the
  default dtype (its refinement casts to fp32); in fp64 SAM's random Fourier features of the prompt
  encoder stay fp32 on both sides (segment_anything casts prompt coordinates to fp32);
- the refinement's IoU threshold is --sam-iou-thresh on both sides (random weights fail 0.8).
Inputs as mmseg's pipeline (release_common.mmseg_inputs: OpenCV, scale (2048, S), the release's
constants). Probabilities are compared before the refinement (its predict with sam_refine off), labels
after it (its postprocess_result on the same logits with sam_refine on).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from release_common import (
    DTYPES,
    DataSample,
    bare_release,
    cell,
    equal_percent,
    load_dino,
    max_dprob,
    measure,
    mmseg_inputs,
    record_outputs,
    write_random_weights,
)
from trident_shims import precision, release_imports


def build_release(mod, vit_module, sam_pkg, *, clip_ckpt, dino_ckpt, sam_ckpt, class_file, short_side, crop, stride,
                  prob_thd, coarse_thresh, cos_fac, refine_neg_cos, iou, dtype):
    obj = bare_release(mod.Trident, mod, clip_arch="ViT-B-16-quickgelu", clip_ckpt=clip_ckpt, dtype=dtype)
    obj.clip_stride = 16
    obj.vfm_model = "dino"
    obj.vfm = load_dino(vit_module, dino_ckpt, dtype, patch_size=16)
    words, idx = mod.get_cls_idx(str(class_file))
    obj.num_queries, obj.num_classes = len(words), max(idx) + 1
    obj.query_idx = torch.tensor(idx, dtype=torch.int64)
    obj.dataset_type = "PascalVOCDataset"
    feats = []
    with torch.no_grad():
        for w in words:  # the loop of its __init__
            f = obj.clip.encode_text(obj.tokenizer([t(w) for t in mod.openai_imagenet_template]))
            f /= f.norm(dim=-1, keepdim=True)
            f = f.mean(dim=0)
            f /= f.norm()
            feats.append(f.unsqueeze(0))
    obj.query_features = torch.cat(feats)
    obj.dtype = obj.query_features.dtype
    obj.logit_scale, obj.prob_thd, obj.slide_stride, obj.slide_crop = 40, prob_thd, stride, crop
    obj.beta, obj.gamma, obj.debug, obj.cross_patch_fusion, obj.query_words = 1.2, 3.0, False, "ave", words
    sam = sam_pkg.sam_model_registry["vit_b"](checkpoint=None)
    sam.load_state_dict(torch.load(sam_ckpt, map_location="cpu", weights_only=True), strict=True)
    obj.sam = sam.eval().to(dtype)
    if dtype == torch.float64:
        obj.sam.prompt_encoder.pe_layer.float()
    obj.cos_fac, obj.refine_neg_cos, obj.sam_iou_thresh = cos_fac, refine_neg_cos, iou
    obj.sam_predictor = sam_pkg.SamPredictor(obj.sam)
    obj.pamr, obj.sam_heads = None, 12
    obj.sam_refine, obj.coarse_thresh, obj.minimal_area, obj.sam_mask_coff = False, coarse_thresh, 225, 0.005
    obj.kwargs = {}
    return obj


def run_release(release_dir, *, dino_repo, skimage, image, dtype="fp64", **kw) -> dict:
    tdtype = DTYPES[dtype]
    with release_imports(release_dir, dino_repo, skimage) as (mod, vit, sam_pkg), torch.no_grad():
        model = build_release(mod, vit, sam_pkg, dtype=tdtype, **kw)
        inputs, ori_shape = mmseg_inputs(image, kw["short_side"], tdtype)
        sample = DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
        logits = record_outputs(model, "get_trident_seg")
        with precision(tdtype):
            with measure() as m:
                model.predict(inputs, [sample])
            model.sam_refine = True
            again = DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
            start = time.perf_counter()
            model.postprocess_result(logits[0], [again])
            refine_s = time.perf_counter() - start
    return {"probs": sample.seg_logits.data.numpy(), "labels": sample.pred_sem_seg.data[0].numpy(),
            "labels_refined": again.pred_sem_seg.data[0].numpy(), "refine_s": refine_s, **m}


def run_glaclip(*, image, clip_ckpt, dino_ckpt, sam_ckpt, class_file, short_side, crop, stride, prob_thd,
                coarse_thresh, cos_fac, refine_neg_cos, iou, dtype="fp64") -> dict:
    from glaclip import Segmenter, read_class_file

    seg = Segmenter.from_pretrained(method="trident", clip="ViT-B-16-quickgelu", clip_weights=str(clip_ckpt),
                                    vfm="vit_base_patch16_224.dino", vfm_weights=str(dino_ckpt), sam="sam-vit-b",
                                    sam_weights=str(sam_ckpt), device="cpu", dtype=dtype, short_side=short_side,
                                    crop=crop, stride=stride, prob_thd=prob_thd, coarse_thresh=coarse_thresh,
                                    cos_fac=cos_fac, refine_neg_cos=refine_neg_cos, sam_iou_thresh=iou,
                                    sam_refine=False, text_cache=False, progress=False)
    classes = read_class_file(class_file)
    seg.query_embeddings(classes)
    with measure() as m:
        enc = seg.encode_image(str(image))
        out = seg.predict(enc, classes)
    refined = seg.with_preset(seg.preset.with_overrides(sam_refine=True))
    start = time.perf_counter()
    ref = refined.predict(enc, classes)
    refine_s = time.perf_counter() - start
    return {"probs": np.asarray(out.probs), "labels": out.labels, "labels_refined": ref.labels, "refine_s": refine_s,
            **m}


def make_inputs(folder: str | Path) -> None:
    """Seeded random weights: clip.pt (open_clip ViT-B-16-quickgelu), dino16.pt (timm
    vit_base_patch16_224.dino), sam_vit_b.pt (segment_anything vit_b; its zero-initialised relative
    positions given small random values), and a 4-line classes.txt."""
    import open_clip
    import timm
    from segment_anything import sam_model_registry

    def sam():
        m = sam_model_registry["vit_b"](checkpoint=None)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "rel_pos" in name:
                    p.normal_(0.0, 0.02)
        return m

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_random_weights(folder, {"clip.pt": lambda: open_clip.create_model("ViT-B-16-quickgelu", pretrained=None),
                                  "dino16.pt": lambda: timm.create_model("vit_base_patch16_224.dino", pretrained=False),
                                  "sam_vit_b.pt": sam})
    (folder / "classes.txt").write_text("sky; wall; tree\ncar\nperson\nroad\n")
    print(f"wrote {folder}/clip.pt, dino16.pt, sam_vit_b.pt, classes.txt")


def blob_probs(h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Synthetic class probabilities (3 classes: a flat background and two sets of Gaussian blobs, x 4
    through a softmax), so that the refinement has components of every kind to prompt with."""
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    b1 = np.exp(-((yy - 0.3) ** 2 + (xx - 0.3) ** 2) / 0.02)
    b2 = np.exp(-((yy - 0.5) ** 2 + (xx - 0.75) ** 2) / 0.01) + np.exp(-((yy - 0.15) ** 2 + (xx - 0.8) ** 2) / 0.004)
    logits = torch.tensor(np.stack([0.5 * np.ones((h, w)), 2.5 * b1, 2.5 * b2]), dtype=dtype)
    return (logits * 4).softmax(0)


def prompt_ious(predictor, labels, probs, coarse) -> list[float]:
    """SAM's predicted IoU of every prompt the refinement makes (to put a threshold between them)."""
    import torch.nn.functional as F

    from glaclip.methods.trident_refine import coarse_regions, mask_prompt

    h, w = labels.shape
    dt = predictor.features.dtype
    lab = F.interpolate(labels[None, None].double(), [h // 2, w // 2], mode="nearest")[0, 0].long()
    pd = F.interpolate(probs[None], [h // 2, w // 2], mode="bilinear", align_corners=False)[0]
    t, out = predictor.transform, []
    for k, (_, boxes, points) in coarse_regions(lab, pd, coarse, 225).items():
        m = mask_prompt(pd[k], (h, w), t, coarse, 0.005).to(dt)
        _, s, _ = predictor.predict_torch(t.apply_coords_torch(points, [h // 2, w // 2]).unsqueeze(1).to(dt),
                                          torch.ones(len(points), 1, dtype=dt),
                                          t.apply_boxes_torch(boxes, [h // 2, w // 2]).to(dt), m,
                                          multimask_output=False)
        out += s.flatten().tolist()
    return out


def refine_case(release, dino_repo, skimage, kw) -> dict:
    """The prompt refinement alone, the release's seg_utils.sam_refinement and glaclip's on the same
    SAM predictor (real-size SAM ViT-B, the image's embedding), synthetic probabilities (`blob_probs`)."""
    import cv2
    from segment_anything import sam_model_registry

    from glaclip.methods.trident_refine import sam_refinement
    from glaclip.models.sam import SamTower, sam_input

    dtype = DTYPES[kw["dtype"]]
    sam = sam_model_registry["vit_b"](checkpoint=None)
    sam.load_state_dict(torch.load(kw["sam_ckpt"], map_location="cpu", weights_only=True), strict=True)
    tower = SamTower(sam.eval().to(dtype), "sam-vit-b", kw["sam_ckpt"])
    rgb = cv2.cvtColor(cv2.imread(str(kw["image"])), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        st = tower.encode(sam_input(rgb), keep_qkv=False)
        predictor = tower.predictor()
        predictor.features, predictor.input_size, predictor.original_size = st.features, st.input_size, \
            st.original_size
        predictor.is_image_set = True
        probs = blob_probs(*rgb.shape[:2], dtype)
        labels = probs.argmax(0)
        scores = prompt_ious(predictor, labels, probs, kw["coarse_thresh"])
        out = {"predicted IoUs": [round(v, 4) for v in scores]}
        for name, iou in dict(kw["ious"], median=float(np.median(scores))).items():
            ours, s_ours = sam_refinement(labels, probs, predictor, kw["coarse_thresh"], 225, 0.005, iou)
            with release_imports(release, dino_repo, skimage), precision(dtype):
                utils = sys.modules["seg_utils.utils"]
                theirs, _, s_theirs, _ = utils.sam_refinement(str(kw["image"]), labels[None], probs, 3, predictor,
                                                              kw["coarse_thresh"], 225, 0.005, iou)
            out[name] = {"equal": float((ours == theirs[0]).double().mean()),
                         "changed": float((ours != labels).double().mean()),
                         "dscore": float((s_ours - s_theirs).abs().max()) if s_ours is not None and s_theirs is not None
                         else ("both none" if s_ours is None and s_theirs is None else "one none")}
    return out


def _row(dtype, rel, ours) -> str:
    if "error" in rel or "error" in ours:
        dprob = agree = agree_r = "-"
    else:
        dprob, agree = max_dprob(rel, ours), equal_percent(rel["labels"], ours["labels"])
        agree_r = (f"{equal_percent(rel['labels_refined'], ours['labels_refined'])} "
                   f"({(rel['labels_refined'] != rel['labels']).mean() * 100:.1f}% changed by refinement)")
    return (f"| {dtype} | {cell(rel, 'seconds')} + {cell(rel, 'refine_s')} | {cell(rel, 'peak_mb', '{:.0f}')} | "
            f"{cell(ours, 'seconds')} + {cell(ours, 'refine_s')} | {cell(ours, 'peak_mb', '{:.0f}')} | {dprob} | "
            f"{agree} | {agree_r} |")


def _release_case(release, dino_repo, skimage, kwargs):
    return run_release(release, dino_repo=dino_repo, skimage=skimage, **kwargs)


def _glaclip_case(kwargs):
    return run_glaclip(**kwargs)


def main() -> None:
    from common import isolated, machine_line, write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-inputs", metavar="DIR")
    ap.add_argument("--release", help="the release's folder (YuHengsss/Trident@a93b346)")
    ap.add_argument("--dino-repo", help="a checkout of facebookresearch/dino")
    ap.add_argument("--skimage", help="a folder holding scikit-image (if not importable already)")
    ap.add_argument("--image", default="examples/street.png")
    ap.add_argument("--clip-weights")
    ap.add_argument("--vfm-weights", help="timm vit_base_patch16_224.dino state dict")
    ap.add_argument("--sam-weights", help="segment_anything vit_b state dict")
    ap.add_argument("--class-file", help="default: the release's configs/cls_voc21.txt")
    ap.add_argument("--dtype", dest="dtypes", action="append", choices=sorted(DTYPES))
    ap.add_argument("--short-side", type=int, default=448)
    ap.add_argument("--crop", type=int, default=336)
    ap.add_argument("--stride", type=int, default=224)
    ap.add_argument("--prob-thd", type=float, default=0.2)
    ap.add_argument("--coarse-thresh", type=float, default=0.2)
    ap.add_argument("--cos-fac", type=float, default=1.2)
    ap.add_argument("--no-refine-neg-cos", action="store_true")
    ap.add_argument("--sam-iou-thresh", type=float, default=0.0, help="both sides (the release's 0.8 fails on "
                    "random weights)")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--refine-only", action="store_true", help="compare the prompt refinement alone on synthetic "
                    "probabilities (all prompts kept, all failed, and a threshold between the two)")
    ap.add_argument("--out")
    ap.add_argument("--timeout", type=float, default=14400)
    a = ap.parse_args()
    if a.make_inputs:
        make_inputs(a.make_inputs)
        return
    a.class_file = a.class_file or str(Path(a.release) / "configs" / "cls_voc21.txt")
    case = dict(image=a.image, clip_ckpt=a.clip_weights, dino_ckpt=a.vfm_weights, sam_ckpt=a.sam_weights,
                class_file=a.class_file, short_side=a.short_side, crop=a.crop, stride=a.stride, prob_thd=a.prob_thd,
                coarse_thresh=a.coarse_thresh, cos_fac=a.cos_fac, refine_neg_cos=not a.no_refine_neg_cos,
                iou=a.sam_iou_thresh)
    if a.refine_only:
        for dtype in a.dtypes or ["fp64"]:
            kw = dict(image=a.image, sam_ckpt=a.sam_weights, coarse_thresh=a.coarse_thresh, dtype=dtype,
                      ious={"all kept": -1e3, "all failed": 1e3})
            print(dtype, isolated(refine_case, a.release, a.dino_repo, a.skimage, kw, timeout=a.timeout), flush=True)
        return
    lines = [f"Machine: {machine_line('cpu')}; {a.image}; classes {a.class_file}; short side {a.short_side}, crop "
             f"{a.crop}, stride {a.stride}, prob_thd {a.prob_thd}, coarse_thresh {a.coarse_thresh}, cos_fac "
             f"{a.cos_fac}, sam_iou_thresh {a.sam_iou_thresh} (both sides).", "",
             "| dtype | release s (+ refinement) | release peak MiB | glaclip s (+ refinement) | glaclip peak MiB | "
             "max abs dprob (before refinement) | labels equal (before) | labels equal after refinement |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in a.dtypes or ["fp64"]:
        kw = dict(case, dtype=dtype)
        rel = isolated(_release_case, a.release, a.dino_repo, a.skimage, kw, timeout=a.timeout)
        ours = isolated(_glaclip_case, kw, timeout=a.timeout) if a.compare else {"error": "-"}
        lines.append(_row(dtype, rel, ours))
        print(lines[-1], flush=True)
    print("\n".join(lines[:4]), file=sys.stderr)
    if a.out:
        write_text(a.out, lines)


if __name__ == "__main__":
    main()
