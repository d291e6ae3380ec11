"""CorrCLIPv2 (methods/corrclip2.py): the RADIO path, every window against v1's naive restatement without
merging on RADIO features, the bank support fused before the decision, protocol rows, identity, errors;
corrclip2 = v1's own family without merging on RADIO's window features (+ the support fusion); gla-corrclip2
(one window: corrclip2; several: a dense restatement over all windows; block rows; registry rows).
RADIO is the stand-in of tests/models/radio_standin loaded through torch.hub (CI has no RADIO checkout)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import structured_image
from corrclip_reference import naive_window

from glaclip import GlaclipError, Segmenter
from glaclip.config.protocols import effective
from glaclip.methods.corrclip import PAD_ID
from glaclip.steps.decision import decide
from glaclip.steps.windows import crop_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bank_fixture import random_bank, regions  # noqa: E402

STANDIN = Path(__file__).resolve().parents[1] / "models" / "radio_standin"
CLASSES = [["sky"], ["cat", "kitten"], ["grass"]]
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


@pytest.fixture(scope="module")
def cc2_files(tmp_path_factory, files6):  # files6: conftest (a 6-block tiny CLIP: CorrCLIP needs >= 5)
    d = tmp_path_factory.mktemp("cc2")
    g = torch.Generator().manual_seed(3)
    sd = {"base_model.embed.weight": torch.randn(32, 3, 16, 16, generator=g) * 0.05,
          "base_model.embed.bias": torch.randn(32, generator=g),
          "base_model.mix.weight": torch.randn(32, 32, generator=g),
          "base_model.mix.bias": torch.randn(32, generator=g),
          "input_conditioner.norm_mean": MEAN, "input_conditioner.norm_std": STD}
    torch.save({"args": {"dim": 32}, "state_dict": sd}, d / "radio.pth")
    # an auxiliary CLIP of its own weights (text tower used)
    from glaclip.models.loading import load_clip

    torch.manual_seed(7)
    aux = load_clip(files6["clip"], "random", device="cpu", dtype="fp32")
    torch.save(aux.model.state_dict(), d / "aux.pt")
    arrays = random_bank(d / "bank", n=300, c=32, dims={"metaclip_b": 32, "dfnclip_b": 32}, seed=2)
    return {"clip": files6["clip"], "clip_weights": files6["clip_weights"], "vfm": "c-radio_v3-l",
            "vfm_weights": str(d / "radio.pth"), "radio_repo": str(STANDIN), "aux": str(d / "aux.pt"),
            "bank": str(d / "bank"), "arrays": arrays}


def build(files, bank=False, method="corrclip2", **kw):
    args = {k: files[k] for k in ("clip", "clip_weights", "vfm", "vfm_weights", "radio_repo")}
    if bank:
        args.update(aux_clip=files["clip"], aux_clip_weights=files["aux"], bank=files["bank"], bank_name="coco",
                    bank_encoders={"main": "metaclip_b", "aux": "dfnclip_b"})
    args = {"dtype": "fp64", **args, **kw}
    return Segmenter.from_pretrained(method=method, device="cpu", progress=False, **args)


@pytest.fixture(scope="module")
def cc2(cc2_files):
    return build(cc2_files)


@pytest.fixture(scope="module")
def cc2_bank(cc2_files):
    return build(cc2_files, bank=True)


def naive_radio_map(model, rgb, size):
    """The release's RADIO path restated: [0, 1], bilinear to round-half-even multiples of 16, conditioner and
    the stand-in's forward, bilinear to the resized image, L2 per pixel."""
    h, w = rgb.shape[:2]
    snap = (max(int(round(h / 16)) * 16, 16), max(int(round(w / 16)) * 16, 16))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
    x = F.interpolate(x, size=snap, mode="bilinear", align_corners=False)
    f = model(x, feature_fmt="NCHW")[1]
    f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
    return f / f.norm(dim=1, keepdim=True)


