"""Region masks (glaclip.io.masks, glaclip.models.sam2): files, validation, lookup, fingerprints, SAM 2."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from glaclip.config.backbones import SAM2_MODELS
from glaclip.errors import GlaclipError
from glaclip.io.masks import MASK_KEY, check_masks, fingerprint, load_masks, paint_masks, save_masks
from glaclip.models.sam2 import AMG_SETTINGS
from glaclip.runs.mask_lookup import mask_file_for

# CI installs the masks extra (.ci/run): there a missing sam2 fails these tests instead of skipping them
HAVE_SAM2 = importlib.util.find_spec("sam2") is not None or bool(os.environ.get("CI"))
needs_sam2 = pytest.mark.skipif(not HAVE_SAM2, reason="sam2 is not installed (pip install 'glaclip[masks]')")


def ids(h=6, w=9, seed=0, top=40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top, (h, w))


def one_line_error(fn, *args, must=(), **kwargs) -> str:
    """fn must raise GlaclipError with a one-line message containing every string in `must`."""
    with pytest.raises(GlaclipError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg
    for part in must:
        assert str(part) in msg, (part, msg)
    return msg


# ------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_npz_any_integer_dtype(tmp_path, dtype):
    a = ids().astype(dtype)
    np.savez(tmp_path / "a.npz", **{MASK_KEY: a})
    out = load_masks(tmp_path / "a.npz", size=(6, 9))
    assert out.dtype == np.int32 and out.flags.c_contiguous and np.array_equal(out, a)


def test_npz_compressed_with_other_arrays_and_fortran_order(tmp_path):
    a = np.asfortranarray(ids(7, 5))
    np.savez_compressed(tmp_path / "a.npz", scores=np.ones(3), **{MASK_KEY: a})
    out = load_masks(tmp_path / "a.npz")
    assert out.flags.c_contiguous and np.array_equal(out, a)


def test_npz_without_the_key_names_the_keys_found(tmp_path):
    np.savez(tmp_path / "a.npz", masks=ids())
    one_line_error(load_masks, tmp_path / "a.npz", must=[tmp_path / "a.npz", MASK_KEY, "keys found: masks"])
    np.savez(tmp_path / "b.npz", ids())  # one unnamed array
    one_line_error(load_masks, tmp_path / "b.npz", must=[tmp_path / "b.npz", "arr_0"])


@pytest.mark.parametrize("writer", ["pil", "cv2"])
def test_png_16bit_id_map(tmp_path, writer):
    a = ids(5, 8, top=65536).astype(np.uint16)
    path = tmp_path / "a.png"
    if writer == "pil":
        Image.fromarray(a).save(path)
    else:
        assert cv2.imwrite(str(path), a)
    out = load_masks(path, size=(5, 8))
    assert out.dtype == np.int32 and np.array_equal(out, a)


def test_png_8bit_gray_palette_and_bilevel_read_as_stored(tmp_path):
    a = ids(4, 6, top=200).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "l.png")
    Image.fromarray(a).convert("P").save(tmp_path / "p.png")  # palette indices are the ids, no colours
    Image.fromarray(a > 100).save(tmp_path / "b.png")
    assert np.array_equal(load_masks(tmp_path / "l.png"), a)
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(load_masks(tmp_path / "p.png"), np.asarray(Image.open(tmp_path / "p.png")))
    assert np.array_equal(load_masks(tmp_path / "b.png"), (a > 100).astype(np.int32))


def test_colour_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "c.png")
    one_line_error(load_masks, tmp_path / "c.png", must=[tmp_path / "c.png", "RGB"])


def test_wrong_size_message(tmp_path):
    np.savez(tmp_path / "a.npz", **{MASK_KEY: ids(64, 96)})
    msg = one_line_error(load_masks, tmp_path / "a.npz", size=(64, 90))
    assert msg == f"{tmp_path / 'a.npz'}: mask map is 96x64, the image is 90x64"
    Image.fromarray(ids(64, 96).astype(np.uint16)).save(tmp_path / "a.png")
    msg = one_line_error(load_masks, tmp_path / "a.png", size=(60, 96))
    assert msg == f"{tmp_path / 'a.png'}: mask map is 96x64, the image is 96x60"


def _corrupt_files(tmp_path) -> dict:
    good = tmp_path / "good.npz"
    np.savez_compressed(good, **{MASK_KEY: ids(40, 40)})
    Image.fromarray(ids(40, 40).astype(np.uint16)).save(tmp_path / "good.png")
    files = {
        "garbage.npz": b"not a zip file at all",
        "truncated.npz": good.read_bytes()[:-40],
        "empty.npz": b"",
        "garbage.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        "truncated.png": (tmp_path / "good.png").read_bytes()[:60],
        "jpeg.png": cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    # a zip whose member is not an .npy array
    with zipfile.ZipFile(tmp_path / "notnpy.npz", "w") as zf:
        zf.writestr(MASK_KEY + ".npy", b"hello")
    return {**files, "notnpy.npz": None}


def test_corrupt_files_one_line_naming_the_file(tmp_path):
    for name in _corrupt_files(tmp_path):
        one_line_error(load_masks, tmp_path / name, must=[tmp_path / name])


@pytest.mark.parametrize("array, words", [
    (np.zeros((2, 3, 4), np.int32), "shape (2, 3, 4)"),
    (np.zeros((0, 5), np.int32), "empty"),
    (np.zeros((3, 4), np.float32), "float32"),
    (np.zeros((3, 4), bool), "bool"),
    (np.array([[0, -2], [1, 3]]), "negative"),
    (np.array([[0, 2**31]], np.int64), "int32"),
    (np.array([[0, 2**63 + 5]], np.uint64), "int32"),
])
def test_bad_arrays_in_files(tmp_path, array, words):
    np.savez(tmp_path / "a.npz", **{MASK_KEY: array})
    one_line_error(load_masks, tmp_path / "a.npz", must=[tmp_path / "a.npz", words])


def test_missing_unknown_and_folder(tmp_path):
    one_line_error(load_masks, tmp_path / "none.npz", must=[tmp_path / "none.npz", "not found"])
    (tmp_path / "a.jpg").write_bytes(b"x")
    one_line_error(load_masks, tmp_path / "a.jpg", must=[tmp_path / "a.jpg", ".npz"])
    (tmp_path / "dir.npz").mkdir()
    one_line_error(load_masks, tmp_path / "dir.npz", must=[tmp_path / "dir.npz"])


# ----------------------------------------------------------------------------------- API arrays


def test_check_masks_containers():
    a = ids(5, 7)
    for given in (a, a.astype(np.uint16), torch.from_numpy(a), torch.from_numpy(a).int(), a.tolist(),
                  Image.fromarray(a.astype(np.uint16)), Image.fromarray(a.astype(np.uint8))):
        out = check_masks(given, (5, 7))
        assert out.dtype == np.int32 and out.flags.c_contiguous and np.array_equal(out, a)
    out = check_masks(np.ascontiguousarray(a.T).T, (5, 7))  # a transposed view: made contiguous
    assert out.flags.c_contiguous and np.array_equal(out, a)


def test_check_masks_errors():
    a = ids(5, 7)
    assert one_line_error(check_masks, a, (5, 8)) == "mask map is 7x5, the image is 8x5"
    one_line_error(check_masks, a, (5, 8), what="masks of x.jpg", must=["masks of x.jpg is 7x5"])
    one_line_error(check_masks, torch.zeros(5, 7), (5, 7), must=["float32", "integers"])
    one_line_error(check_masks, torch.zeros(5, 7, dtype=torch.bool), (5, 7), must=["bool"])
    one_line_error(check_masks, torch.zeros(1, 5, 7, dtype=torch.int64), (5, 7), must=["(1, 5, 7)"])
    one_line_error(check_masks, Image.new("RGB", (7, 5)), (5, 7), must=["RGB"])
    one_line_error(check_masks, -a - 1, None, must=["negative"])
    one_line_error(check_masks, object(), None, must=["object"])


# --------------------------------------------------------------------------------------- lookup


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{MASK_KEY: ids()})
    return path


def test_mask_file_for_mirrored_then_flat(tmp_path):
    d = tmp_path / "masks"
    flat = _touch(d / "a.npz")
    assert mask_file_for(d, "sub/a.jpg") == flat  # the release's flat folders, by stem
    mirrored = d / "sub" / "a.png"
    mirrored.parent.mkdir()
    Image.fromarray(ids().astype(np.uint16)).save(mirrored)
    assert mask_file_for(d, "sub/a.jpg") == mirrored  # mirrored first
    assert mask_file_for(d, "a.jpg") == flat
    assert mask_file_for(d, tmp_path / "elsewhere" / "a.jpg") == flat  # absolute: by name only
    assert mask_file_for(d, "../a.jpg") == flat  # never outside the folder
    saved = _touch(d / "sub" / "b.masks.npz")  # what --save-masks writes beside an image's outputs
    assert mask_file_for(d, "sub/b.jpg") == saved


def test_mask_file_for_errors(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    msg = one_line_error(mask_file_for, d, "sub/a.jpg")
    assert msg == (f"no mask file for sub/a.jpg in {d} "
                   "(looked for sub/a.npz, sub/a.png, sub/a.masks.npz, a.npz, a.png, a.masks.npz)")
    assert one_line_error(mask_file_for, d, "a.jpg") == \
        f"no mask file for a.jpg in {d} (looked for a.npz, a.png, a.masks.npz)"
    _touch(d / "sub" / "a.npz")
    Image.fromarray(ids().astype(np.uint16)).save(d / "sub" / "a.png")
    one_line_error(mask_file_for, d, "sub/a.jpg", must=[d / "sub" / "a.npz", d / "sub" / "a.png"])
    one_line_error(mask_file_for, tmp_path / "nope", "a.jpg", must=[tmp_path / "nope", "not found"])


# ------------------------------------------------------------------------------- saving, identity


@pytest.mark.parametrize("suffix", [".npz", ".png"])
def test_save_load_round_trip(tmp_path, suffix):
    a = ids(33, 47, top=65536)
    path = tmp_path / "out" / f"a{suffix}"
    save_masks(path, a)
    assert np.array_equal(load_masks(path, size=(33, 47)), a)
    if suffix == ".npz":
        with np.load(path) as z:
            assert list(z.keys()) == [MASK_KEY] and z[MASK_KEY].dtype == np.int32
    else:
        assert Image.open(path).mode == "I;16"
    save_masks(path, a + 1)  # rewritten in place through a temporary
    assert np.array_equal(load_masks(path), a + 1)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_errors_leave_nothing(tmp_path):
    one_line_error(save_masks, tmp_path / "a.png", np.array([[0, 70000]]), must=[tmp_path / "a.png", "70000", ".npz"])
    one_line_error(save_masks, tmp_path / "a.tif", ids(), must=[tmp_path / "a.tif"])
    one_line_error(save_masks, tmp_path / "a.npz", np.zeros((3, 3)), must=[tmp_path / "a.npz", "float64"])
    assert list(tmp_path.iterdir()) == []
    save_masks(tmp_path / "big.npz", np.array([[0, 2**31 - 1]]))  # npz holds every int32 id
    assert load_masks(tmp_path / "big.npz")[0, 1] == 2**31 - 1


def test_fingerprint():
    a = ids(6, 8)
    f = fingerprint(a)
    assert len(f) == 16 and int(f, 16) >= 0
    assert fingerprint(a.astype(np.uint16)) == f == fingerprint(torch.from_numpy(a))  # content, not container
    b = a.copy()
    b[3, 4] += 1
    assert fingerprint(b) != f
    assert fingerprint(a.reshape(8, 6)) != f  # same ids in another shape


# -------------------------------------------------------------------------------------- painting


def naive_paint(anns, h, w):
    """Per pixel: 1 + the rank (stable ascending area order) of the last-ranked mask covering it; 0 if none."""
    areas = np.array([a["area"] for a in anns])
    rank = np.empty(len(anns), dtype=np.int64)
    rank[np.argsort(areas, kind="stable")] = np.arange(len(anns))
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            covering = [rank[i] + 1 for i, a in enumerate(anns) if a["segmentation"][y, x]]
            out[y, x] = max(covering, default=0)
    return out


def test_paint_masks_order_and_ties():
    rng = np.random.default_rng(3)
    h, w = 9, 11
    anns = []
    for area in (30, 12, 30, 5, 50, 12, 30):  # ties: equal areas keep their order
        seg = np.zeros((h, w), bool)
        seg.flat[rng.choice(h * w, area, replace=False)] = True
        anns.append({"segmentation": seg, "area": area})
    out = paint_masks(anns, (h, w))
    assert out.dtype == np.int32 and out.shape == (h, w)
    assert np.array_equal(out, naive_paint(anns, h, w))
    assert np.array_equal(paint_masks([], (3, 4)), np.zeros((3, 4), np.int32))


# ---------------------------------------------------------------------------------------- SAM 2


def test_missing_sam2_package_one_line(monkeypatch):
    from glaclip.models.sam2 import load_sam2

    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "sam2.automatic_mask_generator", None)
    msg = one_line_error(load_sam2, "sam2-hiera-tiny", "random", device="cpu")
    assert msg == "SAM 2 mask generation needs the sam2 package: pip install 'glaclip[masks]'"


def test_sam_dtype_follows_the_release():
    from glaclip.models.sam2 import _sam_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _sam_dtype("auto", cpu) == _sam_dtype("fp16", cpu) == _sam_dtype("fp64", cpu) == torch.float32
    assert _sam_dtype("auto", cuda) == torch.float16 and _sam_dtype("bf16", cuda) == torch.bfloat16
    assert _sam_dtype("fp32", cuda) == _sam_dtype("fp64", cuda) == torch.float32
    one_line_error(_sam_dtype, "fp8", cpu, must=["fp8"])


@needs_sam2
def test_model_table_matches_sam2():
    import sam2
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    for name, spec in SAM2_MODELS.items():
        assert name == spec.hub_id.split("/")[1]
        assert HF_MODEL_ID_TO_FILENAMES[spec.hub_id] == (spec.config, spec.filename)
        assert (Path(sam2.__path__[0]) / spec.config).is_file()


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """sam2-hiera-tiny with seeded random weights, nudged so that some masks pass the release's
    thresholds: random weights predict flat, low-contrast mask logits (stability 0), so the output
    hypernetworks' last layers are shifted and scaled (x100). Also saved as a released-style file."""
    from glaclip.models.sam2 import load_sam2

    torch.manual_seed(0)
    sam = load_sam2("sam2-hiera-tiny", "random", device="cpu", dtype="auto")
    with torch.no_grad():
        for mlp in sam.model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].bias.sub_(0.09)
            mlp.layers[-1].weight.mul_(100)
            mlp.layers[-1].bias.mul_(100)
    path = tmp_path_factory.mktemp("sam") / "sam2_hiera_tiny.pt"
    torch.save({"model": sam.model.state_dict()}, path)
    return sam, path


