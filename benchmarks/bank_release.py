"""glaclip's bank files (io/bank_manifest.py, io/bank_store.py, io/bank_index.py, runs/bank_build.py)
against CorrCLIPv2's own memory-bank builder (zdk258/CorrCLIP@103bc18, CorrCLIPv2/memory_bank_builder/),
run on the CPU from its folder (never copied):

    PYTHONPATH=src:/path/to/einops python benchmarks/bank_release.py --release CorrCLIPv2 --radio-repo RADIO --out DIR

1. Manifest: the release's `manifest.build_or_extend` over an image folder and a mask folder (npz id maps
   of several integer dtypes, boolean N x H x W stacks, an all-zero map, an image without a mask), run
   twice (a second batch of images added in between), against `bank_manifest.append_images` over the
   same images: both files compared byte for byte after each run; `manifest.num_regions` against
   `count_regions` per mask file.
2. VFM store: the release's `RegionFeatureExtractor.extract_from_paths` (its vfms/factory.py RADIO
   extractor; torch.hub.load pointed at the local RADIO checkout with a random C-RADIOv3-L-shaped
   checkpoint, corrclip2_shims.write_radio_checkpoint) and its `PtSlotWriter` slot store -> .pt, against
   `runs.bank_build.write_vfm_store`: the rows compared (count equal, max |diff|). The release's
   hard-coded `.half()` is patched to float32 (release_common.half_as) and its fp16 autocast on 'cuda' is
   off on the CPU, so both run float32 up to the stored float16. detectron2 is not installable here: its
   `_apply_exif_orientation` is a stand-in with detectron2's table (orientation -> PIL transpose). The
   release's `PTTensorDataset` loads glaclip's store.
3. FAISS: the release's `update_faiss_cache` (faiss-cpu: its GPU attempt fails and it trains on the CPU)
   on the release's store against `bank_index.update_index` on glaclip's: index types, nlist, m, nbits,
   metric, id map, serialized bytes, and the top-20 ids of 64 queries at nprobe = nlist; then again after
   the second batch (incremental add of the new ids only). Also on a synthetic store of --synthetic N
   random 1024-d rows (default 6000), built by both from the same file.
Without --radio-repo the stand-in RADIO of tests/models/radio_standin runs instead (32-d features).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from release_common import half_as, imported_release

ROOT = Path(__file__).resolve().parents[1]
NAME = "mine"


# ---- inputs ------------------------------------------------------------------------------------------

def grid_ids(h, w, rows, cols, dtype=np.int32, step=1):
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    m = ((r[:, None] * cols + c[None, :]) * step).astype(dtype)  # cell 0 stays id 0
    return m


def make_inputs(out: Path) -> tuple[list[str], list[str]]:
    """Images and masks of two batches; returns the stems of each."""
    rng = np.random.default_rng(0)
    img_dir, mask_dir = out / "images", out / "masks"
    shutil.rmtree(out, ignore_errors=True)
    (img_dir / "sub").mkdir(parents=True)
    mask_dir.mkdir()
    specs = {  # stem: (h, w, mask kind, batch)
        "street": (96, 128, ("grid", 12, 12, np.uint16, 3), 1),
        "c0": (80, 112, ("grid", 10, 11, np.int64, 1), 1),
        "b_dog": (112, 80, ("stack", 9), 1),
        "empty": (64, 64, ("zero",), 1),
        "sub/nomask": (64, 64, None, 1),
        "a1": (72, 100, ("grid", 13, 14, np.int32, 7), 1),
        "z9": (100, 90, ("grid", 8, 9, np.uint8, 1), 2),
        "a0": (64, 96, ("grid", 6, 6, np.int32, 1), 2),
        "rot": (60, 84, ("grid", 5, 7, np.int32, 2), 2),
    }
    batches = ([], [])
    for stem, (h, w, kind, batch) in specs.items():
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(rgb)
        shown = (h, w)
        if stem == "rot":  # EXIF orientation 6: shown rotated, masks follow the shown image
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(img_dir / "rot.jpg", exif=exif, quality=95)
            shown = (w, h)
        else:
            img.save(img_dir / f"{stem}.png")
        name = Path(stem).name
        if kind is not None:
            if kind[0] == "grid":
                m = grid_ids(*shown, kind[1], kind[2], kind[3], kind[4])
            elif kind[0] == "stack":
                m = np.stack([rng.random(shown) < 0.3 for _ in range(kind[1])])
            else:
                m = np.zeros(shown, np.int32)
            np.savez_compressed(mask_dir / f"{name}.npz", instance_mask=m)
        batches[batch - 1].append(stem)
    return batches


def stage(out: Path, stems: list[str], target: Path) -> None:
    """Copy the images of `stems` into the folder the builders scan."""
    for stem in stems:
        for src in (out / "images").glob(f"{stem}.*"):
            dst = target / src.relative_to(out / "images")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def scan(image_dir: Path, mask_dir: Path) -> dict[str, tuple[Path, Path]]:
    """stem -> (image, mask) of the images with a mask file (the folders both builders take)."""
    found = {}
    for p in sorted(image_dir.rglob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tiff") and (mask_dir / f"{p.stem}.npz").exists():
            found.setdefault(p.stem, (p, mask_dir / f"{p.stem}.npz"))
    return found


# ---- the release -------------------------------------------------------------------------------------

def _detectron2_stub() -> dict[str, types.ModuleType]:
    """detectron2.data.detection_utils with _apply_exif_orientation as detectron2 defines it (table)."""
    table = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
             6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}

    def _apply_exif_orientation(image):
        try:
            orientation = image.getexif().get(0x0112)
        except Exception:
            return image
        method = table.get(orientation)
        return image.transpose(method) if method is not None else image

    mods = {n: types.ModuleType(n) for n in ("detectron2", "detectron2.data", "detectron2.data.detection_utils")}
    mods["detectron2.data.detection_utils"]._apply_exif_orientation = _apply_exif_orientation
    mods["detectron2.data.detection_utils"].read_image = None
    return mods


@contextlib.contextmanager
def release_builder(release: Path, img_dir: Path, mask_dir: Path):
    """generate_vfm_embeddings imported from the release's builder folder (cwd, argv, cuda count restored)."""
    cwd, argv, count = os.getcwd(), list(sys.argv), torch.cuda.device_count
    sys.argv = ["generate_vfm_embeddings.py", "--data_name", NAME, "--img", str(img_dir), "--mask", str(mask_dir)]
    torch.cuda.device_count = lambda: 1  # its module level divides by the GPU count
    shadowed = ("manifest", "pt_store", "vfms", "generate_vfm_embeddings", "detectron2", "hubconf", "radio")
    try:
        with imported_release(release / "memory_bank_builder", None, "generate_vfm_embeddings", shadowed,
                              _detectron2_stub()) as (mod, _):
            torch.cuda.device_count = count
            os.chdir(cwd)
            yield mod
    finally:
        torch.cuda.device_count = count
        sys.argv = argv
        os.chdir(cwd)


