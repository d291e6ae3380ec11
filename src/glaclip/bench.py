"""Benchmark: time and peak memory per image size and method, with a naive dense attention beside it.

Every case runs in its own subprocess, so each peak (CPU RSS, or CUDA max allocated) is that case's
own. Models are the real architectures with random weights: no download needed, same cost.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .methods import DEFAULT_METHOD

DEFAULT_SIZES = ("336x448", "560x1120", "1080x1920", "2160x3840")
# Sizes whose short side is not a preset's are run at native resolution (no resize).
PRESET_SHORT_SIDES = (336, 560)


@dataclass(frozen=True)
class Case:
    kind: str  # "pipeline", "block" or "dense"
    height: int
    width: int
    method: str = DEFAULT_METHOD
    device: str = "cpu"
    dtype: str = "auto"
    clip: str = "ViT-B-16-quickgelu"
    vfm: str = "vit_base_patch8_224.dino"
    channels: int = 768


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        from .errors import GlaclipError

        raise GlaclipError(f"size must look like 560x1120 (height x width), got {text!r}") from None
    return h, w


def native_settings(h: int, w: int) -> dict:
    """Preset overrides that keep the image at its own size (METHOD.md's sizes are already final)."""
    return {"short_side": min(h, w), "max_long_side": max(h, w, 2048)}


def token_count(h: int, w: int, patch: int = 8) -> tuple[int, int]:
    from .windows import window_grid

    grid = window_grid(h, w, 224, 112, 56)
    ph, pw = grid.padded_size
    return grid.count, grid.count * (ph // patch) * (pw // patch)


def _child(case: Case) -> dict:
    """Runs inside the subprocess."""
    import resource
    import time

    import numpy as np
    import torch

    def peak_mb() -> float:
        if case.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    windows, tokens = token_count(case.height, case.width)
    if case.kind == "pipeline":
        from .segmenter import Segmenter
        from .text import parse_classes

        seg = Segmenter.from_pretrained(clip=case.clip, clip_weights="random", vfm=case.vfm, vfm_weights="random",
                                        method=case.method, device=case.device, dtype=case.dtype,
                                        **native_settings(case.height, case.width))
        image = np.random.default_rng(0).integers(0, 256, (case.height, case.width, 3), dtype=np.uint8)
        classes = ["sky", "road", "car", "person", "tree", "building"]
        seg.query_embeddings(parse_classes(classes))  # text encoding is cached work, not timed
        before = peak_mb()
        start = time.perf_counter()
        seg.predict(image, classes)
    else:
        import torch.nn.functional as F

        from .attention import dense_gla_attention, gla_attention
        from .models import resolve_device, resolve_dtype
        from .presets import AttentionConfig

        dev = resolve_device(case.device)
        dt = resolve_dtype(case.dtype, dev)
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(64, case.channels, generator=g)
        keys = centres[torch.randint(0, 64, (tokens,), generator=g)] + 0.7 * torch.randn(tokens, case.channels,
                                                                                            generator=g)
        keys = F.normalize(keys, dim=-1).to(dev, dt)
        values = torch.randn(tokens, case.channels, generator=g).to(dev, dt)
        fn = gla_attention if case.kind == "block" else dense_gla_attention
        before = peak_mb()
        start = time.perf_counter()
        fn(keys, values, windows, AttentionConfig())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(), "growth_mb": peak_mb() - before, "windows": windows,
            "tokens": tokens}


def run(case: Case, timeout: float | None = None) -> dict:
    code = ("import json, sys; from glaclip.bench import Case, _child; "
            f"print('GLACLIP-BENCH ' + json.dumps(_child(Case(**{case.__dict__!r}))))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("GLACLIP-BENCH "):
            return json.loads(line[len("GLACLIP-BENCH "):])
    if proc.returncode < 0 or "MemoryError" in proc.stderr or "out of memory" in proc.stderr.lower():
        return {"error": "out of memory"}
    return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:80]}


def _cell(r: dict | None, key: str) -> str:
    if r is None:
        return "skipped"
    if "error" in r:
        return r["error"]
    return f"{r[key]:.1f}" if key == "seconds" else f"{r[key]:.0f}"


def machine_line(device: str) -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    line = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name(0)}"
    return line


