"""Trident (`glaclip.methods.trident`, `glaclip.methods.trident_refine`) against naive restatements of its release
(tests/trident_reference.py), with tiny random CLIP, DINO-like ViT and SAM."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trident_reference as ref

if not os.environ.get("CI"):  # CI installs the masks extra (.ci/run): there a missing package fails
    pytest.importorskip("segment_anything")

from conftest import tiny_sam  # noqa: E402

from glaclip.config.protocols import resolve  # noqa: E402
from glaclip.errors import GlaclipError  # noqa: E402
from glaclip.io.images import clip_to_imagenet, preprocess  # noqa: E402
from glaclip.methods.trident import clip_input, sam_weights, splice, window_attention
from glaclip.models.sam import load_sam  # noqa: E402
from glaclip.steps.windows import window_grid  # noqa: E402


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    from conftest import TINY_CLIP

    from glaclip.models.loading import load_clip, load_vfm

    d = tmp_path_factory.mktemp("trident")
    (d / "clip.json").write_text(json.dumps(TINY_CLIP))
    (d / "vfm.json").write_text(json.dumps({"model": "vit_base_patch16_224",
                                            "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}))
    torch.manual_seed(3)
    clip = load_clip(str(d / "clip.json"), "random", device="cpu", dtype="fp64")
    vfm = load_vfm(str(d / "vfm.json"), "random", device="cpu", dtype="fp64")
    with torch.no_grad():
        for p in list(clip.model.parameters()) + list(vfm.model.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    return clip, vfm, tiny_sam()


def image(h=90, w=140, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1)
    return np.clip((base * 0.4 + 0.5 + 0.1 * rng.random((h, w, 3))) * 255, 0, 255).astype(np.uint8)


def segmenter(towers, **overrides):
    from glaclip.segmenter import Segmenter

    clip, vfm, sam = towers
    preset = resolve("trident", "voc21", **{"short_side": 112, "crop": 112, "stride": 48, **overrides})
    return Segmenter(clip, vfm, preset, sam=sam, text_cache=False, progress=False)


# ------------------------------------------------------------------------------------ single steps


def test_clip_input_matches_release():
    for h, w in [(100, 150), (96, 160), (336, 500), (448, 597), (40, 64)]:
        x = torch.randn(1, 3, h, w, dtype=torch.float64)
        assert torch.equal(clip_input(x, 16, 64), ref.clip_input(x, 16, 64)), (h, w)


def test_window_attention_one_mean_over_all_windows():
    torch.manual_seed(0)
    b, c, d, g = 3, 8, 12, 5
    feats = torch.randn(b, c, g, g, dtype=torch.float64)
    values = torch.randn(b, g * g, d, dtype=torch.float64)
    keys = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)
    ours = window_attention(keys, values, 1.2, 3.0)
    theirs = ref.custom_attn(values, feats, (g, g))
    assert torch.allclose(ours, theirs, atol=1e-12)
    # the mean is over all windows: a window alone gives other weights
    assert not torch.allclose(window_attention(keys[:1], values[:1], 1.2, 3.0), ours[:1], atol=1e-6)


@pytest.mark.parametrize("ratio", [1, 2])
def test_splice_matches_release(ratio):
    torch.manual_seed(1)
    h, w, crop, stride, patch = 96, 160, 64, 32, 16
    grid = window_grid(h, w, crop, stride, 1)
    g = crop // patch * ratio
    tokens = torch.randn(grid.count, g * g, 6, dtype=torch.float64)
    img = torch.zeros(1, 3, h, w)
    _, locs, win = ref.windows(img, stride, crop, patch)
    ours = splice(tokens, (g, g), grid, patch)
    theirs = ref.splice(tokens, locs, win, h // patch, w // patch, (g, g), (crop // patch, crop // patch))[0]
    assert torch.allclose(ours, theirs, atol=1e-14)


@pytest.fixture(scope="module")
def sam_last_block(towers):
    """SAM's encoding of one image and the input of its last block's attention (one encode for the four
    cos_fac cases below)."""
    sam = towers[2]
    blk = sam.model.image_encoder.blocks[-1]
    seen = {}
    handle = blk.norm1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    try:
        st = sam.encode(image(70, 120))
    finally:
        handle.remove()
    return st, blk, seen["x"]


@pytest.mark.parametrize("cos_fac,neg", [(1.2, True), (0.0, True), (3.0, False), (-1.0, False)])
def test_sam_weights_match_release(sam_last_block, cos_fac, neg):
    st, blk, x = sam_last_block
    attn, v = ref.sam_attention(blk.attn, x)
    a, vv = ref.sam_feat(attn, v, 64, st.valid_grid)
    theirs = ref.get_sam_sim(vv, a, cos_fac, 1, neg)[0, 0]
    ours = sam_weights(st, blk.attn, cos_fac, neg)
    assert st.valid_grid == (37, 64)
    assert torch.allclose(ours, theirs, atol=1e-12)
    assert torch.allclose(ours.sum(-1), torch.ones(ours.shape[0], dtype=ours.dtype))


@torch.no_grad()
def test_pipeline_matches_release(towers):
    """Encoding, text product, resize and decision of the Segmenter against the release's restatement."""
    clip, vfm, sam = towers
    seg = segmenter(towers, sam_refine=False, prob_thd=0.3)
    rgb = image()
    names = ["background; sky; wall", "cat", "dog"]
    out = seg.predict(rgb, names)

    p = seg.preset
    x = preprocess(rgb, p.window.short_side, p.window.max_long_side, torch.float64, seg.method.pixel_norm)
    x = ref.clip_input(x, 16, p.window.crop)
    crops, locs, win = ref.windows(x, p.window.stride, p.window.crop)
    feats = vfm.features(clip_to_imagenet(crops))
    tokens, grid_hw = clip.last_block_input(crops)
    blk = clip.last_block
    d = tokens.shape[-1]
    v = F.linear(blk.ln_1(tokens[:, 1:]), blk.attn.in_proj_weight[2 * d :], blk.attn.in_proj_bias[2 * d :])
    att = blk.attn.out_proj(ref.custom_attn(v, feats, grid_hw))
    canvas = ref.splice(att, locs, win, x.shape[2] // 16, x.shape[3] // 16, tuple(feats.shape[-2:]), grid_hw)
    st = sam.encode(ref_sam_image(rgb))
    seen = {}
    hb = sam.model.image_encoder.blocks[-1]
    handle = hb.norm1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    try:
        sam.encode(ref_sam_image(rgb))
    finally:
        handle.remove()
    a, vv = ref.sam_feat(*ref.sam_attention(hb.attn, seen["x"]), 64, st.valid_grid)
    agg = ref.guidance(canvas, a, vv, p.attention.cos_fac, clip.heads, p.attention.refine_neg_cos)
    emb = F.normalize(clip.head(agg), dim=-1)
    text = seg.query_embeddings(_queries(names))
    logits = (emb @ text.T).T.reshape(-1, *st.valid_grid)
    logits = F.interpolate(logits[None], size=rgb.shape[:2], mode="bilinear")[0]
    probs = (logits * p.decision.logit_scale).softmax(0)
    probs = torch.cat([probs[:3].max(0)[0][None], probs[3:]])
    labels = probs.argmax(0)
    labels[probs.max(0)[0] < 0.3] = 0
    assert out.probs.shape == (3, *rgb.shape[:2])
    assert np.abs(out.probs - probs.numpy()).max() < 1e-10
    assert np.array_equal(out.labels, labels.numpy())


def _queries(names):
    from glaclip.config.classes import parse_classes

    return parse_classes(names)


def ref_sam_image(rgb):
    import cv2

    h, w = rgb.shape[:2]
    th, tw = (h // 16 + (h % 16 > 0)) * 16, (w // 16 + (w % 16 > 0)) * 16
    return cv2.resize(rgb, (tw, th))


# ------------------------------------------------------------------------------------ refinement


def refinement_inputs(towers, h=90, w=140):
    sam = towers[2]
    rgb = image(h, w)
    st = sam.encode(ref_sam_image(rgb))
    predictor = sam.predictor()
    predictor.features, predictor.input_size, predictor.original_size = st.features, st.input_size, st.original_size
    predictor.is_image_set = True
    yy, xx = np.mgrid[:h, :w]
    blob1 = np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 300.0)
    blob2 = np.exp(-((yy - 60) ** 2 + (xx - 110) ** 2) / 200.0) + np.exp(-((yy - 15) ** 2 + (xx - 120) ** 2) / 80.0)
    logits = torch.tensor(np.stack([0.5 * np.ones((h, w)), 2.5 * blob1, 2.5 * blob2]))
    probs = (logits * 4).softmax(0)
    labels = probs.argmax(0)
    return predictor, probs, labels


@pytest.mark.parametrize("coarse", [0.2, 0.0])
def test_refinement_matches_release(towers, coarse):
    from glaclip.methods.trident_refine import sam_refinement

    predictor, probs, labels = refinement_inputs(towers)
    # a threshold between the predicted IoUs, so that some prompts pass and some fail
    _, scores_all = ref.sam_refinement(labels[None], probs, 3, predictor, labels.shape, coarse, 20, 0.005, -1e9)
    for iou in (-1e9, None, 1e9):
        if iou is None:
            passed = ref_scores(predictor, probs, labels, coarse)
            iou = float(np.median(passed))
        ours, s_ours = sam_refinement(labels, probs, predictor, coarse, 20, 0.005, iou)
        theirs, s_theirs = ref.sam_refinement(labels[None], probs, 3, predictor, labels.shape, coarse, 20, 0.005, iou)
        assert torch.equal(ours, theirs[0])
        assert (s_ours is None) == (s_theirs is None)
        if s_ours is not None:
            assert torch.allclose(s_ours, s_theirs, atol=1e-12)
    assert scores_all is not None


def ref_scores(predictor, probs, labels, coarse):
    """The predicted IoUs of every prompt (to choose a threshold between them)."""
    from glaclip.methods.trident_refine import coarse_regions, mask_prompt

    h, w = labels.shape
    lab = F.interpolate(labels[None, None].double(), [h // 2, w // 2], mode="nearest")[0, 0].long()
    pd = F.interpolate(probs[None], [h // 2, w // 2], mode="bilinear", align_corners=False)[0]
    out = []
    for k, (_, boxes, points) in coarse_regions(lab, pd, coarse, 20).items():
        t = predictor.transform
        m = mask_prompt(pd[k], (h, w), t, coarse, 0.005)
        _, s, _ = predictor.predict_torch(t.apply_coords_torch(points, [h // 2, w // 2]).unsqueeze(1).double(),
                                          torch.ones(len(points), 1, dtype=torch.float64),
                                          t.apply_boxes_torch(boxes, [h // 2, w // 2]).double(), m,
                                          multimask_output=False)
        out += s.flatten().tolist()
    assert len(out) >= 2
    return out


def test_components_eight_connected():
    from glaclip.methods.trident_refine import components

    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal: one component
    m[4:6, 3:6] = True
    m[0, 5] = True
    comps = components(m)
    lab, n = ref.label8(m)
    assert len(comps) == n == 3
    for i, c in enumerate(comps):
        assert np.array_equal(c, lab == i + 1)


# ------------------------------------------------------------------------------------ end to end


def test_predict_with_and_without_refinement(towers, tmp_path):
    rgb = image()
    names = ["background", "cat", "dog"]
    plain = segmenter(towers, sam_refine=False, sam_iou_thresh=0.0).predict(rgb, names)
    seg = segmenter(towers, sam_refine=True, sam_iou_thresh=0.0, prob_thd=0.0, coarse_thresh=0.0)
    refined = seg.predict(rgb, names)
    assert plain.probs.shape == refined.probs.shape == (3, 90, 140)
    assert np.array_equal(plain.probs, refined.probs)  # probs stay the decision's
    assert np.all(plain.probs.sum(0) <= 1 + 1e-9)
    assert plain.extras == {} and plain.sam_scores is None
    assert refined.labels.shape == (90, 140) and refined.labels.dtype == np.int64
    # the encoding keeps SAM's image embedding: a saved and reloaded one gives the same result
    from glaclip.steps.encoding import ImageEncoding

    enc = seg.encode_image(rgb)
    assert enc.embeddings.shape[:3] == (1, 42, 64) and "sam_features" in enc.extras
    enc.save(tmp_path / "a.encoding.safetensors")
    again = seg.predict(ImageEncoding.load(tmp_path / "a.encoding.safetensors"), names)
    assert np.array_equal(again.labels, refined.labels) and np.array_equal(again.probs, refined.probs)


def test_sam_halves_concatenates_two_grids(towers):
    seg = segmenter(towers, sam_refine=False, sam_halves=True)
    enc = seg.encode_image(image(64, 200))
    # halves of 64 x 208: each 64 x 104 -> SAM input 630 x 1024 -> 39 x 64 tokens; two side by side
    assert enc.embeddings.shape[:3] == (1, 39, 128)
    out = seg.predict(image(64, 200), ["a", "b"])
    assert out.probs.shape == (2, 64, 200)


def test_protocol_rows_and_presets():
    p = resolve("trident", "cityscapes")
    assert (p.window.short_side, p.window.crop, p.window.stride) == (688, 336, 224)
    assert (p.attention.cos_fac, p.attention.refine_neg_cos, p.attention.sam_halves) == (3.0, False, True)
    assert p.decision.coarse_thresh == 0.1 and p.decision.sam_iou_thresh == 0.8
    assert resolve("trident", "voc20").attention.cos_fac == 0.0
    v = resolve("trident", "voc21")
    assert (v.window.short_side, v.decision.prob_thd, v.class_file) == (448, 0.2, "voc21-trident.txt")
    assert resolve("trident", "coco_object").class_file == "coco_object-trident.txt"
    assert resolve("trident", "coco_object", coarse_thresh=0.5).decision.coarse_thresh == 0.5
    from glaclip.config.datasets import packaged_classes

    obj = packaged_classes("coco_object-trident.txt")
    assert len(obj.synonyms[0]) == 17 and obj.synonyms[1] == ("person",)


def test_presets_json_cli():
    from typer.testing import CliRunner

    from glaclip.cli.main import app

    res = CliRunner().invoke(app, ["presets", "--method", "trident", "--dataset", "ade20k", "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output[res.output.index("{"):])
    assert (s["short_side"], s["coarse_thresh"], s["refine_neg_cos"], s["cos_fac"]) == (576, 0.05, False, 1.2)


def test_load_sam_messages(tmp_path):
    from glaclip.errors import MissingWeights

    with pytest.raises(MissingWeights, match="sam_vit_b_01ec64.pth"):
        load_sam("sam-vit-b", None, device="cpu", dtype="fp32")
    with pytest.raises(GlaclipError, match="not found"):
        load_sam("sam-vit-b", tmp_path / "nope.pth", device="cpu", dtype="fp32")
    with pytest.raises(GlaclipError, match="unknown SAM"):
        load_sam("sam-vit-x", "random")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(GlaclipError, match="do not fit"):
        load_sam("sam-vit-b", bad, device="cpu", dtype="fp32")


def test_from_pretrained_names_missing_sam(tiny_files):
    from glaclip import Segmenter
    from glaclip.errors import MissingWeights

    with pytest.raises(MissingWeights, match="sam_vit_b_01ec64.pth"):
        Segmenter.from_pretrained(method="trident", device="cpu", dtype="fp32", **tiny_files)
    with pytest.raises(GlaclipError, match="Trident"):
        Segmenter.from_pretrained(method="proxyclip", device="cpu", dtype="fp32", sam_weights="random", **tiny_files)


def test_cli_segment_with_sam(tiny_files, tmp_path, monkeypatch):
    """--sam/--sam-weights go to Trident's SAM (here a tiny one in place of sam-vit-b); outputs are written."""
    import cv2
    from typer.testing import CliRunner

    import glaclip.models.sam as sam_module
    from glaclip.cli.main import app

    seen = {}

    def fake_load(name, weights, device="auto", dtype="auto"):
        seen.update(name=name, weights=weights)
        return tiny_sam(dtype=torch.float32)

    monkeypatch.setattr(sam_module, "load_sam", fake_load)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), image()[..., ::-1])
    args = ["segment", str(img), "-c", "sky, cat", "--method", "trident", "--sam-weights", "random", "-o",
            str(tmp_path / "out"), "--clip", tiny_files["clip"], "--clip-weights", tiny_files["clip_weights"],
            "--vfm", tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"], "--device", "cpu",
            "--set", "short_side=112", "--set", "crop=112", "--set", "stride=48", "--set", "sam_iou_thresh=-1",
            "--quiet", "--no-cache"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert seen == {"name": "sam-vit-b", "weights": "random"}
    assert (tmp_path / "out" / "a_labels.png").is_file()


def test_cli_refuses_missing_sam_file_before_loading(tmp_path):
    from typer.testing import CliRunner

    from glaclip.cli.main import app

    img = tmp_path / "a.png"
    img.write_bytes(b"")
    res = CliRunner().invoke(app, ["segment", str(img), "-c", "a, b", "--method", "trident", "--sam-weights",
                                   str(tmp_path / "nope.pth"), "-o", str(tmp_path / "out")])
    assert isinstance(res.exception, GlaclipError) and "nope.pth: file not found" in str(res.exception)
    res = CliRunner().invoke(app, ["segment", str(img), "-c", "a, b", "--method", "trident", "--sam", "sam2-hiera-tiny",
                                   "-o", str(tmp_path / "out")])
    assert isinstance(res.exception, GlaclipError) and "unknown --sam" in str(res.exception)


def test_compare_trident_beside_mask_and_window_methods(files6, tmp_path, monkeypatch):
    """`glaclip compare`: --sam-weights go to Trident's SAM, the mask method takes --masks FILE, and each
    panel's numbers are written."""
    import json

    import cv2
    from typer.testing import CliRunner

    import glaclip.models.sam as sam_module
    from glaclip.cli.main import app

    seen = {}

    def fake_load(name, weights, device="auto", dtype="auto"):
        seen.update(name=name, weights=weights)
        return tiny_sam(dtype=torch.float32)

    monkeypatch.setattr(sam_module, "load_sam", fake_load)
    img, masks = tmp_path / "a.png", tmp_path / "m.npz"
    rgb = image()
    cv2.imwrite(str(img), rgb[..., ::-1])
    np.savez_compressed(masks, instance_mask=(np.arange(rgb.shape[0])[:, None] // 20
                                              + np.arange(rgb.shape[1])[None, :] // 30).astype(np.int32))
    out = tmp_path / "cmp.png"
    args = ["compare", str(img), "-m", "proxyclip,trident,corrclip", "-c", "sky, cat", "--sam-weights", "random",
            "--masks", str(masks), "-o", str(out), "--clip", files6["clip"], "--clip-weights", files6["clip_weights"],
            "--vfm", files6["vfm"], "--vfm-weights", files6["vfm_weights"], "--device", "cpu",
            "--set", "short_side=112", "--set", "crop=112", "--set", "stride=48", "--set", "sam_iou_thresh=-1",
            "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert seen == {"name": "sam-vit-b", "weights": "random"}
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["proxyclip", "trident", "corrclip"]
    assert out.is_file()