@contextlib.contextmanager
def local_radio_hub(radio_repo: Path, version: str):
    """torch.hub.load('NVlabs/RADIO', ...) answered from the local checkout with our checkpoint file."""
    real = torch.hub.load

    def load(repo, entry, *args, **kwargs):
        kwargs.pop("trust_repo", None)
        kwargs["version"] = version
        return real(str(radio_repo), entry, *args, source="local", **kwargs)

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = real


def release_run(mod, release: Path, manifests: Path, img_dir: Path, mask_dir: Path, store_base: Path,
                radio_repo: Path, version: str) -> dict:
    """The release's manifest step, then its extraction into its slot store, then its FAISS update."""
    mf = sys.modules["manifest"]
    store_base.parent.mkdir(parents=True, exist_ok=True)  # the release's main makes its SAVE_DIR
    mf.build_or_extend(str(manifests), NAME, str(img_dir), str(mask_dir), workers=1)
    images = mf.load_images(os.path.join(manifests, f"{NAME}.images.tsv"))
    found = scan(img_dir, mask_dir)
    with local_radio_hub(radio_repo, version), half_as(torch.float32):
        extractor = mod.RegionFeatureExtractor("cpu", "radiov3")
        extractor.vfm.dim = int(extractor.vfm.model.embed_dim)
        store = mod.PtSlotWriter(str(store_base), mf.total_regions(images), extractor.vfm.dim)
        store.create()
        store.open_for_write()
        done = store.done_mask()
        for stem, start, n in images:
            if done[start:start + n].all():
                continue
            feats = extractor.extract_from_paths(str(found[stem][0]), str(found[stem][1]))
            assert len(feats) == n, (stem, len(feats), n)
            store.write(range(start, start + n), torch.stack(feats))
        store.flush()
        assert store.finalize()
    mod.update_faiss_cache(str(store_base) + ".pt", str(store_base) + ".faiss")
    return {"images": len(images), "regions": mf.total_regions(images)}


