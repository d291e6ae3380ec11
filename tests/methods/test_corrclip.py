"""CorrCLIP and GLA on it: every step against a naive restatement (tests/corrclip_reference.py), masks in
the API, map correction, protocol rows."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import structured_image
from corrclip_reference import naive_merge, naive_qk, naive_scope, naive_vote, naive_window

from glaclip import GlaclipError, Segmenter
from glaclip.config.protocols import effective
from glaclip.config.registry import CORRCLIP_NORM
from glaclip.methods.corrclip import PAD_ID, merge_regions, scope_weights, spatial_layers
from glaclip.steps.encoding import ImageEncoding
from glaclip.steps.postprocess import mask_vote
from glaclip.steps.windows import crop_masks, window_grid

CLASSES = ["sky", "road", "car", "tree"]


@pytest.fixture(scope="module")
def corr64(files6):  # files6: conftest
    return Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp64", **files6)


def regions_map(h, w, with_zero=True):
    m = np.zeros((h, w), np.int32) if with_zero else np.full((h, w), 2, np.int32)
    m[h // 10 : h // 2, w // 12 : w // 2] = 3
    m[h // 2 : h - 5, w // 4 : w - 5] = 7
    m[2 : h // 5, 2 * w // 3 : w - 2] = 9
    m[2 * h // 3 : h - 10, 5 : w // 5] = 12
    return m


def test_spatial_layers_match_the_release():
    assert [spatial_layers(n) for n in (12, 24, 32, 6, 40)] == [5, 12, 28, 2, 36]


@pytest.mark.parametrize("case", ["zero", "no-zero", "two-ids", "pad"])
def test_merge_regions_against_naive(case):
    rng = np.random.default_rng(3)
    m = 300
    base = rng.normal(size=(6, 16))
    ids = rng.choice([0, 4, 5, 8, 11, 20], size=m)
    if case == "no-zero":
        ids[ids == 0] = 4
    if case == "two-ids":
        ids = np.where(ids < 8, 0, 8)
    if case == "pad":
        ids[:40] = PAD_ID
    feats = base[np.searchsorted([0, 4, 5, 8, 11, 20], np.minimum(ids, 20))] + 0.3 * rng.normal(size=(m, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    got = merge_regions(torch.from_numpy(ids).int(), torch.from_numpy(feats)).numpy()
    want = naive_merge(ids.astype(np.int32), feats)
    np.testing.assert_array_equal(got, want)
    assert (got == ids.min()).sum() == (ids == ids.min()).sum()  # the smallest id stays as it is
    if case != "two-ids":
        assert (got[ids != ids.min()] >= 10000).all()


def test_scope_weights_against_naive():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(200, 8))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    for ids in (rng.choice([0, 10000, 10001, 10002], size=200), rng.choice([5, 10000], size=200),
                np.zeros(200, int)):
        got = scope_weights(torch.from_numpy(feats), torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(got, naive_scope(feats, ids), rtol=0, atol=1e-12)


def test_dino_q_plus_k_against_a_hook(corr64):
    x = torch.randn(1, 3, 336, 392, dtype=torch.float64)
    got = corr64.vfm.last_qk(x)
    want, grid = naive_qk(corr64.vfm.model, x)
    assert tuple(got.shape[-2:]) == grid
    np.testing.assert_allclose(F.normalize(got.flatten(2)[0].T, dim=-1).numpy(), want.numpy(), atol=1e-12)


def test_mask_padding_is_centred_with_the_pad_id():
    grid = window_grid(300, 330, 336, 112, 56)  # one window 300 x 330, padded to 336 x 336
    m = torch.arange(300 * 330, dtype=torch.int32).view(1, 300, 330)
    out = crop_masks(m, grid, PAD_ID)
    assert out.shape == (1, 336, 336) and grid.pad == (3, 3, 18, 18)
    assert (out[0, :18] == PAD_ID).all() and (out[0, -18:] == PAD_ID).all() and (out[0, :, :3] == PAD_ID).all()
    assert torch.equal(out[0, 18:318, 3:333], m[0])


@pytest.mark.parametrize("shape, with_zero", [((336, 448), True), ((336, 336), False), ((300, 330), True)])
def test_windows_against_the_naive_forward(corr64, shape, with_zero):
    """Every window's final embeddings equal a one-window-at-a-time transcription of the release."""
    seg = corr64
    img = structured_image(*shape, seed=2)
    masks = regions_map(*shape, with_zero)
    enc = seg.encode_image(img, masks=masks)
    x = enc.resized
    grid = enc.grid
    big = F.interpolate(torch.from_numpy(masks)[None, None].float(), size=x.shape[-2:], mode="nearest")[0].int()
    wm = crop_masks(big, grid, PAD_ID)
    crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in grid.boxes])
    crops = F.pad(crops, grid.pad)
    for b in range(grid.count):
        want = F.normalize(naive_window(seg.clip.model, seg.vfm.model, crops[b : b + 1], wm[b]), dim=-1)
        got = enc.embeddings[b].flatten(0, 1)
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), atol=1e-10)


def test_normalisation_is_the_release_own(corr64):
    img = structured_image(336, 336)
    enc = corr64.encode_image(img, masks=regions_map(336, 336))
    mean, std = (np.array(v).reshape(3, 1, 1) for v in CORRCLIP_NORM)
    np.testing.assert_allclose(enc.resized[0].numpy(), (img.transpose(2, 0, 1) - mean) / std, atol=1e-12)