def _image(h=64, w=96) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (40, 90, 160)
    img[8:40, 10:50] = (220, 30, 30)
    img[30:60, 40:90] = (30, 200, 60)
    img[5:20, 60:85] = 250
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@needs_sam2
def test_sam2_generation_paints_the_generators_raw_output(tiny_sam):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    sam, _ = tiny_sam
    # the generator is sam2's own, with the release's settings and every other setting at its default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script in sam2's transforms
        direct = SAM2AutomaticMaskGenerator(sam.model, points_per_side=8, pred_iou_thresh=0.4,
                                            stability_score_thresh=0.4, multimask_output=False)
    mine, theirs = vars(sam.generator), vars(direct)
    assert type(sam.generator) is SAM2AutomaticMaskGenerator and mine.keys() == theirs.keys()
    for key in mine:
        if key == "predictor":
            assert mine[key].model is theirs[key].model
        elif key == "point_grids":
            assert all(np.array_equal(a, b) for a, b in zip(mine[key], theirs[key]))
        else:
            assert mine[key] == theirs[key], key
    assert sam.generator.point_grids[0].shape == (64, 2)

    raw = []
    own = sam.generator.generate
    sam.generator.generate = lambda image: raw.append(own(image)) or raw[-1]  # record the raw output
    try:
        img = _image()
        out = sam.generate(img)
    finally:
        del sam.generator.generate
    anns = raw[0]
    assert out.shape == (64, 96) and out.dtype == np.int32
    assert len(anns) >= 3 and len({a["area"] for a in anns}) >= 3  # the nudged weights give masks to order
    assert set(np.unique(out)) <= set(range(len(anns) + 1))
    assert np.array_equal(out, naive_paint(anns, 64, 96))
    largest = max(range(len(anns)), key=lambda i: (anns[i]["area"], i))  # painted last: all its pixels
    assert (out[anns[largest]["segmentation"]] == len(anns)).all()


