"""benchmarks/trident_release.py, trident_shims.py and release_common.py (what both release harnesses
share): a fake release folder checks the import isolation, fake results the table's cells (the real
comparison is a maintainer run)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_benchmarks

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    return import_benchmarks("release_common", "trident_shims", "trident_release")


def test_precision_is_patched_only_inside(bench):
    _, shims, _ = bench
    x = torch.ones(2)
    with shims.precision(torch.float64):
        assert x.half().dtype == torch.float64 and x.float().dtype == torch.float64
        assert torch.zeros(1).dtype == torch.float64
    with shims.precision(torch.float32):
        assert x.half().dtype == torch.float32 and x.double().float().dtype == torch.float32
        assert torch.zeros(1).dtype == torch.float32
    assert x.half().dtype == torch.float16 and x.double().float().dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32


FAKE_TRIDENT = '''
import os
os.environ["SOMETHING"] = "set by the release"
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmengine.structures import PixelData
from open_clip import WHERE
from seg_utils.utils import UTILS

@MODELS.register_module()
class Trident(BaseSegmentor):
    pass
'''


def test_release_imports_isolated(bench, tmp_path):
    _, shims, _ = bench
    release, dino, deps = tmp_path / "Trident", tmp_path / "dino", tmp_path / "deps"
    for pkg, text in (("open_clip", "WHERE = 'vendored'\n"), ("segment_anything", "SAM = 'vendored'\n"),
                      ("seg_utils", "")):
        (release / pkg).mkdir(parents=True)
        (release / pkg / "__init__.py").write_text(text)
    (release / "seg_utils" / "utils.py").write_text("UTILS = 'release'\n")
    (release / "trident.py").write_text(FAKE_TRIDENT)
    deps.mkdir()
    dino.mkdir()
    (dino / "utils.py").write_text("def trunc_normal_(x):\n    return x\n")
    (dino / "vision_transformer.py").write_text("from utils import trunc_normal_\nVIT = 'dino'\n")
    import open_clip  # pip's, imported before: must be shadowed inside and back afterwards

    path, env = list(sys.path), dict(os.environ)
    names = ("trident", "segment_anything", "seg_utils", "mmseg", "utils")
    before = {name: sys.modules.get(name) for name in names}  # other tests may have imported pip's
    with shims.release_imports(release, dino, deps) as (mod, vit, sam):
        assert mod.WHERE == "vendored" and mod.UTILS == "release" and vit.VIT == "dino" and sam.SAM == "vendored"
        assert sys.path[0] == str(release.resolve()) and sys.path[-1] == str(deps)  # deps: after site-packages
        assert issubclass(mod.Trident, torch.nn.Module) and mod.PixelData(data=3).data == 3
    assert sys.modules["open_clip"] is open_clip
    assert {name: sys.modules.get(name) for name in names} == before
    assert sys.path == path and dict(os.environ) == env
    with pytest.raises(ValueError, match="trident.py"):
        with shims.release_imports(tmp_path, dino):
            pass


def test_measure_and_record_outputs(bench):
    common, _, _ = bench

    class Model:
        def forward(self, x):
            return x + 1

    model = Model()
    outputs = common.record_outputs(model, "forward")
    with common.measure() as m:
        assert model.forward(1) == 2 and model.forward(5) == 6
    assert outputs == [2, 6]
    assert set(m) == {"seconds", "peak_mb", "load_peak_mb"} and m["seconds"] >= 0 and m["peak_mb"] > 0


def test_write_random_weights_keeps_existing_files(bench, tmp_path, capsys):
    common, _, _ = bench
    (tmp_path / "a.pt").write_text("kept")
    linear = lambda: torch.nn.Linear(2, 2)  # noqa: E731
    common.write_random_weights(tmp_path, {"a.pt": linear, "b.pt": linear})
    assert (tmp_path / "a.pt").read_text() == "kept" and "kept" in capsys.readouterr().out
    torch.manual_seed(0)
    want = torch.nn.Linear(2, 2).state_dict()
    got = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(want[k], got[k]) for k in want)  # seeded with 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_row_format(bench):
    _, _, harness = bench
    labels = np.array([[0, 1], [1, 2]])
    rel = {"probs": np.full((2, 2, 2), 0.5, np.float32), "labels": labels, "labels_refined": np.array([[0, 1], [2, 2]]),
           "seconds": 1.25, "refine_s": 0.5, "peak_mb": 1234.4, "load_peak_mb": 1000.0}
    ours = dict(rel, probs=np.full((2, 2, 2), 0.5 + 3e-7), labels_refined=np.array([[0, 1], [1, 2]]), seconds=2.0)
    assert harness._row("fp64", rel, ours) == ("| fp64 | 1.2 + 0.5 | 1234 | 2.0 + 0.5 | 1234 | 3.00e-07 | 100.0000% | "
                                               "75.0000% (25.0% changed by refinement) |")
    assert harness._row("fp32", {"error": "out of memory"}, {"error": "-"}) == \
        "| fp32 | out of memory + out of memory | out of memory | - + - | - | - | - | - |"
