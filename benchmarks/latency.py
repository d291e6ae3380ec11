"""First-result latency of `glaclip segment` on CPU, as a user meets it: process start to files written.

    python benchmarks/latency.py                          # writes benchmarks/latency-cpu.md and .png
    python benchmarks/latency.py --baseline-src ../old    # also time an older checkout's code

Cases, each `python -m glaclip segment` in a fresh process: text at the full 77-token context
(GLACLIP_FULL_CONTEXT_TEXT=1, no cache), short context with a cold and a warm cache, in fp32 and
bf16, for examples/classes.txt and the VOC21 class file; labels compared with each list's first
case. Then text encoding alone, in-process (`glaclip.steps.text.text_encoder`). Weights: the real
architectures, randomly initialised and saved to files (or --clip-weights / --vfm-weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
from common import MODES, machine_line, random_weight_files, write_text
from PIL import Image


def class_file(classes: str, folder: Path) -> Path:
    """A class file path as given, or a packaged one (e.g. voc21.txt) copied out: older code has no --dataset."""
    if Path(classes).is_file():
        return Path(classes)
    copy = folder / f"classes-{classes}"
    copy.write_text(resources.files("glaclip").joinpath("classes", classes).read_text(encoding="utf-8"))
    return copy


def segment_process(a: argparse.Namespace, classes: Path, dtype: str, mode: str, out: Path,
                    cache: Path) -> tuple[float, np.ndarray]:
    """`glaclip segment` in a fresh process: (seconds from start to files written, labels)."""
    env = dict(os.environ, GLACLIP_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    env.pop("GLACLIP_FULL_CONTEXT_TEXT", None)
    args = [sys.executable, "-m", "glaclip", "segment", a.image, "-o", str(out), "--device", "cpu", "--dtype", dtype,
            "--clip", a.clip, "--vfm", a.vfm, "--clip-weights", str(a.clip_weights), "--vfm-weights",
            str(a.vfm_weights), "--class-file", str(classes), "-q"]
    if mode == "full":
        env["GLACLIP_FULL_CONTEXT_TEXT"] = "1"
        args.append("--no-cache")
    if mode == "previous":
        env["PYTHONPATH"] = str(Path(a.baseline_src).resolve() / "src")
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"glaclip segment failed: {proc.stderr.strip()[-300:]}")
    return seconds, np.asarray(Image.open(out / f"{Path(a.image).stem}_labels.png"))


def text_timing(a: argparse.Namespace, classes: Path, cache: Path) -> dict:
    """Seconds of TextEncoder.embed (glaclip.steps.text.text_encoder): full context, short context (cold cache),
    warm disk cache, each a new encoder over the same loaded CLIP."""
    from glaclip import read_class_file
    from glaclip.models.loading import load_clip
    from glaclip.steps.text import text_encoder

    queries = read_class_file(classes)
    out = {"queries": len(queries.queries)}
    clip = load_clip(a.clip, str(a.clip_weights), device="cpu", dtype="fp32")
    for mode in ("full", "short", "warm"):
        enc = text_encoder(clip, cache=cache if mode != "full" else False, short_context=mode != "full",
                           progress=False)
        start = time.perf_counter()
        enc.embed(queries.queries)  # 'short' fills the cache that a new encoder then reads ('warm')
        out[mode] = time.perf_counter() - start
    return out


def latency(a: argparse.Namespace, tmp: Path) -> tuple[list[str], list[dict]]:
    """Every segment case, then text timing; returns Markdown lines and rows."""
    rows = []
    for classes in a.classes:
        path = class_file(classes, tmp)
        base = None
        for dtype in a.dtypes:
            cache = tmp / f"cache-{dtype}-{path.stem}"
            modes = (["previous"] if a.baseline_src and dtype == "fp32" else []) + \
                (["full"] if dtype == "fp32" else []) + ["cold", "warm"]
            for mode in modes:
                out = tmp / f"out-{len(rows)}"  # a fresh folder: a rerun into the same one would resume
                seconds, labels = segment_process(a, path, dtype, mode, out, cache)
                base = base or (seconds, labels)
                row = {"classes": Path(classes).name, "dtype": dtype, "text": MODES[mode], "mode": mode,
                       "seconds": round(seconds, 1), "speedup": round(base[0] / seconds, 2),
                       "labels_equal_pct": round(float((labels == base[1]).mean() * 100), 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = [f"Machine: {machine_line('cpu')}; {a.image}; {a.weights_note}; every case a fresh process (start to "
             "files written).", "",
             "| classes | dtype | text | first result s | speed-up vs first row | labels equal to first row |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['classes']} | {r['dtype']} | {r['text']} | {r['seconds']} | {r['speedup']}x | "
              f"{r['labels_equal_pct']}% |" for r in rows]
    lines += ["", "| classes | queries | text full context s | short context s | warm cache s | full / short |",
              "|---|---|---|---|---|---|"]
    for classes in a.classes:
        t = text_timing(a, class_file(classes, tmp), tmp / f"text-cache-{Path(classes).stem}")
        lines.append(f"| {classes} | {t['queries']} | {t['full']:.1f} | {t['short']:.1f} | {t['warm']:.2f} | "
                     f"{t['full'] / t['short']:.1f}x |")
        print(lines[-1], flush=True)
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="examples/street.png")
    ap.add_argument("--classes", action="append", help="class files: paths or packaged names, repeatable "
                    "(default: examples/classes.txt voc21.txt)")
    ap.add_argument("--dtype", dest="dtypes", action="append", help="repeatable (default: fp32 bf16)")
    ap.add_argument("--clip", default="ViT-B-16-quickgelu")
    ap.add_argument("--vfm", default="vit_base_patch8_224.dino")
    ap.add_argument("--clip-weights", help="a weight file (default: random weights saved to a file)")
    ap.add_argument("--vfm-weights", help="a weight file (default: random weights saved to a file)")
    ap.add_argument("--baseline-src", help="also time the glaclip code of this checkout (e.g. an earlier commit)")
    ap.add_argument("--out", default="benchmarks/latency-cpu.md")
    ap.add_argument("--plot", default="benchmarks/latency-cpu.png", help="PNG chart; 'none' for no chart")
    a = ap.parse_args()
    a.classes = a.classes or ["examples/classes.txt", "voc21.txt"]
    a.dtypes = a.dtypes or ["fp32", "bf16"]
    if not Path(a.image).is_file():
        raise SystemExit(f"image not found: {a.image}")
    tmp = Path(tempfile.mkdtemp(prefix="glaclip-latency-"))
    a.weights_note = "weights from files"
    if not (a.clip_weights and a.vfm_weights):
        a.clip_weights, a.vfm_weights = random_weight_files(tmp, a.clip, a.vfm)
        a.weights_note = f"random weights of {a.clip} + {a.vfm} saved to files"
    lines, rows = latency(a, tmp)
    print("\n".join(lines))
    write_text(a.out, lines)
    if a.plot.lower() != "none":
        from charts import latency_chart

        latency_chart(rows, a.plot)


if __name__ == "__main__":
    main()