@needs_sam2
def test_sam2_weights_files_and_identity(tiny_sam, tmp_path):
    from glaclip.models.sam2 import Sam2Masks, load_sam2

    sam, path = tiny_sam
    a = load_sam2("sam2-hiera-tiny", path, device="cpu")
    b = load_sam2("sam2-hiera-tiny", str(path), device="cpu")
    sd = sam.model.state_dict()
    assert all(torch.equal(v, a.model.state_dict()[k]) for k, v in sd.items())
    assert a.identity == b.identity and a.identity["weights"] != "random"
    assert a.identity["model"] == "sam2-hiera-tiny" and a.identity["dtype"] == "float32"
    assert a.identity["settings"] == AMG_SETTINGS
    assert sam.identity["weights"] == "random" and sam.identity["random_weights_of"]
    again = Sam2Masks(sam.model, type(sam.generator), sam.name, "random", sam.device, sam.dtype)
    assert again.identity != sam.identity  # random weights never match another generator's
    with torch.no_grad():
        a.model.sam_mask_decoder.iou_token.weight.add_(1)
    assert a.identity["weights"] != b.identity["weights"]  # by content

    one_line_error(load_sam2, "sam2-hiera-tiny", tmp_path / "none.pt", must=[tmp_path / "none.pt"])
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    one_line_error(load_sam2, "sam2-hiera-tiny", tmp_path / "bad.pt", must=[tmp_path / "bad.pt"])
    one_line_error(load_sam2, "sam2-hiera-small", path, must=[path, "fits sam2-hiera-tiny, not sam2-hiera-small"])
    one_line_error(load_sam2, "sam3", "random", must=["sam2-hiera-large"])
    one_line_error(sam.generate, np.zeros((4, 4, 3), np.float32), must=["uint8"])


@needs_sam2
def test_sam2_hub_weights_missing_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from glaclip.errors import MissingWeights
    from glaclip.models.sam2 import load_sam2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(MissingWeights) as exc:
        load_sam2("sam2-hiera-large", None, device="cpu")
    msg = str(exc.value)
    assert "\n" not in msg and "facebook/sam2-hiera-large" in msg and "sam2_hiera_large.pt" in msg
    assert "--sam-weights" in msg
