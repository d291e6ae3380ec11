"""Host methods and GLA plug-ins against direct restatements of their published recipes."""

import json
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F
from conftest import TINY_CLIP, structured_image
from probes import clip_host_tokens

from glaclip import Segmenter, get_preset
from glaclip.config.presets import AttentionConfig
from glaclip.config.registry import METHODS
from glaclip.methods.attention import gla_attention, proxyclip_attention
from glaclip.methods.hosts import local_tokens, neighbourhood
from glaclip.runs.bench import block_masks

CLASSES = ["sky", "road", "car", "tree"]


def _tokens(segmenter, h=224, w=224, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, h, w, dtype=segmenter.clip.dtype)
    return segmenter.clip.last_block_input(x)


def _naive_heads(clip, tokens):
    blk = clip.last_block
    d = tokens.shape[-1]
    y = blk.ln_1(tokens)
    W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    q, k, v = (y @ W[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i in range(3))
    h = blk.attn.num_heads
    split = lambda t: t.view(t.shape[0], t.shape[1], h, d // h).permute(0, 2, 1, 3)  # noqa: E731
    return split(q), split(k), split(v), (d // h) ** -0.5


def _finish(clip, weights, v):
    out = (weights @ v).permute(0, 2, 1, 3).flatten(2)
    return clip.last_block.attn.out_proj(out)


@pytest.mark.parametrize("name", ["maskclip", "clearclip", "sclip", "naclip", "clip-vanilla"])
def test_local_hosts_equal_their_recipe(segmenter64, name):
    clip = segmenter64.clip
    tokens, grid = _tokens(segmenter64)
    got = local_tokens(METHODS[name], clip, tokens, grid, AttentionConfig())
    q, k, v, s = _naive_heads(clip, tokens)
    blk = clip.last_block
    if name == "maskclip":
        expected = blk.attn.out_proj(v.permute(0, 2, 1, 3).flatten(2))[:, 1:]
    elif name == "clearclip":
        expected = _finish(clip, torch.softmax(q @ q.transpose(-1, -2) * s, -1), v)[:, 1:]
    elif name == "clip-vanilla":
        expected = _finish(clip, torch.softmax(q @ k.transpose(-1, -2) * s, -1), v)[:, 1:]
    elif name == "sclip":
        w = torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)
        x = tokens + _finish(clip, w, v)
        expected = (x + blk.mlp(blk.ln_2(x)))[:, 1:]
    else:
        gh, gw = grid
        omega = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=tokens.dtype)
        for i in range(gh * gw):
            for j in range(gh * gw):
                dy, dx = i // gw - j // gw, i % gw - j % gw
                omega[i + 1, j + 1] = np.exp(-(dy * dy + dx * dx) / (2 * 5.0**2))
        expected = _finish(clip, torch.softmax(k @ k.transpose(-1, -2) * s + omega, -1), v)[:, 1:]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_vanilla_clip_is_the_unmodified_model(segmenter64):
    clip = segmenter64.clip
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224, dtype=clip.dtype)
    tokens, grid = clip.last_block_input(x)
    ours = clip.head(local_tokens(METHODS["clip"], clip, tokens, grid, AttentionConfig()))
    clip.visual.output_tokens = True
    try:
        _, own = clip.visual(x)
    finally:
        clip.visual.output_tokens = False
    torch.testing.assert_close(ours, own @ clip.visual.proj, rtol=0, atol=1e-10)


def test_neighbourhood_matches_gaussian():
    g = neighbourhood(3, 4, 5.0, torch.float64, "cpu")
    assert g.shape == (13, 13) and (g[0] == 0).all() and (g[:, 0] == 0).all()
    assert g[1, 1] == 1.0 and g[1, 2] == pytest.approx(np.exp(-1 / 50)) and g[1, 6] == pytest.approx(np.exp(-2 / 50))


