"""benchmarks/bank_clip_release.py: the harness around CorrCLIPv2's bank builder (the release is not in the
repository: the stand-ins, a fake builder folder for the import and its restored process state, the
comparison; the real run is a maintainer run, see the script's docstring)."""

import os
import sys

import numpy as np
import torch
from conftest import import_benchmarks

(harness,) = import_benchmarks("bank_clip_release")


def test_imrescale_stand_in_is_mmcv_rescale():
    mmcv = harness._stubs()["mmcv"]
    for h, w, want in [(301, 424, (448, 631)), (212, 256, (448, 541)), (60, 400, (307, 2048)), (448, 500, (448, 500))]:
        img = np.zeros((h, w, 3), np.uint8)
        assert mmcv.imrescale(img, scale=(2048, 448), interpolation="bilinear", backend="cv2").shape[:2] == want


def test_builder_import_restores_argv_cwd_and_cuda(tmp_path):
    release = tmp_path / "CorrCLIPv2"
    (release / "memory_bank_builder").mkdir(parents=True)
    (release / "memory_bank_builder" / "generate_clip_embeddings.py").write_text(
        "import os, sys, torch\nimport mmcv\nARGS = list(sys.argv)\nN = torch.cuda.device_count()\n"
        "os.chdir(os.path.dirname(__file__))\n")
    dino = tmp_path / "dino"
    dino.mkdir()
    (dino / "vision_transformer.py").write_text("VIT = 'dino'\n")
    argv, cwd, count = list(sys.argv), os.getcwd(), torch.cuda.device_count()
    with harness.builder(release, dino, tmp_path / "images") as (mod, vit):
        assert mod.ARGS[1:] == ["--img", str(tmp_path / "images"), "--clip", "meta_b", "--slide_short", "448"]
        assert mod.N == 1
        assert vit.VIT == "dino" and os.getcwd() == cwd
    assert sys.argv == argv and os.getcwd() == cwd and torch.cuda.device_count() == count
    assert "generate_clip_embeddings" not in sys.modules and "mmcv" not in sys.modules


def test_compare_counts_fp16_rows():
    rel = [torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)]
    ours = (torch.tensor([3, 9]), torch.tensor([[0.6, 0.8], [1.0, 1e-5]], dtype=torch.float64))
    c = harness.compare(rel, ours, np.array([[0, 3], [9, 9]]))
    assert c["ids_equal"] and c["regions"] == 2 and c["fp16_rows_equal"] == 1 and c["fp16_elements_differ"] == 1
    assert abs(c["max_abs"] - 1e-5) < 1e-12
