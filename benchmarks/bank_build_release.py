"""`glaclip bank build` end to end (runs/bank.build) against CorrCLIPv2's own memory-bank builder
(zdk258/CorrCLIP@103bc18, CorrCLIPv2/memory_bank_builder/, never copied), on the CPU, in two batches:

    PYTHONPATH=src:/path/to/einops python benchmarks/bank_build_release.py --release CorrCLIPv2 \\
        --dino-repo DINO --radio-repo RADIO --work DIR [--short-side 336] [--out benchmarks/bank-build-release-cpu.md]

DIR gets, seeded (weight files kept across runs): clip.pt and aux.pt (open_clip ViT-B-16-quickgelu, seeds 0
and 1: the main MetaCLIP store's and the auxiliary DFN2B store's architecture), dino.pt (timm
vit_base_patch8_224.dino: the keys of DINO's own ViT-B/8), radio.pth (a random C-RADIOv3-L-shaped checkpoint,
corrclip2_shims.write_radio_checkpoint); images/ (crops of examples/street.png: IMAGES) and
masks/{stem}.npz (key instance_mask): id maps in uint8, uint16, int32 and int64, an N x H x W boolean
stack with overlapping slices (one wholly under a later one), an all-zero map, an image without a mask, one
image in a subfolder, one JPEG with EXIF orientation 6 (masks at its shown size). Batch 1 is copied into
DIR/scan/ and both builders run; then batch 2 is added and both run again (manifest appended, stores and
index extended).

The release's side, in this process (the harnesses it reuses list their patches): the manifest, the VFM
store and the FAISS index by bank_release.release_run (manifest.build_or_extend, RegionFeatureExtractor +
PtSlotWriter, update_faiss_cache); each CLIP store by bank_clip_release.run_release (the builder's own
FeatureExtractor.extract_from_paths with --clip meta_b / dfn_b and --slide_short S) on the images whose
slots are not done, rows written at the manifest ids into the release's PtSlotWriter and finalized, as its
main() does (its spawn of one process per GPU replaced by this loop). Both sides compute in float32 (the
release's .half() patched to float32); the release's PtSlotWriter casts its rows to float16.
glaclip's side: runs.bank.build(DIR/scan, ..., device='cpu', dtype='fp32', short_side=S) with the same files.

Compared after each batch: the two manifest files byte for byte; per store (main, aux, vfm) the row count,
rows bit-identical, elements differing, max |diff| and the largest difference in float16 ulps; the index
(bank_release.compare_index: type, nlist, m, nbits, metric, id map, serialized bytes, top-20 ids of 64
store rows as queries at nprobe = nlist), and the release's update_faiss_cache run on a copy of glaclip's
VFM store (incrementally too) against glaclip's index: the recipe alone, on the same store bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bank_clip_release import run_release
from bank_release import NAME, compare_index, grid_ids, release_builder, release_run, scan, stage

ROOT = Path(__file__).resolve().parents[1]
ARCH, DINO, RADIO = "ViT-B-16-quickgelu", "vit_base_patch8_224.dino", "c-radio_v3-l"
KEYS = {"main": "metaclip_b", "aux": "dfnclip_b", "vfm": "radiov3"}
CLIPS = {"main": ("meta_b", "clip.pt"), "aux": ("dfn_b", "aux.pt")}  # role: (the builder's --clip, weights)
IMAGES = {  # file under images/: (h, w of the file, mask, batch); masks at the shown size
    "street.png": (200, 260, ("grid", 12, 13, np.uint16, 3), 1),
    "sub/odd.png": (211, 303, ("blobs", 40, np.int64), 1),
    "stack.png": (240, 180, ("stack", 10), 1),
    "u8.png": (190, 250, ("grid", 10, 10, np.uint8, 1), 1),
    "empty.png": (64, 64, ("zero",), 1),
    "sub/nomask.png": (96, 96, None, 1),
    "rot.jpg": (180, 240, ("blobs", 20, np.int32), 2),  # EXIF orientation 6: shown 240 x 180
    "a0.png": (170, 230, ("grid", 7, 9, np.int32, 1), 2),
}


# ---- inputs ------------------------------------------------------------------------------------------

def make_inputs(work: Path, radio_repo: Path) -> list[list[str]]:
    """The weights (kept if there), work/images and work/masks (made anew); returns each batch's stems."""
    import cv2
    import open_clip
    import timm
    from corrclip2_shims import write_radio_checkpoint
    from corrclip_release import _save_npz, random_masks
    from PIL import Image
    from release_common import write_random_weights

    def clip_seeded(seed):
        torch.manual_seed(seed)
        return open_clip.create_model(ARCH, pretrained=None)

    work.mkdir(parents=True, exist_ok=True)
    write_random_weights(work, {"clip.pt": lambda: clip_seeded(0), "aux.pt": lambda: clip_seeded(1),
                                "dino.pt": lambda: timm.create_model(DINO, pretrained=False)})
    if not (work / "radio.pth").exists():
        write_radio_checkpoint(radio_repo, work / "radio.pth")
    inputs = work  # bank_clip_release.run_release's layout: clip.pt, dino.pt, images/, masks/
    for sub in ("images", "masks"):
        shutil.rmtree(inputs / sub, ignore_errors=True)
    (inputs / "images" / "sub").mkdir(parents=True)
    (inputs / "masks").mkdir()
    street = cv2.cvtColor(cv2.imread(str(ROOT / "examples" / "street.png")), cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    batches: list[list[str]] = [[], []]
    for i, (file, (h, w, mask, batch)) in enumerate(IMAGES.items()):
        y, x = rng.integers(0, 80), rng.integers(0, 160)  # a crop of the photo, resized to h x w
        rgb = cv2.resize(street[y:y + 240, x:x + 320], (w, h), interpolation=cv2.INTER_AREA)
        img, shown = Image.fromarray(rgb), (h, w)
        if file.endswith(".jpg"):
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(inputs / "images" / file, exif=exif, quality=92)
            shown = (w, h)
        else:
            img.save(inputs / "images" / file)
        stem = Path(file).stem
        if mask is None:
            pass
        elif mask[0] == "grid":
            _save_npz(inputs / "masks" / f"{stem}.npz", instance_mask=grid_ids(*shown, *mask[1:]))
        elif mask[0] == "blobs":
            m = random_masks(*shown, seed=10 + i, regions=mask[1]).astype(mask[2])
            _save_npz(inputs / "masks" / f"{stem}.npz", instance_mask=m)
        elif mask[0] == "stack":  # overlapping rectangles; slice 3 lies wholly under slice 7
            yy, xx = np.mgrid[:shown[0], :shown[1]]
            boxes = [(rng.uniform(0, shown[0]), rng.uniform(0, shown[1]), rng.uniform(0.1, 0.35) * shown[0],
                      rng.uniform(0.1, 0.35) * shown[1]) for _ in range(mask[1])]
            boxes[3] = (*boxes[7][:2], boxes[7][2] / 2, boxes[7][3] / 2)
            m = np.stack([(abs(yy - cy) <= ry) & (abs(xx - cx) <= rx) for cy, cx, ry, rx in boxes])
            _save_npz(inputs / "masks" / f"{stem}.npz", instance_mask=m)
        else:
            _save_npz(inputs / "masks" / f"{stem}.npz", instance_mask=np.zeros(shown, np.int32))
        batches[batch - 1].append(str(Path(file).with_suffix("")))
    return batches


# ---- the two builders --------------------------------------------------------------------------------

def release_batch(mod, a, work: Path, bank: Path, scan_dir: Path, mask_dir: Path, fp32: dict) -> dict:
    """The release's builder over scan_dir: manifest + VFM store + index, then the two CLIP stores. fp32
    gets {role: {stem: the release's float32 rows before its store's float16 cast}} of the images computed."""
    t = time.perf_counter()
    cls = mod.RegionFeatureExtractor
    extract = cls.extract_from_paths  # watched, not changed: its float32 rows kept
    cls.extract_from_paths = lambda self, image, mask: fp32["vfm"].setdefault(Path(image).stem,
                                                                              extract(self, image, mask))
    try:
        out = release_run(mod, a.release, bank / "manifests", scan_dir, mask_dir, bank / "vfm_embeddings" /
                          f"{NAME}_{KEYS['vfm']}", a.radio_repo, str(work / "radio.pth"))
    finally:
        cls.extract_from_paths = extract
    out["seconds"] = {"manifest+vfm+index": time.perf_counter() - t}
    mf, pt_store = sys.modules["manifest"], sys.modules["pt_store"]  # the release's, imported by release_builder
    images = mf.load_images(str(bank / "manifests" / f"{NAME}.images.tsv"))
    found = scan(scan_dir, mask_dir)
    (bank / "clip_embeddings").mkdir(exist_ok=True)
    for role, (clip, weights) in CLIPS.items():
        t = time.perf_counter()
        store = pt_store.PtSlotWriter(str(bank / "clip_embeddings" / f"{NAME}_{KEYS[role]}"),
                                      mf.total_regions(images), 512)
        store.create()
        done = store.done_mask()
        todo = {s: found[s] for s, start, n in images if not done[start:start + n].all()}
        feats = run_release(a.release, a.dino_repo, work, "fp32", a.short_side, clip=clip,
                            weights=work / weights, images=todo)
        fp32[role].update(feats)
        store.open_for_write()
        for stem, start, n in images:
            if stem in feats:
                assert len(feats[stem]) == n, (stem, len(feats[stem]), n)
                store.write(range(start, start + n), torch.stack(feats[stem]))
        store.flush()
        assert store.finalize(), role
        out["seconds"][role] = time.perf_counter() - t
    return out


def glaclip_version() -> str:
    """glaclip's commit, and whether src/ has uncommitted changes (the code the run imported)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    return f"glaclip {git('rev-parse', '--short', 'HEAD') or '?'}" + (" + uncommitted changes in src/"
                                                                       if git("status", "--porcelain", "src") else "")


def glaclip_batch(a, work: Path, bank: Path, scan_dir: Path, mask_dir: Path) -> dict:
    from glaclip.runs.bank import BankModels, build

    models = BankModels(clip=(ARCH, str(work / "clip.pt")), aux_clip=(ARCH, str(work / "aux.pt")),
                        dino=(DINO, str(work / "dino.pt")), radio=(RADIO, str(work / "radio.pth")), keys=KEYS,
                        radio_repo=str(a.radio_repo))
    t = time.perf_counter()
    rep = build(scan_dir, NAME, bank, mask_dir, models, device="cpu", dtype="fp32", short_side=a.short_side,
                progress=False)
    return {"images": rep.images, "regions": rep.regions, "new_images": rep.new_images,
            "seconds": time.perf_counter() - t, "steps": {s.name: round(s.seconds, 1) for s in rep.steps}}


# ---- comparisons -------------------------------------------------------------------------------------

def ordered(x: torch.Tensor) -> torch.Tensor:
    """float16 bits as integers in the order of the values (-0 and +0 both 0): a difference counts ulps."""
    i = x.contiguous().view(torch.int16).int()
    return torch.where(i >= 0, i, -(i + 32768))


def compare_store(theirs: Path, ours: Path, x32: torch.Tensor) -> dict:
    """Two float16 stores; x32: the release's float32 rows before the cast. For the elements that differ:
    how far x32 lies from the float16 rounding midpoint between the two values (absolute: a float32-sized
    distance means a float32 rounding difference decided the float16 one; a float16 step is 3e-5 at 0.04)
    and how many are float16 subnormals (|x| < 2^-14, where a float16 step is 6e-8)."""
    a, b = torch.load(theirs), torch.load(ours)
    row = {"rows": [a.shape[0], b.shape[0]], "dtype": [str(a.dtype), str(b.dtype)]}
    if a.shape == b.shape and a.dtype == b.dtype == torch.float16:
        differ = a != b
        x = x32[differ].numpy()
        mid = (a[differ].double() + b[differ].double()).numpy() / 2
        row.update(rows_identical=int((~differ).all(1).sum()), elements_differ=int(differ.sum()),
                   max_abs=float((a.double() - b.double()).abs().max()),
                   max_ulp=int((ordered(a) - ordered(b)).abs().max()),
                   nan=[int(a.isnan().sum()), int(b.isnan().sum())],
                   release_fp32_rounds_to_its_row=bool(torch.equal(x32.half(), a)),
                   midpoint_max_abs=float(np.abs(x - mid).max()) if x.size else 0.0,
                   differ_subnormal=int((np.abs(mid) < 2.0 ** -14).sum()))
    return row


def compare_batch(faiss, mod, rel: Path, ours: Path, cross: Path, fp32: dict) -> dict:
    from glaclip.io.bank_manifest import manifest_paths
    from glaclip.runs.bank import store_paths

    row = {"manifest": {p.name: [len(p.read_text().splitlines()), len(q.read_text().splitlines()),
                                 p.read_bytes() == q.read_bytes()]
                        for p, q in zip(manifest_paths(rel, NAME), manifest_paths(ours, NAME))}}
    r_paths, o_paths = store_paths(rel, NAME, KEYS), store_paths(ours, NAME, KEYS)
    images = sys.modules["manifest"].load_images(str(rel / "manifests" / f"{NAME}.images.tsv"))
    for role in ("main", "aux", "vfm"):
        x32 = torch.cat([torch.stack(fp32[role][stem]).float() for stem, _, _ in images])
        row[role] = compare_store(r_paths[role], o_paths[role], x32)
    store = torch.load(r_paths["vfm"]).float().numpy()
    pick = np.random.default_rng(64).choice(len(store), 64, replace=len(store) < 64)
    q = store[pick] / (np.linalg.norm(store[pick], axis=1, keepdims=True) + 1e-12)
    q = np.ascontiguousarray(q, dtype=np.float32)
    row["index"] = compare_index(faiss, o_paths["index"], r_paths["index"], q)
    cross.mkdir(exist_ok=True)  # the release's update_faiss_cache on glaclip's store (incremental in batch 2)
    shutil.copyfile(o_paths["vfm"], cross / "store.pt")
    mod.update_faiss_cache(str(cross / "store.pt"), str(cross / "release.faiss"))
    row["index on glaclip's store"] = compare_index(faiss, o_paths["index"], cross / "release.faiss", q)
    return row


# ---- the table ---------------------------------------------------------------------------------------

def both(pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]} / {pair[1]}"


def table(report: dict) -> list[str]:
    lines = ["| batch | file | rows (release / glaclip) | bytes equal | rows bit-identical | elements differing | "
             "max abs diff | max diff (fp16 ulps) | where they differ: max abs(release's fp32 - fp16 midpoint) |",
             "|---" * 9 + "|"]
    for b, row in report["batches"].items():
        for name, (n_r, n_o, eq) in row["manifest"].items():
            lines.append(f"| {b} | {NAME}.{name.split('.', 1)[1]} | {both((n_r, n_o))} lines | {eq} | | | | | |")
        for role in ("main", "aux", "vfm"):
            s = row[role]
            lines.append(f"| {b} | {role} store ({KEYS[role]}) | {both(s['rows'])} | | "
                         f"{s.get('rows_identical', '-')}/{s['rows'][0]} | {s.get('elements_differ', '-')} of "
                         f"{s['rows'][0] * (1024 if role == 'vfm' else 512)} ({s.get('differ_subnormal', '-')} "
                         f"subnormal) | {s.get('max_abs', float('nan')):.2e} | {s.get('max_ulp', '-')} | "
                         f"{s.get('midpoint_max_abs', float('nan')):.1e} |")
    lines += ["", "| batch | index | type | nlist | m | nbits | metric | ntotal | id maps equal | serialized bytes "
              "equal | top-20 ids equal | top-20 distances equal |", "|---" * 12 + "|"]
    for b, row in report["batches"].items():
        for label, key in (("release vs glaclip", "index"),
                           ("release's recipe on glaclip's store vs glaclip", "index on glaclip's store")):
            ix = row[key]
            cells = " | ".join(both((ix["release"][k], ix["ours"][k]))
                               for k in ("type", "nlist", "m", "nbits", "metric", "ntotal"))
            lines.append(f"| {b} | {label} | {cells} | {ix['id_maps_equal']} | {ix['bytes_equal']} | "
                         f"{ix['top20_ids_equal']} | {ix['top20_dist_equal']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", type=Path, required=True, help="CorrCLIPv2/ of the release (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--dino-repo", type=Path, required=True, help="a checkout of facebookresearch/dino")
    ap.add_argument("--radio-repo", type=Path, required=True, help="a checkout of NVlabs/RADIO (needs einops)")
    ap.add_argument("--work", type=Path, required=True, help="weights, inputs and both banks")
    ap.add_argument("--short-side", type=int, default=336, help="both CLIP builders' short side (release: 448)")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    a = ap.parse_args()
    import faiss
    from common import write_text

    a.release, a.dino_repo, a.radio_repo = a.release.resolve(), a.dino_repo.resolve(), a.radio_repo.resolve()
    work = a.work.resolve()
    batches = make_inputs(work, a.radio_repo)
    scan_dir, mask_dir, rel, ours = work / "scan", work / "masks", work / "release", work / "glaclip"
    for p in (scan_dir, rel, ours, work / "cross"):
        shutil.rmtree(p, ignore_errors=True)
    scan_dir.mkdir()
    start = time.perf_counter()
    report, fp32 = {"glaclip": glaclip_version(), "batches": {}}, {"main": {}, "aux": {}, "vfm": {}}
    with release_builder(a.release, scan_dir, mask_dir) as mod:
        for i, batch in enumerate(batches, start=1):
            stage(work, batch, scan_dir)
            row = {"release": release_batch(mod, a, work, rel, scan_dir, mask_dir, fp32),
                   "glaclip": glaclip_batch(a, work, ours, scan_dir, mask_dir)}
            row.update(compare_batch(faiss, mod, rel, ours, work / "cross", fp32))
            report["batches"][i] = row
            print(json.dumps(row, indent=1, default=str), flush=True)
    report["seconds"] = time.perf_counter() - start
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    torch.save(fp32, work / "release_fp32.pt")  # the release's float32 rows, {role: {stem: [vectors]}}
    lines = table(report)
    print("\n".join(lines))
    if a.out:
        write_text(a.out, header(a, report) + lines + FOOTER)


def header(a, report: dict) -> list[str]:
    from common import machine_line

    b = report["batches"]
    times = "; ".join(f"batch {i}: release {sum(r['release']['seconds'].values()):.0f} s, glaclip "
                      f"{r['glaclip']['seconds']:.0f} s" for i, r in b.items())
    return [
        "# `glaclip bank build` against CorrCLIPv2's builder, end to end (issue 28)", "",
        "`PYTHONPATH=src:EINOPS python benchmarks/bank_build_release.py --release CorrCLIPv2 --dino-repo DINO "
        f"--radio-repo RADIO --work DIR --short-side {a.short_side} --out benchmarks/bank-build-release-cpu.md` "
        "(zdk258/CorrCLIP@103bc18 `memory_bank_builder/`, facebookresearch/dino@7c446df, NVlabs/RADIO's checkout; "
        "EINOPS: a folder with einops for RADIO's code).", "",
        "Random real-size weights: open_clip ViT-B-16-quickgelu twice (seeds 0, 1: the main `metaclip_b` and the "
        "auxiliary `dfnclip_b` store), timm vit_base_patch8_224.dino in DINO's own ViT-B/8, a C-RADIOv3-L-shaped "
        "RADIO. Images: crops of examples/street.png, 200x260 (uint16 ids), 211x303 in a subfolder (int64 ids), "
        "240x180 (10-slice boolean stack, overlapping, one slice wholly under another), 190x250 (uint8 ids), an "
        "all-zero map (no regions: in neither manifest), one image without a mask; batch 2 adds a JPEG with EXIF "
        f"orientation 6 (int32 ids at its shown 240x180) and a 170x230 image (int32 ids). CLIP short side "
        f"{a.short_side} on both sides (the release's --slide_short; crop 336, stride 112), float32 on both sides.",
        "",
        "Release side, in-process: manifest, VFM store and index by `bank_release.release_run` "
        "(`manifest.build_or_extend`, `RegionFeatureExtractor` + `PtSlotWriter`, `update_faiss_cache`); the CLIP "
        "stores by `bank_clip_release.run_release` (`FeatureExtractor.extract_from_paths`, --clip meta_b / dfn_b) "
        "on the images whose slots are not done, rows written at the manifest ids into its `PtSlotWriter` and "
        "finalized, as its main() does without its one-process-per-GPU spawn. Patched around it (its files "
        "untouched): `Tensor.half` / `Module.half` cast to float32 (its rows reach the PtSlotWriter in float32, "
        "which casts them to float16); its CUDA fp16 autocast is off on the CPU; `torch.hub.load` of RADIO and of "
        "DINO answered from the local checkouts with the random weights; `create_model` builds the vendored "
        "ViT-B-16-quickgelu with our file for metaclip_fullcc and for hf-hub:apple/DFN2B-CLIP-ViT-B-16; "
        "`torch.cuda.device_count()` 1 at import, `empty_cache` a no-op, its fp16 window-sum buffer float32; "
        "stand-ins for mmcv.imrescale (mmcv's arithmetic + cv2 bilinear), mmcv's to_tensor, mmengine, mmseg, "
        "prettytable, openpyxl and detectron2's `_apply_exif_orientation` (detectron2's orientation table / "
        "PIL.ImageOps.exif_transpose); `update_faiss_cache`'s GPU attempt fails on faiss-cpu and it trains on "
        "the CPU; its VFM extractor's `extract_from_paths` is wrapped to keep its float32 rows (unchanged). "
        "Details: the docstrings of bank_release.py, bank_clip_release.py and corrclip2_shims.py.", "",
        f"glaclip side ({report['glaclip']}): `glaclip.runs.bank.build(scan, name, out, masks, BankModels(...), "
        f"device='cpu', dtype='fp32', short_side={a.short_side})` (what `glaclip bank build` runs) over the same "
        "folder.", "",
        f"Machine: {machine_line('cpu')}, shared with other jobs. Both builders, both batches: "
        f"{report['seconds']:.0f} s ({times}; models loaded per step and batch on both sides).", ""]


FOOTER = [
    "", "Rows: the float16 store rows compared bit for bit (the store files themselves are not: torch.save "
    "archives carry the file's name); ulps count float16 steps between the two values. Last column: the "
    "release's own float32 vector (recorded from its extract_from_paths, before its PtSlotWriter's float16 "
    "cast) at the elements that differ, against the midpoint between the two float16 values: a distance of "
    "float32 size means the value lay on a float16 rounding boundary and the two sides' float32 rounding "
    "decided the step; 'subnormal': differing elements under 2^-14 in magnitude, where the float16 step "
    "shrinks to 6e-8 and float32 differences of 1e-8 move roundings often. Index queries: 64 seeded rows of "
    "the release's VFM store, unit length, at nprobe = nlist. The second index row runs the release's "
    "`update_faiss_cache` on a copy of glaclip's VFM store (built in batch 1, extended in batch 2) against "
    "glaclip's index: the index recipe on identical store bytes.",
    "",
    "Sources of the float32 differences: the VFM region mean sums in float64 over bands of rows in glaclip "
    "and in float32 (torch's `mean(0)`) in the release; the CLIP rows order the same float32 arithmetic "
    "differently (region tokens beside the image tokens, the window sum, the region mean in float64; in fp64 "
    "every row is bit-identical: bank-clip-release-cpu.md). An index trained on stores a few float16 ulps "
    "apart can differ in its bytes and distances (k-means and PQ codebooks on other input): the second index "
    "row separates the recipe from its input."]


if __name__ == "__main__":
    main()
