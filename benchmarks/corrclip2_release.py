"""CorrCLIPv2 against its official release (zdk258/CorrCLIP@103bc18, folder CorrCLIPv2): parity and time on CPU.

    python benchmarks/corrclip2_release.py --radio-repo RADIO --make-inputs REF     # weights, masks, bank in REF/
    python benchmarks/corrclip2_release.py --release CorrCLIPv2 --radio-repo RADIO --inputs REF --run OUT
    python benchmarks/corrclip2_release.py --radio-repo RADIO --inputs REF --compare OUT     # glaclip against OUT

RADIO's code needs einops (not a glaclip dependency: put it on PYTHONPATH). --make-inputs writes, seeded:
clip.pt (open_clip ViT-B-16-quickgelu: the MetaCLIP slot), dfn.pt (the same architecture, another seed:
the DFN2B-CLIP-ViT-B-16 slot of DMCE), radio.pth (a C-RADIOv3-L-shaped model as RADIO's hubconf loads a
file: {"args", "state_dict": base_model.*, input_conditioner.*}; see corrclip2_shims.radio_args), two
images (images/street.png and images/street_odd.png, 301 x 424: RADIO snaps 424 to 416, half to even),
masks/<stem>.npz (key instance_mask, 0 = unsegmented) and a bank in the release's layout,
bank/clip_embeddings/{name}_metaclip_b.pt and {name}_dfnclip_b.pt (torch-saved [N, 512] fp16 unit rows)
and bank/vfm_embeddings/{name}_radiov3.faiss (IndexIDMap2 over IndexIVFPQ(IndexFlatIP(1024), 1024,
nlist = max(1, int(8 * sqrt(N))), m 32, nbits 8), trained on all N vectors, ids 0..N-1 ascending), as the
release's builder writes it; its vectors are random unit vectors (no images behind them).

--run imports the release from --release (never copied) and runs its CorrCLIPSegmentation (its own
__init__ and predict) in this process on CPU, one process per dtype: per image, with the bank
(use_support_embedding True, DMCE on) and without (False: the v1 path on RADIO), VOC21's protocol
(configs/cls_voc21.txt, short side 336, prob_thd 0.2, logit_scale 40, crop 336 / stride 112,
num_support 20). The patches that take it off CUDA and fp16 are listed in corrclip2_shims.py.
OUT/<stem>_<dtype>_<bank|nobank>.npz keeps probs (C x H x W: seg_logit, before map correction), labels
(after it), labels_thd0 (the release's postprocess_result again with prob_thd 0: random weights leave
VOC's threshold unreached), radio_feats (RADIO's [1024, h/16, w/16] output as the segmentor gets it),
the retrieval's queries, ids and distances, and seconds / peak_mb (the predict call, resident set, MiB)
/ load_peak_mb; OUT/text_<dtype>.npz the release's text embeddings (main, aux) and OUT/summary.md the table
(with the bank's resident size: the two stores as the release holds them + the index).

--clip-arch ViT-L-14-quickgelu (with --make-inputs and --run) takes the release's large scale: clip_l.pt
(a random ViT-L-14-quickgelu) as the main CLIP and the bank's {name}_metaclip_l.pt (768-d rows); the DMCE
CLIP stays the ViT-B/16 one, as in the release. --compare reads the architecture from the saved cases.

--compare runs glaclip's `Segmenter.from_pretrained(method="corrclip2", ...)` (issue 27's API contract)
on the same inputs, each case in its own process, and prints max|dprob| and label agreement against
the saved release outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from release_common import DTYPES, DataSample, cell, equal_percent, half_as, max_dprob, measure, mmseg_inputs

BANK = "tiny"
BANK_SIZE = 512  # >= 256 (PQ's 256 centroids need as many training points); nlist = int(8 * sqrt(512)) = 181
VFM_DIM, CLIP_DIM = 1024, 512
ODD_SIZE = (301, 424)  # h, w of the second image
VOC21 = dict(short_side=336, prob_thd=0.2, logit_scale=40.0, crop=336, stride=112, num_support=20)
# the release's two CLIP scales (cfg/base_config.py): main CLIP -> (weights file in --inputs, bank store, width);
# the DMCE store stays DFN ViT-B/16's for both
CLIP_ARCHS = {"ViT-B-16-quickgelu": ("clip.pt", "metaclip_b", 512),
              "ViT-L-14-quickgelu": ("clip_l.pt", "metaclip_l", 768)}


# ---- inputs ------------------------------------------------------------------------------------------

def bank_nlist(n: int) -> int:
    """The release builder's number of IVF lists for n vectors."""
    return max(1, int(8 * math.sqrt(n)))


