"""`glaclip bank build` (runs/bank.py, cli/bank.py) on tiny models: the files against a naive restatement of
the release's steps (images with masks sorted by stem, ids contiguous, each store row the per-image function
of its region, the index over every row); unreadable images and masks of another size listed and skipped;
a rerun changes nothing; new images appended; other models or settings refused; kill -9 anywhere, then a
rerun, gives the same bytes; two processes give the same bytes; the bank reads back for segmentation."""

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, TINY_VFM, run_cli
from PIL import Image

from glaclip.io.bank_manifest import read_manifest, read_region_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bank_fixture import write_tiny_radio  # noqa: E402

pytest.importorskip("faiss")

STANDIN = Path(__file__).resolve().parents[1] / "models" / "radio_standin"
SRC = Path(__file__).resolve().parents[2] / "src"


def grid_ids(h, w, rows, cols):
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    m = (r[:, None] * cols + c[None, :] + 1).astype(np.int32)
    m[m == rows * cols] = 0
    return m


def add_image(kit, stem, h, w, rows, cols, seed, sub="", stack=False):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    (kit / "images" / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(kit / "images" / sub / f"{stem}.png")
    ids = grid_ids(h, w, rows, cols)
    if stack:  # a boolean N x H x W stack, slices overlapping
        masks = np.stack([ids == v for v in range(1, rows * cols)] + [ids > rows * cols // 2])
        np.savez_compressed(kit / "masks" / f"{stem}.npz", instance_mask=masks)
    else:
        np.savez_compressed(kit / "masks" / f"{stem}.npz", instance_mask=ids.astype(np.int64))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Tiny models as files (a 6-block CLIP and another for the auxiliary store, a DINO-shaped ViT/8, the
    stand-in RADIO), three images with masks (one a boolean stack, one in a subfolder), an unreadable
    image, a mask of another size than its image, an image without a mask."""
    from glaclip.models.loading import load_clip, load_vfm

    d = tmp_path_factory.mktemp("bankkit")
    cfg = json.loads(json.dumps(TINY_CLIP))
    cfg["vision_cfg"]["layers"] = 6
    (d / "clip6.json").write_text(json.dumps(cfg))
    (d / "dino.json").write_text(json.dumps(TINY_VFM))
    for name, seed in (("clip", 1), ("aux", 2), ("other", 3)):
        torch.manual_seed(seed)
        t = load_clip(str(d / "clip6.json"), "random", device="cpu", dtype="fp32")
        with torch.no_grad():
            for p in t.model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        torch.save(t.model.state_dict(), d / f"{name}.pt")
    torch.manual_seed(4)
    torch.save(load_vfm(str(d / "dino.json"), "random", device="cpu", dtype="fp32").model.state_dict(), d / "dino.pth")
    write_tiny_radio(d / "radio.pth")
    (d / "images").mkdir()
    (d / "masks").mkdir()
    add_image(d, "c", 64, 80, 10, 12, 0)
    add_image(d, "a", 80, 64, 12, 12, 1, sub="sub")
    add_image(d, "b", 40, 40, 3, 4, 2, stack=True)
    (d / "images" / "bad.jpg").write_bytes(b"not a jpeg")
    np.savez_compressed(d / "masks" / "bad.npz", instance_mask=grid_ids(10, 10, 2, 2))
    add_image(d, "wrong", 50, 60, 3, 3, 3)
    np.savez_compressed(d / "masks" / "wrong.npz", instance_mask=grid_ids(30, 60, 3, 3))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "images" / "nomask.png")
    return d


def args(kit, out, *extra, images=None):
    return [*(("bank", "build", str(images or kit / "images"))), "--name", "mine", "--out", str(out),
            "--masks", str(kit / "masks"), "--clip", str(kit / "clip6.json"), "--clip-weights", str(kit / "clip.pt"),
            "--aux-clip", str(kit / "clip6.json"), "--aux-clip-weights", str(kit / "aux.pt"), "--vfm", "tiny-random",
            "--vfm-weights", str(kit / "radio.pth"), "--radio-repo", str(STANDIN), "--dino", str(kit / "dino.json"),
            "--dino-weights", str(kit / "dino.pth"), "--clip-key", "metaclip_b", "--aux-clip-key", "dfnclip_b",
            "--vfm-key", "radiov3", "--device", "cpu", "--dtype", "fp32", *map(str, extra)]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".glaclip-lock"}


@pytest.fixture(scope="module")
def built(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank"
    r = run_cli(*args(kit, out))
    assert r.returncode == 0, r.stderr
    return out, r


def test_files_are_the_release_steps(kit, built):
    import faiss

    from glaclip.methods.region_clip import region_features
    from glaclip.models.loading import load_clip, load_vfm
    from glaclip.models.radio import load_radio
    from glaclip.runs.bank_build import vfm_region_vectors

    out, r = built
    assert sorted(digests(out)) == ["clip_embeddings/mine_dfnclip_b.pt", "clip_embeddings/mine_metaclip_b.pt",
                                    "manifests/mine.images.tsv", "manifests/mine.manifest.txt",
                                    "mine.glaclip-bank.json", "vfm_embeddings/mine_radiov3.faiss",
                                    "vfm_embeddings/mine_radiov3.pt"]
    # the manifest: images with masks and regions, sorted by stem, ids contiguous; the stack counts its slices
    counts = {"a": 143, "b": 12, "c": 119}
    assert (out / "manifests/mine.images.tsv").read_text() == "a\t0\t143\nb\t143\t12\nc\t155\t119\n"
    assert (out / "manifests/mine.manifest.txt").read_text() == "".join(
        f"{s}#{i}\n" for s in sorted(counts) for i in range(counts[s]))
    assert "skipped" in r.stderr and "bad.jpg" in r.stderr and "wrong.npz is 60x30, the image 60x50" in r.stderr
    assert "3 images, 274 regions (3 images, 274 regions added now)" in r.stderr
    assert "1 image without a mask file" in r.stderr and "trained on 274" in r.stderr
    # every store row is the per-image function of its image's regions, at the manifest's ids
    towers = {k: load_clip(str(kit / "clip6.json"), str(kit / f"{k}.pt"), device="cpu", dtype="fp32")
              for k in ("clip", "aux")}
    dino = load_vfm(str(kit / "dino.json"), str(kit / "dino.pth"), device="cpu", dtype="fp32")
    radio = load_radio("tiny-random", str(kit / "radio.pth"), radio_repo=STANDIN, device="cpu", dtype="fp32")
    stores = {k: torch.load(out / f"clip_embeddings/mine_{key}.pt") for k, key in (("clip", "metaclip_b"),
                                                                                  ("aux", "dfnclip_b"))}
    vfm = torch.load(out / "vfm_embeddings/mine_radiov3.pt")
    for row in read_manifest(out, "mine").images:
        image = kit / "images" / ("sub/a.png" if row.stem == "a" else f"{row.stem}.png")
        rgb = np.array(Image.open(image).convert("RGB"))
        masks = read_region_masks(kit / "masks" / f"{row.stem}.npz")
        for k in ("clip", "aux"):
            want = region_features(towers[k], dino, rgb, masks, torch.float16)[1]
            assert torch.equal(stores[k][row.start : row.start + row.count], want)
        assert torch.equal(vfm[row.start : row.start + row.count], vfm_region_vectors(radio, image, masks))
    # the index: the release's recipe over every row, ids = rows
    index = faiss.read_index(str(out / "vfm_embeddings/mine_radiov3.faiss"))
    ivf = faiss.extract_index_ivf(index)
    assert isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) and ivf.nlist == int(8 * np.sqrt(274))
    assert np.array_equal(faiss.vector_to_array(faiss.downcast_index(index).id_map), np.arange(274))
    record = json.loads((out / "mine.glaclip-bank.json").read_text())
    assert record["keys"] == {"main": "metaclip_b", "aux": "dfnclip_b", "vfm": "radiov3"}
    assert set(record["models"]) == {"clip", "aux_clip", "vfm", "radio"} and record["dtype"] == "float32"


def test_rerun_refusals_and_an_increment(kit, built, tmp_path):
    import shutil

    out = tmp_path / "bank"
    shutil.copytree(built[0], out)
    before = digests(out)
    r = run_cli(*args(kit, out, "-q"))
    assert r.returncode == 0 and digests(out) == before  # nothing new: nothing rewritten
    for extra, what in ((["--clip-weights", kit / "other.pt"], "other models (models.clip differs)"),
                        (["--dtype", "fp64"], "other settings (dtype differs)"),
                        (["--slide-short", "336"], "other settings (clip_windows.short_side differs)")):
        r = run_cli(*args(kit, out, *extra))
        assert r.returncode == 2 and what in r.stderr and r.stderr.count("\n") <= 3, r.stderr
        assert digests(out) == before
    # new images: appended after the old ids, old rows kept, the index extended (not retrained)
    extra = tmp_path / "more"
    (extra / "images").mkdir(parents=True)
    (extra / "masks").mkdir()
    for f in (kit / "masks").iterdir():
        shutil.copy(f, extra / "masks" / f.name)
    shutil.copytree(kit / "images", extra / "images", dirs_exist_ok=True)
    add_image(extra, "aa", 48, 48, 4, 4, 9)
    r = run_cli(*[a if a != str(kit / "masks") else str(extra / "masks")
                  for a in args(kit, out, images=extra / "images")])
    assert r.returncode == 0, r.stderr
    assert (out / "manifests/mine.images.tsv").read_text().endswith("c\t155\t119\naa\t274\t15\n")
    for rel in ("clip_embeddings/mine_metaclip_b.pt", "vfm_embeddings/mine_radiov3.pt"):
        old, new = torch.load(built[0] / rel), torch.load(out / rel)
        assert new.shape[0] == 289 and torch.equal(new[:274], old)
    assert "15 added now" in r.stderr and "trained on" not in r.stderr.split("index:")[-1]
    r = run_cli(*args(kit, out, "--overwrite", "-q"))  # start over: the first build's bytes
    assert r.returncode == 0 and digests(out) == before


def test_python_api_is_the_command(kit, built, tmp_path):
    import glaclip

    report = glaclip.build_bank(
        kit / "images", "mine", tmp_path / "bank", kit / "masks", clip=str(kit / "clip6.json"),
        clip_weights=str(kit / "clip.pt"), aux_clip=str(kit / "clip6.json"), aux_clip_weights=str(kit / "aux.pt"),
        vfm="tiny-random", vfm_weights=str(kit / "radio.pth"), radio_repo=STANDIN, dino=str(kit / "dino.json"),
        dino_weights=str(kit / "dino.pth"), clip_key="metaclip_b", aux_clip_key="dfnclip_b", vfm_key="radiov3",
        device="cpu", dtype="fp32", progress=False)
    assert (report.images, report.regions, len(report.skipped), report.without_masks) == (3, 274, 2, 1)
    assert [s.name for s in report.steps] == ["manifest", "main CLIP (metaclip_b)", "auxiliary CLIP (dfnclip_b)",
                                              "VFM (radiov3)", "index"]
    assert digests(tmp_path / "bank") == digests(built[0])


def test_early_errors_are_one_line(kit, tmp_path):
    cases = [(["--name", "a/b"], "a bank name goes into file names"),
             (["--masks", tmp_path / "none"], "not a folder"),
             (["--clip-key", ""], "names no store for"),
             (["--clip-weights", tmp_path / "missing.pt"], "file not found")]
    for extra, what in cases:
        a = args(kit, tmp_path / "out")
        for k in range(0, len(extra), 2):
            i = a.index(extra[k])
            a[i + 1] = str(extra[k + 1])
        r = run_cli(*a)
        assert r.returncode == 2 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    dup = tmp_path / "dup"
    (dup / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dup / "c.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(dup / "x" / "c.jpg")
    r = run_cli(*args(kit, tmp_path / "out", images=dup))
    assert r.returncode == 2 and "share the stem 'c'" in r.stderr
    few = tmp_path / "few"
    few.mkdir()
    (few / "b.png").write_bytes((kit / "images" / "b.png").read_bytes())
    r = run_cli(*args(kit, tmp_path / "small", images=few))
    assert r.returncode == 2 and "has 12 regions in 1 images; its index needs at least 256" in r.stderr
    assert not list((tmp_path / "small" / "clip_embeddings").iterdir())  # known before any store is computed
    (tmp_path / "alien" / "clip_embeddings").mkdir(parents=True)
    (tmp_path / "alien" / "clip_embeddings" / "mine_metaclip_b.pt").write_bytes(b"x")
    r = run_cli(*args(kit, tmp_path / "alien"))
    assert r.returncode == 2 and "without glaclip's record" in r.stderr


def _subprocess(argv, **kw):
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "glaclip", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _kill_when(proc, ready, timeout=120):
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()


def test_kill_anywhere_then_rerun_gives_the_same_files(kit, built, tmp_path):
    out = tmp_path / "bank"
    want = digests(built[0])
    ce, ve = out / "clip_embeddings", out / "vfm_embeddings"
    moments = [lambda: (ce / "mine_metaclip_b.slots.npy").exists(),  # inside the main store's step
               lambda: (ce / "mine_dfnclip_b.done.npy").exists() and bool(np.fromfile(ce / "mine_dfnclip_b.done.npy",
                                                                                     np.uint8)[-12:].any()),
               lambda: (ve / "mine_radiov3.pt").exists()]  # before or while the index is written
    killed = 0
    for ready in moments:
        proc = _subprocess(args(kit, out, "-q"))
        _kill_when(proc, ready)
        killed += proc.returncode == -signal.SIGKILL
    assert killed >= 2  # (a fast machine may finish a step before the poll sees it)
    r = _subprocess(args(kit, out, "-q"))
    assert r.wait() == 0, r.stderr.read()
    assert digests(out) == want


def test_two_processes_give_one_process_files(kit, built, tmp_path):
    out = tmp_path / "bank"
    r = _subprocess(args(kit, out, "-q", "--processes", "2"))
    assert r.wait() == 0, r.stderr.read()
    assert digests(out) == digests(built[0])


def test_the_bank_segments(kit, built, tmp_path):
    """The built bank read back by bank support (any method) on the image it came from."""
    from glaclip import Segmenter

    out = built[0]
    seg = Segmenter.from_pretrained(clip=str(kit / "clip6.json"), clip_weights=str(kit / "clip.pt"),
                                    vfm=str(kit / "dino.json"), vfm_weights=str(kit / "dino.pth"), device="cpu",
                                    dtype="fp32", bank=str(out), bank_name="mine", radio="tiny-random",
                                    radio_weights=str(kit / "radio.pth"), radio_repo=str(STANDIN),
                                    bank_encoders={"main": "metaclip_b", "aux": "dfnclip_b", "vfm": "radiov3"},
                                    bank_clip=str(kit / "clip6.json"), bank_clip_weights=str(kit / "clip.pt"))
    rgb, masks = np.array(Image.open(kit / "images" / "c.png")), grid_ids(64, 80, 10, 12)
    enc = seg.encode_image(rgb, masks=masks)
    ids = enc.extras["support_ids"]
    assert ids.numel() and int(ids.min()) >= 0 and int(ids.max()) < 274  # neighbours among the bank's regions
    classes = ["sky", "cat", "grass"]
    res = seg.predict(enc, classes, masks=masks)
    alone = seg.with_preset(seg.preset.with_overrides(bank_alpha=1.0)).predict(enc, classes, masks=masks)
    assert res.labels.shape == (64, 80) and not torch.equal(torch.as_tensor(res.probs), torch.as_tensor(alone.probs))


def test_a_bank_owns_only_its_files(tmp_path):
    """--overwrite removes exactly bank `mine`'s files, never those of a bank whose name starts so."""
    from glaclip.runs.bank import bank_files_of

    keys = {"main": "metaclip_b", "aux": "dfnclip_b", "vfm": "radiov3"}
    names = ["clip_embeddings/mine_metaclip_b.pt", "clip_embeddings/mine_dfnclip_b.slots.npy",
             "clip_embeddings/mine_x_metaclip_b.pt", "vfm_embeddings/mine_radiov3.faiss",
             "vfm_embeddings/mine_x_radiov3.pt", "manifests/mine.images.tsv", "manifests/mine_x.images.tsv",
             "mine.glaclip-bank.json", "mine_x.glaclip-bank.json", "clip_embeddings/mine_metaclip_l.pt"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    got = {str(p.relative_to(tmp_path)) for p in bank_files_of(tmp_path, "mine", [keys])}
    assert got == {"clip_embeddings/mine_metaclip_b.pt", "clip_embeddings/mine_dfnclip_b.slots.npy",
                   "vfm_embeddings/mine_radiov3.faiss", "manifests/mine.images.tsv", "mine.glaclip-bank.json"}
    other = dict(keys, main="metaclip_l")  # an earlier build's keys count too
    assert "clip_embeddings/mine_metaclip_l.pt" in {str(p.relative_to(tmp_path))
                                                   for p in bank_files_of(tmp_path, "mine", [keys, other])}


class _FakeSam:
    """Stands for SAM 2 in the mask step: a fixed grid of regions per image, and an identity."""

    calls = 0

    def __init__(self, weights):
        self.weights = weights

    def configure(self, settings):
        self.settings = settings
        return self

    @property
    def identity(self):
        return {"generator": "sam2-amg", "model": "sam2-hiera-tiny", "weights": self.weights,
                "settings": dict(self.settings)}

    def generate(self, rgb):
        _FakeSam.calls += 1
        return grid_ids(rgb.shape[0], rgb.shape[1], 12, 12)


def test_masks_generated_by_sam2(kit, tmp_path, monkeypatch):
    """--sam: the release builder's mask step (its SAM 2 settings) writes out/masks/NAME/{stem}.npz for each
    image without one, once; the masks are read back as given ones; SAM 2 is part of the bank's identity."""
    from glaclip.models import sam2
    from glaclip.models.sam2 import BUILDER_AMG_SETTINGS

    monkeypatch.setattr(sam2, "load_sam2", lambda name, weights, device, dtype: _FakeSam(weights))
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("c", "b"):
        (images / f"{stem}.png").write_bytes((kit / "images" / f"{stem}.png").read_bytes())
    weights = tmp_path / "sam.pt"
    weights.write_bytes(b"x")
    a = [x for x in args(kit, tmp_path / "bank", images=images) if x]
    i = a.index("--masks")
    a[i : i + 2] = ["--sam", "sam2-hiera-tiny", "--sam-weights", str(weights)]
    r = run_cli(*a)
    assert r.returncode == 0, r.stderr
    masks = tmp_path / "bank" / "masks" / "mine"
    assert sorted(p.name for p in masks.iterdir()) == ["b.npz", "c.npz"] and _FakeSam.calls == 2
    assert np.array_equal(read_region_masks(masks / "c.npz"), grid_ids(64, 80, 12, 12))
    assert (tmp_path / "bank" / "manifests/mine.images.tsv").read_text() == "b\t0\t143\nc\t143\t143\n"
    record = json.loads((tmp_path / "bank" / "mine.glaclip-bank.json").read_text())
    assert record["masks"] == {"source": "sam2", "model": "sam2-hiera-tiny", "settings": BUILDER_AMG_SETTINGS}
    assert record["models"]["sam"]["weights"] == str(weights)
    assert run_cli(*a).returncode == 0 and _FakeSam.calls == 2  # masks made once
    monkeypatch.setattr(sam2, "load_sam2", lambda name, weights, device, dtype: _FakeSam("other"))
    r = run_cli(*a)
    assert r.returncode == 2 and "models.sam differs" in r.stderr
    r = run_cli(*[x for x in a if x not in ("--sam", "sam2-hiera-tiny")], "--masks", str(masks))
    assert r.returncode == 2 and "not both" in r.stderr


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None,
                    reason="the sam2 package is not installed")
def test_sam2_takes_the_builders_settings():
    from glaclip.models.sam2 import AMG_SETTINGS, BUILDER_AMG_SETTINGS, load_sam2

    masks = load_sam2("sam2-hiera-tiny", "random", device="cpu", dtype="fp32")
    assert masks.generator.pred_iou_thresh == AMG_SETTINGS["pred_iou_thresh"] and masks.settings == AMG_SETTINGS
    masks.configure(BUILDER_AMG_SETTINGS)
    g = masks.generator
    assert (g.pred_iou_thresh, g.stability_score_thresh, g.multimask_output) == (0.7, 0.7, True)
    assert g.point_grids[0].shape == (32 * 32, 2)  # sam2's default points_per_side, as the builder leaves it
    assert masks.identity["settings"] == BUILDER_AMG_SETTINGS
