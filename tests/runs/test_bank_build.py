"""The VFM region store (runs/bank_build.py) against a naive restatement of the release's recipe
(mb/generate_vfm_embeddings.py with vfms/factory.py's RADIO extractor), on the stand-in RADIO hub entry
(tests/models/radio_standin): EXIF-corrected image, RADIO at its nearest supported size, bilinear back
to the original size, L2 per pixel, per region the mean (not renormalised) as float16; then the whole
path manifest -> store -> index, and an incremental second batch."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glaclip.errors import GlaclipError
from glaclip.io.bank import read_store
from glaclip.io.bank_manifest import append_images, count_regions, read_manifest, read_region_masks
from glaclip.models.radio import load_radio
from glaclip.runs.bank_build import region_means, resize_masks, vfm_region_vectors, write_vfm_store

STANDIN = Path(__file__).resolve().parents[1] / "models" / "radio_standin"


@pytest.fixture(scope="module")
def radio():
    return load_radio("tiny-random", radio_repo=STANDIN, device="cpu", dtype="fp32")


def picture(path, h, w, seed, orientation=None):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    if orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(path, exif=exif)
    return path


def grid_ids(h, w, rows, cols, offset=0):
    """An h x w id map of rows x cols cells, ids offset+1.. (row-major), the last cell left 0."""
    r = np.minimum(np.arange(h) * rows // h, rows - 1)
    c = np.minimum(np.arange(w) * cols // w, cols - 1)
    m = (r[:, None] * cols + c[None, :] + 1 + offset).astype(np.int32)
    m[m == rows * cols + offset] = 0
    return m


def naive_vectors(model, path, masks):
    """The release's extract_from_paths, restated on the CPU in float32."""
    img = Image.open(path).convert("RGB")
    orientation = img.getexif().get(0x0112)
    method = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
              6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}.get(orientation)
    if method is not None:
        img = img.transpose(method)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)[None]
    ref = x.shape[-2:]
    snapped = (max(16, int(round(ref[0] / 16) * 16)), max(16, int(round(ref[1] / 16) * 16)))
    x = F.interpolate(x, snapped, mode="bilinear", align_corners=False)
    feats = model(x, feature_fmt="NCHW")[1]
    feats = F.normalize(F.interpolate(feats, size=ref, mode="bilinear"), dim=1).permute(0, 2, 3, 1)
    m = torch.from_numpy(masks)
    if m.shape[-2:] != feats.shape[1:3]:
        m = F.interpolate(m[None, None].float(), size=feats.shape[1:3], mode="nearest")[0, 0].to(m.dtype)
    if m.ndim == 3:
        return torch.stack([feats[0][s].mean(0).half() for s in m])
    values = torch.unique(m.int())
    return torch.stack([feats[0][m == v].mean(0).half() for v in values[values != 0]])


