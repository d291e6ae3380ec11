"""Time and peak memory per image size and method: the whole pipeline, and GLA's block-wise attention
beside the naive dense one (attention.dense_gla_attention, the whole N x N matrix).

    python benchmarks/run.py                                  # CPU: 336x448, 560x1120, 1080x1920 native
    python benchmarks/run.py --size 2160x3840 --device cuda

Every case runs in a fresh process, so each peak (CPU resident set, or CUDA max allocation) is that
case's own. Models are the real architectures with random weights: nothing to download, same cost.
Writes benchmarks/results-<device>.md and .png (matplotlib) unless --out / --plot say otherwise.
"""

from __future__ import annotations

import argparse
import time

from common import isolated, machine_line, native_settings, parse_size, peak_mb, token_count, torch_dtype, write_text

PRESET_SHORT_SIDES = (336, 560)  # other sizes run at native resolution (no resize)
CLASSES = "sky, road, car, person, tree, building"


def pipeline_case(h: int, w: int, method: str, device: str, dtype: str, clip: str, vfm: str) -> dict:
    """Segmenter.predict on a random image of h x w (text embeddings made first, not timed)."""
    import numpy as np

    from glaclip import Segmenter, parse_classes

    seg = Segmenter.from_pretrained(clip=clip, clip_weights="random", vfm=vfm, vfm_weights="random", method=method,
                                    device=device, dtype=dtype, progress=False, **native_settings(h, w))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    seg.query_embeddings(parse_classes(CLASSES))
    before = peak_mb(device)
    start = time.perf_counter()
    seg.predict(image, CLASSES)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(device), "growth_mb": peak_mb(device) - before}


def attention_case(kind: str, tokens: int, windows: int, device: str, dtype: str, channels: int = 768) -> dict:
    """gla_attention ('block') or dense_gla_attention ('dense') on N clustered unit keys."""
    import torch
    import torch.nn.functional as F

    from glaclip import AttentionConfig
    from glaclip.methods.attention import dense_gla_attention, gla_attention

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(64, channels, generator=g)
    keys = centres[torch.randint(0, 64, (tokens,), generator=g)] + 0.7 * torch.randn(tokens, channels, generator=g)
    keys = F.normalize(keys, dim=-1).to(device, torch_dtype(dtype, device))
    values = torch.randn(tokens, channels, generator=g).to(device, torch_dtype(dtype, device))
    fn = gla_attention if kind == "block" else dense_gla_attention
    before = peak_mb(device)
    start = time.perf_counter()
    fn(keys, values, windows, AttentionConfig())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(device), "growth_mb": peak_mb(device) - before}


def _cell(r: dict | None, key: str) -> str:
    if r is None:
        return "skipped"
    if "error" in r:
        return r["error"]
    return f"{r[key]:.1f}" if key == "seconds" else f"{r[key]:.0f}"


def benchmark(a: argparse.Namespace) -> tuple[list[str], list[dict]]:
    """Run every case; returns the Markdown lines and the raw rows."""
    lines = [f"Machine: {machine_line(a.device)}; device {a.device}, dtype {a.dtype}; CLIP {a.clip}, VFM {a.vfm} "
             "(random weights). Peak = the process's peak RSS (CPU) or max CUDA allocation, MiB.", "",
             "| image | windows | tokens N | method | pipeline s | pipeline peak | GLA attention s | attention +peak "
             "| dense s | dense +peak | dense / block memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    rows = []
    for size in a.size:
        h, w = parse_size(size)
        windows, tokens = token_count(h, w)
        block = isolated(attention_case, "block", tokens, windows, a.device, a.dtype, timeout=a.timeout)
        dense = None
        if a.dense and tokens <= a.dense_max_tokens:
            dense = isolated(attention_case, "dense", tokens, windows, a.device, a.dtype, timeout=a.timeout)
        for method in a.method:
            pipe = None
            if a.pipeline:
                pipe = isolated(pipeline_case, h, w, method, a.device, a.dtype, a.clip, a.vfm, timeout=a.timeout)
            ratio = "n/a"
            if dense and "error" not in block and "error" not in dense:
                ratio = f"{dense['growth_mb'] / max(block['growth_mb'], 1):.1f}x"
            elif a.dense and tokens > a.dense_max_tokens:
                ratio = f"dense skipped: one N x N fp32 matrix alone is {tokens * tokens * 4 / 2**30:.1f} GiB"
            label = f"{h}x{w}" + ("" if min(h, w) in PRESET_SHORT_SIDES else " native")
            row = (f"| {label} | {windows} | {tokens} | {method} | {_cell(pipe, 'seconds')} | {_cell(pipe, 'peak_mb')} "
                   f"| {_cell(block, 'seconds')} | {_cell(block, 'growth_mb')} | {_cell(dense, 'seconds')} "
                   f"| {_cell(dense, 'growth_mb')} | {ratio} |")
            print(row, flush=True)
            lines.append(row)
            rows.append({"size": label, "windows": windows, "tokens": tokens, "method": method, "pipeline": pipe,
                         "block": block, "dense": dense})
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", action="append", help="HEIGHTxWIDTH, repeatable (default: 336x448 560x1120 1080x1920)")
    ap.add_argument("--method", action="append", help="repeatable (default: gla-proxyclip proxyclip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--clip", default="ViT-B-16-quickgelu")
    ap.add_argument("--vfm", default="vit_base_patch8_224.dino")
    ap.add_argument("--attention-only", dest="pipeline", action="store_false", help="skip the whole pipeline")
    ap.add_argument("--no-dense", dest="dense", action="store_false", help="skip the naive dense attention")
    ap.add_argument("--dense-max-tokens", type=int, default=30_000, help="skip dense above this (N*N*4 bytes)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per case")
    ap.add_argument("--out", help="Markdown table (default benchmarks/results-<device>.md)")
    ap.add_argument("--plot", help="PNG chart (default benchmarks/results-<device>.png); 'none' for no chart")
    a = ap.parse_args()
    a.size = a.size or ["336x448", "560x1120", "1080x1920"]
    a.method = a.method or ["gla-proxyclip", "proxyclip"]
    for size in a.size:
        parse_size(size)
    kind = a.device.split(":")[0]
    lines, rows = benchmark(a)
    write_text(a.out or f"benchmarks/results-{kind}.md", lines)
    if (a.plot or "").lower() != "none":
        from charts import scaling_chart

        scaling_chart(rows, a.plot or f"benchmarks/results-{kind}.png")


if __name__ == "__main__":
    main()
