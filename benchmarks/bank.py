"""Memory-bank building and searching on the CPU (issue 28): `glaclip bank build`'s images/s and peak
memory per step, and the cost of a bank's search per image at 10^4 .. 10^7 regions, glaclip's stores
(rows read where they lie, `io.bank.Store`) against the release's in-RAM store (torch.load, then indexing).

    PYTHONPATH=src python benchmarks/bank.py build --images 200 --work DIR            # tiny models
    PYTHONPATH=src:EINOPS python benchmarks/bank.py build --real --images 2 --grid 12x12 --radio-repo RADIO --work DIR
    PYTHONPATH=src python benchmarks/bank.py search --sizes 1e4,1e5,1e6 --work DIR
    (each appends its table to --md, default benchmarks/bank-cpu.md)

build: a folder of seeded images (--size, default 480x640) with region masks (--grid, default 4 x 6 cells: 23
regions and 0);
the build runs in a fresh process (`runs.bank.build`, fp32) with a thread sampling its resident memory every
20 ms; per step: images, seconds, images/s and the peak resident memory while the step ran. Tiny models: the
tests' 6-block CLIP (twice: main and auxiliary), DINO-shaped ViT/8 and the stand-in RADIO. --real: random
real-size ViT-B-16-quickgelu (main and auxiliary), DINO ViT-B/8 and C-RADIOv3-L (random checkpoint through
RADIO's own code from --radio-repo).

search: N random unit 1024-d VFM vectors in the release's index layout (IVFPQ, nlist = int(8 sqrt N), m 32,
8 bits, inner-product coarse quantizer, ids = rows, nprobe = min(256, nlist)) and a 512-d float16 store of N
rows. So that 10^7 regions fit this machine's time, the index is made for timing, not trained as the
builder does: its coarse centroids are nlist random unit vectors and every vector is generated near a
centroid and added to that centroid's list (a trained index has lists of the same sizes); the product
quantizer is trained on 20,000 of them. Per image: 25 region queries, top 20; the table gives the search
time, then the time to fetch the 25 x 20 store rows (glaclip: os.pread of each row from the file, after a
first pass so the page cache is warm; release: indexing the tensor torch.load gave) and the memory each
side holds for the store.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from common import isolated, machine_line, write_text

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {"embed_dim": 32, "quick_gelu": True,
             "vision_cfg": {"image_size": 224, "layers": 6, "width": 64, "head_width": 32, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_VFM = {"model": "vit_base_patch8_224", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}
STANDIN = ROOT / "tests" / "models" / "radio_standin"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- build ----------------------------------------------------------------------------------------


def make_images(folder: Path, n: int, h: int, w: int, rows: int = 4, cols: int = 6) -> None:
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    ids = (r[:, None] * cols + c[None, :] + 1).astype(np.int32)
    ids[ids == rows * cols] = 0
    for i in range(n):
        stem = f"img{i:05d}"
        if (folder / "masks" / f"{stem}.npz").exists():
            continue
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / "images" / f"{stem}.jpg", quality=90)
        np.savez_compressed(folder / "masks" / f"{stem}.npz", instance_mask=np.roll(ids, i % 7, axis=1))


def model_files(folder: Path, real: bool, radio_repo: str | None) -> dict:
    """Weight files (seeded random) and the build's BankModels arguments."""
    from glaclip.models.loading import load_clip, load_vfm

    keys = {"main": "metaclip_b", "aux": "dfnclip_b", "vfm": "radiov3"}
    if real:
        import open_clip
        import timm

        sys.path.insert(0, str(Path(__file__).parent))
        from corrclip2_shims import write_radio_checkpoint

        for name, seed in (("clip", 0), ("aux", 1)):
            if not (folder / f"{name}.pt").exists():
                torch.manual_seed(seed)
                torch.save(open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).state_dict(),
                           folder / f"{name}.pt")
        if not (folder / "dino.pth").exists():
            torch.manual_seed(2)
            torch.save(timm.create_model("vit_base_patch8_224", pretrained=False).state_dict(), folder / "dino.pth")
        if not (folder / "radio.pth").exists():
            write_radio_checkpoint(radio_repo, folder / "radio.pth")
        return dict(clip=("ViT-B-16-quickgelu", str(folder / "clip.pt")),
                    aux_clip=("ViT-B-16-quickgelu", str(folder / "aux.pt")),
                    dino=("vit_base_patch8_224.dino", str(folder / "dino.pth")),
                    radio=("c-radio_v3-l", str(folder / "radio.pth")), keys=keys, radio_repo=radio_repo)
    (folder / "clip6.json").write_text(json.dumps(TINY_CLIP))
    (folder / "dino.json").write_text(json.dumps(TINY_VFM))
    for name, seed in (("clip", 1), ("aux", 2)):
        torch.manual_seed(seed)
        torch.save(load_clip(str(folder / "clip6.json"), "random", device="cpu", dtype="fp32").model.state_dict(),
                   folder / f"{name}.pt")
    torch.manual_seed(3)
    torch.save(load_vfm(str(folder / "dino.json"), "random", device="cpu", dtype="fp32").model.state_dict(),
               folder / "dino.pth")
    return dict(clip=(str(folder / "clip6.json"), str(folder / "clip.pt")),
                aux_clip=(str(folder / "clip6.json"), str(folder / "aux.pt")),
                dino=(str(folder / "dino.json"), str(folder / "dino.pth")), radio=("tiny-random", None), keys=keys,
                radio_repo=str(STANDIN))