def naive_window_feats(full, box, pad, patch=16):
    """Cut, replicate padding by clamped indices, bilinear to 2x the CLIP grid of the padded window, L2."""
    y1, y2, x1, x2 = box
    left, right, top, bottom = pad
    ys = torch.arange(y1 - top, y2 + bottom).clamp(y1, y2 - 1)
    xs = torch.arange(x1 - left, x2 + right).clamp(x1, x2 - 1)
    w = full[:, :, ys][:, :, :, xs]
    size = (w.shape[-2] // patch * 2, w.shape[-1] // patch * 2)
    w = F.interpolate(w, size=size, mode="bilinear", align_corners=False).flatten(2)[0].T
    return w / w.norm(dim=1, keepdim=True), size


@pytest.mark.parametrize("shape", [(120, 160), (212, 250)])  # 212 x 250 -> 336 x 396: padded windows
def test_windows_against_the_naive_forward_without_merging(cc2, shape):
    img = structured_image(*shape, seed=2)
    masks = regions(*shape)
    enc = cc2.encode_image(img, masks=masks)
    x, grid = enc.resized, enc.grid
    full = naive_radio_map(cc2.radio.model, img, tuple(x.shape[-2:]))
    big = F.interpolate(torch.from_numpy(masks)[None, None].float(), size=x.shape[-2:], mode="nearest")[0].int()
    wm = crop_masks(big, grid, PAD_ID)
    crops = F.pad(torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in grid.boxes]), grid.pad)
    assert grid.count > 1
    for b, box in enumerate(grid.boxes):
        feats = naive_window_feats(full, box, grid.pad)
        want = F.normalize(naive_window(cc2.clip.model, None, crops[b : b + 1], wm[b], feats, merge=False), dim=-1)
        assert tuple(enc.embeddings.shape[1:3]) == feats[1]
        np.testing.assert_allclose(enc.embeddings[b].flatten(0, 1).numpy(), want.detach().numpy(), atol=1e-10)


def test_radio_map_snapping_and_fp64(cc2):
    from glaclip.methods.corrclip2 import radio_map

    img = structured_image(200, 424, seed=4)  # 200 -> 192, 424 -> 416 (half to even)
    seen = []
    hook = cc2.radio.model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(a[0].shape)),
                                                     with_kwargs=True)
    got = radio_map(cc2.radio, img, (50, 70), torch.float64)
    hook.remove()
    assert seen == [(1, 3, 192, 416)] and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), naive_radio_map(cc2.radio.model, img, (50, 70))[0].numpy(), atol=1e-12)


def naive_support(bank_arrays, store, neighbours, text):
    out = []
    for ids in neighbours.tolist():
        rows = torch.stack([torch.from_numpy(bank_arrays[store][i]).half().double() for i in ids if i >= 0])
        s = rows.mean(0)
        out.append(text @ (s / s.norm()))
    return torch.stack(out)


