"""Where the models run: device and precision names (`--device`, `--dtype`), and one GPU per rank
under torch.distributed."""

from __future__ import annotations

import os
import warnings

import torch

from ..errors import GlaclipError

# every precision name the CLI and API accept (short and long spelling)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as the JSON outputs and messages spell it: "float32", "float16", "bfloat16", ..."""
    return str(dtype).replace("torch.", "")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when available, else the CPU; a CUDA device without CUDA is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GlaclipError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GlaclipError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA (as the release runs) and fp32 elsewhere; fp64 is for verification."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise GlaclipError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    if DTYPES[dtype] == torch.float16 and device.type == "cpu":
        warnings.warn("fp16 on the CPU is several times slower than fp32 (few CPUs compute in fp16); use bf16 "
                      "for a faster half-precision run or fp32", RuntimeWarning, stacklevel=2)
    return DTYPES[dtype]


def rank_device(shard, device: str) -> str:
    """Under torchrun with CUDA, one GPU per local rank (`device` 'auto' or 'cuda'); else `device`."""
    if shard.distributed and device in ("auto", "cuda"):
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', shard.rank))}"
            torch.cuda.set_device(device)
    return device
