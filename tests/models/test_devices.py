"""devices.py: precision names both ways, one GPU per rank; and one copy of each small helper."""

import re
from pathlib import Path

import pytest
import torch

import glaclip
from glaclip.models.devices import DTYPES, dtype_name, rank_device, resolve_dtype


def test_dtype_names_round_trip():
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name, torch.device("cpu") if dtype != torch.float16 else torch.device("cuda")) == dtype
        assert DTYPES[dtype_name(dtype)] == dtype
    assert [dtype_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == ["float32", "float16", "bfloat16"]


def test_segmenter_reports_dtype_by_name(segmenter):
    assert segmenter.models_line().endswith("dtype=float32")


class _Shard:
    def __init__(self, distributed, rank=0):
        self.distributed, self.rank = distributed, rank


def test_rank_device_outside_torchrun_keeps_the_choice():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert rank_device(_Shard(False), device) == device
    assert rank_device(_Shard(True, 3), "cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_rank_device_without_cuda(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device(_Shard(True, 1), "auto") == "auto"


SRC = Path(glaclip.__file__).parent


@pytest.mark.parametrize("pattern, home", [
    (r"\.encoding\.safetensors\"", "io/files.py"),               # the encoding file suffix
    (r"replace\(['\"]torch\.", "models/devices.py"),             # dtype -> name
    (r"torch\.bfloat16\s*[,}]", "models/devices.py"),            # name -> dtype tables
    (r"\"pc60\":", "config/datasets.py"),                        # data set aliases
    (r"def _?rank_device|LOCAL_RANK", "models/devices.py"),       # one GPU per rank
    (r"def _?one_line\(", "errors.py"),                           # exception -> one line
    (r"os\.replace\(|mkstemp\(|os\.umask\(", "io/files.py"),      # temporary name + rename, umask
])
def test_one_copy_of_each_small_helper(pattern, home):
    found = sorted({p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                    if re.search(pattern, p.read_text(encoding="utf-8"))})
    assert found == [home], found
