"""benchmarks/bank_build_release.py: its comparison and table (the release is not in the repository; the
end-to-end run itself is a maintainer run, see the script's docstring and bank-build-release-cpu.md)."""

import numpy as np
import pytest
import torch
from conftest import import_benchmarks

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def harness():
    return import_benchmarks("bank_build_release")[0]


def test_ulps_in_value_order(harness):
    x = torch.tensor([-2.0, -0.0, 0.0, 6e-8, 1.0], dtype=torch.float16)
    step = torch.tensor([1, 0, 0, 1, 1], dtype=torch.int16)
    y = torch.from_numpy((x.view(torch.int16) + torch.where(x < 0, -step, step)).numpy()).view(torch.float16)
    d = harness.ordered(y) - harness.ordered(x)
    assert d.abs().tolist() == [1, 0, 0, 1, 1]  # one float16 step each, -0 and +0 alike


def test_compare_store_counts_the_steps(harness, tmp_path):
    rng = np.random.default_rng(0)
    x32 = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    a = x32.half()
    b = a.clone()
    b[2, 3] = float(np.nextafter(a[2, 3].numpy(), np.float16(np.inf)))
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    row = harness.compare_store(tmp_path / "a.pt", tmp_path / "b.pt", x32)
    assert row["rows_identical"] == 4 and row["elements_differ"] == 1 and row["max_ulp"] == 1
    assert row["release_fp32_rounds_to_its_row"] and row["differ_subnormal"] == 0
    mid = (a[2, 3].double() + b[2, 3].double()) / 2
    assert row["midpoint_max_abs"] == pytest.approx(abs(float(x32[2, 3]) - float(mid)))