def test_bank_support_fused_before_the_decision(cc2, cc2_bank, cc2_files):
    img = structured_image(120, 160, seed=5)
    masks = regions(120, 160)
    queries = __import__("glaclip").config.classes.parse_classes(CLASSES)
    plain = cc2.encode_image(img, masks=masks)
    enc = cc2_bank.encode_image(img, masks=masks)
    torch.testing.assert_close(enc.embeddings, plain.embeddings, atol=0, rtol=0)  # the bank changes no window
    h, w = enc.resized.shape[-2:]
    ids = F.interpolate(torch.from_numpy(masks)[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    values = sorted(set(ids.flatten().tolist()))
    assert enc.extras["support_regions"].tolist() == values == [0, 3, 7, 9]
    # queries: mean of the unit RADIO map over each region, L2; neighbours from the bank's IndexIDMap2
    full = naive_radio_map(cc2.radio.model, img, (h, w))[0]
    q = torch.stack([full[:, ids == v].mean(1) for v in values])
    q = (q / q.norm(dim=1, keepdim=True)).float().numpy()
    import faiss

    index = faiss.read_index(str(Path(cc2_files["bank"]) / "vfm_embeddings" / "coco_radiov3.faiss"))
    faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(index).nlist
    assert np.array_equal(enc.extras["support_ids"].numpy(), index.search(q, 20)[1])
    main_text = cc2_bank.query_embeddings(queries).double()
    aux_text = cc2_bank.aux_text.embed(queries.queries).double()
    nb = enc.extras["support_ids"]
    arrays = cc2_files["arrays"]
    per_region = (naive_support(arrays, "metaclip_b", nb, main_text) +
                  naive_support(arrays, "dfnclip_b", nb, aux_text)) * 0.5
    support = per_region[torch.as_tensor([values.index(v) for v in ids.flatten().tolist()])].T.reshape(-1, h, w)
    # the image's own logits with this segmenter's text embeddings (a disk-cached text embedding is float32)
    own = cc2_bank.with_preset(cc2_bank.preset.with_overrides(bank_alpha=1.0)).canvas(enc, queries)
    torch.testing.assert_close(own, cc2.canvas(plain, queries), atol=1e-6, rtol=0)
    want = own * 0.5 + support * 0.5
    got = cc2_bank.canvas(enc, queries)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    res = cc2_bank.predict(enc, CLASSES, masks=masks)
    ref = decide(want, enc.resized, enc.size, queries, cc2_bank.preset, torch.from_numpy(masks))
    np.testing.assert_allclose(res.probs, ref.probs, atol=1e-12)
    np.testing.assert_array_equal(res.labels, ref.labels)
    # synonyms: the max over every class's names; probs before map correction
    assert res.probs.shape == (3, 120, 160)
    no_aux = cc2_bank.with_preset(cc2_bank.preset.with_overrides(use_aux=False))
    support_main = naive_support(arrays, "metaclip_b", nb, main_text)
    support_main = support_main[torch.as_tensor([values.index(v) for v in ids.flatten().tolist()])].T.reshape(-1, h, w)
    torch.testing.assert_close(no_aux.canvas(enc, queries), own * 0.5 + support_main * 0.5, atol=1e-12, rtol=0)


def test_identity_has_every_tower_and_the_bank(cc2, cc2_bank):
    ident = cc2_bank.encoding_identity()["models"]
    assert {"clip", "radio", "aux_clip", "bank"} <= set(ident)
    assert ident["radio"]["weights"] != "random" and len(ident["bank"]["content"]) == 40
    assert "bank" not in cc2.encoding_identity()["models"]
    from glaclip.runs.runner import model_identity  # a run's identity (resume refused on another bank or RADIO)

    run = model_identity(cc2_bank)
    assert run["bank"] == ident["bank"] and run["radio"] == ident["radio"] and run["aux_clip"] == ident["aux_clip"]
    assert "bank" not in model_identity(cc2) and model_identity(cc2)["radio"] == ident["radio"]
    enc = cc2.encode_image(structured_image(120, 160), masks=regions(120, 160))
    with pytest.raises(GlaclipError, match="differs from this segmenter in: models"):
        cc2_bank.predict(enc, CLASSES, masks=regions(120, 160))


def test_checks_before_models_load(cc2_files, monkeypatch, tmp_path):
    import glaclip.segmenter as segmod

    monkeypatch.setattr(segmod, "load_towers", lambda *a, **k: pytest.fail("models loaded before the checks"))
    with pytest.raises(GlaclipError, match=r"memory bank file not found: .*clip_embeddings/monet_metaclip_b.pt"):
        build(cc2_files, bank=True, bank_name="monet")
    with pytest.raises(GlaclipError, match="memory bank folder not found"):
        Segmenter.from_pretrained(method="corrclip2", bank=str(tmp_path / "none"), device="cpu")
    with pytest.raises(GlaclipError, match="no memory-bank store is named for CLIP"):
        Segmenter.from_pretrained(method="corrclip2", clip="ViT-S-16", bank=cc2_files["bank"], device="cpu")
    # any other method takes a bank (tests/steps/test_bank_any.py); RADIO's options alone need one
    with pytest.raises(GlaclipError, match="radio_repo: options of bank support; they need a memory bank"):
        Segmenter.from_pretrained(method="corrclip", radio_repo=cc2_files["radio_repo"], device="cpu")
    with pytest.raises(GlaclipError, match="radio_weights, bank_clip: not for corrclip2, whose RADIO is its VFM"):
        build(cc2_files, bank=True, radio_weights=cc2_files["vfm_weights"], bank_clip="ViT-B-16")


def test_masks_required(cc2):
    with pytest.raises(GlaclipError, match="needs region masks"):
        cc2.predict(structured_image(64, 64), CLASSES)


def test_protocol_rows_and_class_files():
    want = {"voc21": (336, 336, 0.2), "context60": (336, 336, 0.15), "coco_object": (336, 336, 0.25),
            "voc20": (336, 336, 0.0), "context59": (336, 336, 0.0), "coco_stuff": (336, 336, 0.0),
            "ade20k": (448, 336, 0.0), "cityscapes": (784, 224, 0.0)}
    for ds, (short, crop, thd) in want.items():
        preset, queries = effective("corrclip2", ds)
        w, d = preset.window, preset.decision
        assert (w.short_side, w.crop, w.stride, w.pad_multiple) == (short, crop, 112, 56)
        assert (d.logit_scale, d.prob_thd, d.mask_vote, preset.attention.num_support) == (40.0, thd, True, 20)
        assert preset.class_file == f"{ds}-corrclip2.txt"
    _, city = effective("corrclip2", "cityscapes")
    assert city.queries[11] == "people, person" and len(city) == 19  # one query: the release splits on '; ' only
    _, v1 = effective("corrclip", "cityscapes")
    assert v1.queries[11] == "people"
    for ds in ("voc21", "context60", "ade20k"):
        assert effective("corrclip2", ds)[1] == effective("corrclip", ds)[1]


def test_presets_cli_json():
    from typer.testing import CliRunner

    from glaclip.cli import app

    out = CliRunner().invoke(app, ["presets", "--method", "corrclip2", "--dataset", "cityscapes", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    row = data[0] if isinstance(data, list) else data
    assert row["short_side"] == 784 and row["crop"] == 224 and row["num_support"] == 20 and row["use_aux"] is True



def test_cli_segment_and_early_checks(cc2_files, tmp_path):
    from conftest import run_cli
    from PIL import Image

    img = tmp_path / "im.png"
    Image.fromarray(structured_image(80, 100, seed=3)).save(img)
    np.savez_compressed(tmp_path / "im.npz", instance_mask=regions(80, 100))
    common = ["--method", "corrclip2", "--clip", cc2_files["clip"], "--clip-weights", cc2_files["clip_weights"],
              "--vfm", "c-radio_v3-l", "--vfm-weights", cc2_files["vfm_weights"], "--device", "cpu", "--dtype",
              "fp32", "-c", "sky, cat; kitten, grass", "--quiet"]
    r = run_cli("segment", img, "--masks", tmp_path / "im.npz", "--radio-repo", STANDIN, "--out", tmp_path / "o",
                *common)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "im_labels.png").is_file()
    bad = {("--bank", tmp_path / "nope"): "--bank .*nope: folder not found",
           ("--radio-repo", tmp_path): "--radio-repo .*: no hubconf.py there",
           ("--aux-clip", "ViT-B-16"): "--aux-clip, --aux-clip-weights and --bank-name need --bank",
           ("--bank", cc2_files["bank"]): "no memory-bank store is named for CLIP"}
    for opt, msg in bad.items():
        r = run_cli("segment", img, "--masks", tmp_path / "im.npz", "--out", tmp_path / "o2", *opt, *common)
        assert r.returncode != 0 and __import__("re").search(msg, r.stderr), (opt, r.stderr)
    r = run_cli("segment", img, "--masks", tmp_path / "im.npz", "--bank", cc2_files["bank"], "--radio-weights",
                cc2_files["vfm_weights"], "--out", tmp_path / "o3", *common)
    assert r.returncode == 2 and "--radio-weights: not for --method corrclip2" in r.stderr
    r = run_cli("compare", img, "--methods", "corrclip", "--radio-repo", STANDIN, "-c", "a, b",
                "--out", tmp_path / "c.png")
    assert r.returncode != 0 and "--radio-repo: options of bank support; they need --bank DIR" in r.stderr
    r = run_cli("eval", "--dataset", "voc21", "--data-root", tmp_path, "--method", "corrclip",
                "--radio-repo", STANDIN)
    assert r.returncode != 0 and "--radio-repo: options of bank support; they need --bank DIR" in r.stderr


def test_half_precision_runs(cc2_files):
    """bf16 (the CPU's half precision): RADIO map, windows, retrieval and support in the CLIP's dtype."""
    seg = build(cc2_files, bank=True, dtype="bf16")
    assert seg.radio.dtype == torch.bfloat16 and seg.radio.model.input_conditioner.dtype == torch.bfloat16
    r = seg.predict(structured_image(90, 120, seed=6), CLASSES, masks=regions(90, 120))
    assert np.isfinite(r.probs).all() and r.labels.shape == (90, 120)


@pytest.fixture(scope="module")
def pair(cc2_files):
    """corrclip2 and gla-corrclip2 on the same files, text embeddings in memory only (fp64 both)."""
    return {m: build(cc2_files, method=m, text_cache=False) for m in ("corrclip2", "gla-corrclip2")}


@pytest.fixture(scope="module")
def pair_bank(cc2_files):
    return {m: build(cc2_files, bank=True, method=m, text_cache=False) for m in ("corrclip2", "gla-corrclip2")}


def with_settings(seg, **overrides):
    return seg.with_preset(seg.preset.with_overrides(**overrides)) if overrides else seg


# --- corrclip2 = CorrCLIP (v1) without merging, on RADIO's window features, plus the bank support ----------------

@pytest.fixture(scope="module")
def v1_seg(files6):  # CorrCLIP v1 on the same CLIP (files6 is cc2_files' CLIP), text embeddings in memory only
    return Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp64", text_cache=False, progress=False,
                                     window_batch=64, **files6)


def v1_on_radio(v1_seg, cc2_seg, img, masks, monkeypatch):
    """CorrCLIP v1's family (MASK_LOCAL, its own code) with DBSCAN merging made the identity and DINO's q+k replaced
    by CorrCLIPv2's RADIO window features of the image: -> (v1 segmenter, its encoding, corrclip2's encoding)."""
    import glaclip.methods.corrclip as v1
    from glaclip.methods.corrclip2 import radio_map, window_features

    w = cc2_seg.preset.window
    seg = with_settings(v1_seg, short_side=w.short_side, crop=w.crop, stride=w.stride)
    # What differs between the two releases besides merging and the feature source: nothing on a plain image. Same
    # CLIP preprocessing (the mmseg constants), padding (multiples of 56, id 10000), windows and decision (map
    # correction); the correlation grid is the feature source's (v1: the DINO grid; v2: 2x CLIP's patch grid),
    # which comes with the features here. Protocol rows differ on Cityscapes only (short side 784 and its class
    # file's line 12 'people, person'), and v1's DINO input would be ImageNet-normalised windows (replaced here).
    assert seg.method.pixel_norm == cc2_seg.method.pixel_norm and seg.family.mask_pad_id == cc2_seg.family.mask_pad_id
    assert seg.preset.window == cc2_seg.preset.window and seg.preset.decision == cc2_seg.preset.decision
    enc2 = cc2_seg.encode_image(img, masks=masks)
    x, grid = enc2.resized, enc2.grid
    full = radio_map(cc2_seg.radio, img, tuple(x.shape[-2:]), torch.float64)
    feats, size = window_features(full, grid, cc2_seg.clip.patch_size)

    def radio_not_dino(crops):
        assert crops.shape[0] == grid.count  # window_batch 64: every window in one call
        return feats, size

    monkeypatch.setattr(v1, "merge_regions", lambda ids, f: ids)
    monkeypatch.setattr(seg.family, "_vfm", radio_not_dino)
    return seg, seg.encode_image(img, masks=masks), enc2


@pytest.mark.parametrize("shape, overrides", [((120, 200), {}),  # 336 x 560: 3 windows of 336
                                              ((100, 220), {"short_side": 100, "crop": 112, "stride": 56})])  # padded
def test_corrclip2_is_corrclip_without_merging_on_radio_plus_support(pair, pair_bank, v1_seg, monkeypatch, shape,
                                                                     overrides):
    from glaclip.config.classes import parse_classes
    from glaclip.segmenter import resize_masks
    from glaclip.steps.support import support_map

    img, masks = structured_image(*shape, seed=8), regions(*shape)
    cc2_plain = with_settings(pair["corrclip2"], **overrides)
    seg1, enc1, enc2 = v1_on_radio(v1_seg, cc2_plain, img, masks, monkeypatch)
    assert enc1.grid.count > 1 and (any(enc1.grid.pad) == bool(overrides))
    np.testing.assert_allclose(enc1.embeddings.numpy(), enc2.embeddings.numpy(), rtol=0, atol=1e-12)
    a, b = cc2_plain.predict(enc2, CLASSES, masks=masks), seg1.predict(enc1, CLASSES, masks=masks)
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(a.labels, b.labels)
    # with a bank: v1's logits fused with the support, alpha x own + (1 - alpha) x support, before the decision
    queries = parse_classes(CLASSES)
    cc2b = with_settings(pair_bank["corrclip2"], **overrides)
    encb = cc2b.encode_image(img, masks=masks)
    own = seg1.canvas(enc1, queries)
    ids = resize_masks(encb.masks, tuple(own.shape[-2:]))[0]
    texts = {"main": cc2b.query_embeddings(queries), "aux": cc2b.aux_text.embed(queries.queries)}
    support = support_map(cc2b.bank, encb.extras["support_regions"], encb.extras["support_ids"], ids, texts)
    assert not torch.isnan(support).any()
    alpha = cc2b.preset.decision.bank_alpha
    want = alpha * own + (1 - alpha) * support
    torch.testing.assert_close(cc2b.canvas(encb, queries), want, atol=1e-12, rtol=0)
    got = cc2b.predict(encb, CLASSES, masks=masks)
    ref = decide(want, encb.resized, encb.size, queries, cc2b.preset, torch.from_numpy(masks))
    np.testing.assert_allclose(got.probs, ref.probs, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(got.labels, ref.labels)


# --- gla-corrclip2: GLA's keys of all windows inside CorrCLIPv2 ---------------------------------------------------

def build_gla(files, bank=False, **kw):
    return build(files, bank=bank, method="gla-corrclip2", text_cache=False, **kw)



@pytest.mark.parametrize("bank", [False, True])
@pytest.mark.parametrize("shape, overrides", [((120, 120), {}),  # 336 x 336: one window of 336
                                              ((120, 170), {"crop": 0})])  # whole image 336 x 476, padded to 504
def test_gla_corrclip2_on_one_window_is_corrclip2(pair, pair_bank, shape, overrides, bank):
    segs = {m: with_settings(s, **overrides) for m, s in (pair_bank if bank else pair).items()}
    img, masks = structured_image(*shape, seed=4), regions(*shape)
    encs = {m: s.encode_image(img, masks=masks) for m, s in segs.items()}
    assert encs["corrclip2"].grid.count == 1 and any(encs["corrclip2"].grid.pad) == ("crop" in overrides)
    np.testing.assert_allclose(encs["gla-corrclip2"].embeddings.numpy(), encs["corrclip2"].embeddings.numpy(),
                               rtol=0, atol=1e-10)
    a, b = (segs[m].predict(encs[m], CLASSES, masks=masks) for m in ("corrclip2", "gla-corrclip2"))
    np.testing.assert_allclose(b.probs, a.probs, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(b.labels, a.labels)
    if bank:
        assert torch.equal(encs["gla-corrclip2"].extras["support_ids"], encs["corrclip2"].extras["support_ids"])


def dense_gla_corrclip2(seg, img, masks):
    """gla-corrclip2 restated: per window RADIO features, raw ids and CLIP branches (corrclip_reference), then ONE
    dense N x N scope rule and softmax(4 cos) over the tokens of all windows -> N x E unit embeddings, N x N weights."""
    from corrclip_reference import naive_branches, naive_project

    x = seg.encode_image(img, masks=masks).resized
    grid = seg.grid_for(*x.shape[-2:])
    full = naive_radio_map(seg.radio.model, img, tuple(x.shape[-2:]))
    big = F.interpolate(torch.from_numpy(masks)[None, None].float(), size=x.shape[-2:], mode="nearest")[0].int()
    wm = crop_masks(big, grid, PAD_ID)
    crops = F.pad(torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in grid.boxes]), grid.pad)
    feats, ids, mains, spatials, semantics = [], [], [], [], []
    for b, box in enumerate(grid.boxes):
        f, fgrid = naive_window_feats(full, box, grid.pad)
        i = F.interpolate(wm[b][None, None].float(), size=fgrid, mode="nearest")[0, 0].int().flatten()
        main, spatial, semantic = naive_branches(seg.clip.model, crops[b : b + 1], i, fgrid)
        for out, t in zip((feats, ids, mains, spatials, semantics), (f, i, main, spatial, semantic)):
            out.append(t)
    f, i = torch.cat(feats), torch.cat(ids)
    sim = f @ f.T
    u0 = i.min()  # the image's smallest id: its tokens are the unsegmented ones
    same_region = (i[:, None] == i[None, :]) & (i != u0)[:, None]
    unsegmented = ((i[:, None] == u0) | (i[None, :] == u0)) & (sim > sim.mean())
    w = torch.where(same_region | unsegmented, 4 * sim, torch.tensor(float("-inf"), dtype=sim.dtype)).softmax(-1)
    out = naive_project(seg.clip.model, w @ torch.cat(mains), w @ torch.cat(spatials), torch.cat(semantics))
    return F.normalize(out, dim=-1), w, grid


@pytest.mark.parametrize("shape, overrides, zero", [
    ((120, 200), {"short_side": 112, "crop": 112, "stride": 56}, True),  # 112 x 187: 3 windows
    ((100, 220), {"short_side": 100, "crop": 112, "stride": 56}, True),  # 3 windows 100 x 112, padded to 112
    ((112, 190), {"short_side": 112, "crop": 112, "stride": 56}, False)])  # no id 0: the smallest real id is u0
def test_gla_corrclip2_against_dense_attention_over_all_windows(pair, shape, overrides, zero):
    seg = with_settings(pair["gla-corrclip2"], **overrides)
    img, masks = structured_image(*shape, seed=6), regions(*shape)
    if not zero:
        masks[masks == 0] = 2
    want, w, grid = dense_gla_corrclip2(seg, img, masks)
    assert grid.count == 3 and any(grid.pad) == (shape[0] == 100)
    m = w.shape[0] // grid.count
    assert w[:m, m:].sum() > 0.1  # the weights do reach other windows' tokens
    enc = seg.encode_image(img, masks=masks)
    np.testing.assert_allclose(enc.embeddings.flatten(0, 2).numpy(), want.detach().numpy(), rtol=0, atol=1e-10)
    local = with_settings(pair["corrclip2"], **overrides).encode_image(img, masks=masks)
    assert not torch.allclose(local.embeddings, enc.embeddings, atol=1e-6)  # not corrclip2 with several windows


def test_gla_corrclip2_block_rows_do_not_change_results(pair, monkeypatch):
    import glaclip.methods.corrclip2 as cc2mod

    seen = []
    real = cc2mod.global_scope_attention
    monkeypatch.setattr(cc2mod, "global_scope_attention", lambda *a: seen.append(a[-1]) or real(*a))
    img, masks = structured_image(120, 200, seed=7), regions(120, 200)
    settings = {"short_side": 112, "crop": 112, "stride": 56}
    runs = {rows: with_settings(pair["gla-corrclip2"], block_rows=rows, **settings).predict(img, CLASSES, masks=masks)
            for rows in (7, 250, None)}
    assert seen[:2] == [7, 250] and seen[2] >= 588  # None: from memory_mb, here every row (3 x 196 tokens) at once
    for rows in (7, 250):
        np.testing.assert_allclose(runs[rows].probs, runs[None].probs, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(runs[rows].labels, runs[None].labels)


def test_gla_corrclip2_registry_presets_and_protocol(pair):
    from typer.testing import CliRunner

    from glaclip.cli import app
    from glaclip.cli.options import radio_options
    from glaclip.config.presets import used_settings
    from glaclip.config.protocols import DATASETS
    from glaclip.config.registry import MASK_GLOBAL, MASK_RADIO_GLOBAL, METHODS, Method

    g, c = METHODS["gla-corrclip2"], METHODS["corrclip2"]
    assert g.family == MASK_RADIO_GLOBAL and g.attention == "radio" and g.needs_radio and g.needs_masks
    assert not g.needs_vfm and not g.needs_sam
    for attr in ("towers", "protocol", "host", "clip", "pixel_norm", "vfm", "aux_clip"):
        assert getattr(g, attr) == getattr(c, attr), attr
    assert [g.model(t) for t in ("clip", "radio", "aux_clip")] == [c.model(t) for t in ("clip", "radio", "aux_clip")]
    assert used_settings("gla-corrclip2") == used_settings("corrclip2") | {"block_rows", "memory_mb"}
    for ds in (None, *DATASETS, "ade847", "context459"):
        (pg, qg), (pc, qc) = effective("gla-corrclip2", ds), effective("corrclip2", ds)
        assert (pg.window, pg.attention, pg.decision, pg.protocol, pg.class_file) == \
            (pc.window, pc.attention, pc.decision, pc.protocol, pc.class_file) and qg == qc, ds
    assert effective("gla-corrclip2", "cityscapes")[0].window.short_side == 784
    assert effective("gla-corrclip2", "voc21", "host")[0].protocol == "corrclip2"
    for family, attention in ((MASK_RADIO_GLOBAL, "vfm-qk"), (MASK_GLOBAL, "radio")):
        with pytest.raises(GlaclipError, match="mask-guided families run attention"):
            Method("x", family, attention, "d", "p").check()
    assert radio_options([pg], radio_repo=STANDIN) == {"radio_repo": str(STANDIN)}  # RADIO's options accepted
    assert pair["gla-corrclip2"].family.support_features is not None and \
        type(pair["gla-corrclip2"].family).__name__ == "GlaCorrClip2"
    with pytest.raises(GlaclipError, match="needs region masks"):
        pair["gla-corrclip2"].predict(structured_image(64, 64), CLASSES)
    runner = CliRunner()
    out = runner.invoke(app, ["presets", "--method", "gla-corrclip2", "--dataset", "voc21", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    row = data[0] if isinstance(data, list) else data
    assert (row["method"], row["protocol"], row["class_file"]) == ("gla-corrclip2", "corrclip2", "voc21-corrclip2.txt")
    assert (row["crop"], row["prob_thd"], row["mask_vote"], row["num_support"]) == (336, 0.2, True, 20)
    out = runner.invoke(app, ["methods"])
    assert out.exit_code == 0 and "gla-corrclip2" in out.output
    line = next(t for t in out.output.splitlines() if t.startswith("gla-corrclip2"))
    assert "[VFM: RADIO" in line and "[region masks" in line
