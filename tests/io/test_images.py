import numpy as np
import pytest
import reference
import torch
from PIL import Image

from glaclip import GlaclipError
from glaclip.io.images import clip_to_imagenet, load_image, preprocess, resized_shape


@pytest.mark.parametrize("hw", [(300, 400), (400, 300), (336, 336), (100, 3000), (5000, 7000), (17, 31)])
def test_resize_rule(hw):
    h, w = hw
    f = min(2048 / max(h, w), 336 / min(h, w))
    assert resized_shape(h, w, 336, 2048) == (int(h * f + 0.5), int(w * f + 0.5))
    nh, nw = resized_shape(h, w, 336, 2048)
    assert max(nh, nw) <= 2048 and (min(nh, nw) == 336 or max(nh, nw) == 2048)


def test_preprocess_equals_formula():
    rgb = (np.random.default_rng(0).random((123, 77, 3)) * 255).astype(np.uint8)
    x = preprocess(rgb, 336, 2048, torch.float64)
    torch.testing.assert_close(x[0], reference.step1_resize(rgb, dtype=torch.float64))


def test_clip_to_imagenet_renormalises():
    rgb = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(1, 3, 1, 1)
    clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(1, 3, 1, 1)
    in_mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    in_std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_to_imagenet((rgb - clip_mean) / clip_std), (rgb - in_mean) / in_std)


@pytest.fixture
def rgb():
    return (np.random.default_rng(1).random((20, 30, 3)) * 255).astype(np.uint8)


def test_modes_from_files(tmp_path, rgb):
    gray = rgb[..., 0]
    cases = {
        "rgb.png": (Image.fromarray(rgb), rgb),
        "gray.png": (Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 7, np.uint8)])), rgb),
        "la.png": (Image.fromarray(np.dstack([gray, gray])), np.repeat(gray[..., None], 3, -1)),
        "palette.png": (Image.fromarray(rgb).quantize(16), None),
        "gray16.png": (Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, -1)),
        "cmyk.tiff": (Image.fromarray(rgb).convert("CMYK"), None),
        "rgb.bmp": (Image.fromarray(rgb), rgb),
        "rgb.webp": (Image.fromarray(rgb), None),
    }
    for name, (img, expected) in cases.items():
        path = tmp_path / name
        img.save(path, **({"lossless": True} if name.endswith("webp") else {}))
        out = load_image(path)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, name
        if expected is not None:
            np.testing.assert_array_equal(out, expected, err_msg=name)
    pal = Image.open(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), np.asarray(pal.convert("RGB")))


def test_exif_orientation_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    assert load_image(tmp_path / "rot.jpg").shape == (30, 20, 3)


def test_arrays_and_tensors(rgb):
    np.testing.assert_array_equal(load_image(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255.0), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(load_image(rgb[..., :1])[..., 2], rgb[..., 0])
    np.testing.assert_array_equal(load_image(np.dstack([rgb, rgb[..., :1]])), rgb)


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.full((4, 4, 3), np.nan, np.float32), np.full((4, 4, 3), -1, np.int32), "x" * 3, 5])
def test_bad_arrays(bad):
    with pytest.raises(GlaclipError):
        load_image(bad)


def test_bad_files(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "text.jpg").write_text("not an image")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    for name in ("corrupt.png", "text.jpg", "truncated.jpg", "missing.png", ""):
        with pytest.raises(GlaclipError) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value)
