"""Time and peak memory of the global GLA attention, block-wise vs a naive dense N x N version.

Each case runs in a fresh subprocess; "+peak" is how far the call raised the peak RSS (CPU) or the
max allocated memory (CUDA) above what the process held before it.
Token counts follow METHOD.md: windows x 784 tokens (28 x 28 DINO ViT-B/8 grid), 768 channels.

    python benchmarks/attention_memory.py                      # CPU, default sizes
    python benchmarks/attention_memory.py --device cuda --dtype fp16
    python benchmarks/attention_memory.py --windows 6 36 153 --dense-max 30000 --out results.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

SIZES = {6: "336x448", 15: "336x672", 36: "560x1120", 153: "1080x1920 native"}


def one_case(n: int, channels: int, mode: str, device: str, dtype: str, block_rows: int | None) -> dict:
    import resource
    import time

    import torch
    import torch.nn.functional as F

    from glaclip.attention import dense_gla_attention, gla_attention
    from glaclip.presets import AttentionConfig

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    centres = torch.randn(64, channels, generator=g)
    keys = centres[torch.randint(0, 64, (n,), generator=g)] + 0.7 * torch.randn(n, channels, generator=g)
    keys = F.normalize(keys, dim=-1).to(device=device, dtype=dt)
    values = torch.randn(n, channels, generator=g).to(device=device, dtype=dt)
    cfg = AttentionConfig(block_rows=block_rows)
    fn = gla_attention if mode == "block" else dense_gla_attention
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    fn(keys, values, max(1, n // 784), cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"seconds": time.perf_counter() - start, "peak_mb": peak}


def run_case(*args) -> dict | None:
    code = f"import json, sys; sys.path.insert(0, {sys.path[0]!r}); from attention_memory import one_case; " \
           f"print(json.dumps(one_case(*{list(args)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[6, 15, 36, 153])
    ap.add_argument("--channels", type=int, default=768)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--block-rows", type=int, default=None, help="default: from the 512 MB budget")
    ap.add_argument("--dense-max", type=int, default=30_000, help="skip dense above this many tokens")
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    args = ap.parse_args()

    lines = [f"machine: {platform.machine()} {platform.processor() or ''} | device {args.device} | {args.dtype} | "
             f"C={args.channels}", "",
             "| image | windows | tokens N | block s | block +peak MiB | dense s | dense +peak MiB | one N x N fp32 MiB |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for w in args.windows:
        n = w * 784
        blk = run_case(n, args.channels, "block", args.device, args.dtype, args.block_rows)
        dense = run_case(n, args.channels, "dense", args.device, args.dtype, None) if n <= args.dense_max else None

        def fmt(r, key):
            if r is None:
                return "skipped"
            return r["error"][:40] if "error" in r else f"{r[key]:.2f}" if key == "seconds" else f"{r[key]:.0f}"

        row = (f"| {SIZES.get(w, '')} | {w} | {n} | {fmt(blk, 'seconds')} | {fmt(blk, 'peak_mb')} | "
               f"{fmt(dense, 'seconds')} | {fmt(dense, 'peak_mb')} | {n * n * 4 / 2**20:.0f} |")
        print(row, flush=True)
        lines.append(row)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