def write_bank(folder: Path, name: str = BANK, n: int = BANK_SIZE, seed: int = 0) -> None:
    """A bank in the release's on-disk layout (see the module docstring), random unit vectors."""
    import faiss

    if n < 256:
        raise ValueError(f"a bank needs at least 256 vectors (PQ training), not {n}")
    rng = np.random.default_rng(seed)
    (folder / "clip_embeddings").mkdir(parents=True, exist_ok=True)
    (folder / "vfm_embeddings").mkdir(parents=True, exist_ok=True)

    def unit(d: int) -> np.ndarray:
        x = rng.standard_normal((n, d))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for encoder in ("metaclip_b", "dfnclip_b"):
        rows = torch.from_numpy(unit(CLIP_DIM)).to(torch.float16)
        torch.save(rows, folder / "clip_embeddings" / f"{name}_{encoder}.pt")
    write_large_store(folder, name, n, seed)
    vfm = torch.from_numpy(unit(VFM_DIM)).to(torch.float16).float().numpy()  # the builder's fp16 store rows
    vfm /= np.linalg.norm(vfm, axis=1, keepdims=True) + 1e-12
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(VFM_DIM), VFM_DIM, bank_nlist(n), 32, 8)
    index.train(vfm)
    idmap = faiss.IndexIDMap2(index)
    idmap.add_with_ids(vfm, np.arange(n, dtype=np.int64))
    faiss.write_index(idmap, str(folder / "vfm_embeddings" / f"{name}_radiov3.faiss"))


def write_large_store(folder: Path, name: str = BANK, n: int = BANK_SIZE, seed: int = 0) -> None:
    """The L/14 main store ({name}_metaclip_l.pt: n x 768 fp16 unit rows) of a bank, from its own seed
    (the B/16 stores and the index are the same with or without it)."""
    path = folder / "clip_embeddings" / f"{name}_metaclip_l.pt"
    if path.exists():
        return
    x = np.random.default_rng(seed + 1000).standard_normal((n, CLIP_ARCHS["ViT-L-14-quickgelu"][2]))
    torch.save(torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).to(torch.float16), path)


def make_inputs(folder: str | Path, image: str | Path = "examples/street.png",
                radio_repo: str | Path | None = None, clip_arch: str = "ViT-B-16-quickgelu") -> None:
    """Everything --run and --compare read (see the module docstring); the RADIO file only with radio_repo."""
    import cv2
    import open_clip
    from corrclip2_shims import write_radio_checkpoint
    from corrclip_release import _save_npz, random_masks

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, arch, seed in (("clip.pt", "ViT-B-16-quickgelu", 0), ("dfn.pt", "ViT-B-16-quickgelu", 1),
                             (CLIP_ARCHS[clip_arch][0], clip_arch, 0)):
        if not (folder / name).exists():
            torch.manual_seed(seed)
            torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), folder / name)
    if radio_repo is not None and not (folder / "radio.pth").exists():
        write_radio_checkpoint(radio_repo, folder / "radio.pth")
    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {image}")
    stem = Path(image).stem
    cv2.imwrite(str(folder / "images" / f"{stem}.png"), bgr)
    cv2.imwrite(str(folder / "images" / f"{stem}_odd.png"),
                cv2.resize(bgr, ODD_SIZE[::-1], interpolation=cv2.INTER_AREA))
    _save_npz(folder / "masks" / f"{stem}.npz", instance_mask=random_masks(*bgr.shape[:2], seed=1))
    _save_npz(folder / "masks" / f"{stem}_odd.npz", instance_mask=random_masks(*ODD_SIZE, seed=2))
    if (folder / "bank" / "vfm_embeddings" / f"{BANK}_radiov3.faiss").exists():
        write_large_store(folder / "bank")
    else:
        write_bank(folder / "bank")
    print(f"wrote {folder}: clip.pt, dfn.pt{', radio.pth' if radio_repo else ''}, images/, masks/, bank/")


