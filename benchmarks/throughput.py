"""Throughput of `glaclip segment` over a collection: images/s, windows batched across images vs one
image at a time, in one run (models loaded once, text encoded once, not timed).

    python benchmarks/throughput.py [--count 200] [--device cpu] [--dtype fp32]

Images: COUNT synthetic 480x320 images, 6 classes; real architectures (OpenAI ViT-B/16 + DINO ViT-B/8)
with random weights. Prints a Markdown table; writes benchmarks/throughput-<device>.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import structured_image

    from glaclip import Segmenter
    from glaclip.batch import Options, segment_collection
    from glaclip.bench import machine_line
    from glaclip.collection import collect
    from glaclip.text import parse_classes

    tmp = Path(tempfile.mkdtemp(prefix="glaclip-throughput-"))
    (tmp / "in").mkdir()
    for i in range(a.count):
        Image.fromarray(structured_image(320, 480, seed=i)).save(tmp / "in" / f"im{i:04d}.png")
    seg = Segmenter.from_pretrained(clip_weights="random", vfm_weights="random", device=a.device, dtype=a.dtype,
                                    progress=False)
    queries = parse_classes("sky, road, car, person, tree, building")
    seg.query_embeddings(queries)
    items = collect([str(tmp / "in")])
    rows = []
    labels = {}
    for name, opts in (("one image at a time, 1 decoding thread", Options(batch_images=1, workers=1)),
                       ("4 images per forward, 2 decoding threads", Options(batch_images=4, workers=2))):
        out = tmp / name.split()[0]
        start = time.perf_counter()
        segment_collection(seg, items, queries, out, opts, progress=False)
        seconds = time.perf_counter() - start
        labels[name] = [np.asarray(Image.open(out / f"{it.rel}_labels.png")) for it in items]
        rows.append((name, seconds, a.count / seconds))
        print(f"{name}: {seconds:.1f} s, {a.count / seconds:.3f} images/s", flush=True)
    same = np.mean([np.array_equal(x, y) for x, y in zip(*labels.values())]) * 100
    lines = [f"Machine: {machine_line(a.device)}; device {a.device}, dtype {a.dtype}; {a.count} images 480x320, "
             "6 classes, random weights; models and text outside the timing.", "",
             "| mode | seconds | images/s | speed-up |", "|---|---|---|---|"]
    lines += [f"| {n} | {s:.1f} | {r:.3f} | {r / rows[0][2]:.2f}x |" for n, s, r in rows]
    lines += ["", f"Label maps identical between the two modes: {same:.1f}% of images."]
    print("\n".join(lines))
    Path(a.out or f"benchmarks/throughput-{a.device.split(':')[0]}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
