"""Time and peak memory of SAM 2 region-mask generation (`glaclip.models.sam2`), per image size.

    python benchmarks/masks.py                                  # sam2-hiera-tiny, random weights, CPU
    python benchmarks/masks.py --sam sam2-hiera-large --sam-weights sam2_hiera_large.pt --size 768x1024

Each size (height x width) runs in a fresh process (so each peak is its own): `load_sam2`, one
warm-up `generate`, then --repeat timed ones (median) on a synthetic image (coloured rectangles on
noise). Peak memory: the process's resident set on the CPU (model and libraries included; the
"loaded" column is the part before any image), max allocated on CUDA. SAM 2 resizes every
image to 1024 x 1024 for its encoder and decodes its 64 point prompts (points per side 8) in one
batch, so neither time nor peak memory grows much with the size up to 1536 x 2048 (the 64
full-size mask logits, 256 bytes a pixel, come after the decoder's peak). Random weights keep
few or no masks (their predictions fail the IoU/stability thresholds), so the per-mask work of real
weights (RLE encoding, de-duplication, painting) is mostly not in their figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import isolated, machine_line, parse_size, peak_mb, write_text


def synthetic_image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for k in range(12):  # flat rectangles: something to segment
        y, x = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
        img[y : y + h // 4, x : x + w // 4] = rng.integers(0, 256, 3)
    return img


def case(name: str, weights: str, device: str, dtype: str, h: int, w: int, repeat: int) -> dict:
    """In a fresh process: load seconds, median generate seconds, peak MiB after load and overall, regions."""
    import torch

    from glaclip.models.sam2 import load_sam2

    start = time.perf_counter()
    sam = load_sam2(name, weights, device=device, dtype=dtype)
    load_s = time.perf_counter() - start
    after_load = peak_mb(str(sam.device))
    img = synthetic_image(h, w)
    sam.generate(img)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = sam.generate(img)
        if sam.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"load_s": load_s, "generate_s": statistics.median(times), "after_load_mb": after_load,
            "peak_mb": peak_mb(str(sam.device)), "regions": len(np.unique(out[out > 0])),
            "device": str(sam.device), "dtype": str(sam.dtype).replace("torch.", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam", default="sam2-hiera-tiny", help="a glaclip.config.backbones.SAM2_MODELS name")
    ap.add_argument("--sam-weights", default="random", help="a checkpoint file, 'random', or 'hub' (the cache)")
    ap.add_argument("--size", dest="sizes", action="append", help="HxW, repeatable (default 384x512 768x1024 "
                    "1536x2048)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto: fp16 autocast on CUDA (as the release), fp32 on the CPU")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per size")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    a = ap.parse_args()
    weights = None if a.sam_weights == "hub" else a.sam_weights
    sizes = [parse_size(s) for s in a.sizes or ["384x512", "768x1024", "1536x2048"]]
    lines = [f"Machine: {machine_line(a.device)}; {a.sam}, weights {a.sam_weights}; median of {a.repeat} after a "
             "warm-up, each size a fresh process.", "",
             "| model | device | dtype | image H x W | load s | generate s | peak MiB, loaded | peak MiB | regions |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for h, w in sizes:
        r = isolated(case, a.sam, weights, a.device, a.dtype, h, w, a.repeat, timeout=a.timeout)
        if "error" in r:
            lines.append(f"| {a.sam} | {a.device} | {a.dtype} | {h} x {w} | {r['error']} | | | | |")
        else:
            lines.append(f"| {a.sam} | {r['device']} | {r['dtype']} | {h} x {w} | {r['load_s']:.1f} | "
                         f"{r['generate_s']:.1f} | {r['after_load_mb']:.0f} | {r['peak_mb']:.0f} | {r['regions']} |")
        print(lines[-1], flush=True)
    if a.out:
        write_text(a.out, lines)


if __name__ == "__main__":
    main()