def input_images(inputs: Path) -> list[Path]:
    return sorted((inputs / "images").glob("*.png"))


# ---- the release -------------------------------------------------------------------------------------

def _bank_mb(model) -> float:
    """The bank as the release holds it: both stores (in RAM) + the index (its serialised size)."""
    import faiss

    stores = [s for s in (model.all_clip_feats, model.all_aux_clip_feats) if s is not None]
    size = sum(s.data.numel() * s.data.element_size() for s in stores)
    return (size + faiss.serialize_index(model.gpu_index).size) / 2**20


def release_segmentor(seg_mod, inputs: Path, class_file, dtype: torch.dtype, *, bank: bool, bank_name: str = BANK,
                      clip_arch: str = "ViT-B-16-quickgelu"):
    """The release's CorrCLIPSegmentation (its own __init__) with VOC21's settings on --inputs' masks, DMCE on,
    RADIO and its conditioner in dtype; build it inside corrclip2_shims.cpu_release."""
    from corrclip2_shims import radio_to

    model = seg_mod.CorrCLIPSegmentation(
        clip_type="metaclip_fullcc", model_type=clip_arch, name_path=str(class_file),
        aux_clip_type=None, aux_model_type="hf-hub:apple/DFN2B-CLIP-ViT-B-16", vfm_type="radiov3",
        device=torch.device("cpu"), dtype=dtype, prob_thd=VOC21["prob_thd"],
        logit_scale=VOC21["logit_scale"], slide_stride=VOC21["stride"], slide_crop=VOC21["crop"],
        instance_mask_path=str(inputs / "masks"), mask_generator=None, background_id=0,
        use_support_embedding=bank, use_aux_model=True, num_support=VOC21["num_support"],
        mb_region_set=bank_name, mb_main_encoder=CLIP_ARCHS[clip_arch][1], mb_aux_encoder="dfnclip_b")
    radio_to(model.vfm.model, dtype)
    return model