def build_case(work: str, models: dict, threads: int) -> dict:
    """One build in this (fresh) process, memory sampled; returns the steps with their peaks."""
    from glaclip.runs.bank import BankModels, build

    torch.set_num_threads(threads)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        report = build(Path(work) / "images", "bench", Path(work) / "bank", Path(work) / "masks",
                       BankModels(**models), device="cpu", dtype="fp32", overwrite=True, progress=False)
    finally:
        stop.set()
        thread.join()
    steps = []
    for s in report.steps:
        peak = max((m for t, m in samples if s.started <= t <= s.started + s.seconds), default=float("nan"))
        steps.append({"step": s.name, "items": s.images, "unit": s.unit, "seconds": s.seconds, "peak": peak})
    load = report.steps[0].started - t0
    return {"steps": steps, "load_seconds": load, "peak": max(m for _, m in samples), "regions": report.regions,
            "images": report.images, "files": report.files}


def run_build(args) -> list[str]:
    work = Path(args.work) / ("build-real" if args.real else "build-tiny")
    h, w = (int(v) for v in args.size.split("x"))
    make_images(work, args.images, h, w, *(int(v) for v in args.grid.split("x")))
    models = model_files(work, args.real, args.radio_repo)
    res = isolated(build_case, str(work), models, args.threads)
    if "error" in res:
        raise SystemExit(f"build failed: {res['error']}")
    kind = "real-size random models" if args.real else "tiny models"
    lines = [f"### Build: {res['images']} images {w}x{h}, {res['regions']} regions, {kind}, fp32, "
             f"{args.threads} threads ({machine_line('cpu')})", "",
             f"Models loaded in {res['load_seconds']:.1f} s; peak resident memory of the whole build "
             f"{res['peak']:.0f} MiB.", "", "| step | items | s | items/s | s/item | peak MiB while it ran |",
             "|---|---|---|---|---|---|"]
    for s in res["steps"]:
        ok = s["items"] and s["seconds"] > 0
        rate = f"{s['items'] / s['seconds']:.2f} | {s['seconds'] / s['items']:.3g}" if ok else "- | -"
        lines.append(f"| {s['step']} | {s['items']} {s['unit']} | {s['seconds']:.1f} | {rate} | {s['peak']:.0f} |")
    lines += ["", "Files: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in res["files"].items()), ""]
    return lines


# ---- search ---------------------------------------------------------------------------------------


def timing_index(n: int, d: int = 1024, seed: int = 0, chunk: int = 100_000):
    """An index in the release's layout over n random unit vectors (module docstring: made for timing)."""
    import faiss

    rng = np.random.default_rng(seed)
    nlist = max(1, int(8 * math.sqrt(n)))
    cents = rng.standard_normal((nlist, d)).astype(np.float32)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(cents)
    ivf = faiss.IndexIVFPQ(quantizer, d, nlist, 32, 8)

    def near(lists):
        x = cents[lists] + 0.03 * rng.standard_normal((lists.size, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    ivf.train(near(rng.integers(0, nlist, min(n, 20_000))))  # the quantizer is set: this trains the PQ only
    for a in range(0, n, chunk):
        k = min(chunk, n - a)
        lists = rng.integers(0, nlist, k).astype(np.int64)
        x, ids = near(lists), np.arange(a, a + k, dtype=np.int64)
        ivf.add_core(k, faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    ivf.nprobe = min(256, nlist)
    return ivf, cents


def search_case(n: int, work: str, repeats: int) -> dict:
    from glaclip.io.bank import read_store
    from glaclip.io.bank_store import write_store

    torch.set_num_threads(2)
    t = time.perf_counter()
    index, cents = timing_index(n)
    made = time.perf_counter() - t
    store_path = Path(work) / f"store_{n}.pt"
    if not store_path.exists():
        rng = np.random.default_rng(1)
        write_store(store_path, (rng.standard_normal((min(65536, n - a), 512)).astype(np.float16)
                                 for a in range(0, n, 65536)), 512)
    rng = np.random.default_rng(2)
    queries = [cents[rng.integers(0, cents.shape[0], 25)] + 0.03 * rng.standard_normal((25, 1024)).astype(np.float32)
               for _ in range(repeats)]
    search, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q, 20)
        search.append(time.perf_counter() - t)
        found.append(ids.reshape(-1))
    store = read_store(store_path)
    for ids in found:  # a first pass: the page cache warm, as for a bank in use
        store.rows(ids[ids >= 0])
    ours = []
    for ids in found:
        t = time.perf_counter()
        store.rows(ids[ids >= 0])
        ours.append(time.perf_counter() - t)
    before = rss_mib()
    t = time.perf_counter()
    whole = torch.load(store_path, map_location="cpu")  # the release's PTTensorDataset
    loaded = time.perf_counter() - t
    held = rss_mib() - before
    theirs = []
    for ids in found:
        t = time.perf_counter()
        whole[torch.from_numpy(ids[ids >= 0])]
        theirs.append(time.perf_counter() - t)
    return {"n": n, "nlist": index.nlist, "made": made, "search_ms": 1e3 * float(np.median(search)),
            "ours_ms": 1e3 * float(np.median(ours)), "theirs_ms": 1e3 * float(np.median(theirs)),
            "load_s": loaded, "held_mib": held, "store_mib": store_path.stat().st_size / 2**20,
            "index_mib": index.invlists.compute_ntotal() * 40 / 2**20}


def run_search(args) -> list[str]:
    work = Path(args.work) / "search"
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"### Search per image (25 regions, top 20, nprobe min(256, nlist)) ({machine_line('cpu')})", "",
             "| regions | nlist | search ms | rows: glaclip ms (pread, warm) | rows: release ms (in RAM) | "
             "store held: glaclip / release | release's torch.load s |", "|---|---|---|---|---|---|---|"]
    for n in (int(float(s)) for s in args.sizes.split(",")):
        res = isolated(search_case, n, str(work), args.repeats)
        if "error" in res:
            lines.append(f"| {n:,} | - | {res['error']} | | | | |")
            continue
        lines.append(f"| {n:,} | {res['nlist']} | {res['search_ms']:.2f} | {res['ours_ms']:.2f} | "
                     f"{res['theirs_ms']:.3f} | 0 / {res['held_mib']:.0f} MiB (file {res['store_mib']:.0f} MiB) | "
                     f"{res['load_s']:.1f} |")
        print(lines[-1], flush=True)
        if not args.keep:
            (work / f"store_{n}.pt").unlink(missing_ok=True)
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("build", "search"))
    p.add_argument("--work", required=True, help="Folder for the images, models and banks.")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", default="480x640", help="Image size, HxW.")
    p.add_argument("--grid", default="4x6", help="Regions per image: a grid of RxC cells, the last one 0 (an index "
                   "needs 256 regions: 12x12 for 2 images).")
    p.add_argument("--real", action="store_true", help="Real-size random models (needs --radio-repo).")
    p.add_argument("--radio-repo", default=os.environ.get("GLACLIP_RADIO_REPO"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", default="1e4,1e5,1e6")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--keep", action="store_true", help="Keep the search stores (one per size).")
    p.add_argument("--md", default=str(ROOT / "benchmarks" / "bank-cpu.md"))
    args = p.parse_args()
    if args.real and not args.radio_repo:
        raise SystemExit("--real needs --radio-repo (a checkout of NVlabs/RADIO)")
    lines = run_build(args) if args.what == "build" else run_search(args)
    print("\n".join(lines))
    md = Path(args.md)
    old = md.read_text().splitlines() if md.exists() else ["# Memory banks on the CPU (benchmarks/bank.py)", ""]
    write_text(md, old + lines)


if __name__ == "__main__":
    main()
