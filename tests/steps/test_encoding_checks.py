"""Saved image encodings: weights identified by content, damaged files refused, the umask's mode, a
short repr (issue 16, items 6, 9, 10, 12)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, structured_image
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from glaclip import GlaclipError, Segmenter
from glaclip.models import identity
from glaclip.steps import text_cache
from glaclip.steps.encoding import ImageEncoding

CLASSES = "sky, road, car; vehicle, tree"


def _segmenter(files, **changes):
    return Segmenter.from_pretrained(device="cpu", dtype="fp32", **dict(files, **changes))


def _rewrite_in_place(path, change):
    """Rewrite a weights file with changed values, keeping its size and modification time."""
    before = os.stat(path)
    sd = torch.load(path)
    change(sd)
    tmp = path.parent / "rewrite" / path.name  # same name: torch.save names the archive after the file
    tmp.parent.mkdir(exist_ok=True)
    torch.save(sd, tmp)
    path.write_bytes(tmp.read_bytes())
    shutil.rmtree(tmp.parent)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_weights_are_identified_by_content_not_path(tiny_files, tmp_path):
    files = dict(tiny_files)
    for key in ("clip_weights", "vfm_weights"):
        files[key] = str(tmp_path / f"mine-{key}.pt")
        torch.save(torch.load(tiny_files[key]), files[key])  # as `_rewrite_in_place` writes it
    seg = _segmenter(files)
    enc = seg.encode_image(structured_image(70, 90, seed=1))
    base = seg.predict(enc, CLASSES)
    # the same weights at another path: accepted, same result
    moved = {k: str(shutil.copy(v, tmp_path / f"elsewhere-{k}.pt")) for k, v in files.items() if k.endswith("weights")}
    other = _segmenter(files, **moved)
    assert other.models() != seg.models()  # the paths differ ...
    np.testing.assert_array_equal(other.predict(enc, CLASSES).probs, base.probs)  # ... the encoding is accepted
    # only text weights changed (same size, same mtime): image encodings still hold
    _rewrite_in_place(tmp_path / "mine-clip_weights.pt",
                      lambda sd: sd.__setitem__("text_projection", sd["text_projection"] * 1.5))
    np.testing.assert_array_equal(_segmenter(files).predict(enc, CLASSES).labels, base.labels)
    # image weights changed at the same path with the same size and mtime: refused
    for key, name in (("clip_weights", "visual.proj"), ("vfm_weights", "blocks.1.attn.qkv.weight")):
        _rewrite_in_place(tmp_path / f"mine-{key}.pt", lambda sd: sd.__setitem__(name, sd[name] + 0.05))
        with pytest.raises(GlaclipError, match=r"^this image encoding differs from this segmenter in: models; "
                                               "encode the image again with this segmenter$"):
            _segmenter(files).predict(enc, CLASSES)


def test_same_weights_in_another_structure_is_another_model(segmenter):
    import copy

    from glaclip.models.towers import ClipTower

    enc = segmenter.encode_image(structured_image(50, 60))
    model = copy.deepcopy(segmenter.clip.model)
    for block in model.visual.transformer.resblocks:
        block.mlp.gelu = torch.nn.GELU()  # QuickGELU -> GELU: the same tensors, another network
    other = Segmenter(ClipTower(model, segmenter.clip.name, segmenter.clip.weights), segmenter.vfm, segmenter.preset)
    with pytest.raises(GlaclipError, match="in: models;"):
        other.predict(enc, CLASSES)


def test_weights_are_hashed_once_per_loaded_model_and_again_after_a_change(tiny_files, monkeypatch):
    from glaclip.models.loading import load_clip, load_vfm

    clip = load_clip(tiny_files["clip"], tiny_files["clip_weights"], device="cpu", dtype="fp32")
    vfm = load_vfm(tiny_files["vfm"], tiny_files["vfm_weights"], device="cpu", dtype="fp32")
    image = lambda: [(k, v) for k, v in clip.model.state_dict().items() if k.startswith("visual.")]  # noqa: E731
    naive = identity.weights_fingerprint(image())  # the restatement: hash every image-tower tensor
    calls = []
    real = identity.weights_fingerprint
    monkeypatch.setattr(identity, "weights_fingerprint", lambda t: calls.append(1) or real(t))
    first = ImageEncoding.model_identity(clip, vfm)
    assert first["clip"]["weights"] == naive and len(calls) == 2  # CLIP's image tower and the VFM
    assert ImageEncoding.model_identity(clip, vfm) == first and len(calls) == 2  # kept on the models
    text_cache.clip_text_cache(clip, lambda: ["a {}."]).folder
    assert len(calls) == 3  # the text tensors: the text cache's own part, hashed once too
    text_cache.clip_text_cache(clip, lambda: ["a {}."]).folder
    assert len(calls) == 3
    with torch.no_grad():
        clip.visual.proj.add_(1e-3)  # in place
    changed = ImageEncoding.model_identity(clip, vfm)
    assert changed["clip"]["weights"] == real(image()) != naive and changed["vfm"] == first["vfm"]
    with torch.no_grad():
        vfm.model.blocks[0].attn.qkv.weight.data = vfm.model.blocks[0].attn.qkv.weight.data.clone()  # replaced
    calls.clear()
    assert ImageEncoding.model_identity(clip, vfm)["vfm"] == first["vfm"] and len(calls) == 1  # same values


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_encoding_follows_the_umask(segmenter, tmp_path, umask, mode):
    enc = segmenter.encode_image(structured_image(40, 50))
    old = os.umask(umask)
    try:
        path = enc.save(tmp_path / "x.encoding.safetensors")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["x.encoding.safetensors"]


def test_repr_is_short(segmenter):
    enc = segmenter.encode_image(structured_image(300, 400))
    text = repr(enc)
    assert len(text) < 300 and "300x400" in text and "tensor" not in text, text


def _tamper(path, tensors=None, meta=None):
    """Rewrite an encoding file with changed tensors or metadata, keeping everything else."""
    with safe_open(str(path), framework="pt") as f:
        old_meta, old = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({**old, **(tensors or {})}, str(path), metadata={**old_meta, **(meta or {})})


@pytest.fixture
def saved(segmenter, tmp_path):
    enc = segmenter.encode_image(structured_image(90, 120, seed=3))
    return enc, enc.save(tmp_path / "street.encoding.safetensors")


def _nan(enc, count=100):
    emb = enc.embeddings.clone()
    emb.view(-1)[torch.randperm(emb.numel(), generator=torch.Generator().manual_seed(0))[:count]] = float("nan")
    return emb


def _checksum_of(tensors):
    from glaclip.steps.encoding import _checksum

    return _checksum(tensors)


@pytest.mark.parametrize("case, expected", [
    ("nan", "its tensors do not match the checksum in its metadata"),
    ("nan with its checksum", "non-finite values"),
    ("grid", "embeddings of shape"),
    ("resized", "resized image of shape"),
    ("no checksum", "its metadata does not parse"),
    ("boxes outside", "its window grid is inconsistent"),
    ("box of 3", "its window grid is inconsistent"),
    ("format 1", None),
])
def test_damaged_encoding_is_refused_with_one_line(saved, case, expected):
    enc, path = saved
    emb = _nan(enc)
    if case == "nan":
        _tamper(path, {"embeddings": emb})
    elif case == "nan with its checksum":
        _tamper(path, {"embeddings": emb}, {"checksum": _checksum_of({"embeddings": emb, "resized": enc.resized})})
    elif case == "grid":
        g = json.loads(json.dumps({"height": enc.grid.height, "width": enc.grid.width, "pad": list(enc.grid.pad),
                                   "boxes": [list(b) for b in enc.grid.boxes] * 2}))
        _tamper(path, meta={"grid": json.dumps(g)})
    elif case == "resized":
        small = enc.resized[..., :-1].contiguous()
        _tamper(path, {"resized": small}, {"checksum": _checksum_of({"embeddings": enc.embeddings, "resized": small})})
    elif case == "no checksum":
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        del meta["checksum"]
        save_file(tensors, str(path), metadata=meta)
    elif case == "boxes outside":
        boxes = [[y1 + enc.grid.height, y2 + enc.grid.height, x1, x2] for y1, y2, x1, x2 in enc.grid.boxes]
        _tamper(path, meta={"grid": json.dumps({"height": enc.grid.height, "width": enc.grid.width,
                                                "pad": list(enc.grid.pad), "boxes": boxes})})
    elif case == "box of 3":
        boxes = [list(b)[:3] for b in enc.grid.boxes]
        _tamper(path, meta={"grid": json.dumps({"height": enc.grid.height, "width": enc.grid.width,
                                                "pad": list(enc.grid.pad), "boxes": boxes})})
    elif case == "format 1":
        _tamper(path, meta={"format": "1"})
    with pytest.raises(GlaclipError) as info:
        ImageEncoding.load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and msg.endswith("encode the image again")
    if expected:
        assert msg.startswith(f"image encoding {path} is damaged ({expected}"), msg
    else:
        assert "has format '1', this glaclip reads format 2" in msg


def test_intact_encoding_still_loads_exactly(segmenter, saved):
    enc, path = saved
    loaded = ImageEncoding.load(path)
    assert torch.equal(loaded.embeddings, enc.embeddings) and torch.equal(loaded.resized, enc.resized)
    assert loaded.grid == enc.grid and loaded.size == enc.size and loaded.identity == enc.identity


def _run(tiny_files, *args, cwd, env=None):
    cmd = ["segment", *args, "--clip", tiny_files["clip"], "--clip-weights",
           tiny_files["clip_weights"], "--vfm", tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"],
           "--device", "cpu", "--set", "short_side=112", "-q"]
    return run_cli(*cmd, cwd=cwd, env=dict(os.environ, **env) if env else None)


def test_cli_saved_encoding_mode_and_damaged_file(tiny_files, tmp_path):
    img = tmp_path / "street.png"
    Image.fromarray(structured_image(70, 90, seed=4)).save(img)
    old = os.umask(0o022)  # the run's umask
    try:
        r = _run(tiny_files, str(img), "-c", "sky, road", "-o", str(tmp_path / "a"), "--save-encoding", cwd=tmp_path)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    enc = tmp_path / "a" / "street.encoding.safetensors"
    modes = {p.name: oct(os.stat(p).st_mode & 0o777) for p in (tmp_path / "a").iterdir() if p.is_file()}
    assert modes[enc.name] == "0o644" and set(modes.values()) == {"0o644"}, modes
    loaded = ImageEncoding.load(enc)
    _tamper(enc, {"embeddings": _nan(loaded)})
    r = _run(tiny_files, str(enc), "-c", "car, sky", "-o", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("glaclip: error:")]
    assert len(errors) == 1 and f"image encoding {enc} is damaged" in errors[0], r.stderr
    assert not (tmp_path / "b" / "street_labels.png").exists()