def run_release(release_dir, *, radio_repo, inputs, out, dtype: str = "fp32", class_file=None,
                clip_arch: str = "ViT-B-16-quickgelu") -> list[dict]:
    """The release on every image of inputs/images, with and without the bank, in dtype; saves each case
    to out/ and returns short summaries (no arrays)."""
    from corrclip2_shims import cpu_release, release_imports
    from release_common import record_outputs

    inputs, out, tdtype = Path(inputs), Path(out), DTYPES[dtype]
    out.mkdir(parents=True, exist_ok=True)
    class_file = Path(class_file or Path(release_dir) / "configs" / "cls_voc21.txt")
    (out / "classes.txt").write_bytes(class_file.read_bytes())  # what --compare reads
    rows = []
    with release_imports(release_dir) as seg_mod, torch.no_grad():
        clip_file = CLIP_ARCHS[clip_arch][0]
        with cpu_release(seg_mod, dtype=tdtype, clip_files={"main": inputs / clip_file, "aux": inputs / "dfn.pt"},
                         bank_dir=inputs / "bank", radio_repo=radio_repo, radio_ckpt=inputs / "radio.pth",
                         main_arch=clip_arch):
            with measure() as build:
                model = release_segmentor(seg_mod, inputs, class_file, tdtype, bank=True, clip_arch=clip_arch)
            _save(out / f"text_{dtype}.npz", main=model.query_features.numpy(),
                  aux=model.aux_query_features.numpy(), query_idx=model.query_idx.numpy())
            bank_mb = _bank_mb(model)
            for image in input_images(inputs):
                for bank in (True, False):
                    model.use_support_embedding = bank
                    rows.append(_release_case(model, image, out, dtype, bank, bank_mb if bank else 0.0,
                                              build["seconds"], record_outputs, clip_arch))
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _release_case(model, image: Path, out: Path, dtype: str, bank: bool, bank_mb: float, build_s: float,
                  record_outputs, clip_arch: str = "ViT-B-16-quickgelu") -> dict:
    tdtype = DTYPES[dtype]
    inputs, ori_shape = mmseg_inputs(image, VOC21["short_side"], tdtype)
    sample = DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
    vfm = model.vfm
    radio_in = vfm.model.get_nearest_supported_resolution(*ori_shape)
    feats = record_outputs(vfm, "extract_dense")
    searches = record_outputs(model, "_faiss_search")
    logits = record_outputs(model, "forward_slide")
    try:
        with half_as(tdtype), measure() as m:
            model.predict(inputs, [sample])
    finally:
        for name in ("extract_dense", "_faiss_search", "forward_slide"):
            delattr(vfm if name == "extract_dense" else model, name)
    prob_thd, model.prob_thd = model.prob_thd, 0.0
    again = DataSample(str(image), ori_shape, tuple(inputs.shape[2:]))
    model.postprocess_result(logits[0], [again])
    model.prob_thd = prob_thd
    case = f"{image.stem}_{dtype}_{'bank' if bank else 'nobank'}"
    arrays = {"probs": sample.seg_logit.data.numpy(), "labels": sample.pred_sem_seg.data[0].numpy(),
              "labels_thd0": again.pred_sem_seg.data[0].numpy(), "radio_feats": feats[0][0][0].numpy(),
              "input_shape": np.array(inputs.shape[2:]), "radio_shape": np.array(radio_in)}
    if searches:
        arrays.update(faiss_distances=searches[0][0], faiss_ids=searches[0][1])
    summary = {"case": case, "image": image.name, "dtype": dtype, "bank": bank, "seconds": m["seconds"],
               "peak_mb": m["peak_mb"], "load_peak_mb": m["load_peak_mb"], "bank_mb": bank_mb, "build_s": build_s,
               "input": "x".join(map(str, inputs.shape[2:])), "radio_input": "x".join(map(str, radio_in)),
               "regions": int(len(np.unique(np.load(Path(model.instance_mask_path) / f"{image.stem}.npz")
                                            ["instance_mask"]))),
               "n_labels_thd0": int(len(np.unique(arrays["labels_thd0"]))), "clip_arch": clip_arch}
    assert not set(arrays) & set(summary)
    _save(out / f"{case}.npz", **arrays, **{k: np.asarray(v) for k, v in summary.items()})
    return summary


def _save(path: Path, **arrays) -> None:
    from corrclip_release import _save_npz

    _save_npz(path, **arrays)


def _release_process(release: str, radio_repo: str, inputs: str, out: str, dtype: str, class_file: str,
                     clip_arch: str = "ViT-B-16-quickgelu") -> dict:
    return {"rows": run_release(release, radio_repo=radio_repo, inputs=inputs, out=out, dtype=dtype,
                                class_file=class_file, clip_arch=clip_arch)}


# ---- glaclip -----------------------------------------------------------------------------------------

def glaclip_segmenter(radio_repo, inputs: Path, dtype: str, bank: str | None, bank_name: str = BANK,
                      clip_arch: str = "ViT-B-16-quickgelu"):
    """glaclip's method='corrclip2' per issue 27's API contract, on --inputs' weights with VOC21's settings."""
    from glaclip import Segmenter

    return Segmenter.from_pretrained(
        method="corrclip2", clip=clip_arch, clip_weights=str(inputs / CLIP_ARCHS[clip_arch][0]),
        vfm="c-radio_v3-l", vfm_weights=str(inputs / "radio.pth"), radio_repo=str(radio_repo),
        aux_clip="ViT-B-16-quickgelu", aux_clip_weights=str(inputs / "dfn.pt"),
        bank=bank, bank_name=bank_name, device="cpu", dtype=dtype,
        short_side=VOC21["short_side"], crop=VOC21["crop"], stride=VOC21["stride"],
        logit_scale=VOC21["logit_scale"], prob_thd=VOC21["prob_thd"], num_support=VOC21["num_support"],
        text_cache=False, progress=False)


