"""Time and peak memory of PAMR (glaclip.steps.postprocess.pamr) on large images, against the previous code.

    python benchmarks/pamr.py                                   # 1500x2000 and 3000x4000, 21 queries, fp32
    python benchmarks/pamr.py --sizes 3000x4000 --queries 171 --threads 1 --impl current
    python benchmarks/pamr.py --bands                           # as the Segmenter calls it: bands + halos

Each case runs in a fresh process: the time of the PAMR call(s) alone, and how much the process grew
beyond its inputs (peak RSS). `previous` is the implementation before the band-by-band rewrite (a
pass over the whole tile per neighbour, the logits padded again every step, tiles of 1024), kept
here for comparison; `--check` prints the largest difference between the two at a small size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _offsets(dilations):
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _previous_region(image, logits, steps, dilations):
    _, h, w = image.shape
    pad, offsets, n = max(dilations), _offsets(dilations), 9 * len(dilations)
    padded = F.pad(image[None], [pad] * 4, mode="replicate")[0]

    def shifted(t, dy, dx):
        return t[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    mean = len(dilations) * image
    for dy, dx in offsets:
        mean = mean + shifted(padded, dy, dx)
    mean = mean / n
    var = len(dilations) * (image - mean) ** 2
    for dy, dx in offsets:
        var = var + (shifted(padded, dy, dx) - mean) ** 2
    scale = 1e-8 + 0.1 * (var / (n - 1)).sqrt()
    aff = torch.stack([((image - shifted(padded, dy, dx)).abs() / scale).mean(0) for dy, dx in offsets])
    aff = (-aff).softmax(dim=0)
    chunk = max(1, 256 * 2**20 // (3 * logits.element_size() * (h + 2 * pad) * (w + 2 * pad)))
    out = torch.empty_like(logits)
    for start in range(0, logits.shape[0], chunk):
        x = logits[start : start + chunk]
        for _ in range(steps):
            p = F.pad(x[None], [pad] * 4, mode="replicate")[0]
            new = torch.zeros_like(x)
            for k, (dy, dx) in enumerate(offsets):
                new.addcmul_(aff[k][None], shifted(p, dy, dx))
            x = new
        out[start : start + chunk] = x
    return out


@torch.no_grad()
def previous_pamr(image, logits, steps=10, dilations=(8, 16), tile=1024):
    image = image.to(logits.dtype)
    _, h, w = logits.shape
    halo = steps * max(dilations)
    if h <= tile + 2 * halo and w <= tile + 2 * halo:
        return _previous_region(image, logits, steps, dilations)
    out = torch.empty_like(logits)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, yb, xa, xb = max(y0 - halo, 0), min(y1 + halo, h), max(x0 - halo, 0), min(x1 + halo, w)
            part = _previous_region(image[:, ya:yb, xa:xb], logits[:, ya:yb, xa:xb], steps, dilations)
            out[:, y0:y1, x0:x1] = part[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    return out


def _current():
    from glaclip.steps.postprocess import pamr

    return pamr


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _inputs(h, w, q, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g, dtype=dtype), torch.randn(q, h, w, generator=g, dtype=dtype)


def one_case(impl: str, h: int, w: int, q: int, dtype: torch.dtype, bands: bool) -> dict:
    """Run one case in this process; time of the PAMR call(s) and peak growth of the process."""
    fn = previous_pamr if impl == "previous" else _current()
    image, logits = _inputs(h, w, q, dtype)
    base = _rss_mib()
    t = time.perf_counter()
    if bands:  # the Segmenter's rule: bands of rows by _BAND_BYTES (classes = queries), each widened by the halo
        from glaclip.segmenter import _BAND_BYTES

        rows, halo = max(1, _BAND_BYTES // (4 * 3 * q * w)), 10 * 16
        for y0 in range(0, h, rows):
            a, b = max(y0 - halo, 0), min(y0 + rows + halo, h)
            fn(image[:, a:b], logits[:, a:b])
    else:
        fn(image, logits)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 2), "peak_growth_mib": round(peak - base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1500x2000,3000x4000", help="HxW,HxW,...")
    ap.add_argument("--queries", type=int, default=21)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--impl", default="previous,current", help="previous, current or both")
    ap.add_argument("--bands", action="store_true", help="call PAMR band by band as the Segmenter does")
    ap.add_argument("--check", action="store_true", help="max |previous - current| on 600x800 with 5 queries")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.one:
        impl, h, w = args.one.split(":")
        print(json.dumps(one_case(impl, int(h), int(w), args.queries, dtype, args.bands)))
        return
    if args.check:
        image, logits = _inputs(600, 800, 5, dtype, seed=1)
        diff = (previous_pamr(image, logits, tile=200) - _current()(image, logits, tile=200)).abs().max().item()
        print(f"max |previous - current| ({args.dtype}, 600x800, tiled): {diff:.3g}")
    print(f"| size | queries | dtype | threads | bands | impl | seconds | peak growth MiB |\n|{'---|' * 8}")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for impl in args.impl.split(","):
            cmd = [sys.executable, __file__, "--one", f"{impl}:{h}:{w}", "--queries", str(args.queries),
                   "--dtype", args.dtype] + (["--threads", str(args.threads)] if args.threads else [])
            r = json.loads(subprocess.run(cmd + (["--bands"] if args.bands else []), check=True,
                                          capture_output=True, text=True).stdout)
            print(f"| {h}x{w} | {args.queries} | {args.dtype} | {args.threads or torch.get_num_threads()} | "
                  f"{'yes' if args.bands else 'no'} | {impl} | {r['seconds']} | {r['peak_growth_mib']} |", flush=True)


if __name__ == "__main__":
    main()
