"""PAMR, SCLIP's area threshold, position-embedding resizing and the whole-image path against
direct restatements of BASELINES.md section 1."""

import numpy as np
import open_clip
import pytest
import reference
import torch
import torch.nn.functional as F
from conftest import structured_image
from probes import whole_decision

from glaclip import get_preset, resolve
from glaclip.config.presets import AttentionConfig
from glaclip.methods.attention import proxyclip_attention
from glaclip.models.towers import resize_positions
from glaclip.steps.postprocess import area_threshold, pamr

CLASSES = [["sky", "heaven"], ["road"], ["car", "vehicle", "automobile"], ["tree"]]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("size, steps, dilations", [((31, 26), 10, (8, 16)), ((17, 40), 3, (2, 5)), ((9, 7), 2, (3,))])
def test_pamr_matches_restatement(size, steps, dilations):
    image, logits = _rand(3, *size, seed=1), _rand(5, *size, seed=2)
    got = pamr(image, logits, steps, dilations)
    torch.testing.assert_close(got, reference.pamr(image, logits, steps, dilations), rtol=0, atol=1e-10)
    assert (got - logits).abs().max() > 1e-3  # it does refine


def test_pamr_tiles_equal_whole_image():
    image, logits = _rand(3, 70, 95, seed=3), _rand(4, 70, 95, seed=4)
    whole = pamr(image, logits, 3, (2, 4), tile=10_000)
    tiled = pamr(image, logits, 3, (2, 4), tile=16)  # many tiles, halos of 12 pixels
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    assert pamr(image, logits, 0) is logits


@pytest.mark.parametrize("strip_bytes, chunk_bytes", [(1, 1), (3 * 2**14, 2**17), (2**30, 2**30)])
def test_pamr_bands_and_chunks_match_restatement(monkeypatch, strip_bytes, chunk_bytes):
    """The update a band of rows at a time (1 row, a few rows, all rows) and by query chunks (1, 2, all)."""
    from glaclip.steps import postprocess

    monkeypatch.setattr(postprocess, "_STRIP_BYTES", strip_bytes)
    monkeypatch.setattr(postprocess, "_CHUNK_BYTES", chunk_bytes)
    image, logits = _rand(3, 45, 38, seed=14), _rand(5, 45, 38, seed=15)
    got = pamr(image, logits, 4, (3, 7))
    torch.testing.assert_close(got, reference.pamr(image, logits, 4, (3, 7)), rtol=0, atol=1e-10)
    assert (got - logits).abs().max() > 1e-3


def test_area_threshold_matches_restatement():
    g = torch.Generator().manual_seed(5)
    probs = torch.rand(6, 20, 30, generator=g, dtype=torch.float64)
    probs[3] *= 0.5  # class 3 wins few pixels
    probs[5] *= 0.1
    for thd in (0.0, 0.05, 0.1, 0.3):
        torch.testing.assert_close(area_threshold(probs, thd), reference.area_threshold(probs, thd), rtol=0, atol=0)
    assert (area_threshold(probs, 0.1)[5] == 0).all() and (area_threshold(probs, 0.1)[0] == probs[0]).all()
    logits = _rand(6, 20, 30, seed=6)
    labels, class_probs = whole_decision(logits, torch.arange(6), 6, 65.0, 0.1, area_thd=0.1)
    expected = reference.area_threshold(torch.softmax(65 * logits, 0), 0.1)
    torch.testing.assert_close(class_probs, expected)
    top, lab = expected.max(0)
    lab[top < 0.1] = 0
    assert torch.equal(labels, lab)


@pytest.mark.parametrize("src, target", [((14, 14), (21, 28)), ((14, 14), (5, 40)), ((28, 28), (42, 42)),
                                         ((28, 28), (12, 31))])
def test_position_resize_matches_official_rule(src, target):
    grid = _rand(1, 6, *src, seed=7)
    got = resize_positions(grid, *target)
    assert got.shape == (1, 6, *target)
    torch.testing.assert_close(got[0], reference.official_pos(grid[0], *target), rtol=0, atol=1e-12)
    by_size = F.interpolate(grid, size=target, mode="bicubic", align_corners=False)
    assert (got - by_size).abs().max() > 1e-4  # the official rule is not a resize to the target size


def test_vfm_features_are_timm_at_the_native_grid(segmenter64):
    vfm = segmenter64.vfm
    x = _rand(2, 3, 224, 224, seed=8)
    own = vfm.model.forward_features(x)[:, vfm.model.num_prefix_tokens :].transpose(1, 2).reshape(2, -1, 28, 28)
    torch.testing.assert_close(vfm.features(x), own, rtol=0, atol=1e-12)


