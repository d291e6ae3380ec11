"""The bank's FAISS index (io/bank_index.py) against a naive restatement of the release's recipe
(float32 rows / (norm + 1e-12); IndexIVFPQ(IndexFlatIP(d), d, max(1, int(8 sqrt N)), 32, 8) in an
IndexIDMap2, ids ascending; a re-run adds only new ids), built straight with FAISS on the same vectors."""

import numpy as np
import pytest
import torch

from glaclip.errors import GlaclipError
from glaclip.io import bank_index as bi
from glaclip.io.bank import read_index
from glaclip.io.bank_store import append_store, write_store

faiss = pytest.importorskip("faiss")
D = 64


def vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def naive_index(x16, train=None):
    """The release's update_faiss_cache on a fresh index, restated: x16 = the store rows (float16)."""
    x = x16.astype(np.float32)
    x = np.ascontiguousarray(x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12), dtype=np.float32)
    n = x.shape[0]
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(D), D, max(1, int(8 * np.sqrt(n))), 32, 8)
    ivf.train(x if train is None else x[train])
    index = faiss.IndexIDMap2(ivf)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    return index, x


def search_all(index, q, k=20):
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = ivf.nlist
    return index.search(q, k)


def test_same_index_as_the_recipe(tmp_path):
    x16 = torch.from_numpy(vectors(600)).half()
    write_store(tmp_path / "b_radiov3.pt", [x16[:250], x16[250:]], D)
    messages = []
    rep = bi.build_index(tmp_path / "b_radiov3.pt", tmp_path / "b_radiov3.faiss", chunk_rows=128,
                         on_message=messages.append)
    assert rep == bi.IndexReport(600, 600, int(8 * np.sqrt(600)), 600)
    assert "on all 600 vectors" in messages[0]
    ours = faiss.read_index(str(tmp_path / "b_radiov3.faiss"))
    ref, x = naive_index(x16.numpy())
    down = faiss.downcast_index(ours)
    ivf = faiss.downcast_index(down.index)
    assert isinstance(down, faiss.IndexIDMap2) and isinstance(ivf, faiss.IndexIVFPQ)
    assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlatIP)
    assert (ivf.d, ivf.nlist, ivf.pq.M, ivf.pq.nbits, ivf.metric_type) == (D, 195, 32, 8, faiss.METRIC_L2)
    assert np.array_equal(faiss.vector_to_array(down.id_map), np.arange(600))
    assert np.array_equal(faiss.serialize_index(ours), faiss.serialize_index(ref))  # byte for byte
    q = x[::37] + 0.01 * vectors(len(x[::37]), 1)
    assert np.array_equal(search_all(ours, q)[1], search_all(ref, q)[1])
    # and io.bank reads it as a bank index
    _, inner, id_map = read_index(tmp_path / "b_radiov3.faiss")
    assert inner.nprobe == inner.nlist and np.array_equal(id_map, np.arange(600))


def test_small_banks_and_widths_refused(tmp_path):
    write_store(tmp_path / "s.pt", [torch.zeros(255, D, dtype=torch.float16)], D)
    with pytest.raises(GlaclipError, match="has 255 regions; the index needs at least 256"):
        bi.build_index(tmp_path / "s.pt", tmp_path / "s.faiss")
    write_store(tmp_path / "w.pt", [torch.ones(300, 48, dtype=torch.float16)], 48)
    with pytest.raises(GlaclipError, match="width 48 .* is not a multiple of 32"):
        bi.build_index(tmp_path / "w.pt", tmp_path / "w.faiss")
    assert not (tmp_path / "s.faiss").exists() and not (tmp_path / "w.faiss").exists()


def test_sampled_training(tmp_path, monkeypatch):
    x16 = torch.from_numpy(vectors(2000, 3)).half()
    write_store(tmp_path / "b.pt", [x16], D)
    nlist = int(8 * np.sqrt(2000))
    assert bi.training_ids(2000, train_size=1000).size == 2000  # 39 per list need more than there are
    assert bi.training_ids(200_000, train_size=1000).size == 39 * int(8 * np.sqrt(200_000))
    monkeypatch.setattr(bi, "MIN_PER_LIST", 2)
    ids = bi.training_ids(2000, train_size=1000, seed=5, min_per_list=2)
    assert ids.size == max(1000, 2 * nlist) == 1000
    assert np.all(np.diff(ids) > 0) and np.array_equal(ids, bi.training_ids(2000, 1000, 5, 2))
    assert not np.array_equal(ids, bi.training_ids(2000, 1000, 6, 2))
    messages = []
    rep = bi.build_index(tmp_path / "b.pt", tmp_path / "b.faiss", train_size=1000, seed=5, on_message=messages.append)
    assert rep.trained_on == ids.size < 2000 and f"a sample (seed 5) of {ids.size} of the 2000" in messages[0]
    ref, _ = naive_index(x16.numpy(), train=ids)
    assert np.array_equal(faiss.serialize_index(faiss.read_index(str(tmp_path / "b.faiss"))),
                          faiss.serialize_index(ref))
    assert np.array_equal(bi.training_ids(50, 100), np.arange(50))


def test_update_adds_only_new_ids(tmp_path):
    x16 = torch.from_numpy(vectors(900, 4)).half()
    store, path = tmp_path / "b.pt", tmp_path / "b.faiss"
    write_store(store, [x16[:600]], D)
    assert bi.update_index(store, path).added == 600  # none yet: built
    mtime = path.stat().st_mtime_ns
    assert bi.update_index(store, path) == bi.IndexReport(600, 0, int(8 * np.sqrt(600)), 0)
    assert path.stat().st_mtime_ns == mtime  # nothing new: not rewritten
    append_store(store, [x16[600:]])
    rep = bi.update_index(store, path, chunk_rows=100)
    assert (rep.total, rep.added, rep.trained_on) == (900, 300, 0)
    ref, x = naive_index(x16[:600].numpy())  # the release: trained once, then add_with_ids of the new ids
    y = x16[600:].float().numpy()
    ref.add_with_ids(np.ascontiguousarray(y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-12)),
                     np.arange(600, 900, dtype=np.int64))
    assert np.array_equal(faiss.serialize_index(faiss.read_index(str(path))), faiss.serialize_index(ref))


def test_update_checks(tmp_path):
    x16 = torch.from_numpy(vectors(400, 6)).half()
    write_store(tmp_path / "b.pt", [x16], D)
    bi.build_index(tmp_path / "b.pt", tmp_path / "b.faiss")
    write_store(tmp_path / "short.pt", [x16[:300]], D)
    with pytest.raises(GlaclipError, match="holds ids 0..399; the store .* has 300 rows"):
        bi.update_index(tmp_path / "short.pt", tmp_path / "b.faiss")
    write_store(tmp_path / "wide.pt", [torch.zeros(400, 96, dtype=torch.float16)], 96)
    with pytest.raises(GlaclipError, match="has width 64, the store .* 96"):
        bi.update_index(tmp_path / "wide.pt", tmp_path / "b.faiss")
    flat = faiss.IndexFlatL2(D)
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    with pytest.raises(GlaclipError, match="is a IndexFlatL2; an update adds to the builder's IndexIDMap2"):
        bi.update_index(tmp_path / "b.pt", tmp_path / "flat.faiss")
