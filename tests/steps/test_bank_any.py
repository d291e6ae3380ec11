"""Bank support for any method (our own, in no paper; README "Bank support for any method"): CorrCLIPv2's
support steps (steps/support.py) on the logits of GLA-CLIP and a CLIP-only method, against a naive restatement;
bank_alpha 1 = no bank; identity; masks; whole-image inference (fused on the token grid); the CLI and its early
checks. RADIO is the stand-in of tests/models/radio_standin; the bank a tiny one in the release's layout."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, structured_image

from glaclip import GlaclipError, Segmenter
from glaclip.config.classes import parse_classes
from glaclip.config.registry import DEFAULT_METHOD
from glaclip.steps.decision import decide

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bank_fixture import random_bank, regions, write_tiny_radio  # noqa: E402

STANDIN = Path(__file__).resolve().parents[1] / "models" / "radio_standin"
CLASSES = [["sky"], ["cat", "kitten"], ["grass"]]
ENCODERS = {"main": "metaclip_b", "aux": "dfnclip_b"}  # the tiny CLIPs' stores (no release name for them)


def _clip_file(path, arch, seed):
    from glaclip.models.loading import load_clip

    torch.manual_seed(seed)
    tower = load_clip(arch, "random", device="cpu", dtype="fp32")
    torch.save(tower.model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_files):
    d = tmp_path_factory.mktemp("bank_any")
    write_tiny_radio(d / "radio.pth")
    arrays = random_bank(d / "bank", n=300, c=32, dims={"metaclip_b": 32, "dfnclip_b": 32}, seed=4)
    random_bank(d / "other", n=300, c=32, dims={"metaclip_b": 32, "dfnclip_b": 32}, seed=9)
    return dict(tiny_files, radio_weights=str(d / "radio.pth"), bank=str(d / "bank"), other=str(d / "other"),
                arrays=arrays, bank_clip_weights=_clip_file(d / "bank_clip.pt", tiny_files["clip"], 11),
                aux=_clip_file(d / "aux.pt", tiny_files["clip"], 12))


def build(files, method=DEFAULT_METHOD, bank=True, aux=True, **kw):
    args = {k: files[k] for k in ("clip", "clip_weights", "vfm", "vfm_weights")}
    if bank:
        args.update(bank=files["bank"] if bank is True else bank, bank_name="coco", bank_encoders=ENCODERS,
                    radio_weights=files["radio_weights"],
                    radio_repo=str(STANDIN), bank_clip=files["clip"], bank_clip_weights=files["bank_clip_weights"])
        if aux:
            args.update(aux_clip=files["clip"], aux_clip_weights=files["aux"])
    args = {"dtype": "fp64", "method": method, **args, **kw}
    return Segmenter.from_pretrained(device="cpu", progress=False, text_cache=False, **args)


@pytest.fixture(scope="module")
def gla(files):
    return build(files)


@pytest.fixture(scope="module")
def gla_plain(files):
    return build(files, bank=False)


def naive_text(files, weights, queries):
    """The query embeddings of a CLIP loaded on its own (80 templates, mean, L2), in fp64."""
    from glaclip.models.loading import load_clip
    from glaclip.steps.text import text_encoder

    tower = load_clip(files["clip"], weights, device="cpu", dtype="fp64")
    return text_encoder(tower, cache=False, progress=False).embed(queries.queries).double()


def naive_support(files, rgb, masks, size, grid_size=None, aux=True, k=20):
    """Support logits Q x h x w restated: RADIO's map of the image ([0, 1], bilinear to round-half-even multiples
    of 16, bilinear to the resized size, L2 per pixel), per region of the nearest-resized id map the mean, L2,
    FAISS (every list probed), per region the mean of the neighbours' store rows (fp16 as stored), L2, times the
    bank CLIP's text (and the auxiliary store with the auxiliary CLIP's text, averaged); painted on the id map
    (resized nearest again to `grid_size` when given). Returns (support, regions, neighbours)."""
    import faiss

    from glaclip.models.radio import load_radio

    radio = load_radio("c-radio_v3-l", files["radio_weights"], radio_repo=str(STANDIN), device="cpu", dtype="fp64")
    h0, w0 = rgb.shape[:2]
    snap = (max(int(round(h0 / 16)) * 16, 16), max(int(round(w0 / 16)) * 16, 16))
    x = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255, size=snap, mode="bilinear",
                      align_corners=False)
    f = F.interpolate(radio.model(x, feature_fmt="NCHW")[1], size=size, mode="bilinear", align_corners=False)[0]
    f = f / f.norm(dim=0, keepdim=True)
    ids = F.interpolate(torch.from_numpy(masks)[None, None].float(), size=size, mode="nearest")[0, 0].long()
    values = sorted(set(ids.flatten().tolist()))
    q = torch.stack([f[:, ids == v].mean(1) for v in values])
    q = (q / q.norm(dim=1, keepdim=True)).float().numpy()
    index = faiss.read_index(str(Path(files["bank"]) / "vfm_embeddings" / "coco_radiov3.faiss"))
    faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(index).nlist
    neighbours = index.search(q, k)[1]
    queries = parse_classes(CLASSES)

    def per_region(store, text):
        out = []
        for row in neighbours:
            rows = [torch.from_numpy(files["arrays"][store][i]).half().double() for i in row if i >= 0]
            s = torch.stack(rows).mean(0)
            out.append(text @ (s / s.norm()))
        return torch.stack(out)

    logits = per_region("metaclip_b", naive_text(files, files["bank_clip_weights"], queries))
    if aux:
        logits = (logits + per_region("dfnclip_b", naive_text(files, files["aux"], queries))) * 0.5
    if grid_size is not None:
        ids = F.interpolate(ids[None, None].float(), size=grid_size, mode="nearest")[0, 0].long()
    support = logits[torch.as_tensor([values.index(v) for v in ids.flatten().tolist()])].T.reshape(-1, *ids.shape)
    return support, values, neighbours


def test_gla_probs_are_its_own_logits_fused_with_the_naive_support(gla, gla_plain, files):
    img, masks = structured_image(120, 160, seed=5), regions(120, 160)
    queries = parse_classes(CLASSES)
    enc = gla.encode_image(img, masks=masks)
    plain = gla_plain.encode_image(img)
    torch.testing.assert_close(enc.embeddings, plain.embeddings, atol=0, rtol=0)  # the bank changes no window
    own = gla_plain.canvas(plain, queries)  # the method's own logits at the resized size, no bank
    h, w = enc.resized.shape[-2:]
    assert own.shape[-2:] == (h, w) and gla.preset.window.crop > 0
    support, values, neighbours = naive_support(files, img, masks, (h, w))
    assert enc.extras["support_regions"].tolist() == values == [0, 3, 7, 9]
    assert np.array_equal(enc.extras["support_ids"].numpy(), neighbours)
    # the bank CLIP's text is not the method's (the test would not see a swap otherwise)
    assert not torch.allclose(naive_text(files, files["bank_clip_weights"], queries), gla.query_embeddings(queries))
    want = own * 0.5 + support * 0.5
    torch.testing.assert_close(gla.canvas(enc, queries), want, atol=1e-12, rtol=0)
    res = gla.predict(img, CLASSES, masks=masks)
    ref = decide(want, enc.resized, enc.size, queries, gla.preset)
    np.testing.assert_allclose(res.probs, ref.probs, atol=1e-12)
    np.testing.assert_array_equal(res.labels, ref.labels)
    # bank_alpha weighs the method's own logits; use_aux=false: the main store alone
    other = gla.with_preset(gla.preset.with_overrides(bank_alpha=0.25, use_aux=False))
    main_only = naive_support(files, img, masks, (h, w), aux=False)[0]
    torch.testing.assert_close(other.canvas(enc, queries), own * 0.25 + main_only * 0.75, atol=1e-12, rtol=0)


def test_clip_only_method_and_bank_alpha_one_is_the_method_alone(files):
    """clearclip (CLIP's own q-q attention, no VFM), no auxiliary CLIP: its probabilities = its own logits fused
    with the naive support; bank_alpha=1.0 gives exactly the run without a bank."""
    seg = build(files, method="clearclip", aux=False, bank_alpha=0.5, crop=224, stride=112)
    plain = build(files, method="clearclip", bank=False, crop=224, stride=112)
    assert seg.vfm is None and seg.aux_clip is None
    img, masks = structured_image(150, 130, seed=2), regions(150, 130)
    queries = parse_classes(CLASSES)
    enc = seg.encode_image(img, masks=masks)
    own = plain.canvas(plain.encode_image(img), queries)
    support = naive_support(files, img, masks, tuple(enc.resized.shape[-2:]), aux=False)[0]
    want = own * 0.5 + support * 0.5
    res = seg.predict(enc, CLASSES, masks=masks)
    ref = decide(want, enc.resized, enc.size, queries, seg.preset)
    np.testing.assert_allclose(res.probs, ref.probs, atol=1e-12)
    one = seg.with_preset(seg.preset.with_overrides(bank_alpha=1.0)).predict(img, CLASSES, masks=masks)
    alone = plain.predict(img, CLASSES)
    np.testing.assert_array_equal(one.probs, alone.probs)
    np.testing.assert_array_equal(one.labels, alone.labels)
    assert not np.array_equal(res.probs, alone.probs)


def test_whole_image_inference_fuses_on_the_token_grid(files):
    """crop 0 (one token map, resized straight to the image): the support is painted on that grid, each cell its
    region's (the resized id map resized nearest to the grid); bank_alpha=1.0 is the method alone."""
    seg = build(files, method="clearclip", aux=False, crop=0, short_side=336)
    plain = build(files, method="clearclip", bank=False, crop=0, short_side=336)
    img, masks = structured_image(112, 160, seed=8), regions(112, 160)  # 336 x 480: no padding, 21 x 30 tokens
    queries = parse_classes(CLASSES)
    enc = seg.encode_image(img, masks=masks)
    assert not any(enc.grid.pad)
    own = plain.canvas(plain.encode_image(img), queries)
    assert tuple(own.shape[-2:]) == (21, 30)
    support = naive_support(files, img, masks, tuple(enc.resized.shape[-2:]), grid_size=(21, 30), aux=False)[0]
    torch.testing.assert_close(seg.canvas(enc, queries), own * 0.5 + support * 0.5, atol=1e-12, rtol=0)
    one = seg.with_preset(seg.preset.with_overrides(bank_alpha=1.0)).predict(enc, CLASSES)
    np.testing.assert_array_equal(one.probs, plain.predict(img, CLASSES).probs)


def test_identity_records_radio_bank_clip_aux_and_the_bank(gla, gla_plain, files):
    ident = gla.encoding_identity()["models"]
    assert {"radio", "bank_clip", "aux_clip", "bank"} <= set(ident)
    assert ident["bank_clip"]["weights"] != "random" and len(ident["bank"]["content"]) == 40
    assert not {"radio", "bank_clip", "aux_clip", "bank"} & set(gla_plain.encoding_identity()["models"])
    assert set(gla.models()) >= {"radio", "bank_clip", "aux_clip", "bank"} and "bank=" in gla.models_line()
    from glaclip.runs.runner import model_identity

    run = model_identity(gla)
    assert run["bank"] == ident["bank"] and run["bank_clip"] == ident["bank_clip"] and run["radio"] == ident["radio"]
    img, masks = structured_image(96, 96, seed=1), regions(96, 96)
    with pytest.raises(GlaclipError, match="differs from this segmenter in: models"):
        gla.predict(gla_plain.encode_image(img), CLASSES, masks=masks)
    other = build(files, bank=files["other"])
    assert other.encoding_identity()["models"]["bank"]["content"] != ident["bank"]["content"]
    with pytest.raises(GlaclipError, match="differs from this segmenter in: models"):
        other.predict(gla.encode_image(img, masks=masks), CLASSES, masks=masks)
    # the settings line lists bank support's settings with a bank only; the settings object is unchanged
    assert "bank_alpha=0.5" in gla.describe() and "num_support=20" in gla.describe()
    assert "bank_alpha" not in gla_plain.describe() and gla.preset.settings() == gla_plain.preset.settings()


def test_masks_are_needed_with_a_bank(gla):
    assert gla.needs_masks
    with pytest.raises(GlaclipError) as exc:
        gla.predict(structured_image(64, 64), CLASSES)
    assert "bank support needs region masks" in str(exc.value) and "\n" not in str(exc.value)


def test_reuse_of_the_method_clip_and_api_checks(files, monkeypatch, tmp_path):
    from glaclip.models.loading import same_weights

    assert same_weights(("ViT-B-16-quickgelu", "metaclip_fullcc"), ("ViT-B-16-quickgelu", "metaclip_fullcc"))
    assert not same_weights(("ViT-B-16-quickgelu", "metaclip_fullcc"), ("ViT-B-16-quickgelu", None))
    assert not same_weights(("ViT-B-16-quickgelu", "metaclip_fullcc"), ("ViT-B-16", "metaclip_fullcc"))
    assert not same_weights(("A", "random"), ("A", "random"))
    seg = build(files, method="clearclip", aux=False, bank_clip_weights=files["clip_weights"])
    assert seg.bank_clip is seg.clip and seg.bank_text is seg.text  # same (model, weights): its own text
    import glaclip.segmenter as segmod

    monkeypatch.setattr(segmod, "load_towers", lambda *a, **k: pytest.fail("models loaded before the checks"))
    with pytest.raises(GlaclipError, match=r"memory bank file not found: .*clip_embeddings/monet_metaclip_b.pt"):
        build(files, bank_name="monet")
    with pytest.raises(GlaclipError, match="no memory-bank store is named for CLIP"):
        build(files, bank_encoders=None)  # the tiny CLIP's architecture names no store
    with pytest.raises(GlaclipError, match="radio_weights, radio_repo: options of bank support; they need a memory"):
        Segmenter.from_pretrained(method="clearclip", radio_weights="r.pth", radio_repo=str(STANDIN))
    with pytest.raises(GlaclipError, match="bank_alpha: settings of bank support; they need a memory bank"):
        Segmenter.from_pretrained(method="clearclip", bank_alpha=0.3)


@pytest.fixture(scope="module")
def cli_bank(tmp_path_factory):
    """A bank whose main store is named for MetaCLIP ViT-B/16 (512 wide), the default bank CLIP's architecture."""
    d = tmp_path_factory.mktemp("cli_bank")
    random_bank(d, n=300, c=32, dims={"metaclip_b": 512}, seed=6)
    return d


def test_cli_segment_with_a_bank_and_early_checks(files, cli_bank, tmp_path, monkeypatch):
    from PIL import Image

    img = tmp_path / "im.png"
    Image.fromarray(structured_image(80, 100, seed=3)).save(img)
    np.savez_compressed(tmp_path / "im.npz", instance_mask=regions(80, 100))
    common = ["--method", DEFAULT_METHOD, "--clip", files["clip"], "--clip-weights", files["clip_weights"], "--vfm",
              files["vfm"], "--vfm-weights", files["vfm_weights"], "--device", "cpu", "--dtype", "fp32", "-c",
              "sky, cat; kitten, grass", "--quiet", "--no-cache"]
    bank = ["--bank", cli_bank, "--bank-name", "coco", "--radio-weights", files["radio_weights"], "--radio-repo",
            STANDIN, "--bank-clip-weights", "random"]  # default --bank-clip ViT-B-16-quickgelu: store metaclip_b
    r = run_cli("segment", img, "--masks", tmp_path / "im.npz", "--out", tmp_path / "o", "--set", "bank_alpha=0.5",
                *bank, *common)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "im_labels.png").is_file()
    import json

    record = json.loads((tmp_path / "o" / "im.json").read_text())
    assert "bank_alpha=0.5" in json.dumps(record)
    import glaclip.segmenter as segmod

    monkeypatch.setattr(segmod, "load_towers", lambda *a, **k: pytest.fail("models loaded before the checks"))
    bad = [(["--masks", tmp_path / "im.npz", "--radio-weights", files["radio_weights"]],
            "--radio-weights: options of bank support; they need --bank DIR"),
           (["--masks", tmp_path / "im.npz", "--bank-clip", "ViT-B-16"], "--bank-clip: options of bank support"),
           (["--masks", tmp_path / "im.npz", "--set", "bank_alpha=0.3"],
            "--set bank_alpha: settings of bank support; they need --bank DIR"),
           (bank, "needs region masks: give .* for bank support"),
           (["--masks", tmp_path / "im.npz", *bank, "--bank-name", "monet"], "memory bank file not found"),
           (["--masks", tmp_path / "im.npz", *bank[:4], "--radio-weights", tmp_path / "none.pth"],
            "--radio-weights .*none.pth: file not found"),
           (["--masks", tmp_path / "im.npz", *bank, "--bank-clip-weights", tmp_path / "none.pt"],
            "--bank-clip-weights .*none.pt: file not found")]
    for opts, msg in bad:
        r = run_cli("segment", img, "--out", tmp_path / "o2", *opts, *common)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, (opts, r.stderr)
        assert re.search("glaclip: error: .*" + msg, lines[0]), (opts, r.stderr)
    r = run_cli("eval", "--dataset", "voc21", "--data-root", tmp_path, "--method", "clearclip", "--set",
                "use_aux=false")
    assert r.returncode == 2 and "--set use_aux: settings of bank support; they need --bank DIR" in r.stderr
    r = run_cli("compare", img, "--methods", "clearclip,sclip", "--bank-clip", "ViT-B-16", "-c", "a, b", "--out",
                tmp_path / "c.png")
    assert r.returncode == 2 and "--bank-clip: options of bank support; they need --bank DIR" in r.stderr


