"""Small data sets written in each benchmark's real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import structured_image
from PIL import Image

from glaclip.config.datasets import SPECS, builtin_classes


def label_map(h: int, w: int, num_values: int, seed: int) -> np.ndarray:
    """Blocks of class values with an ignore (255) stripe, like annotation boundaries."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_values, size=(3, 4))
    lab = np.kron(blocks, np.ones((h // 3 + 1, w // 4 + 1), int))[:h, :w].astype(np.uint8)
    lab[:, w // 2] = 255
    return lab


def label_map16(h: int, w: int, num_values: int, seed: int, ignore: int = 65535) -> np.ndarray:
    """`label_map` for CAT-Seg's 16-bit TIFF layouts: values beyond 255 too, the stripe at `ignore`."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_values, size=(3, 4))
    blocks[0, 0] = num_values - 1  # the last class (> 255 for 459 and 847 classes)
    lab = np.kron(blocks, np.ones((h // 3 + 1, w // 4 + 1), int))[:h, :w].astype(np.uint16)
    lab[:, w // 2] = ignore
    return lab


def write_layout(root: Path, name: str, n: int = 3, size=(60, 120)) -> list[str]:
    """Write n images + label maps for data set `name` under root; returns the sample names.

    CAT-Seg's 16-bit TIFF sets (ade847, context459) get uint16 TIFF labels written as its preparation
    scripts write them (Pillow); context459's image folder also holds an image without a label map
    (VOC2010/JPEGImages holds every VOC image)."""
    spec = SPECS[name]
    num = len(builtin_classes(spec)) + (1 if spec.reduce_zero_label else 0)
    names = []
    if spec.from_labels:
        (root / spec.img_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(structured_image(*size, seed=99)).save(root / spec.img_dir / f"2007_000001{spec.img_suffix}")
    for i in range(n):
        stem = f"frankfurt/frankfurt_{i:06d}" if name == "cityscapes" else \
            f"ADE_val_{i + 1:08d}" if name == "ade847" else f"2008_{i:06d}"
        img = root / spec.img_dir / f"{stem}{spec.img_suffix}"
        ann = root / spec.ann_dir / f"{stem}{spec.ann_suffix}"
        img.parent.mkdir(parents=True, exist_ok=True)
        ann.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(structured_image(*size, seed=i)).save(img, quality=95) if img.suffix == ".jpg" else \
            Image.fromarray(structured_image(*size, seed=i)).save(img)
        lab = Image.fromarray(label_map16(*size, num, seed=i) if spec.ann_suffix == ".tif" else
                              label_map(*size, num, seed=i))
        if name.startswith("voc"):  # VOC's SegmentationClass PNGs are palette images
            lab = lab.convert("P")
            lab.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
        lab.save(ann)
        names.append(stem)
    if spec.split_file:
        split = root / spec.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(names) + "\n")
    return names


def write_folder(root: Path, n: int = 4, size=(60, 120), classes=("sky", "road; street", "car")) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(n):
        Image.fromarray(structured_image(*size, seed=10 + i)).save(root / "images" / f"img{i}.png")
        Image.fromarray(label_map(*size, len(classes), seed=10 + i)).save(root / "labels" / f"img{i}.png")


def kill_when_logged(cmd: list[str], log: Path, lines: int = 2, timeout: float = 120) -> int:
    """Start cmd, SIGKILL it once its progress log holds `lines` lines; returns the lines logged."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < lines):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(log.read_text().splitlines())
