"""Encode once, ask many: re-querying an image encoding with another class list vs a full predict.

    python benchmarks/requery.py [--device cpu] [--dtype fp32] [--repeat 5]

examples/street.png (480x320), OpenAI ViT-B/16 + DINO ViT-B/8 with random weights, GLA-ProxyCLIP;
two 6-class lists whose text embeddings are already known (encoded before the timing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="examples/street.png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clip", default="ViT-B-16-quickgelu")
    ap.add_argument("--vfm", default="vit_base_patch8_224.dino")
    a = ap.parse_args()

    from common import machine_line
    from PIL import Image

    from glaclip import Segmenter, parse_classes

    seg = Segmenter.from_pretrained(clip=a.clip, clip_weights="random", vfm=a.vfm, vfm_weights="random",
                                    device=a.device, dtype=a.dtype, progress=False)
    first = parse_classes("sky, road, car, person, tree, building")
    second = parse_classes("grass, bicycle, wall, window, sidewalk, bus")
    seg.query_embeddings(first)
    seg.query_embeddings(second)
    rgb = np.asarray(Image.open(a.image).convert("RGB"))
    times = {"full predict (image)": [], "encode_image": [], "re-query (encoding, other classes)": []}
    for _ in range(a.repeat):
        t = time.perf_counter()
        full = seg.predict(rgb, second)
        times["full predict (image)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        enc = seg.encode_image(rgb)
        times["encode_image"].append(time.perf_counter() - t)
        seg.predict(enc, first)
        t = time.perf_counter()
        again = seg.predict(enc, second)
        times["re-query (encoding, other classes)"].append(time.perf_counter() - t)
    same = float((again.labels == full.labels).mean() * 100)
    diff = float(np.abs(again.probs - full.probs).max())
    print(f"Machine: {machine_line(a.device)}; {a.image} {rgb.shape[1]}x{rgb.shape[0]}, {enc.grid.count} windows, "
          f"encoding {enc.nbytes / 2**20:.1f} MiB; median of {a.repeat}\n")
    print("| step | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.3f} |")
    print(f"\nre-query vs full predict: labels equal on {same:.3f}% of pixels, max |probability difference| {diff:.2e}")


if __name__ == "__main__":
    main()
