"""Throughput of `glaclip segment` over a folder: images/s one image at a time vs windows batched
across images with decoding threads, as a user runs it.

    python benchmarks/throughput.py [--count 24] [--device cpu] [--dtype auto]

Each mode runs `python -m glaclip segment FOLDER` twice, on COUNT images and on 1 image; the
difference leaves model loading and text encoding out: images/s = (COUNT - 1) / (t_COUNT - t_1).
Images: synthetic 480x320, 6 classes; real architectures (OpenAI ViT-B/16 + DINO ViT-B/8) with
random weights saved to files. Writes benchmarks/throughput-<device>.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_line, random_weight_files, write_text
from PIL import Image

MODES = {"one image at a time, 1 decoding thread": ["--batch-images", "1", "--workers", "1"],
         "4 images per forward, 2 decoding threads": ["--batch-images", "4", "--workers", "2"]}


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """Gradients, a checker pattern and noise: structure for random models to see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), ((xx // 37 + yy // 29 + seed) % 2) * 220], -1)
    return np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)


def segment_seconds(a: argparse.Namespace, folder: Path, out: Path, flags: list[str]) -> float:
    args = [sys.executable, "-m", "glaclip", "segment", str(folder), "-o", str(out), "-c",
            "sky, road, car, person, tree, building", "--device", a.device, "--dtype", a.dtype, "--clip", a.clip,
            "--vfm", a.vfm, "--clip-weights", str(a.clip_weights), "--vfm-weights", str(a.vfm_weights), "-q", *flags]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode:
        raise SystemExit(f"glaclip segment failed: {proc.stderr.strip()[-300:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--size", default="320x480", help="HEIGHTxWIDTH of the synthetic images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--clip", default="ViT-B-16-quickgelu")
    ap.add_argument("--vfm", default="vit_base_patch8_224.dino")
    ap.add_argument("--clip-weights", help="a weight file (default: random weights saved to a file)")
    ap.add_argument("--vfm-weights", help="a weight file (default: random weights saved to a file)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.count < 2:
        raise SystemExit("--count must be at least 2")
    h, w = (int(v) for v in a.size.split("x"))

    tmp = Path(tempfile.mkdtemp(prefix="glaclip-throughput-"))
    if not (a.clip_weights and a.vfm_weights):
        a.clip_weights, a.vfm_weights = random_weight_files(tmp, a.clip, a.vfm)
    many, one = tmp / "in", tmp / "in-one"
    many.mkdir()
    one.mkdir()
    for i in range(a.count):
        Image.fromarray(synthetic_image(h, w, seed=i)).save(many / f"im{i:04d}.png")
    (one / "im0000.png").write_bytes((many / "im0000.png").read_bytes())
    rows, labels = [], {}
    for k, (name, flags) in enumerate(MODES.items()):
        t1 = segment_seconds(a, one, tmp / f"out-one-{k}", flags)
        tn = segment_seconds(a, many, tmp / f"out-{k}", flags)
        rate = (a.count - 1) / max(tn - t1, 1e-9)
        labels[name] = [np.asarray(Image.open(tmp / f"out-{k}" / f"im{i:04d}_labels.png")) for i in range(a.count)]
        rows.append((name, t1, tn, rate))
        print(f"{name}: 1 image {t1:.1f} s, {a.count} images {tn:.1f} s, {rate:.3f} images/s", flush=True)
    same = np.mean([np.array_equal(x, y) for x, y in zip(*labels.values())]) * 100
    lines = [f"Machine: {machine_line(a.device)}; device {a.device}, dtype {a.dtype}; {a.count} images {w}x{h}, "
             "6 classes, random weights; `glaclip segment` on a folder, model loading and text encoding left out "
             f"(run on 1 image subtracted).", "",
             f"| mode | 1 image s | {a.count} images s | images/s | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {t1:.1f} | {tn:.1f} | {r:.3f} | {r / rows[0][3]:.2f}x |" for n, t1, tn, r in rows]
    lines += ["", f"Label maps identical between the two modes: {same:.1f}% of images."]
    print("\n".join(lines))
    write_text(a.out or f"benchmarks/throughput-{a.device.split(':')[0]}.md", lines)


if __name__ == "__main__":
    main()
