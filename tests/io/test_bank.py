"""Memory banks in CorrCLIPv2's layout (io/bank.py): files, checks before any image, stores read row
by row, retrieval with the id map against a naive restatement."""

import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from bank_fixture import random_bank, write_bank  # noqa: E402

from glaclip.errors import GlaclipError  # noqa: E402
from glaclip.io.bank import bank_files, open_bank  # noqa: E402

faiss = pytest.importorskip("faiss")
ENC = {"main": "metaclip_b", "aux": "dfnclip_b"}
DIMS = {"main": 16, "aux": 16}


def naive_ids(vfm, queries, k, ids=None):
    """Exact L2 neighbours of the builder's normalised vectors, mapped through `ids`."""
    x = vfm / (np.linalg.norm(vfm, axis=1, keepdims=True) + 1e-12)
    d = ((queries[:, None, :] - x[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order if ids is None else ids[order]


def test_ivfpq_bank_opens_and_searches_as_faiss(tmp_path):
    arrays = random_bank(tmp_path, n=300, c=32)
    bank = open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 32)
    assert bank.size == 300 and bank.index.nprobe == bank.index.nlist == int(8 * np.sqrt(300))
    q = arrays["vfm"][:5] + 0.01
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    got = bank.search(q, 20)
    ref = faiss.read_index(str(bank.files.index))  # IndexIDMap2.search over every list: the same ids
    faiss.extract_index_ivf(ref).nprobe = faiss.extract_index_ivf(ref).nlist
    assert np.array_equal(got, ref.search(q, 20)[1])
    assert (got >= 0).all() and got.shape == (5, 20)
    assert np.array_equal(got[:, 0], np.arange(5))  # PQ still finds the vector itself first here
    rows = bank.rows("main", got[0])
    assert rows.dtype == torch.float16
    assert torch.equal(rows, torch.from_numpy(arrays["metaclip_b"][got[0]]).half())
    # stores are read row by row, never whole, and nothing of them stays mapped
    maps = open("/proc/self/maps").read()
    assert str(bank.files.stores["main"]) not in maps and str(bank.files.stores["aux"]) not in maps


def test_flat_bank_id_map_and_missing_neighbours(tmp_path):
    rng = np.random.default_rng(1)
    vfm = rng.standard_normal((12, 8)).astype(np.float32)
    store = rng.standard_normal((30, 16)).astype(np.float32)
    (tmp_path / "clip_embeddings").mkdir()
    torch.save(torch.from_numpy(store).half(), tmp_path / "clip_embeddings" / "b_metaclip_b.pt")
    (tmp_path / "vfm_embeddings").mkdir()
    ids = np.arange(12, dtype=np.int64)[::-1] * 2 + 5  # not the identity
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(8))
    index.add_with_ids(vfm / np.linalg.norm(vfm, axis=1, keepdims=True), ids)
    faiss.write_index(index, str(tmp_path / "vfm_embeddings" / "b_radiov3.faiss"))
    bank = open_bank(tmp_path, "b", {"main": "metaclip_b"}, "radiov3", {"main": 16}, 8)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    got = bank.search(q, 20)
    assert np.array_equal(got[:, :12], naive_ids(vfm, q, 12, ids))
    assert (got[:, 12:] == -1).all()  # fewer vectors than neighbours asked: -1


def test_checks_name_the_file(tmp_path):
    random_bank(tmp_path, n=300, c=32)
    with pytest.raises(GlaclipError, match="memory bank folder not found"):
        bank_files(tmp_path / "nope", "coco", ENC, "radiov3")
    with pytest.raises(GlaclipError, match=r"memory bank file not found: .*clip_embeddings/monet_metaclip_b.pt"):
        bank_files(tmp_path, "monet", ENC, "radiov3")
    with pytest.raises(GlaclipError, match=r"file not found: .*vfm_embeddings/coco_radiov4.faiss"):
        bank_files(tmp_path, "coco", ENC, "radiov4")
    with pytest.raises(GlaclipError, match=r"coco_radiov3.faiss has width 32, the VFM's features 1024"):
        open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 1024)
    with pytest.raises(GlaclipError, match=r"coco_dfnclip_b.pt has width 16, the aux CLIP's output 512"):
        open_bank(tmp_path, "coco", ENC, "radiov3", {"main": 16, "aux": 512}, 32)
    path = tmp_path / "clip_embeddings" / "coco_metaclip_b.pt"
    torch.save(torch.zeros(300, 16), path)
    with pytest.raises(GlaclipError, match=r"coco_metaclip_b.pt must hold a 2-D float16 tensor .*float32"):
        open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 32)
    torch.save(torch.zeros(299, 16, dtype=torch.float16), path)
    with pytest.raises(GlaclipError, match=r"coco_metaclip_b.pt has 299 rows; the index coco_radiov3.faiss holds ids "
                                           r"0..299"):
        open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 32)
    path.write_bytes(b"not a tensor")
    with pytest.raises(GlaclipError, match=r"coco_metaclip_b.pt does not load"):
        open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 32)
    (tmp_path / "vfm_embeddings" / "coco_radiov3.faiss").write_bytes(b"junk")
    torch.save(torch.zeros(300, 16, dtype=torch.float16), path)
    with pytest.raises(GlaclipError, match=r"coco_radiov3.faiss does not load with FAISS"):
        open_bank(tmp_path, "coco", ENC, "radiov3", DIMS, 32)