def test_mask_vote_against_the_release_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, size=(60, 80))
    masks = rng.choice([0, 3, 4, 9], size=(60, 80)).astype(np.int32)
    masks[:10] = 9
    labels[:10, :40], labels[:10, 40:] = 1, 2  # a tie in region 9 goes to the smaller label
    got = mask_vote(labels, masks)
    np.testing.assert_array_equal(got, naive_vote(labels, masks))
    assert (got[masks == 0] == labels[masks == 0]).all()
    no_zero = masks + 1  # the smallest id is kept as it is even when it is not 0
    np.testing.assert_array_equal(mask_vote(labels, no_zero), naive_vote(labels, no_zero))


def test_predict_with_masks_probs_before_and_labels_after_correction(corr64):
    img = structured_image(300, 400, seed=1)
    masks = regions_map(300, 400)
    r = corr64.predict(img, CLASSES, masks=masks)
    raw = corr64.with_preset(corr64.preset.with_overrides(mask_vote=False)).predict(img, CLASSES, masks=masks)
    np.testing.assert_array_equal(r.probs, raw.probs)
    np.testing.assert_array_equal(r.labels, mask_vote(raw.labels, masks))
    for v in np.unique(masks)[1:]:
        assert len(np.unique(r.labels[masks == v])) == 1


def test_masks_are_required_checked_and_part_of_the_encoding(corr64, tmp_path):
    img = structured_image(120, 160)
    with pytest.raises(GlaclipError, match="needs region masks"):
        corr64.predict(img, CLASSES)
    with pytest.raises(GlaclipError, match="region mask map is 160x100, the image is 160x120"):
        corr64.predict(img, CLASSES, masks=np.zeros((100, 160), np.int32))
    with pytest.raises(GlaclipError, match="region ids must be integers"):
        corr64.predict(img, CLASSES, masks=np.zeros((120, 160), np.float32))
    a, b = regions_map(120, 160), regions_map(120, 160, with_zero=False)
    ea, eb = corr64.encode_image(img, masks=a), corr64.encode_image(img, masks=b)
    assert ea.identity["masks"] != eb.identity["masks"]
    path = ea.save(tmp_path / "a.encoding.safetensors")
    back = ImageEncoding.load(path)
    assert torch.equal(back.masks, torch.from_numpy(a))
    np.testing.assert_array_equal(corr64.predict(back, CLASSES).labels, corr64.predict(img, CLASSES, masks=a).labels)
    with pytest.raises(GlaclipError, match="differ from the ones"):
        corr64.predict(back, CLASSES, masks=b)


def test_gla_corrclip_on_one_window_is_corrclip(files6):
    """A single window covering the image: GLA's keys of all windows are that window's keys."""
    kw = dict(device="cpu", dtype="fp64", **files6)
    img, masks = structured_image(336, 336, seed=4), regions_map(336, 336)
    a = Segmenter.from_pretrained(method="corrclip", **kw).predict(img, CLASSES, masks=masks)
    b = Segmenter.from_pretrained(method="gla-corrclip", **kw).predict(img, CLASSES, masks=masks)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-10)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_gla_corrclip_block_rows_do_not_change_results(files6):
    kw = dict(device="cpu", dtype="fp64", **files6)
    img, masks = structured_image(300, 500, seed=5), regions_map(300, 500)
    a = Segmenter.from_pretrained(method="gla-corrclip", block_rows=97, **kw).predict(img, CLASSES, masks=masks)
    b = Segmenter.from_pretrained(method="gla-corrclip", **kw).predict(img, CLASSES, masks=masks)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-12)


def test_mask_vote_for_any_method(segmenter):
    img = structured_image(120, 160)
    masks = regions_map(120, 160)
    seg = segmenter.with_preset(segmenter.preset.with_overrides(mask_vote=True))
    with pytest.raises(GlaclipError, match="mask_vote"):
        seg.predict(img, CLASSES)
    plain = segmenter.predict(img, CLASSES)
    voted = seg.predict(img, CLASSES, masks=masks)
    np.testing.assert_array_equal(voted.probs, plain.probs)
    np.testing.assert_array_equal(voted.labels, mask_vote(plain.labels, masks))


def test_protocol_rows_and_class_files():
    p, q = effective("corrclip", "voc21")
    assert (p.window.short_side, p.window.crop, p.window.stride, p.window.pad_multiple) == (336, 336, 112, 56)
    assert p.decision.prob_thd == 0.2 and p.decision.mask_vote and p.class_file == "voc21-corrclip.txt"
    assert "people" in q.names and "person" not in q.names and "tvmonitor" in q.names
    assert len(q.queries) == len(q.names) + 25  # 26 background names
    p, _ = effective("corrclip", "cityscapes")
    assert (p.window.short_side, p.window.crop, p.window.stride) == (448, 224, 112)
    p, q = effective("corrclip", "coco_object")
    assert p.decision.prob_thd == 0.25 and len(q.names) == 81 and len(q.queries) == 81 + 15  # 16 background names
    assert effective("corrclip", "ade20k")[0].window.short_side == 448
    assert effective("gla-corrclip", "context60")[0].decision.prob_thd == 0.15