def benchmark(sizes: list[str], methods: list[str], device: str = "cpu", dtype: str = "auto",
              clip: str = "ViT-B-16-quickgelu", vfm: str = "vit_base_patch8_224.dino", dense: bool = True,
              dense_max_tokens: int = 30_000, max_tokens: int | None = None, timeout: float | None = None,
              pipeline: bool = True, echo=print) -> tuple[list[str], list[dict]]:
    """Run every case; returns the Markdown lines and the raw rows."""
    lines = [f"Machine: {machine_line(device)}; device {device}, dtype {dtype}; CLIP {clip}, VFM {vfm} "
             "(random weights). Peak = the process's peak RSS (CPU) or max CUDA allocation, MiB.", "",
             "| image | windows | tokens N | method | pipeline s | pipeline peak | GLA attention s | attention +peak "
             "| dense s | dense +peak | dense / block memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        echo(line)
    rows = []
    for size in sizes:
        h, w = parse_size(size)
        windows, tokens = token_count(h, w)
        too_big = max_tokens is not None and tokens > max_tokens
        block = dense_r = None
        if not too_big:
            block = run(Case("block", h, w, device=device, dtype=dtype), timeout)
            if dense and tokens <= dense_max_tokens:
                dense_r = run(Case("dense", h, w, device=device, dtype=dtype), timeout)
        for method in methods:
            pipe = None
            if not too_big and pipeline:
                pipe = run(Case("pipeline", h, w, method, device, dtype, clip, vfm), timeout)
            ratio = "n/a"
            if block and dense_r and "error" not in block and "error" not in dense_r:
                ratio = f"{dense_r['growth_mb'] / max(block['growth_mb'], 1):.1f}x"
            elif not too_big and not (dense and tokens <= dense_max_tokens):
                ratio = f"dense skipped: one N x N fp32 matrix alone is {tokens * tokens * 4 / 2**30:.1f} GiB"
            label = f"{h}x{w}" + ("" if min(h, w) in PRESET_SHORT_SIDES else " native")
            row = (f"| {label} | {windows} | {tokens} | {method} | {_cell(pipe, 'seconds')} | {_cell(pipe, 'peak_mb')} "
                   f"| {_cell(block, 'seconds')} | {_cell(block, 'growth_mb')} | {_cell(dense_r, 'seconds')} "
                   f"| {_cell(dense_r, 'growth_mb')} | {ratio} |")
            if too_big:
                row = f"| {label} | {windows} | {tokens} | {method} | skipped (over --max-tokens) | | | | | | |"
            echo(row)
            lines.append(row)
            rows.append({"size": label, "windows": windows, "tokens": tokens, "method": method, "pipeline": pipe,
                         "block": block, "dense": dense_r})
    return lines, rows


def plot(rows: list[dict], path: str | Path) -> None:
    """Log-log PNG: attention time and memory against tokens, block-wise vs dense (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    series = {"block s": [], "dense s": [], "block MiB": [], "dense MiB": []}
    seen = set()
    for r in rows:
        if r["tokens"] in seen:
            continue
        seen.add(r["tokens"])
        for kind in ("block", "dense"):
            res = r[kind]
            if res and "error" not in res:
                series[f"{kind} s"].append((r["tokens"], res["seconds"]))
                series[f"{kind} MiB"].append((r["tokens"], max(res["growth_mb"], 1.0)))
    img = Image.new("RGB", (1000, 420), "white")
    draw = ImageDraw.Draw(img)
    colours = {"block": (31, 119, 180), "dense": (214, 39, 40)}
    for panel, unit in enumerate(("s", "MiB")):
        x0, y0, x1, y1 = 70 + panel * 500, 30, 470 + panel * 500, 370
        draw.rectangle([x0, y0, x1, y1], outline="black")
        pts = [p for k in ("block", "dense") for p in series[f"{k} {unit}"]]
        if not pts:
            continue
        lx = [math.log10(p[0]) for p in pts]
        ly = [math.log10(p[1]) for p in pts]
        xmin, xmax = min(lx) - 0.1, max(lx) + 0.1
        ymin, ymax = min(ly) - 0.2, max(ly) + 0.2

        def at(x, y):
            return (x0 + (math.log10(x) - xmin) / (xmax - xmin) * (x1 - x0),
                    y1 - (math.log10(y) - ymin) / (ymax - ymin) * (y1 - y0))

        for k in ("block", "dense"):
            xy = [at(*p) for p in sorted(series[f"{k} {unit}"])]
            if len(xy) > 1:
                draw.line(xy, fill=colours[k], width=3)
            for px, py in xy:
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colours[k])
        for p in sorted(set(q[0] for q in pts)):
            px, _ = at(p, 10 ** ymin)
            draw.text((px, y1 + 6), f"{p // 1000}k", fill="black", anchor="mt")
        for e in range(math.ceil(ymin), math.floor(ymax) + 1):
            _, py = at(10 ** xmin, 10 ** e)
            draw.text((x0 - 6, py), f"{10 ** e:g}", fill="black", anchor="rm")
        title = "GLA attention time (s)" if unit == "s" else "GLA attention memory growth (MiB)"
        draw.text(((x0 + x1) / 2, 12), title + " vs tokens N (log-log)", fill="black", anchor="mm")
        for i, k in enumerate(("block", "dense")):
            draw.line([x0 + 12, y0 + 16 + 18 * i, x0 + 40, y0 + 16 + 18 * i], fill=colours[k], width=3)
            draw.text((x0 + 46, y0 + 16 + 18 * i), "block-wise" if k == "block" else "naive dense", fill="black",
                      anchor="lm")
    draw.text((500, 400), "tokens N", fill="black", anchor="mm")
    img.save(path)


# ------------------------------------------------------------------------- first-result latency

LATENCY_MODES = {"full": "full context, no cache", "cold": "short context, cold cache",
                 "warm": "short context, warm cache", "previous": "previous code (--baseline-src)"}


def random_weight_files(folder: Path, clip: str = "ViT-B-16-quickgelu",
                        vfm: str = "vit_base_patch8_224.dino") -> tuple[Path, Path]:
    """Save randomly initialised real architectures to files (weights named 'random' are never cached)."""
    import torch

    from .models import load_clip, load_vfm

    torch.manual_seed(0)
    c, v = folder / "clip-random.pt", folder / "dino-random.pth"
    torch.save(load_clip(clip, "random", device="cpu", dtype="fp32").model.state_dict(), c)
    torch.save(load_vfm(vfm, "random", device="cpu", dtype="fp32").model.state_dict(), v)
    return c, v


def _segment_process(image: str, classes: str, dtype: str, mode: str, weights: tuple[Path, Path], out: Path,
                     cache: Path, baseline_src: str | None = None) -> tuple:
    """Run `glaclip segment` in a fresh process; (seconds from start to files written, labels)."""
    import os

    import numpy as np
    from PIL import Image

    env = dict(os.environ, GLACLIP_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "glaclip", "segment", image, "-o", str(out), "--device", "cpu", "--dtype", dtype,
            "--clip-weights", str(weights[0]), "--vfm-weights", str(weights[1]), "-q"]
    if Path(classes).is_file():
        args += ["--class-file", classes]
    else:  # a packaged class file, e.g. voc21.txt
        from importlib import resources

        packaged = out.parent / f"classes-{classes}"  # the previous code has no --dataset
        packaged.write_text(resources.files("glaclip").joinpath("classes", classes).read_text(encoding="utf-8"))
        args += ["--class-file", str(packaged)]
    if mode == "full":
        env["GLACLIP_FULL_CONTEXT_TEXT"] = "1"
        args.append("--no-cache")
    if mode == "previous":
        env["PYTHONPATH"] = str(Path(baseline_src) / "src")
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"glaclip segment failed: {proc.stderr.strip()[-300:]}")
    return seconds, np.asarray(Image.open(out / f"{Path(image).stem}_labels.png"))


def text_timing(weights: Path, classes: str, cache: Path, dtype: str = "fp32") -> dict:
    """Seconds to embed a class file's queries in this process: full context, short context, warm disk cache."""
    import open_clip

    from .datasets import packaged_classes
    from .models import load_clip
    from .text import TextEncoder, read_class_file, short_context_encoder
    from .text_cache import clip_text_cache

    clip = load_clip("ViT-B-16-quickgelu", str(weights), device="cpu", dtype=dtype)
    queries = list((read_class_file(classes) if Path(classes).is_file() else packaged_classes(classes)).queries)
    tok = open_clip.get_tokenizer(clip.name)
    out = {}
    for mode in ("full", "short", "warm"):
        enc = TextEncoder(clip.encode_text, tok, clip.visual.conv1.weight.device, progress=False,
                          short_encode=None if mode == "full" else short_context_encoder(clip.model))
        if mode != "full":
            enc.disk = clip_text_cache(clip, enc.prompt_strings, cache)
        start = time.perf_counter()
        enc.embed(queries)
        out[mode] = time.perf_counter() - start
    out["queries"] = len(queries)
    return out


def latency(image: str = "examples/street.png", class_files: tuple[str, ...] = ("examples/classes.txt", "voc21.txt"),
            dtypes: tuple[str, ...] = ("fp32", "bf16"), baseline_src: str | None = None,
            echo=print) -> tuple[list[str], list[dict]]:
    """First-result latency of `glaclip segment` (process start to files written) per class list,
    precision and text mode, each in a fresh process, with labels compared against the first case;
    plus in-process text timing. Returns Markdown lines and rows."""
    import json as _json
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="glaclip-latency-"))
    weights = random_weight_files(tmp)
    rows = []
    for classes in class_files:
        base = None
        for dtype in dtypes:
            cache = tmp / f"cache-{dtype}-{Path(classes).stem}"
            modes = (["previous"] if baseline_src and dtype == "fp32" else []) + \
                (["full"] if dtype == "fp32" else []) + ["cold", "warm"]
            for mode in modes:
                out = tmp / f"out-{len(rows)}"  # a fresh folder: a rerun into the same one would resume
                seconds, labels = _segment_process(image, classes, dtype, mode, weights, out, cache, baseline_src)
                if base is None:
                    base = (seconds, labels)
                row = {"classes": Path(classes).name, "dtype": dtype, "text": LATENCY_MODES[mode],
                       "seconds": round(seconds, 1), "speedup": round(base[0] / seconds, 2),
                       "labels_equal_pct": round(float((labels == base[1]).mean() * 100), 3)}
                rows.append(row)
                echo(_json.dumps(row))
    lines = [f"Machine: {machine_line('cpu')}; {image}; random weights of OpenAI ViT-B/16 + DINO ViT-B/8 saved to "
             "files; every case a fresh process (start to files written).", "",
             "| classes | dtype | text | first result s | speed-up vs first row | labels equal to first row |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['classes']} | {r['dtype']} | {r['text']} | {r['seconds']} | {r['speedup']}x | "
              f"{r['labels_equal_pct']}% |" for r in rows]
    lines += ["", "| classes | queries | text full context s | short context s | warm cache s | full / short |",
              "|---|---|---|---|---|---|"]
    for classes in class_files:
        t = text_timing(weights[0], classes, tmp / f"text-cache-{Path(classes).stem}")
        lines.append(f"| {Path(classes).name} | {t['queries']} | {t['full']:.1f} | {t['short']:.1f} | "
                     f"{t['warm']:.2f} | {t['full'] / t['short']:.1f}x |")
        echo(lines[-1])
    return lines, rows


def latency_plot(rows: list[dict], path: str | Path) -> None:
    """Bar chart (Pillow) of first-result seconds per case."""
    from PIL import Image, ImageDraw

    w, h, left, bottom = 120 * len(rows) + 80, 420, 60, 90
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(r["seconds"] for r in rows) * 1.1
    colours = {"full": (214, 39, 40), "previous": (120, 120, 120), "cold": (255, 160, 40), "warm": (44, 160, 44)}
    d.line([left, 20, left, h - bottom, w - 10, h - bottom], fill="black")
    for i, r in enumerate(rows):
        x = left + 20 + i * 120
        y = h - bottom - (h - bottom - 20) * r["seconds"] / top
        kind = next(k for k, v in LATENCY_MODES.items() if v == r["text"])
        d.rectangle([x, y, x + 80, h - bottom], fill=colours[kind])
        d.text((x, y - 14), f"{r['seconds']} s", fill="black")
        for k, line in enumerate((r["classes"], r["dtype"], *r["text"].split(", "))):
            d.text((x, h - bottom + 6 + 14 * k), line[:18], fill="black")
    d.text((left + 10, 4), "glaclip segment: process start -> files written (s), CPU", fill="black")
    img.save(path)
