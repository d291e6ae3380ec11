"""Bank support (steps/support.py), each step against a naive restatement in float64, on tiny banks
written in the release's format (IVFPQ with >= 300 vectors, and a Flat IndexIDMap2)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bank_fixture import random_bank  # noqa: E402

from glaclip.io.bank import open_bank  # noqa: E402
from glaclip.steps.support import fuse, paint, region_queries, retrieve, support_logits, support_map  # noqa: E402

pytest.importorskip("faiss")
ENC = {"main": "metaclip_b", "aux": "dfnclip_b"}
C, D = 32, 16


def id_map(h=20, w=28):
    m = np.zeros((h, w), np.int64)
    m[2:9, 3:15] = 4
    m[10:, 5:25] = 9
    m[12:16, 20:27] = 10000  # the pad id is a region like any other
    return torch.from_numpy(m)


def unit_feats(h=20, w=28, seed=0):
    f = torch.randn(C, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return f / f.norm(dim=0, keepdim=True)


def naive_queries(feats, ids):
    out, vals = [], sorted(set(ids.flatten().tolist()))
    for v in vals:
        acc, n = torch.zeros(feats.shape[0], dtype=feats.dtype), 0
        for y in range(ids.shape[0]):
            for x in range(ids.shape[1]):
                if ids[y, x] == v:
                    acc += feats[:, y, x]
                    n += 1
        q = acc / n
        out.append(q / q.norm())
    return vals, torch.stack(out)


def naive_support(store, neighbours, text):
    out = []
    for ids in neighbours.tolist():
        rows = [torch.from_numpy(store[i]).half().double() for i in ids if i >= 0]
        s = sum(rows) / len(rows)
        s = s / s.norm()
        out.append(torch.stack([(s * t).sum() for t in text]))
    return torch.stack(out)


def naive_paint(values, ids, logits):
    q = logits.shape[1]
    out = torch.empty(q, *ids.shape, dtype=logits.dtype)
    for y in range(ids.shape[0]):
        for x in range(ids.shape[1]):
            out[:, y, x] = logits[values.index(int(ids[y, x]))]
    return out


@pytest.fixture(scope="module")
def ivf_bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    arrays = random_bank(root, n=320, c=C, dims={"metaclip_b": D, "dfnclip_b": D}, seed=4)
    return open_bank(root, "coco", ENC, "radiov3", {"main": D, "aux": D}, C), arrays


def test_region_queries():
    feats, ids = unit_feats(), id_map()
    values, queries = region_queries(feats, ids)
    want_vals, want = naive_queries(feats, ids)
    assert values.tolist() == want_vals == [0, 4, 9, 10000]  # the smallest id included
    torch.testing.assert_close(queries, want, atol=1e-14, rtol=0)


def test_retrieval_and_support_ivfpq(ivf_bank):
    bank, arrays = ivf_bank
    feats, ids = unit_feats(seed=2), id_map()
    values, queries = region_queries(feats, ids)
    neighbours = retrieve(bank, queries, 20)
    assert neighbours.dtype == torch.int64 and neighbours.shape == (4, 20) and (neighbours >= 0).all()
    import faiss

    ref = faiss.read_index(str(bank.files.index))  # the IndexIDMap2 itself, every list probed
    faiss.extract_index_ivf(ref).nprobe = min(256, faiss.extract_index_ivf(ref).nlist)
    assert np.array_equal(neighbours.numpy(), ref.search(queries.float().numpy(), 20)[1])
    text = torch.nn.functional.normalize(torch.randn(5, D, dtype=torch.float64), dim=-1)
    got = support_logits(bank, "main", neighbours, text)
    torch.testing.assert_close(got, naive_support(arrays["metaclip_b"], neighbours, text), atol=1e-14, rtol=0)
    painted = paint(values, ids, got)
    torch.testing.assert_close(painted, naive_paint(values.tolist(), ids, got), atol=0, rtol=0)


def test_main_and_aux_then_fusion(ivf_bank):
    bank, arrays = ivf_bank
    feats, ids = unit_feats(seed=5), id_map()
    values, queries = region_queries(feats, ids)
    neighbours = retrieve(bank, queries, 7)
    g = torch.Generator().manual_seed(1)
    texts = {role: torch.nn.functional.normalize(torch.randn(3, D, generator=g, dtype=torch.float64), dim=-1)
             for role in ("main", "aux")}
    got = support_map(bank, values, neighbours, ids, texts)
    main = naive_paint(values.tolist(), ids, naive_support(arrays["metaclip_b"], neighbours, texts["main"]))
    aux = naive_paint(values.tolist(), ids, naive_support(arrays["dfnclip_b"], neighbours, texts["aux"]))
    torch.testing.assert_close(got, (main + aux) * 0.5, atol=1e-14, rtol=0)
    only_main = support_map(bank, values, neighbours, ids, {"main": texts["main"]})
    torch.testing.assert_close(only_main, main, atol=1e-14, rtol=0)
    preds = torch.randn(3, *ids.shape, dtype=torch.float64)
    torch.testing.assert_close(fuse(preds, got), preds * 0.5 + got * 0.5, atol=0, rtol=0)


def test_flat_bank_with_missing_neighbours(tmp_path):
    arrays = random_bank(tmp_path, n=12, c=C, dims={"metaclip_b": D}, kind="flat", seed=9)
    bank = open_bank(tmp_path, "coco", {"main": "metaclip_b"}, "radiov3", {"main": D}, C)
    feats, ids = unit_feats(seed=3), id_map()
    values, queries = region_queries(feats, ids)
    neighbours = retrieve(bank, queries, 20)
    assert (neighbours[:, :12] >= 0).all() and (neighbours[:, 12:] == -1).all()
    x = arrays["vfm"] / np.linalg.norm(arrays["vfm"], axis=1, keepdims=True)
    q = queries.float().numpy()
    exact = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :12]
    assert np.array_equal(neighbours[:, :12].numpy(), exact)
    text = torch.nn.functional.normalize(torch.randn(4, D, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(support_logits(bank, "main", neighbours, text),
                               naive_support(arrays["metaclip_b"], neighbours, text), atol=1e-14, rtol=0)
    # a region with no neighbour at all keeps its own logits
    none = torch.full((1, 20), -1)
    s = paint(values[:1], torch.zeros(2, 2, dtype=torch.int64), support_logits(bank, "main", none, text))
    preds = torch.randn(4, 2, 2, dtype=torch.float64)
    assert torch.isnan(s).all() and torch.equal(fuse(preds, s), preds)