@pytest.mark.parametrize("h, w, orientation", [(72, 90, None), (50, 37, 6), (40, 64, 3)])
def test_region_vectors_are_the_recipes(tmp_path, radio, h, w, orientation):
    path = picture(tmp_path / "a.png", h, w, 1, orientation)
    shown = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    ids = grid_ids(*shown, 3, 4, offset=10)
    got = vfm_region_vectors(radio, path, ids, expected=11)
    assert got.dtype == torch.float16 and got.shape == (11, 32)
    assert fp16_close(got, naive_vectors(radio.model, path, ids))
    stack = np.stack([ids == v for v in (11, 15, 21)])  # a boolean stack: one region per slice
    stack[1, : h // 3] = True  # slices may overlap
    assert fp16_close(vfm_region_vectors(radio, path, stack), naive_vectors(radio.model, path, stack))
    norms = got.float().norm(dim=1)
    assert (norms <= 1.001).all() and (norms < 0.9999).any()  # means of unit vectors, not renormalised


def test_masks_of_another_size_are_resized_nearest(tmp_path, radio):
    path = picture(tmp_path / "a.png", 48, 64, 2)
    small = grid_ids(24, 32, 2, 2)
    assert resize_masks(small, (48, 64)).shape == (48, 64) and resize_masks(small, (24, 32)) is small
    assert fp16_close(vfm_region_vectors(radio, path, small, expected=3), naive_vectors(radio.model, path, small))
    with pytest.raises(GlaclipError, match="have 3 regions, the manifest 4"):
        vfm_region_vectors(radio, path, small, expected=4)
    thin = np.zeros((48, 64), np.int32)
    thin[:, :10], thin[0, 63] = 1, 2  # id 2: one pixel of a 2x-larger map, lost by the nearest resize to 24x32
    picture(tmp_path / "b.png", 24, 32, 3)
    with pytest.raises(GlaclipError, match="keep 1 regions, the manifest has 2|lost every pixel"):
        vfm_region_vectors(radio, tmp_path / "b.png", thin, expected=2)


def fp16_close(got: torch.Tensor, want: torch.Tensor, equal_share: float = 0.99) -> bool:
    """Float16 rows that differ from the release's float32-mean rows only by the rounding of its float32
    sums: every element within one float16 spacing, nearly all of them equal."""
    spacing = torch.finfo(torch.float16).eps * want.float().abs().clamp_min(2.0**-14)
    return bool(((got.float() - want.float()).abs() <= spacing).all()) and \
        float((got == want).float().mean()) >= equal_share


@pytest.mark.parametrize("band_bytes", [None, 8 * 6 * 41 * 2])  # default; two rows a band
def test_region_means_naive(monkeypatch, band_bytes):
    from glaclip.steps import windows

    monkeypatch.setattr(windows, "BAND_BYTES", band_bytes or windows.BAND_BYTES)
    feats = torch.randn(5, 6, 7, dtype=torch.float64)
    ids = grid_ids(23, 41, 2, 3)
    got = region_means(feats, ids)
    big = F.normalize(F.interpolate(feats[None], size=(23, 41), mode="bilinear", align_corners=False)[0], dim=0)
    want = torch.stack([big[:, torch.from_numpy(ids) == v].T.mean(0) for v in range(1, 6)]).float().half()
    assert torch.equal(got, want)
    stack = np.stack([ids == 2, ids > 3, np.ones_like(ids, bool)])
    want = torch.stack([big[:, torch.from_numpy(s)].T.mean(0) for s in stack]).float().half()
    assert torch.equal(region_means(feats, stack), want)


def test_manifest_store_index_and_an_increment(tmp_path, radio):
    faiss = pytest.importorskip("faiss")
    from glaclip.io.bank_index import update_index

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    shapes = {"c": (64, 80, 10, 12), "a": (80, 64, 12, 12), "b": (32, 32, 1, 1), "d": (48, 48, 8, 9)}
    for i, (stem, (h, w, r, c)) in enumerate(shapes.items()):
        picture(images / f"{stem}.png", h, w, i)
        np.savez_compressed(masks / f"{stem}.npz", instance_mask=grid_ids(h, w, r, c))
    bank = tmp_path / "bank"
    store = bank / "vfm_embeddings" / "mine_radiov3.pt"
    index = bank / "vfm_embeddings" / "mine_radiov3.faiss"
    messages = []

    def add(stems):
        append_images(bank, "mine", [(s, count_regions(read_region_masks(masks / f"{s}.npz"))) for s in stems])
        m = read_manifest(bank, "mine")
        out = write_vfm_store(radio, m.images, lambda s: images / f"{s}.png", lambda s: masks / f"{s}.npz", store,
                              on_message=messages.append)
        return m, out, update_index(store, index)

    m, out, rep = add(["c", "a", "b"])  # b has one cell, id 0 only: no region, not in the manifest
    assert [(r.stem, r.start, r.count) for r in m.images] == [("a", 0, 143), ("c", 143, 119)]
    assert out == (0, 262) and rep.total == 262 and rep.trained_on == 262
    first = torch.load(store)
    m, out, rep = add(["d", "a"])
    assert [(r.stem, r.start, r.count) for r in m.images][-1] == ("d", 262, 71)
    assert out == (262, 333) and (rep.total, rep.added, rep.trained_on) == (333, 71, 0)
    rows = torch.load(store)
    assert torch.equal(rows[:262], first)  # old rows kept
    for r in m.images:
        want = naive_vectors(radio.model, images / f"{r.stem}.png", read_region_masks(masks / f"{r.stem}.npz"))
        assert fp16_close(rows[r.start : r.start + r.count], want)
    assert "[1/1] d: 71 regions" in messages
    owner = faiss.read_index(str(index))
    ids = faiss.vector_to_array(faiss.downcast_index(owner).id_map)
    assert np.array_equal(ids, np.arange(333))
    assert read_store(store).shape == (333, 32)
    assert write_vfm_store(radio, m.images, None, None, store) == (333, 333)  # up to date: nothing to do
    with pytest.raises(GlaclipError, match="end inside image"):
        write_vfm_store(radio, [r.__class__("x", 0, 400)], None, None, store)


def test_channels_last_features_are_made_contiguous(tmp_path, radio, monkeypatch):
    """Real RADIO gives its NCHW features as a channels-last view; the release's extractor makes them
    contiguous before the bilinear resize (whose result then differs in the last bits): so do we."""
    forward = radio.model.forward

    def channels_last(x, feature_fmt="NLC"):
        out = forward(x, feature_fmt)
        return type(out)(out[0], out[1].contiguous(memory_format=torch.channels_last))

    path = picture(tmp_path / "a.png", 75, 101, 4)
    ids = grid_ids(75, 101, 5, 6)
    want = vfm_region_vectors(radio, path, ids)
    monkeypatch.setattr(radio.model, "forward", channels_last)
    assert not radio.features(torch.rand(1, 3, 32, 48)).is_contiguous()
    assert torch.equal(vfm_region_vectors(radio, path, ids), want)
