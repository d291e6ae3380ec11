"""`glaclip bench`: how fast is this machine? Time and peak memory of the real pipeline per image
size, beside the same pipeline with the global attention held as one naive dense N x N matrix.

The maintainers' benchmarks (sizes x methods, first-result latency, throughput, charts) are
scripts in the repository's `benchmarks/` folder, not part of the package.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import torch

from ..config.classes import parse_classes
from ..config.registry import GLOBAL_FAMILIES
from ..errors import GlaclipError
from ..io.images import resized_shape

CLASSES = "sky, road, car, person, tree, building"


def parse_size(text: str) -> tuple[int, int]:
    """'560x1120' -> (560, 1120): height x width."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise GlaclipError(f"size must look like 560x1120 (height x width), got {text!r}")
    return h, w


class PeakMemory:
    """Peak memory above the level at entry of a `with` block, in MiB (`.mb` after the block).

    CUDA: the allocator's own peak counter. CPU: the process's resident set, sampled every
    millisecond by a thread (Linux /proc), and on Linux also the kernel's own high-water mark
    (VmHWM, reset at entry), which a sample can miss on a loaded machine; macOS: the growth of the
    process's high-water mark; Windows: 0.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.mb = 0.0

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            try:
                import resource
            except ImportError:  # Windows: no figure
                return 0.0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / 2**20 if sys.platform == "darwin" else peak / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._hwm = _reset_hwm()
            self._start = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss(), _hwm() if self._hwm else 0.0)
            self.mb = peak - self._start


def _reset_hwm() -> bool:
    """Reset the kernel's peak resident set of this process to its current one (Linux); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> float:
    """The process's peak resident set since the last reset, in MiB (Linux /proc/self/status VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def tokens(seg, height: int, width: int) -> tuple[int, int]:
    """(windows, tokens N over all windows) of an image of this size under the segmenter's preset."""
    w = seg.preset.window
    h2, w2 = resized_shape(height, width, w.short_side, w.max_long_side)
    grid = seg.grid_for(h2, w2)
    ph, pw = grid.padded_size
    return grid.count, grid.count * (ph // seg.token_patch) * (pw // seg.token_patch)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def block_masks(h: int, w: int, blocks: int = 4) -> np.ndarray:
    """A synthetic region-id map: a blocks x blocks grid of rectangles, ids 1.. (for timing mask methods)."""
    rows = np.minimum(np.arange(h) * blocks // h, blocks - 1)
    cols = np.minimum(np.arange(w) * blocks // w, blocks - 1)
    return (rows[:, None] * blocks + cols[None, :] + 1).astype(np.int32)


def _timed(seg, image: np.ndarray) -> tuple[float, float, np.ndarray]:
    masks = block_masks(*image.shape[:2]) if seg.needs_masks else None
    with PeakMemory(seg.device) as peak:
        start = time.perf_counter()
        labels = seg.predict(image, CLASSES, masks=masks).labels
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, peak.mb, labels


def bench(seg, sizes: list[str], dense: bool = True, echo=print) -> list[dict]:
    """Time and peak memory of `seg.predict` on a random image of each size (text embeddings made
    beforehand, not timed), and for methods with global attention the same with all N query rows
    in one block (the naive dense attention). Methods that need region masks get a synthetic 4 x 4
    grid of regions (mask generation is not timed). Echoes a Markdown table; returns its rows."""
    seg.query_embeddings(parse_classes(CLASSES))
    echo("| image | windows | tokens N | seconds | peak MiB | dense seconds | dense peak MiB | same labels |")
    echo("|---|---|---|---|---|---|---|---|")
    rows = []
    for size in sizes:
        h, w = parse_size(size)
        windows, n = tokens(seg, h, w)
        image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        seconds, peak, labels = _timed(seg, image)
        row = {"size": f"{h}x{w}", "windows": windows, "tokens": n, "seconds": seconds, "peak_mb": peak}
        if seg.method.family not in GLOBAL_FAMILIES:
            cells = ["n/a (window-local attention)", "", ""]
        elif not dense:
            cells = ["not run", "", ""]
        elif n * n * 4 * 2 > _free_bytes(seg.device):
            cells = [f"skipped: one N x N fp32 matrix is {n * n * 4 / 2**30:.1f} GiB"] + ["", ""]
        else:
            one_block = seg.with_preset(seg.preset.with_overrides(block_rows=n))
            d_seconds, d_peak, d_labels = _timed(one_block, image)
            row.update(dense_seconds=d_seconds, dense_peak_mb=d_peak, same_labels=bool((d_labels == labels).all()))
            cells = [f"{d_seconds:.2f}", f"{d_peak:.0f}", "yes" if row["same_labels"] else "no"]
        echo(f"| {row['size']} | {windows} | {n} | {seconds:.2f} | {peak:.0f} | " + " | ".join(cells) + " |")
        rows.append(row)
    return rows
