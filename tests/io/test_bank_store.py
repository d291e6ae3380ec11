"""Stores written in chunks (io/bank_store.py): torch.load reads them (with and without mmap) as the
N x D float16 tensor, as does io.bank's Store; torch.save's own pickle; atomic writes and appends."""

import io
import os
import zipfile

import numpy as np
import pytest
import torch

from glaclip.errors import GlaclipError
from glaclip.io import bank_store as bs
from glaclip.io.bank import read_store


def rows(n, d=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)).half()


@pytest.mark.parametrize("n, d", [(0, 16), (1, 8), (3, 4), (1000, 1024), (70000, 32)])
def test_pickle_is_torch_saves(n, d):
    buf = io.BytesIO()
    torch.save(torch.zeros(n, d, dtype=torch.float16), buf)
    with zipfile.ZipFile(buf) as z:
        pkl = z.read(next(x for x in z.namelist() if x.endswith("/data.pkl")))
    assert bs.tensor_pickle(n, d) == pkl


def test_written_in_chunks_reads_back_everywhere(tmp_path):
    x = rows(1000)
    path = tmp_path / "s.pt"
    assert bs.write_store(path, [x[:300], x[300:999].numpy(), x[999:].float()], 64) == 1000
    for kwargs in ({}, {"mmap": True}, {"weights_only": True}, {"mmap": True, "weights_only": True}):
        t = torch.load(path, map_location="cpu", **kwargs)
        assert t.dtype == torch.float16 and t.shape == (1000, 64) and torch.equal(t, x)
    store = read_store(path)
    assert store.shape == (1000, 64) and store._offset is not None and store._offset % 64 == 0
    assert torch.equal(store.rows(np.array([7, 2, 999, 2])), x[[7, 2, 999, 2]])
    assert torch.equal(store.span(10, 400), x[10:400]) and store.span(5, 5).shape == (0, 64)
    assert zipfile.ZipFile(path).testzip() is None  # CRCs right
    assert torch.equal(torch.cat(list(bs.store_chunks(path, 3, 950, chunk_rows=100))), x[3:950])


def test_empty_store(tmp_path):
    path = tmp_path / "e.pt"
    bs.write_store(path, [], 32)
    assert torch.load(path).shape == (0, 32)


def test_append_keeps_rows_and_is_atomic(tmp_path):
    x, y = rows(500), rows(123, seed=1)
    path = tmp_path / "s.pt"
    assert bs.append_store(path, [x[:200]], 64) == (0, 200)
    assert bs.append_store(path, [x[200:], y], chunk_rows=64) == (200, 623)
    assert torch.equal(torch.load(path), torch.cat([x, y]))
    with pytest.raises(GlaclipError, match="width 64, the new rows 32"):
        bs.append_store(path, [], 32)
    with pytest.raises(GlaclipError, match="does not exist and no row width"):
        bs.append_store(tmp_path / "new.pt", [x])

    def failing():
        yield x[:10]
        raise RuntimeError("image 3 failed")

    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="image 3 failed"):
        bs.append_store(path, failing())
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.pt"]  # no temporary left
    with pytest.raises(GlaclipError, match="rows must be k x 64"):
        bs.append_store(path, [torch.zeros(3, 63)])
    assert path.read_bytes() == before


def test_chunks_are_not_held(tmp_path):
    """The writer keeps no rows: a generator's chunks are gone once written (weak references die)."""
    import weakref

    refs = []

    def gen():
        for i in range(5):
            t = rows(100, seed=i)
            refs.append(weakref.ref(t))
            yield t

    bs.write_store(tmp_path / "g.pt", gen(), 64)
    assert all(r() is None for r in refs)
