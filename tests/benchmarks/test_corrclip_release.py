"""benchmarks/corrclip_release.py: the harness around CorrCLIP's release (the release itself is not in the
repository: a fake release folder checks the import isolation; the real comparison is a maintainer run)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_benchmarks

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def harness():
    return import_benchmarks("corrclip_release")[0]


def test_rescale_size_is_mmcv_imrescale(harness):
    # scale (2048, S), keep ratio: factor min(2048 / long, S / short), sizes int(x * f + 0.5)
    assert harness.rescale_size(320, 480, 336) == (336, 504)
    assert harness.rescale_size(211, 317, 336) == (336, 505)  # 317 * 336 / 211 = 504.80
    assert harness.rescale_size(375, 500, 336) == (336, 448)
    assert harness.rescale_size(100, 4000, 336) == (51, 2048)  # the long side limits: f = 0.512
    assert harness.rescale_size(500, 333, 448) == (673, 448)  # portrait, upscaled: 500 * 448 / 333 = 672.67


def test_preprocessor_bgr_to_rgb_and_release_constants(harness):
    bgr = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    for dtype in (torch.float32, torch.float64):
        pre = harness.SegDataPreProcessor(harness.RELEASE_MEAN, harness.RELEASE_STD, bgr_to_rgb=True, dtype=dtype)
        out = pre([bgr])
        assert out.shape == (1, 3, 2, 2) and out.dtype == dtype
        want = [(30 - 122.771) / 68.501, (20 - 116.746) / 66.632, (10 - 104.094) / 70.323]  # R, G, B
        assert torch.allclose(out[0, :, 0, 0].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6)


def test_mmseg_inputs_resize_like_opencv(harness, tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    inputs, ori = harness.mmseg_inputs(tmp_path / "a.png", 64, torch.float64)
    assert ori == (50, 70) and inputs.shape == (1, 3, 64, 90)  # 70 * 64 / 50 = 89.6 -> 90
    resized = cv2.resize(img, (90, 64), interpolation=cv2.INTER_LINEAR)[..., ::-1].astype(np.float64)
    want = (resized - np.array(harness.RELEASE_MEAN)) / np.array(harness.RELEASE_STD)
    assert np.abs(inputs[0].permute(1, 2, 0).numpy() - want).max() < 1e-12


def test_random_masks(harness):
    a = harness.random_masks(60, 80, seed=1)
    b = harness.random_masks(60, 80, seed=2, cover=True)
    assert a.shape == (60, 80) and a.dtype == np.int32 and (a == 0).any() and len(np.unique(a)) > 3
    assert not (b == 0).any() and len(np.unique(b)) > 3
    assert np.array_equal(a, harness.random_masks(60, 80, seed=1))


def test_half_is_patched_only_inside(harness):
    x = torch.ones(2)
    with harness.half_as(torch.float64):
        assert x.half().dtype == torch.float64 and torch.nn.Linear(1, 1).half().weight.dtype == torch.float64
    assert x.half().dtype == torch.float16


FAKE_RELEASE = '''
import os
os.environ["HF_ENDPOINT"] = "somewhere"
from mmseg.models.segmentors import BaseSegmentor
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS
from mmengine.structures import PixelData
from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation
from open_clip import WHERE
try:
    from sam2.build_sam import build_sam2
except:
    print("SAM2 is not installed")

@MODELS.register_module()
class CorrCLIPSegmentation(BaseSegmentor):
    pass
'''


def test_release_imports_isolated(harness, tmp_path):
    release, dino = tmp_path / "CorrCLIPv1", tmp_path / "dino"
    (release / "open_clip").mkdir(parents=True)
    (release / "open_clip" / "__init__.py").write_text("WHERE = 'vendored'\n")
    (release / "corrclip_segmentor.py").write_text(FAKE_RELEASE)
    dino.mkdir()
    (dino / "utils.py").write_text("def trunc_normal_(x):\n    return x\n")
    (dino / "vision_transformer.py").write_text("from utils import trunc_normal_\nVIT = 'dino'\n")
    import open_clip  # pip's, imported before: must be shadowed inside and back afterwards

    path, env = list(sys.path), dict(os.environ)
    with harness.release_imports(release, dino) as (seg, vit):
        assert seg.WHERE == "vendored" and vit.VIT == "dino"
        assert issubclass(seg.CorrCLIPSegmentation, torch.nn.Module)
        assert seg.PixelData(data=3).data == 3
    assert sys.modules["open_clip"] is open_clip and "corrclip_segmentor" not in sys.modules
    assert "mmseg" not in sys.modules and "utils" not in sys.modules
    assert sys.path == path and dict(os.environ) == env
    with pytest.raises(ValueError, match="corrclip_segmentor.py"):
        with harness.release_imports(tmp_path, dino):
            pass


def test_script_refuses_missing_arguments_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "corrclip_release.py"), "--release", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "missing --dino-repo, --masks, --clip-weights, --vfm-weights" in r.stderr
    assert "Traceback" not in r.stderr
