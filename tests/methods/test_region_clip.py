"""The CLIP region stores of a memory bank (methods/region_clip.py) against a naive restatement of the
release builder's recipe written here (mmcv's rescale, the windows one by one, the window forward of
tests/corrclip_reference.py without merging, a float64 canvas with a count, bilinear to the original size,
the mean over each region's pixels, L2): id 0 skipped, ascending order, odd sizes, padded windows, bands."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CLIP, TINY_VFM, structured_image
from corrclip_reference import naive_window

from glaclip import GlaclipError
from glaclip.methods.region_clip import region_features
from glaclip.steps import windows

MEAN = torch.tensor((122.771, 116.746, 104.094), dtype=torch.float64).view(3, 1, 1)
STD = torch.tensor((68.501, 66.632, 70.323), dtype=torch.float64).view(3, 1, 1)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A 6-block tiny CLIP (CorrCLIP's spatial branch needs >= 5) and a tiny DINO-shaped ViT/8, fp64."""
    from glaclip.models.loading import load_clip, load_vfm

    d = tmp_path_factory.mktemp("region_clip")
    cfg = json.loads(json.dumps(TINY_CLIP))
    cfg["vision_cfg"]["layers"] = 6
    (d / "clip6.json").write_text(json.dumps(cfg))
    (d / "vfm.json").write_text(json.dumps(TINY_VFM))
    torch.manual_seed(5)
    clip = load_clip(str(d / "clip6.json"), "random", device="cpu", dtype="fp64")
    dino = load_vfm(str(d / "vfm.json"), "random", device="cpu", dtype="fp64")
    with torch.no_grad():
        for p in list(clip.model.parameters()) + list(dino.model.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    return clip, dino


def naive_regions(clip, dino, rgb, ids, short=448, crop=336, stride=112, long=2048):
    """The builder's recipe restated plainly, float64 throughout. A boolean N x H x W stack: painted
    1..N in slice order for the windows, each slice pooled whole."""
    slices = None
    if ids.ndim == 3:
        slices, ids = ids, np.zeros(ids.shape[1:], np.int32)
        for i, m in enumerate(slices):
            ids[m] = i + 1
    h0, w0 = rgb.shape[:2]
    f = min(long / max(h0, w0), short / min(h0, w0))
    h, w = int(h0 * f + 0.5), int(w0 * f + 0.5)
    img = torch.from_numpy(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1).double()
    img = ((img - MEAN) / STD)[None]
    big = F.interpolate(torch.from_numpy(ids)[None, None].float(), size=(h, w), mode="nearest").int()
    canvas = torch.zeros(1, clip.visual.output_dim, h, w, dtype=torch.float64)
    count = torch.zeros(1, 1, h, w, dtype=torch.float64)
    for i in range(max(h - crop + stride - 1, 0) // stride + 1):
        for j in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + crop, h), min(j * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            c, m = img[:, :, y1:y2, x1:x2], big[:, :, y1:y2, x1:x2]
            ch, cw = c.shape[-2:]
            ph, pw = (-ch) % 56, (-cw) % 56
            pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            c, m = F.pad(c, pad), F.pad(m, pad, value=10000)
            out = naive_window(clip.model, dino.model, c, m[0, 0], merge=False)  # M x E on the DINO grid
            gh, gw = c.shape[-2] // 8, c.shape[-1] // 8
            out = F.interpolate(out.T.reshape(1, -1, gh, gw), size=c.shape[-2:], mode="bilinear")
            canvas[:, :, y1:y2, x1:x2] += out[:, :, pad[2] : pad[2] + ch, pad[0] : pad[0] + cw]
            count[:, :, y1:y2, x1:x2] += 1
    feats = F.interpolate(canvas / count, size=(h0, w0), mode="bilinear")[0].permute(1, 2, 0)
    if slices is not None:
        return list(range(len(slices))), torch.stack([F.normalize(feats[torch.from_numpy(m)].mean(0), dim=-1)
                                                      for m in slices])
    values = [v for v in sorted(np.unique(ids).tolist()) if v != 0]
    rows = [F.normalize(feats[torch.from_numpy(ids == v)].mean(0), dim=-1) for v in values]
    return values, torch.stack(rows)


def id_map(h, w, zero=True):
    """Sparse ids, a one-pixel region (pooled at the original size: a row like any other) and, unless
    zero=False, pixels of id 0."""
    m = np.full((h, w), 0 if zero else 5, np.int32)
    m[h // 5 : h // 2, w // 7 : w // 2] = 402
    m[h // 2 :, w // 3 :] = 17
    m[: h // 4, 3 * w // 4 :] = 5
    m[h - 1, 0] = 9999
    return m


@pytest.mark.parametrize("shape", [(90, 131), (137, 101)])  # odd sizes: 448 x 652 and 607 x 448, 12 windows
def test_against_the_naive_recipe(towers, shape):
    clip, dino = towers
    rgb = structured_image(*shape, seed=shape[0])
    ids = id_map(*shape)
    got_ids, got = region_features(clip, dino, rgb, ids, torch.float64)
    want_ids, want = naive_regions(clip, dino, rgb, ids)
    assert got_ids.tolist() == want_ids == [5, 17, 402, 9999]  # ascending, 0 skipped
    assert got.dtype == torch.float64 and got.shape == (4, clip.visual.output_dim)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_boolean_stacks(towers, monkeypatch):
    """N x H x W boolean slices (the release's other mask layout): overlapping, one covering id 0's pixels;
    painted in slice order (later over earlier) for the windows, pooled per slice, in bands too."""
    clip, dino = towers
    rgb = structured_image(77, 120, seed=4)
    ids = id_map(77, 120)
    stack = np.stack([ids == 17, ids == 402, ids != 17, ids == 9999])
    small = dict(short_side=150, crop=112, stride=56)  # 150 x 234, 2 x 3 windows: the stack's path, quickly
    got_ids, got = region_features(clip, dino, rgb, stack, torch.float64, **small)
    want_ids, want = naive_regions(clip, dino, rgb, stack, short=150, crop=112, stride=56)
    assert got_ids.tolist() == want_ids == [0, 1, 2, 3]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    monkeypatch.setattr(windows, "BAND_BYTES", 8 * 40 * 120 * 2)
    torch.testing.assert_close(region_features(clip, dino, rgb, stack, torch.float64, **small)[1], got, rtol=0,
                               atol=1e-14)
    stack[3] = False
    with pytest.raises(GlaclipError, match="slice 3 of the region stack covers no pixel"):
        region_features(clip, dino, rgb, stack, torch.float64, **small)


def test_padded_windows_and_settings(towers):
    """Windows shorter than the crop (a wide image: 65 rows padded to 112, 23 above and 24 below), other
    settings than the release's (crop 112, stride 56, short side 150, long side 611); no id 0 at all."""
    clip, dino = towers
    rgb = structured_image(31, 290, seed=3)
    ids = id_map(31, 290, zero=False)
    kw = dict(short=150, crop=112, stride=56, long=611)
    got_ids, got = region_features(clip, dino, rgb, ids, torch.float64, short_side=150, crop=112, stride=56,
                                   max_long_side=611, window_batch=3)
    want_ids, want = naive_regions(clip, dino, rgb, ids, **kw)
    assert got_ids.tolist() == want_ids == [5, 17, 402, 9999]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fp16_rows_bands_and_empty(towers, monkeypatch):
    clip, dino = towers
    rgb = structured_image(90, 131, seed=1)
    ids = id_map(90, 131)
    ref_ids, ref = region_features(clip, dino, rgb, ids, torch.float64, window_batch=1)
    half_ids, half = region_features(clip, dino, rgb, torch.from_numpy(ids).long(), window_batch=12)
    assert half.dtype == torch.float16 and torch.equal(half_ids, ref_ids)
    assert torch.equal(half, ref.to(torch.float16))  # the default: the stores' fp16, cast last
    monkeypatch.setattr(windows, "BAND_BYTES", 8 * 32 * 131 * 3)  # three rows a band
    torch.testing.assert_close(region_features(clip, dino, rgb, ids, torch.float64)[1], ref, rtol=0, atol=1e-14)
    none_ids, none = region_features(clip, dino, rgb, np.zeros((90, 131), np.int64))
    assert none_ids.numel() == 0 and none.shape == (0, clip.visual.output_dim)


def test_refusals(towers):
    clip, dino = towers
    rgb = structured_image(40, 50)
    with pytest.raises(GlaclipError, match="region id map"):
        region_features(clip, dino, rgb, np.zeros((50, 40), np.int32))
    with pytest.raises(GlaclipError, match="uint8 RGB"):
        region_features(clip, dino, rgb.astype(np.float32), np.zeros((40, 50), np.int32))
