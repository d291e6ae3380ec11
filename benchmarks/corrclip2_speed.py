"""CorrCLIPv2 on CPU: glaclip's corrclip2 and the official release timed at the same moment, with their peak
memory and the memory their bank holds (issue 27 item 6).

    python benchmarks/corrclip2_release.py --radio-repo RADIO --make-inputs REF    # weights, images, masks
    python benchmarks/corrclip2_speed.py --make-bank 400000 --inputs REF           # REF/bank_400000 (name 'big')
    python benchmarks/corrclip2_speed.py --release CorrCLIP/CorrCLIPv2 --radio-repo RADIO --inputs REF \\
        --bank REF/bank_400000 --rounds 2 --out speed.md

Each round runs four processes one after the other, alternating the two sides so that both see the
machine in the same state: release with the bank, glaclip with the bank, release without, glaclip
without. A process builds its segmenter (timed: models, the bank, the class file's text), predicts the
first image once to warm up, then every image of REF/images `--repeat` times (the median is kept), and
reports the peak resident set of the whole process (VmHWM: imports, models, bank, predictions). The
bank's resident memory is read two ways: the peak with the bank minus the peak without it (same side,
same round), and directly (the release: its two in-RAM store tensors plus the index as serialised;
glaclip: the resident pages of the bank's files in /proc/self/smaps, i.e. the store rows retrieval
touched, plus the same index size).

The release runs through its own `CorrCLIPSegmentation` with the CPU patches of corrclip2_shims.py
(its GPU FAISS calls become CPU FAISS, so both sides search the same index with nprobe min(256, nlist)).
Settings: VOC21's protocol (short side 336, crop 336 / stride 112, num_support 20, logit scale 40),
fp32, DMCE on with the bank, the class file given (default: a 4-line file of 6 queries). Text encoding
is in the build time, not in the per-image time (glaclip encodes the auxiliary CLIP's text at the first
prediction, the warm-up, so its build time leaves that out).

--make-bank N writes a bank of N random regions in the release's layout (stores `big_metaclip_b.pt`,
`big_dfnclip_b.pt`: N x 512 float16 unit rows; index `big_radiov3.faiss`: IndexIDMap2 over
IndexIVFPQ(IndexFlatIP(1024), 1024, nlist = max(1, int(8 sqrt(N))), 32, 8) with ids 0..N-1). Unlike the
release's builder, which trains on all N vectors, the index is trained on a sample of `--train` vectors:
the file format, list count and search cost are the builder's, only the centroids differ (the vectors
are random anyway).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from corrclip2_release import CLIP_DIM, VFM_DIM, VOC21, bank_nlist, glaclip_segmenter, input_images, release_segmentor

BIG = "big"
CLASSES = "sky; wall; tree\ncar\npeople\nroad\n"  # 4 classes, 6 queries (the per-class max over names runs)


# ---- the bank ----------------------------------------------------------------------------------------

def make_bank(folder: Path, n: int, train: int = 20000, seed: int = 0, chunk: int = 50000) -> Path:
    """A bank of n random regions in the release's layout under folder (see the module docstring)."""
    import faiss

    rng = np.random.default_rng(seed)
    (folder / "clip_embeddings").mkdir(parents=True, exist_ok=True)
    (folder / "vfm_embeddings").mkdir(parents=True, exist_ok=True)

    def unit(rows: int, d: int) -> np.ndarray:
        x = rng.standard_normal((rows, d), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for encoder in ("metaclip_b", "dfnclip_b"):
        rows = torch.empty(n, CLIP_DIM, dtype=torch.float16)
        for s in range(0, n, chunk):
            rows[s : s + chunk] = torch.from_numpy(unit(min(chunk, n - s), CLIP_DIM))
        path = folder / "clip_embeddings" / f"{BIG}_{encoder}.pt"
        torch.save(rows, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        del rows
    nlist = bank_nlist(n)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(VFM_DIM), VFM_DIM, nlist, 32, 8)
    index.train(unit(max(min(train, n), nlist), VFM_DIM))
    idmap = faiss.IndexIDMap2(index)
    for s in range(0, n, chunk):
        idmap.add_with_ids(unit(min(chunk, n - s), VFM_DIM), np.arange(s, min(s + chunk, n), dtype=np.int64))
    path = folder / "vfm_embeddings" / f"{BIG}_radiov3.faiss"
    faiss.write_index(idmap, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    print(f"wrote {folder}: {n} regions, nlist {nlist}, stores {2 * n * CLIP_DIM * 2 / 2**20:.0f} MiB, "
          f"index {path.stat().st_size / 2**20:.0f} MiB")
    return folder


# ---- measuring ---------------------------------------------------------------------------------------

def _status_mb(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def _mapped_mb(root: Path) -> float:
    """Resident MiB of this process's mappings of files under root (memory-mapped bank stores)."""
    total, inside = 0, False
    root = str(root.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            inside = len(head) >= 6 and head[5].startswith(root)
        elif inside and head and head[0] == "Rss:":
            total += int(head[1])
    return total / 1024


def _index_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _timed_predicts(predict, images: list[Path], repeat: int) -> dict[str, float]:
    predict(images[0])  # warm-up
    out = {}
    for image in images:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            predict(image)
            times.append(time.perf_counter() - start)
        out[image.stem] = statistics.median(times)
    return out


def release_side(release: str, radio_repo: str, inputs: str, bank: str | None, class_file: str,
                 repeat: int) -> dict:
    """The release in this process (CPU patches of corrclip2_shims), fp32."""
    from corrclip2_shims import cpu_release, release_imports
    from release_common import DataSample, half_as, mmseg_inputs

    inputs_p = Path(inputs)
    with release_imports(release) as seg_mod, torch.no_grad():
        with cpu_release(seg_mod, dtype=torch.float32, clip_files={"main": inputs_p / "clip.pt",
                                                                   "aux": inputs_p / "dfn.pt"},
                         bank_dir=bank, radio_repo=radio_repo, radio_ckpt=inputs_p / "radio.pth"):
            start = time.perf_counter()
            model = release_segmentor(seg_mod, inputs_p, class_file, torch.float32, bank=bank is not None,
                                      bank_name=BIG)
            build_s = time.perf_counter() - start

            def predict(image: Path) -> None:
                x, ori_shape = mmseg_inputs(image, VOC21["short_side"], torch.float32)
                model.predict(x, [DataSample(str(image), ori_shape, tuple(x.shape[2:]))])

            with half_as(torch.float32):  # the release's hard-coded .half(), as in corrclip2_release
                times = _timed_predicts(predict, input_images(inputs_p), repeat)
            bank_mb = 0.0
            if bank is not None:
                stores = [s.data for s in (model.all_clip_feats, model.all_aux_clip_feats) if s is not None]
                bank_mb = sum(s.numel() * s.element_size() for s in stores) / 2**20
                bank_mb += _index_mb(Path(bank) / "vfm_embeddings" / f"{BIG}_radiov3.faiss")
    return {"build_s": build_s, "seconds": times, "peak_mb": _status_mb("VmHWM"), "bank_mb": bank_mb}


def glaclip_side(radio_repo: str, inputs: str, bank: str | None, class_file: str, repeat: int) -> dict:
    """glaclip's corrclip2 (issue 27's API contract) in this process, fp32."""
    from PIL import Image

    from glaclip import read_class_file

    inputs_p = Path(inputs)
    start = time.perf_counter()
    seg = glaclip_segmenter(radio_repo, inputs_p, "fp32", bank, bank_name=BIG)
    classes = read_class_file(class_file)
    seg.query_embeddings(classes)
    build_s = time.perf_counter() - start

    def predict(image: Path) -> None:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        masks = np.load(inputs_p / "masks" / f"{image.stem}.npz")["instance_mask"]
        seg.predict(rgb, classes, masks=masks)

    times = _timed_predicts(predict, input_images(inputs_p), repeat)
    bank_mb = 0.0
    if bank is not None:
        bank_mb = _mapped_mb(Path(bank) / "clip_embeddings") + _index_mb(
            Path(bank) / "vfm_embeddings" / f"{BIG}_radiov3.faiss")
    return {"build_s": build_s, "seconds": times, "peak_mb": _status_mb("VmHWM"), "bank_mb": bank_mb}


# ---- the command -------------------------------------------------------------------------------------

def table(runs: list[dict], images: list[str]) -> list[str]:
    """Medians over rounds per (side, bank)."""
    from common import machine_line

    def med(side: str, bank: bool, key: str, image: str | None = None) -> float:
        vals = [r[key][image] if image else r[key] for r in runs
                if r["side"] == side and r["bank"] == bank and "error" not in r]
        return statistics.median(vals) if vals else float("nan")

    rounds = max([r["round"] for r in runs], default=0) + 1
    lines = [f"Machine: {machine_line('cpu')}; fp32; {rounds} round(s), sides alternating; medians.", "",
             "| side | bank | build s | " + " | ".join(f"{i} s/image" for i in images) +
             " | peak MiB | bank MiB (peak with - without) | bank MiB (held) |",
             "|---|---|---|" + "---|" * len(images) + "---|---|---|"]
    for side in ("release", "glaclip"):
        for bank in (True, False):
            cells = [f"{med(side, bank, 'seconds', i):.2f}" for i in images]
            extra = (f"{med(side, True, 'peak_mb') - med(side, False, 'peak_mb'):.0f} | "
                     f"{med(side, True, 'bank_mb'):.0f}") if bank else "- | -"
            lines.append(f"| {side} | {'yes' if bank else 'no'} | {med(side, bank, 'build_s'):.1f} | "
                         + " | ".join(cells) + f" | {med(side, bank, 'peak_mb'):.0f} | {extra} |")
    errors = [f"- {r['side']} bank={r['bank']} round {r['round']}: {r['error']}" for r in runs if "error" in r]
    return lines + ([""] + errors if errors else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-bank", type=int, metavar="N", help="write a bank of N random regions in INPUTS/bank_N")
    ap.add_argument("--train", type=int, default=20000, help="--make-bank: vectors the IVF index trains on")
    ap.add_argument("--inputs", required=True, help="the folder corrclip2_release.py --make-inputs wrote")
    ap.add_argument("--release", help="the release's CorrCLIPv2 folder (zdk258/CorrCLIP@103bc18)")
    ap.add_argument("--radio-repo", help="a checkout of NVlabs/RADIO (hubconf.py)")
    ap.add_argument("--bank", help="a bank folder written by --make-bank")
    ap.add_argument("--class-file", help="default: a 4-line file of 6 queries written beside --out")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="predictions per image per process (median)")
    ap.add_argument("--out", default="corrclip2_speed.md", help="the table (Markdown); raw results beside it")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    a = ap.parse_args()
    inputs = Path(a.inputs)
    if a.make_bank:
        make_bank(inputs / f"bank_{a.make_bank}", a.make_bank, a.train)
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("release", "radio_repo", "bank") if not getattr(a, k)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}")
    from common import isolated, write_text

    out = Path(a.out)
    class_file = a.class_file
    if class_file is None:
        class_file = str(out.with_name(out.stem + "_classes.txt"))
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(class_file).write_text(CLASSES)
    images = [p.stem for p in input_images(inputs)]
    runs = []
    for rnd in range(a.rounds):
        for bank in (a.bank, None):
            for side in ("release", "glaclip"):
                if side == "release":
                    res = isolated(release_side, a.release, a.radio_repo, str(inputs), bank, class_file, a.repeat,
                                   timeout=a.timeout)
                else:
                    res = isolated(glaclip_side, a.radio_repo, str(inputs), bank, class_file, a.repeat,
                                   timeout=a.timeout)
                runs.append({"side": side, "bank": bank is not None, "round": rnd, **res})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
                write_text(out.with_suffix(".json"), [json.dumps(runs, indent=1)])
    lines = table(runs, images)
    write_text(out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