# ---- glaclip -----------------------------------------------------------------------------------------

def glaclip_run(bank: Path, img_dir: Path, mask_dir: Path, radio) -> dict:
    from glaclip.io.bank_index import update_index
    from glaclip.io.bank_manifest import append_images, count_regions, read_manifest, read_region_masks
    from glaclip.runs.bank_build import write_vfm_store

    found = scan(img_dir, mask_dir)
    append_images(bank, NAME, [(s, count_regions(read_region_masks(m))) for s, (_, m) in found.items()])
    m = read_manifest(bank, NAME)
    store = bank / "vfm_embeddings" / f"{NAME}_radiov3.pt"
    write_vfm_store(radio, m.images, lambda s: found[s][0], lambda s: found[s][1], store)
    rep = update_index(store, store.with_suffix(".faiss"))
    return {"images": len(m.images), "regions": m.next_id, "index": rep.__dict__}


# ---- comparisons -------------------------------------------------------------------------------------

def compare_index(faiss, ours_path: Path, theirs_path: Path, queries: np.ndarray) -> dict:
    ours, theirs = faiss.read_index(str(ours_path)), faiss.read_index(str(theirs_path))
    row = {}
    for key, idx in (("ours", ours), ("release", theirs)):
        down = faiss.downcast_index(idx)
        ivf = faiss.downcast_index(down.index)
        quant = faiss.downcast_index(ivf.quantizer)
        faiss.extract_index_ivf(idx).nprobe = ivf.nlist
        row[key] = dict(type=f"{type(down).__name__}({type(ivf).__name__}({type(quant).__name__}))",
                        d=ivf.d, nlist=ivf.nlist, m=ivf.pq.M, nbits=ivf.pq.nbits, metric=ivf.metric_type,
                        ntotal=idx.ntotal)
    row["id_maps_equal"] = bool(np.array_equal(faiss.vector_to_array(faiss.downcast_index(ours).id_map),
                                               faiss.vector_to_array(faiss.downcast_index(theirs).id_map)))
    row["bytes_equal"] = bool(np.array_equal(faiss.serialize_index(ours), faiss.serialize_index(theirs)))
    a, b = ours.search(queries, 20), theirs.search(queries, 20)
    row["top20_ids_equal"] = bool(np.array_equal(a[1], b[1]))
    row["top20_dist_equal"] = bool(np.array_equal(a[0], b[0]))
    return row


