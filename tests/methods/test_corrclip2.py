"""CorrCLIPv2 (methods/corrclip2.py): the RADIO path, every window against v1's naive restatement without
merging on RADIO features, the bank support fused before the decision, protocol rows, identity, errors.
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
from bank_fixture import random_bank  # noqa: E402

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


def build(files, bank=False, **kw):
    args = {k: files[k] for k in ("clip", "clip_weights", "vfm", "vfm_weights", "radio_repo")}
    if bank:
        args.update(aux_clip=files["clip"], aux_clip_weights=files["aux"], bank=files["bank"], bank_name="coco",
                    bank_encoders={"main": "metaclip_b", "aux": "dfnclip_b"})
    args = {"dtype": "fp64", **args, **kw}
    return Segmenter.from_pretrained(method="corrclip2", device="cpu", progress=False, **args)


@pytest.fixture(scope="module")
def cc2(cc2_files):
    return build(cc2_files)


@pytest.fixture(scope="module")
def cc2_bank(cc2_files):
    return build(cc2_files, bank=True)


def regions(h, w):
    m = np.zeros((h, w), np.int32)
    m[h // 8 : h // 2, w // 10 : w // 2] = 3
    m[h // 2 : h - 4, w // 4 : w - 4] = 7
    m[2 : h // 6, 2 * w // 3 : w - 2] = 9
    return m


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
