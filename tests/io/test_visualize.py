import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from glaclip.io.pictures import distinct_palette, label_image, legend, overlay, overlay_with_legend


def test_palette_distinct():
    p = distinct_palette(200)
    assert p.shape == (200, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 200
    assert np.abs(p[:-1].astype(int) - p[1:].astype(int)).sum(1).min() > 30  # neighbours differ visibly


def test_label_image_round_trip(tmp_path):
    labels = np.random.default_rng(0).integers(0, 21, (30, 40))
    label_image(labels, distinct_palette(21)).save(tmp_path / "l.png")
    img = Image.open(tmp_path / "l.png")
    assert img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), labels)
    many = np.random.default_rng(0).integers(0, 300, (5, 6))
    label_image(many, distinct_palette(300)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), many)


def test_overlay_blend_formula():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]])
    pal = np.array([[0, 0, 0], [200, 200, 200]], np.uint8)
    out = overlay(rgb, labels, pal, alpha=0.25)
    assert out[0, 0].tolist() == [75, 75, 75] and out[0, 1].tolist() == [125, 125, 125]


def test_legend_wraps_and_skips_absent():
    pal = distinct_palette(30)
    names = [f"class number {i}" for i in range(30)]
    narrow = legend(names, pal, 200)
    wide = legend(names, pal, 2000)
    assert narrow.height > wide.height and narrow.width == 200
    shares = [0.0] * 29 + [1.0]
    assert legend(names, pal, 200, shares).height < narrow.height
    img = overlay_with_legend(np.zeros((50, 80, 3), np.uint8), np.zeros((50, 80), int), ["a"], pal)
    assert img.width == 80 and img.height > 50


def test_dataset_palettes():
    from glaclip.io.pictures import dataset_palette, palette_for, voc_palette

    voc = voc_palette()
    assert voc[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert voc[15].tolist() == [192, 128, 128]
    assert dataset_palette("voc20")[0].tolist() == [128, 0, 0]
    assert dataset_palette("cityscapes")[0].tolist() == [128, 64, 128] and len(dataset_palette("cityscapes")) == 19
    assert dataset_palette("ade20k").shape == (150, 3)
    assert dataset_palette("nope") is None
    assert palette_for(5, "cityscapes").tolist() == dataset_palette("cityscapes")[:5].tolist()
    assert palette_for(30, "cityscapes").shape == (30, 3)  # too few colours: fall back to distinct ones


def test_heatmap_monotone():
    from glaclip.io.pictures import heatmap

    h = heatmap(np.linspace(0, 1, 11)[None])
    assert h.shape == (1, 11, 3) and h.dtype == np.uint8
    assert h[0, 0].tolist() == [10, 10, 60] and h[0, -1].tolist() == [255, 230, 60]
    assert (np.diff(h[0, :, 0].astype(int)) >= 0).all()  # red rises with probability


needs_fontconfig = pytest.mark.skipif(not shutil.which("fc-list"), reason="fontconfig is not installed")


@needs_fontconfig
def test_legend_fonts_cover_non_latin_names():
    from glaclip.io.pictures import _default_font, font_file_for, legend_font

    assert font_file_for("é") is not None
    if not font_file_for("猫") and not os.environ.get("CI"):  # CI installs a CJK font (.ci/run)
        pytest.skip("no CJK font installed")
    font = legend_font(16, ["café", "猫"])
    assert font.path == font_file_for("é猫")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every character is covered: no warning
        strip = legend(["café", "猫"], distinct_palette(2), 300)
    assert strip.width == 300

    def ink(f):
        img = Image.new("L", (40, 30), 0)
        ImageDraw.Draw(img).text((2, 2), "猫", fill=255, font=f)
        return np.asarray(img)

    assert (ink(font) > 0).sum() > 20 and (ink(font) != ink(_default_font(16))).any()  # a glyph, not a box


def test_uncovered_characters_warn_once():
    import glaclip.io.pictures as vis

    vis._warned_glyphs.clear()
    with pytest.warns(RuntimeWarning, match="no installed font has the characters") as rec:
        legend(["\U000f0000 private", "cat"], distinct_palette(2), 300)  # a private-use code point
        legend(["\U000f0000 private", "dog"], distinct_palette(2), 300)
    assert len(rec) == 1
