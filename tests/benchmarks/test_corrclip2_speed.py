"""benchmarks/corrclip2_speed.py: its bank writer, its memory readings and its table (no release, no RADIO)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_benchmarks

faiss = pytest.importorskip("faiss")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    return import_benchmarks("corrclip2_speed")[0]


def test_bank_in_the_release_layout(speed, tmp_path):
    speed.make_bank(tmp_path, 600, train=300, chunk=250)
    for enc in ("metaclip_b", "dfnclip_b"):
        rows = torch.load(tmp_path / "clip_embeddings" / f"big_{enc}.pt", weights_only=True)
        assert rows.shape == (600, 512) and rows.dtype == torch.float16
        assert torch.allclose(rows.float().norm(dim=1), torch.ones(600), atol=1e-2)
    index = faiss.read_index(str(tmp_path / "vfm_embeddings" / "big_radiov3.faiss"))
    assert isinstance(index, faiss.IndexIDMap2) and index.ntotal == 600 and index.d == 1024
    assert np.array_equal(faiss.vector_to_array(index.id_map), np.arange(600))  # chunks added in order
    inner = faiss.downcast_index(index.index)
    assert isinstance(inner, faiss.IndexIVFPQ) and inner.nlist == int(8 * 600 ** 0.5)
    assert not list(tmp_path.rglob("*.tmp"))


def test_mapped_pages_count_only_what_was_touched(speed, tmp_path):
    path = tmp_path / "store" / "rows.pt"
    path.parent.mkdir()
    torch.save(torch.ones(64 * 1024, 256, dtype=torch.float16), path)  # 32 MiB
    before = speed._mapped_mb(tmp_path)
    t = torch.load(path, mmap=True, weights_only=True)
    untouched = speed._mapped_mb(tmp_path)
    _ = t[:1024].sum()  # 0.5 MiB of rows
    touched = speed._mapped_mb(tmp_path)
    assert t.float().sum() == 64 * 1024 * 256
    full = speed._mapped_mb(tmp_path)
    assert before == 0
    assert untouched < 4 and touched < 4 < 30 < full


def test_table_medians_and_bank_columns(speed):
    def run(side, bank, rnd, s, peak, held):
        return {"side": side, "bank": bank, "round": rnd, "build_s": 10.0, "seconds": {"a": s}, "peak_mb": peak,
                "bank_mb": held}

    runs = [run("release", True, 0, 2.0, 5000, 800), run("glaclip", True, 0, 1.0, 4100, 40),
            run("release", False, 0, 1.8, 4200, 0), run("glaclip", False, 0, 0.9, 4050, 0),
            run("release", True, 1, 4.0, 5002, 800), run("glaclip", True, 1, 3.0, 4102, 42),
            run("release", False, 1, 1.6, 4202, 0), {"side": "glaclip", "bank": False, "round": 1, "error": "boom"}]
    lines = speed.table(runs, ["a"])
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines if line.startswith("| ")}
    assert "| 3.00 |" in rows[("release", "yes")] and "| 800 | 800 |" in rows[("release", "yes")]
    assert "| 2.00 |" in rows[("glaclip", "yes")] and "| 51 | 41 |" in rows[("glaclip", "yes")]
    assert "| 1.70 |" in rows[("release", "no")] and "| 0.90 |" in rows[("glaclip", "no")]
    assert lines[-1] == "- glaclip bank=False round 1: boom"