def test_fingerprint_by_content(tmp_path):
    arrays = random_bank(tmp_path / "a", n=300, c=32, kind="flat")
    random_bank(tmp_path / "b", n=300, c=32, kind="flat")  # same seed: same bytes in another folder
    fa = open_bank(tmp_path / "a", "coco", ENC, "radiov3", DIMS, 32).fingerprint()
    assert fa == open_bank(tmp_path / "b", "coco", ENC, "radiov3", DIMS, 32).fingerprint()
    store = arrays["dfnclip_b"].copy()
    store[17, 3] += 1.0
    torch.save(torch.from_numpy(store).half(), tmp_path / "b" / "clip_embeddings" / "coco_dfnclip_b.pt")
    assert fa != open_bank(tmp_path / "b", "coco", ENC, "radiov3", DIMS, 32).fingerprint()
    write_bank(tmp_path / "c", "coco", arrays["vfm"][::-1].copy(), {"metaclip_b": arrays["metaclip_b"],
                                                                  "dfnclip_b": arrays["dfnclip_b"]}, "flat")
    assert fa != open_bank(tmp_path / "c", "coco", ENC, "radiov3", DIMS, 32).fingerprint()


@pytest.mark.parametrize("saved", ["plain", "view", "mapped"])
def test_store_rows_read_only_what_is_asked(tmp_path, saved, monkeypatch):
    from glaclip.io import bank as bank_mod

    rows = torch.randn(3000, 48).to(torch.float16)
    path = tmp_path / "s.pt"
    # a view of a larger storage is saved with all of it (its first element at an offset)
    torch.save(torch.cat([torch.zeros(7, 48, dtype=torch.float16), rows])[7:] if saved == "view" else rows, path)
    if saved == "mapped":  # no os.pread: read through the memory map
        monkeypatch.delattr(bank_mod.os, "pread")
    store = bank_mod.read_store(path)
    assert store.shape == (3000, 48) and store.dtype == torch.float16
    assert (store._offset is None) == (saved == "mapped")
    ids = np.array([2999, 0, 17, 17, 1500])
    assert torch.equal(store.rows(ids), rows[torch.from_numpy(ids)])
    assert store.rows(np.array([], dtype=np.int64)).shape == (0, 48)
    if saved != "mapped":  # nothing of the file stays mapped in this process
        assert str(path) not in open("/proc/self/maps").read()
        with open(path, "r+b") as f:
            f.truncate(store._offset + 10 * 96)
        with pytest.raises(GlaclipError, match="ends before row 2999"):
            store.rows(ids)