@pytest.mark.parametrize("name, key", [("gla-clearclip", "q"), ("gla-naclip", "k"), ("gla-sclip", "qk")])
def test_gla_on_clip_hosts_equals_formula(segmenter64, name, key):
    seg = segmenter64.with_preset(get_preset(name, block_rows=97))
    rgb = structured_image(300, 400, seed=9)
    from glaclip.io.images import preprocess

    x = preprocess(rgb, 336, 2048, torch.float64)
    grid = seg.grid_for(x.shape[2], x.shape[3])
    got, _ = clip_host_tokens(seg, x, grid)
    crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in grid.boxes])
    tokens, _ = seg.clip.last_block_input(crops)
    q, k, v = seg.clip.qkv(tokens)
    values = v[:, 1:].flatten(0, 1)
    heads = values.T.reshape(seg.clip.heads, -1, values.shape[0]).transpose(1, 2)
    out = 0
    for which in key:
        K = F.normalize((q if which == "q" else k)[:, 1:].flatten(0, 1), dim=-1)
        o, _ = reference.gla(K, heads, grid.count)
        out = out + o.transpose(1, 2).reshape(values.shape[1], -1).T
    torch.testing.assert_close(got, seg.clip.out_proj(out), rtol=0, atol=1e-9)


def _release_smoothed(raw, index, gh, gw):
    """The GLA release's ClearCLIP start, written out: an N x N candidate mask (same image-pixel index,
    or an 8-neighbour in the same window), the mean of the raw vectors over it, L2-normalised."""
    n = raw.shape[0]
    per = gh * gw
    cand = index[:, None] == index[None, :]
    for i in range(n):
        wi, ri, ci = i // per, (i % per) // gw, i % gw
        for j in range(wi * per, (wi + 1) * per):
            rj, cj = (j % per) // gw, j % gw
            if max(abs(ri - rj), abs(ci - cj)) == 1:
                cand[i, j] = True
    return F.normalize((cand.to(raw.dtype) @ raw) / cand.sum(1, keepdim=True), dim=-1)


@pytest.mark.parametrize("size, short", [((300, 400), 336), ((60, 150), 100)])
def test_gla_clearclip_release_equals_formula(segmenter64, size, short):
    from glaclip.io.images import preprocess
    from glaclip.methods.hosts import smoothed_proxy
    from glaclip.steps.windows import token_index

    seg = segmenter64.with_preset(get_preset("gla-clearclip-release", block_rows=61, short_side=short))
    rgb = structured_image(*size, seed=4)
    x = preprocess(rgb, short, 2048, torch.float64)
    grid = seg.grid_for(x.shape[2], x.shape[3])
    got, _ = clip_host_tokens(seg, x, grid)
    crops = torch.cat([x[:, :, y1:y2, x1:x2] for (y1, y2, x1, x2) in grid.boxes])
    if any(grid.pad):
        crops = F.pad(crops, grid.pad)
    tokens, (gh, gw) = seg.clip.last_block_input(crops)
    q, _, v = seg.clip.qkv(tokens)
    raw = q[:, 1:].flatten(0, 1)
    # token labels: the image-pixel index of each token's top-left pixel, 0 inside the padding
    left, _, top, _ = grid.pad
    wh, ww = grid.window_size
    labels = []
    for (y1, _, x1, _) in grid.boxes:
        for r in range(gh):
            for c in range(gw):
                py, px = r * 16 - top, c * 16 - left
                labels.append((y1 + py) * grid.width + x1 + px if 0 <= py < wh and 0 <= px < ww else 0)
    index = torch.tensor(labels)
    assert torch.equal(token_index(grid, (gh, gw), 16), index)
    if short == 336:
        assert (index[None] == index[:, None]).sum() > len(labels)  # windows overlap: twins exist
    else:
        assert any(grid.pad) and (index == 0).sum() > 1  # padded tokens share index 0 as in the release
    P0 = _release_smoothed(raw, index, gh, gw)
    torch.testing.assert_close(smoothed_proxy(raw, index, (gh, gw)), P0, rtol=0, atol=1e-12)
    values = v[:, 1:].flatten(0, 1)
    heads = values.T.reshape(seg.clip.heads, -1, values.shape[0]).transpose(1, 2)
    o, _ = reference.gla(F.normalize(raw, dim=-1), heads, grid.count, P0=P0, dynamic_beta=False)
    expected = seg.clip.out_proj(o.transpose(1, 2).reshape(values.shape[1], -1).T)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    plain = segmenter64.with_preset(get_preset("gla-clearclip", block_rows=61, short_side=short))
    assert (clip_host_tokens(plain, x, grid)[0] - got).abs().max() > 1e-6  # the variant differs