def test_proxyclip_scalar_mean_and_all_negative_rows():
    keys = F.normalize(_rand(3, 40, 8, seed=9), dim=-1)
    values = _rand(3, 40, 6, seed=10)
    heads = values.view(3, 40, 2, 3).permute(0, 2, 1, 3)
    for token_norm in (False, True):
        got = proxyclip_attention(keys, values, AttentionConfig(token_norm=token_norm))
        for b in range(3):
            expected, _ = reference.proxyclip_local(keys[b], heads[b], token_norm=token_norm)
            torch.testing.assert_close(got[b], expected.permute(1, 0, 2).reshape(40, 6), rtol=0, atol=1e-12)
    # nearly identical keys: mean > 0.833, so every entry of (S - 1.2 mean) * 3 is < 0; the row keeps its max
    same = F.normalize(torch.ones(1, 10, 8, dtype=torch.float64) + 1e-3 * _rand(1, 10, 8, seed=11), dim=-1)
    out = proxyclip_attention(same, values[:1, :10], AttentionConfig(token_norm=False))
    assert torch.isfinite(out).all()
    sim = same[0] @ same[0].T
    torch.testing.assert_close(out[0], values[0, sim.argmax(1)], rtol=0, atol=1e-12)


def _naive_naclip_whole(seg, rgb, logit_scale=40.0, prob_thd=0.1, steps=10):
    """NACLIP on VOC21 as BASELINES.md states it: the whole resized image through CLIP once
    (positions resized by the official rule), k-k attention + Gaussian, logits straight to the
    original size, PAMR, then the decision."""
    visual = seg.clip.visual
    img = reference.step1_resize(rgb, 336, 2048, torch.float64)
    seq, (gh, gw) = reference.clip_block_input(visual, img)
    last = visual.transformer.resblocks[-1]
    D = seq.shape[1]
    h = last.attn.num_heads
    y = last.ln_1(seq)
    W, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    k = (y @ W[D : 2 * D].T + b[D : 2 * D]).view(-1, h, D // h).transpose(0, 1)
    v = (y @ W[2 * D :].T + b[2 * D :]).view(-1, h, D // h).transpose(0, 1)
    n = gh * gw + 1
    omega = torch.zeros(n, n, dtype=torch.float64)
    for i in range(gh * gw):
        for j in range(gh * gw):
            dy, dx = i // gw - j // gw, i % gw - j % gw
            omega[i + 1, j + 1] = np.exp(-(dy * dy + dx * dx) / 50.0)
    att = torch.softmax(k @ k.transpose(1, 2) * (D // h) ** -0.5 + omega, dim=-1) @ v
    out = last.attn.out_proj(att.transpose(0, 1).reshape(n, D))[1:]
    E = F.normalize(visual.ln_post(out) @ visual.proj, dim=-1)
    queries = [q for syn in CLASSES for q in syn]
    T = reference.text_queries(seg.clip.model, open_clip.get_tokenizer(seg.clip.name), queries).to(torch.float64)
    logits = (E @ T.T).T.reshape(len(queries), gh, gw)
    logits = F.interpolate(logits[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    guide = F.interpolate(img[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    logits = reference.pamr(guide, logits, steps)
    probs = torch.softmax(logit_scale * logits, 0)
    owner = [i for i, syn in enumerate(CLASSES) for _ in syn]
    P = torch.stack([probs[[q for q, o in enumerate(owner) if o == c]].max(0).values for c in range(len(CLASSES))])
    labels = P.argmax(0)
    labels[P.max(0).values < prob_thd] = 0
    return P, labels


def test_naclip_whole_image_with_pamr_matches_restatement(segmenter64):
    rgb = structured_image(61, 83, seed=12)  # -> 336x457: a 21x28 grid, the width floored by the patch conv
    preset = resolve("naclip", "voc21")
    assert preset.window.crop == 0 and preset.decision.pamr_steps == 10
    result = segmenter64.with_preset(preset).predict(rgb, CLASSES)
    P, labels = _naive_naclip_whole(segmenter64, rgb)
    np.testing.assert_allclose(result.probs, P.numpy(), atol=1e-9, rtol=0)
    np.testing.assert_array_equal(result.labels, labels.numpy())
    assert result.probs.std() > 1e-3
    plain = segmenter64.with_preset(get_preset("naclip", crop=0, pamr_steps=0, prob_thd=0.1)).predict(rgb, CLASSES)
    assert np.abs(plain.probs - result.probs).max() > 1e-4  # PAMR changed something


@pytest.mark.parametrize("method, protocol", [("sclip", None), ("clearclip", None), ("proxyclip", None),
                                              ("gla-proxyclip", "host"), ("gla-clearclip-release", None)])
def test_protocol_rows_run_end_to_end(segmenter, method, protocol):
    for dataset in ("voc21", "cityscapes"):
        preset = resolve(method, dataset, protocol, short_side=120, max_long_side=400)
        result = segmenter.with_preset(preset).predict(structured_image(90, 170, seed=13), CLASSES)
        assert result.labels.shape == (90, 170) and np.isfinite(result.probs).all()
        assert result.preset.dataset == dataset