def run_glaclip(*, radio_repo, inputs, image: str, dtype: str, bank: bool, class_file,
                clip_arch: str = "ViT-B-16-quickgelu") -> dict:
    """glaclip's method='corrclip2' per issue 27's API contract on the same inputs."""
    from glaclip import read_class_file

    inputs = Path(inputs)
    seg = glaclip_segmenter(radio_repo, inputs, dtype, str(inputs / "bank") if bank else None, clip_arch=clip_arch)
    classes = read_class_file(class_file)
    seg.query_embeddings(classes)  # the release makes its text embeddings at construction, outside predict
    masks = np.load(inputs / "masks" / f"{Path(image).stem}.npz")["instance_mask"]
    from PIL import Image

    rgb = np.asarray(Image.open(image).convert("RGB"))
    with measure() as m:
        res = seg.predict(rgb, classes, masks=masks)
    out = {"probs": _numpy(res.probs), "labels": _numpy(res.labels), **m}
    try:
        out["labels_thd0"] = _numpy(seg.predict(rgb, classes, masks=masks, prob_thd=0.0).labels)
    except TypeError:  # no per-call prob_thd
        pass
    return out


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def glaclip_ready() -> str | None:
    """None when glaclip has method 'corrclip2', else one line saying what is missing."""
    try:
        import glaclip.methods  # noqa: F401 (registers the methods)
        from glaclip.config.registry import METHODS
    except ImportError as exc:
        return f"glaclip is not importable ({exc}): PYTHONPATH=src"
    if "corrclip2" not in METHODS:
        return "glaclip has no method 'corrclip2' yet (issue 27): nothing to compare"
    return None