def test_single_window_gla_reduces_to_window_local_proxyclip():
    """One window, no proxy iteration, fixed beta/gamma: GLA is the host's formula (row means >= 0 here)."""
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64) + 2.0, dim=-1)
    values = torch.randn(50, 8, generator=g, dtype=torch.float64)
    assert ((keys @ keys.T).mean(1) >= 0).all()
    cfg = AttentionConfig(proxy_iters=0, dynamic=False)
    torch.testing.assert_close(gla_attention(keys, values, 1, cfg),
                               proxyclip_attention(keys[None], values[None], cfg)[0],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_through_predict(segmenter, files6, name, monkeypatch):
    seg, masks = segmenter, None
    if METHODS[name].needs_masks:  # CorrCLIP needs region masks and a CLIP of >= 5 blocks
        files = dict(files6)
        if METHODS[name].needs_radio:  # CorrCLIPv2: RADIO's interface, a stand-in's hub entry
            files.update(vfm="tiny-random", vfm_weights=None,
                         radio_repo=str(Path(__file__).resolve().parents[1] / "models" / "radio_standin"))
        seg, masks = Segmenter.from_pretrained(method=name, device="cpu", **files), block_masks(150, 260)
    if METHODS[name].needs_sam:  # Trident aggregates with SAM: a tiny random one in place of SAM ViT-B
        pytest.importorskip("segment_anything")
        from conftest import tiny_sam

        import glaclip.models.sam as sam_module

        monkeypatch.setattr(sam_module, "load_sam", lambda *a, **k: tiny_sam(dtype=torch.float32))
        seg = Segmenter.from_pretrained(method=name, device="cpu", sam_weights="random", **files6)
    result = seg.with_preset(get_preset(name)).predict(structured_image(150, 260), CLASSES, masks=masks)
    assert result.labels.shape == (150, 260) and result.probs.shape == (4, 150, 260)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)
    assert result.preset.method == name


def test_clip_only_methods_load_no_vfm(tiny_files):
    seg = Segmenter.from_pretrained(method="clearclip", device="cpu", **tiny_files)
    assert seg.vfm is None and "vfm=none" in seg.models_line()
    with pytest.raises(Exception, match="needs a VFM"):
        seg.with_preset(get_preset("gla-proxyclip"))


def test_from_pretrained_takes_an_effective_preset(tiny_files):
    from glaclip import GlaclipError, effective

    preset, _ = effective("naclip", "voc21", "gla", {"short_side": 200})
    seg = Segmenter.from_pretrained(preset=preset, device="cpu", prob_thd=0.3, **tiny_files)
    assert seg.vfm is None and seg.preset == preset.with_overrides(prob_thd=0.3)
    with pytest.raises(GlaclipError, match="not both"):
        Segmenter.from_pretrained(preset=preset, method="naclip", device="cpu", **tiny_files)


@pytest.fixture(scope="session")
def patch14(tmp_path_factory):
    """Tiny models with 14-pixel patches: a CLIP like ViT-L/14 and a DINOv2 with registers."""
    d = tmp_path_factory.mktemp("p14")
    cfg = json.loads(json.dumps(TINY_CLIP))
    cfg["vision_cfg"]["patch_size"] = 14
    (d / "glaclip-tiny-clip14.json").write_text(json.dumps(cfg))
    (d / "glaclip-tiny-dinov2.json").write_text(json.dumps(
        {"model": "vit_small_patch14_reg4_dinov2", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}))
    torch.manual_seed(3)
    return Segmenter.from_pretrained(clip=str(d / "glaclip-tiny-clip14.json"), clip_weights="random",
                                     vfm=str(d / "glaclip-tiny-dinov2.json"), vfm_weights="random", device="cpu",
                                     dtype="fp64")


@pytest.mark.parametrize("size, overrides", [((101, 157), {}), ((37, 301), {"short_side": 75}),
                                             ((60, 90), {"short_side": 60})])
def test_patch14_grids_on_odd_sizes(patch14, size, overrides):
    assert patch14.vfm.model.num_prefix_tokens == 5 and patch14.token_patch == 14
    rgb = structured_image(*size, seed=1)
    result = patch14.with_preset(get_preset("gla-proxyclip", **overrides)).predict(rgb, CLASSES)
    import open_clip

    probs, _, _ = reference.segment(patch14.clip.model, patch14.vfm.model, open_clip.get_tokenizer(patch14.clip.name),
                                    rgb, [[c] for c in CLASSES], short=overrides.get("short_side", 336))
    np.testing.assert_allclose(result.probs, probs.numpy(), atol=1e-9, rtol=0)
    clear = patch14.with_preset(get_preset("gla-clearclip", **overrides)).predict(rgb, CLASSES)
    assert clear.labels.shape == size
