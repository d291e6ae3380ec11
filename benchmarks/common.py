"""What the benchmark scripts share: machine line, sizes, an isolated process per case, weight files.

Scripts in this folder are maintainer tooling on glaclip's public API (and its CLI run as a user
runs it); they are not part of the package. Charts need `pip install -e ".[bench]"` (matplotlib).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
from pathlib import Path

import torch

# text-encoding modes of benchmarks/latency.py (charts.py draws them)
MODES = {"full": "full context, no cache", "cold": "short context, cold cache", "warm": "short context, warm cache",
         "previous": "previous code (--baseline-src)"}

PATCH = 8  # DINO ViT-B/8: the token grid of the default method
WINDOW = (224, 112, 56)  # crop, stride, pad multiple of the default presets


def machine_line(device: str) -> str:
    """CPU, cores, torch version and (on CUDA) the GPU's name."""
    cpu = platform.processor() or platform.machine()
    line = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name(0)}"
    return line


def parse_size(text: str) -> tuple[int, int]:
    """'560x1120' -> (560, 1120): height x width (glaclip's own parser; a bad size ends the script)."""
    from glaclip.errors import GlaclipError
    from glaclip.runs.bench import parse_size as parse

    try:
        return parse(text)
    except GlaclipError as exc:
        raise SystemExit(str(exc)) from None


def native_settings(h: int, w: int) -> dict:
    """Preset overrides that keep the image at its own size (no resize)."""
    return {"short_side": min(h, w), "max_long_side": max(h, w, 2048)}


def token_count(h: int, w: int, patch: int = PATCH) -> tuple[int, int]:
    """(windows, tokens N over all windows) of an image of h x w under the default sliding window."""
    crop, stride = WINDOW[0], WINDOW[1]
    rows = max(-(-(h - crop) // stride), 0) + 1
    cols = max(-(-(w - crop) // stride), 0) + 1
    pad = WINDOW[2]
    wh, ww = (-(-min(crop, s) // pad) * pad for s in (h, w))  # a window padded to the pad multiple
    return rows * cols, rows * cols * (wh // patch) * (ww // patch)


def torch_dtype(name: str, device: str) -> torch.dtype:
    """'auto' (fp16 on CUDA, fp32 elsewhere), 'fp32', 'fp16', 'bf16', 'fp64'."""
    if name == "auto":
        name = "fp16" if device.startswith("cuda") else "fp32"
    from glaclip.models.devices import DTYPES

    return DTYPES[name]


def peak_mb(device: str) -> float:
    """This process's peak so far: max CUDA allocation, or peak resident set on CPU (MiB)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def _child(conn, fn, args) -> None:
    try:
        conn.send(fn(*args))
    except MemoryError:
        conn.send({"error": "out of memory"})
    except Exception as exc:  # reported in the table, the other cases go on
        msg = "out of memory" if "out of memory" in str(exc).lower() else f"{type(exc).__name__}: {exc}"[:80]
        conn.send({"error": msg})


def isolated(fn, *args, timeout: float | None = None) -> dict:
    """fn(*args) -> dict in a fresh process (so each peak is the case's own); errors become {'error': ...}."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args))
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            return recv.recv()
        return {"error": f"over {timeout:.0f} s"}
    except EOFError:  # the process died without a word: the kernel's OOM killer
        proc.join()
        return {"error": "out of memory" if (proc.exitcode or 0) < 0 else f"exit {proc.exitcode}"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def random_weight_files(folder: Path, clip: str = "ViT-B-16-quickgelu",
                        vfm: str = "vit_base_patch8_224.dino") -> tuple[Path, Path]:
    """Randomly initialised real architectures saved as weight files (weights named 'random' are
    never cached, files are: the text cache behaves as with real weights)."""
    import open_clip
    import timm

    torch.manual_seed(0)
    c, v = folder / "clip-random.pt", folder / "dino-random.pth"
    torch.save(open_clip.create_model(clip, pretrained=None).state_dict(), c)
    torch.save(timm.create_model(vfm, pretrained=False).state_dict(), v)
    return c, v


def write_text(path: str | Path, lines: list[str]) -> None:
    """Write the lines to path through a temporary name (never a half-written table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