def compare_stores(ours: Path, theirs: Path, seg=None) -> dict:
    a, b = torch.load(ours), torch.load(theirs)
    row = {"shape": list(a.shape), "release_shape": list(b.shape), "dtype": str(a.dtype)}
    if a.shape == b.shape:
        diff = (a.float() - b.float()).abs()
        row.update(rows_equal=int((diff.amax(1) == 0).sum()), max_abs=float(diff.max()) if diff.numel() else 0.0,
                   nan=int(torch.isnan(a).sum()))
    if seg is not None:
        ds = seg.PTTensorDataset(str(ours), a.shape[1])
        row["release_PTTensorDataset_reads_ours"] = bool(torch.equal(ds[torch.arange(len(ds))], b) or
                                                         torch.equal(ds.data, a))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--release", type=Path, required=True, help="CorrCLIPv2/ of the release checkout")
    ap.add_argument("--radio-repo", type=Path, default=None, help="NVlabs/RADIO checkout (else the tests' stand-in)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--synthetic", type=int, default=6000)
    args = ap.parse_args()
    import faiss

    from glaclip.io.bank_index import build_index
    from glaclip.io.bank_manifest import count_regions, manifest_paths, read_region_masks
    from glaclip.io.bank_store import write_store
    from glaclip.models.radio import load_radio

    out = args.out.resolve()
    batches = make_inputs(out / "inputs")
    if args.radio_repo is not None:
        from corrclip2_shims import write_radio_checkpoint

        repo = args.radio_repo.resolve()
        version = str(out / "radio.pth")
        write_radio_checkpoint(repo, Path(version))
    else:
        repo = ROOT / "tests" / "models" / "radio_standin"
        version = "tiny-random"
    if args.radio_repo is not None:
        radio = load_radio("c-radio_v3-l", weights=version, radio_repo=repo, device="cpu", dtype="fp32")
    else:
        radio = load_radio("tiny-random", radio_repo=repo, device="cpu", dtype="fp32")

    img_dir, mask_dir = out / "scan", out / "inputs" / "masks"
    rel_bank, our_bank = out / "release_bank", out / "glaclip_bank"
    for p in (img_dir, rel_bank, our_bank):
        shutil.rmtree(p, ignore_errors=True)
    img_dir.mkdir()
    report = {"radio": "RADIO code " + str(repo) if args.radio_repo else "stand-in (tests/models/radio_standin)"}
    with release_builder(args.release.resolve(), img_dir, mask_dir) as mod:
        mf = sys.modules["manifest"]
        report["num_regions_equal"] = all(
            mf.num_regions(str(p)) == count_regions(read_region_masks(p)) for p in sorted(mask_dir.glob("*.npz")))
        seg = None
        try:
            from corrclip2_shims import release_imports

            stack = contextlib.ExitStack()
            seg = stack.enter_context(release_imports(args.release.resolve()))
        except Exception as exc:  # the segmentor module needs more stand-ins than the builder
            report["PTTensorDataset"] = f"not imported: {exc}"
            stack = contextlib.ExitStack()
        for i, batch in enumerate(batches, start=1):
            stage(out / "inputs", batch, img_dir)
            rel = release_run(mod, args.release, rel_bank / "manifests", img_dir, mask_dir,
                              rel_bank / "vfm_embeddings" / f"{NAME}_radiov3", repo, version)
            ours = glaclip_run(our_bank, img_dir, mask_dir, radio)
            row = {"release": rel, "glaclip": ours}
            for theirs_file, ours_file in zip(manifest_paths(rel_bank, NAME), manifest_paths(our_bank, NAME)):
                row[f"{ours_file.name} bytes equal"] = theirs_file.read_bytes() == ours_file.read_bytes()
            st_o = our_bank / "vfm_embeddings" / f"{NAME}_radiov3.pt"
            st_r = rel_bank / "vfm_embeddings" / f"{NAME}_radiov3.pt"
            row["store"] = compare_stores(st_o, st_r, seg)
            q = torch.load(st_r).float().numpy()[::5][:64]
            q = np.ascontiguousarray(q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-12), dtype=np.float32)
            row["index"] = compare_index(faiss, st_o.with_suffix(".faiss"), st_r.with_suffix(".faiss"), q)
            report[f"batch {i}"] = row
        # synthetic: one store file, both index builders
        syn = out / "synthetic"
        shutil.rmtree(syn, ignore_errors=True)
        syn.mkdir()
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((args.synthetic, 1024)).astype(np.float32))
        write_store(syn / "s.pt", [x[i:i + 1000] for i in range(0, len(x), 1000)], 1024)
        mod.update_faiss_cache(str(syn / "s.pt"), str(syn / "release.faiss"))
        build_index(syn / "s.pt", syn / "ours.faiss")
        q = np.random.default_rng(2).standard_normal((64, 1024)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        report[f"synthetic {args.synthetic} x 1024"] = compare_index(faiss, syn / "ours.faiss", syn / "release.faiss",
                                                                     q)
        stack.close()
    text = json.dumps(report, indent=1, default=str)
    (out / "report.json").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
