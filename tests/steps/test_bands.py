"""Full-resolution logits, PAMR, area threshold and decision a band of rows at a time: the same
result as the whole image at once, memory bounded whatever the number of classes."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import structured_image
from probes import image_logits, whole_decision

import glaclip.steps.decision as decision_module
from glaclip import parse_classes, resolve
from glaclip.steps.windows import resize_rows

CLASSES = [["sky", "heaven"], ["road"], ["car", "vehicle", "automobile"], ["tree"]]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("src, dst", [((336, 448), (300, 400)), ((21, 28), (61, 83)), ((50, 448), (45, 400)),
                                      ((336, 504), (1000, 1500))])
def test_resize_rows_equals_interpolate(dtype, atol, src, dst):
    canvas = torch.randn(3, *src, generator=torch.Generator().manual_seed(1)).to(dtype)
    full = F.interpolate(canvas[None], size=dst, mode="bilinear", align_corners=False)[0]
    bands = torch.cat([resize_rows(canvas, *dst, y, min(y + 37, dst[0])) for y in range(0, dst[0], 37)], dim=1)
    torch.testing.assert_close(bands, full, rtol=0, atol=atol)


@pytest.mark.parametrize("method, dataset", [("gla-proxyclip", None), ("naclip", None), ("sclip", "voc21")])
def test_bands_equal_the_whole_image(segmenter64, monkeypatch, method, dataset):
    rgb = structured_image(230, 170, seed=3)
    seg = segmenter64.with_preset(resolve(method, dataset, short_side=200))
    whole = seg.predict(rgb, CLASSES)
    assert whole._probs is not None  # small: probabilities computed with the labels
    monkeypatch.setattr(decision_module, "_BAND_BYTES", 4 * 20 * 170 * 9)  # about 9 rows a band
    banded = seg.predict(rgb, CLASSES)
    assert banded._probs is None  # large (here: forced): probabilities only when read
    np.testing.assert_array_equal(banded.labels, whole.labels)
    np.testing.assert_allclose(banded.probs, whole.probs, atol=1e-12, rtol=0)
    # and both equal the plain formula on the whole logits at once
    queries = parse_classes(CLASSES)
    logits, resized = image_logits(seg, rgb, queries)
    d = seg.preset.decision
    if d.pamr_steps:
        from glaclip.steps.postprocess import pamr

        guide = F.interpolate(resized, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
        logits = pamr(guide, logits, d.pamr_steps, d.pamr_dilations)
    labels, probs = whole_decision(logits, torch.tensor(queries.query_class), 4, d.logit_scale, d.prob_thd, d.area_thd)
    np.testing.assert_allclose(whole.probs, probs.numpy(), atol=1e-10, rtol=0)
    np.testing.assert_array_equal(whole.labels, labels.numpy())


def test_peak_memory_does_not_grow_with_the_number_of_classes(tiny_files):
    """A 3-megapixel image with 60 classes: whole-image logits, probabilities and softmax would need
    2 GiB; by bands the process grows by far less, about as much as with 3 classes."""
    code = f"""
import resource, sys, numpy as np
from glaclip import Segmenter
seg = Segmenter.from_pretrained(device="cpu", dtype="fp32", clip={tiny_files['clip']!r},
    clip_weights={tiny_files['clip_weights']!r}, vfm={tiny_files['vfm']!r}, vfm_weights={tiny_files['vfm_weights']!r},
    short_side=112)
classes = [f"thing {{i}}" for i in range(int(sys.argv[1]))]
seg.text.embed(classes)
rgb = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = seg.predict(rgb, classes)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, res.labels.shape)
"""
    growth = {}
    for n in (3, 60):
        r = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        growth[n] = float(r.stdout.split()[0])
    dense_gib = 60 * 1500 * 2000 * 4 * 3 / 2**30  # logits + softmax + class probabilities, float32
    assert growth[60] < 1024 and growth[60] < growth[3] + 512, (growth, dense_gib)