def test_trident_fuses_on_its_sam_grid(files, tmp_path):
    """Trident (one map on SAM's grid): the support painted on that grid (the resized id map resized nearest to
    it) and fused there; bank_alpha=1.0 is Trident alone. Built from towers (tiny SAM, patch-16 VFM)."""
    import json

    from conftest import tiny_sam

    from glaclip.config.protocols import resolve
    from glaclip.io.bank import MemoryBank, bank_files
    from glaclip.models.loading import load_clip, load_vfm
    from glaclip.models.radio import load_radio

    (tmp_path / "vfm16.json").write_text(json.dumps({"model": "vit_base_patch16_224",
                                                     "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2}}))
    torch.manual_seed(3)
    vfm = load_vfm(str(tmp_path / "vfm16.json"), "random", device="cpu", dtype="fp64")
    clip = load_clip(files["clip"], files["clip_weights"], device="cpu", dtype="fp64")
    bank_clip = load_clip(files["clip"], files["bank_clip_weights"], device="cpu", dtype="fp64")
    radio = load_radio("c-radio_v3-l", files["radio_weights"], radio_repo=str(STANDIN), device="cpu", dtype="fp64")
    bank = MemoryBank.open(bank_files(files["bank"], "coco", {"main": "metaclip_b"}, "radiov3"), {"main": 32}, 32)
    preset = resolve("trident", "voc21", short_side=112, crop=112, stride=48, sam_refine=False)
    sam = tiny_sam()
    seg = Segmenter(clip, vfm, preset, sam=sam, radio=radio, bank=bank, bank_clip=bank_clip, text_cache=False,
                    progress=False)
    plain = Segmenter(clip, vfm, preset, sam=sam, text_cache=False, progress=False)
    img, masks = structured_image(90, 140, seed=4), regions(90, 140)
    queries = parse_classes(CLASSES)
    enc = seg.encode_image(img, masks=masks)
    own = plain.canvas(plain.encode_image(img), queries)
    assert seg.family.single_map and tuple(own.shape[-2:]) != tuple(enc.resized.shape[-2:])
    support = naive_support(files, img, masks, tuple(enc.resized.shape[-2:]), grid_size=tuple(own.shape[-2:]),
                            aux=False)[0]
    torch.testing.assert_close(seg.canvas(enc, queries), own * 0.5 + support * 0.5, atol=1e-12, rtol=0)
    one = seg.with_preset(seg.preset.with_overrides(bank_alpha=1.0)).predict(enc, CLASSES)
    np.testing.assert_array_equal(one.probs, plain.predict(img, CLASSES).probs)


def test_mask_routing_counts_a_bank(tmp_path):
    """Every command's --masks/--sam routing (runs/mask_source.route): with a bank, a method that reads no masks
    needs them (one line when missing) and takes --masks instead of ignoring it."""
    from glaclip.config.protocols import resolve
    from glaclip.runs.mask_source import route

    clear, folder = resolve("clearclip"), tmp_path / "masks"
    folder.mkdir()
    with pytest.raises(GlaclipError, match="needs region masks: give .* for bank support"):
        route([clear], bank=True)
    assert route([clear], masks=folder, bank=True).request.path == folder
    with pytest.warns(RuntimeWarning, match="does not use region masks"):
        assert route([clear], masks=folder).request is None
    np.savez_compressed(tmp_path / "m.npz", instance_mask=regions(8, 8))
    several = route([clear, resolve("sclip")], masks=tmp_path / "m.npz", one_image=True, bank=True)
    assert not several.ignored and several.request.path == tmp_path / "m.npz"
    assert route([clear, resolve("sclip")], masks=tmp_path / "m.npz", one_image=True).ignored


def test_cli_compare_hands_the_bank_to_every_method(files, cli_bank, tmp_path):
    import json

    from PIL import Image

    img = tmp_path / "im.png"
    Image.fromarray(structured_image(64, 80, seed=3)).save(img)
    np.savez_compressed(tmp_path / "im.npz", instance_mask=regions(64, 80))
    r = run_cli("compare", img, "--methods", "clearclip,maskclip", "--masks", tmp_path / "im.npz", "--bank", cli_bank,
                "--radio-weights", files["radio_weights"], "--radio-repo", STANDIN, "--bank-clip-weights", "random",
                "--clip", files["clip"], "--clip-weights", files["clip_weights"], "--device", "cpu", "--dtype", "fp32",
                "-c", "sky, grass", "--out", tmp_path / "c.png", "--quiet")
    assert r.returncode == 0, r.stderr
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert len(runs) == 2 and all("bank_alpha=0.5" in run["preset"] and "bank=" in run["models"] for run in runs)