def compare(a: argparse.Namespace) -> list[str]:
    from common import isolated, write_text

    out = Path(a.compare)
    saved = sorted(out.glob("*_fp*_*bank.npz"))
    if not saved:
        raise SystemExit(f"no release outputs in {out}: run --run {out} first")
    lines = ["| case | release s | glaclip s | release peak MiB | glaclip peak MiB | max abs dprob | labels equal | "
             "labels equal, prob_thd 0 |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for path in saved:
        with np.load(path) as z:
            rel = {k: z[k] if z[k].ndim else z[k].item() for k in z.files}
        if a.dtypes and rel["dtype"] not in a.dtypes:
            continue
        image = Path(a.inputs) / "images" / rel["image"]
        ours = isolated(_glaclip_case, dict(radio_repo=a.radio_repo, inputs=a.inputs, image=str(image),
                                            dtype=rel["dtype"], bank=bool(rel["bank"]), class_file=a.class_file,
                                            clip_arch=str(rel.get("clip_arch", "ViT-B-16-quickgelu"))),
                        timeout=a.timeout)
        if "error" in ours:
            dprob = agree = thd0 = "-"
        elif ours["probs"].shape != rel["probs"].shape:
            dprob, agree, thd0 = f"shapes {ours['probs'].shape} vs {rel['probs'].shape}", "-", "-"
        else:
            dprob, agree = max_dprob(rel, ours), equal_percent(rel["labels"], ours["labels"])
            thd0 = equal_percent(rel["labels_thd0"], ours["labels_thd0"]) if "labels_thd0" in ours else "-"
        mib = "{:.0f}"
        lines.append(f"| {rel['case']} | {cell(rel, 'seconds')} | {cell(ours, 'seconds')} | "
                     f"{cell(rel, 'peak_mb', mib)} | {cell(ours, 'peak_mb', mib)} | {dprob} | {agree} | {thd0} |")
        print(lines[-1], flush=True)
    if a.out:
        write_text(a.out, lines)
    return lines


def _glaclip_case(kwargs: dict) -> dict:
    return run_glaclip(**kwargs)


# ---- the command -------------------------------------------------------------------------------------

def saved_rows(out: Path) -> list[dict]:
    """The summaries of every case saved in out (earlier runs' too)."""
    keys = ("case", "image", "dtype", "bank", "seconds", "peak_mb", "load_peak_mb", "bank_mb", "build_s", "input",
            "radio_input", "regions", "n_labels_thd0", "clip_arch")
    rows = []
    for path in sorted(out.glob("*_fp*_*bank.npz")):
        with np.load(path) as z:
            rows.append({k: z[k].item() for k in keys if k in z.files})
    return rows


def summary_lines(rows: list[dict], classes: str = "") -> list[str]:
    from common import machine_line

    lines = [f"Machine: {machine_line('cpu')}. The release (CorrCLIPv2, CPU patches of corrclip2_shims.py), "
             f"VOC21 protocol settings, classes {classes or 'configs/cls_voc21.txt'}, random weights; bank: random "
             "unit vectors in the release's layout. 'peak' = resident set during predict (models included), "
             "'before' = the peak before it (models; later rows: the earlier cases').", "",
             "| case | input | RADIO input | regions | release s | peak MiB | before MiB | bank MiB | "
             "labels at prob_thd 0 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['input']} | {r['radio_input']} | {r['regions']} | {r['seconds']:.1f} | "
                     f"{r['peak_mb']:.0f} | {r['load_peak_mb']:.0f} | {r['bank_mb']:.2f} | {r['n_labels_thd0']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-inputs", metavar="DIR", help="write seeded random weights, images, masks and a bank")
    ap.add_argument("--run", metavar="OUT", help="run the release on --inputs, save its outputs in OUT")
    ap.add_argument("--compare", metavar="OUT", help="run glaclip's corrclip2 against the release outputs in OUT")
    ap.add_argument("--release", help="the release's CorrCLIPv2 folder (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--radio-repo", help="a checkout of NVlabs/RADIO (hubconf.py)")
    ap.add_argument("--inputs", help="the folder --make-inputs wrote")
    ap.add_argument("--image", default="examples/street.png", help="--make-inputs: the image (and its odd-sized copy)")
    ap.add_argument("--class-file", help="default: the release's configs/cls_voc21.txt")
    ap.add_argument("--clip-arch", default="ViT-B-16-quickgelu", choices=sorted(CLIP_ARCHS),
                    help="the main CLIP (the release's base or large scale); --compare reads it from the saved cases")
    ap.add_argument("--dtype", dest="dtypes", action="append", choices=sorted(DTYPES), help="repeatable (default both)")
    ap.add_argument("--out", help="--compare: also write the table to this Markdown file")
    ap.add_argument("--timeout", type=float, default=14400, help="seconds per process")
    a = ap.parse_args()
    if a.make_inputs:
        make_inputs(a.make_inputs, a.image, a.radio_repo, a.clip_arch)
        return
    if not (a.run or a.compare):
        raise SystemExit("one of --make-inputs DIR, --run OUT, --compare OUT")
    missing = [f"--{k.replace('_', '-')}" for k in ("radio_repo", "inputs") if not getattr(a, k)]
    if a.run and not a.release:
        missing.insert(0, "--release")
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}")
    inputs = Path(a.inputs)
    main = inputs / CLIP_ARCHS[a.clip_arch][0] if a.run else inputs / "clip.pt"
    for path in (main, inputs / "dfn.pt", inputs / "radio.pth", Path(a.radio_repo) / "hubconf.py",
                 inputs / "bank" / "vfm_embeddings" / f"{BANK}_radiov3.faiss"):
        if not path.is_file():
            raise SystemExit(f"not found: {path} (--make-inputs DIR --radio-repo RADIO writes the inputs)")
    if importlib.util.find_spec("einops") is None:
        raise SystemExit("RADIO's code needs einops: pip install einops into a folder on PYTHONPATH")
    if a.run:
        from common import isolated, write_text

        a.class_file = a.class_file or str(Path(a.release) / "configs" / "cls_voc21.txt")
        rows = []
        for dtype in a.dtypes or ["fp32", "fp64"]:
            res = isolated(_release_process, a.release, a.radio_repo, str(inputs), a.run, dtype, a.class_file,
                           a.clip_arch, timeout=a.timeout)
            if "error" in res:
                print(f"{dtype}: {res['error']}", file=sys.stderr)
                continue
            rows = saved_rows(Path(a.run))
            write_text(Path(a.run) / "summary.md", summary_lines(rows, a.class_file))
        print("\n".join(summary_lines(rows, a.class_file)))
    if a.compare:
        a.class_file = a.class_file or str(Path(a.compare) / "classes.txt")
        problem = glaclip_ready()
        if problem:
            raise SystemExit(problem)
        compare(a)


if __name__ == "__main__":
    main()
