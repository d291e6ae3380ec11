"""`glaclip compare`: several methods on one image, each method's map equal to its own predict, the
figure's colours by class name, the numbers file, and the one-line errors."""

import json

import numpy as np
from conftest import run_cli, structured_image
from PIL import Image

from glaclip import Segmenter
from glaclip.config.protocols import effective
from glaclip.io.pictures import distinct_palette
from glaclip.runs.compare import MethodRun, compare, comparison_figure

CLASSES = "sky, road; street, car"
SMALL = {"short_side": 112}


def region_map(h, w):
    return (np.arange(h)[:, None] // 12 * 10 + np.arange(w)[None, :] // 16).astype(np.int32)


def test_each_method_map_is_its_own_predict(files6):
    rgb, masks = structured_image(60, 90, seed=3), region_map(60, 90)
    entries = [(m, *effective(m, None, None, dict(SMALL), CLASSES)) for m in ("proxyclip", "gla-proxyclip", "corrclip")]
    loaded = []

    def load(preset):
        loaded.append(preset.method)
        return Segmenter.from_pretrained(preset=preset, device="cpu", dtype="fp32", **files6)

    runs = compare(rgb, entries, load, masks=masks)
    assert [r.method for r in runs] == loaded == ["proxyclip", "gla-proxyclip", "corrclip"]
    for r in runs:
        seg = Segmenter.from_pretrained(method=r.method, device="cpu", dtype="fp32", **SMALL, **files6)
        want = seg.predict(rgb, CLASSES, masks=masks if seg.needs_masks else None).labels
        np.testing.assert_array_equal(r.labels, want)
        assert r.seconds > 0 and r.load_seconds > 0 and r.classes == ["sky", "road", "car"]


def test_figure_gives_a_class_one_colour_in_every_panel():
    h, w = 20, 30
    runs = [MethodRun("a", "", "", ["sky", "road"], np.zeros((h, w), int), 1.0, 2.0, 0.0),
            MethodRun("b", "", "", ["road", "sky"], np.zeros((h, w), int), 1.0, 2.0, 0.0)]
    fig = np.asarray(comparison_figure(np.zeros((h, w, 3), np.uint8), runs, columns=3, alpha=1.0))
    colours = dict(zip(["sky", "road"], distinct_palette(2)))
    cell_w = w + 16
    centre = lambda k: fig[30 + h // 2, k * cell_w + 8 + w // 2]  # noqa: E731  (pad 8, title 30)
    np.testing.assert_array_equal(centre(0), [0, 0, 0])  # the image itself
    np.testing.assert_array_equal(centre(1), colours["sky"])  # label 0 of run a is sky
    np.testing.assert_array_equal(centre(2), colours["road"])  # label 0 of run b is road


def run(files, *args):
    models = ["--clip", files["clip"], "--clip-weights", files["clip_weights"], "--vfm", files["vfm"],
              "--vfm-weights", files["vfm_weights"], "--device", "cpu", "--dtype", "fp32"]
    return run_cli("compare", *args, *models)


def test_cli_writes_the_figure_and_numbers(files6, tmp_path):
    image = tmp_path / "im.png"
    Image.fromarray(structured_image(48, 64, seed=2)).save(image)
    np.savez_compressed(tmp_path / "m.npz", instance_mask=region_map(48, 64))
    out = tmp_path / "figs" / "cmp.png"
    r = run(files6, str(image), "--methods", "gla-proxyclip,corrclip", "-c", CLASSES, "--masks",
            str(tmp_path / "m.npz"), "--set", "short_side=112", "-o", str(out))
    assert r.returncode == 0, r.stderr
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert [x["method"] for x in numbers["runs"]] == ["gla-proxyclip", "corrclip"]
    assert all(x["seconds"] > 0 and "short_side=112" in x["preset"] for x in numbers["runs"])
    assert r.stdout.splitlines()[0] == "| method | seconds | peak MiB | load seconds |" and "| corrclip |" in r.stdout
    fig = Image.open(out)
    assert fig.width >= 3 * 64 and fig.height > 48  # image + two panels in a row, table below
    assert sorted(p.name for p in out.parent.iterdir()) == ["cmp.json", "cmp.png"]  # no temporaries left


def test_cli_errors_are_one_line_and_write_nothing(files6, tmp_path):
    image = tmp_path / "im.png"
    Image.fromarray(structured_image(40, 40)).save(image)
    out = tmp_path / "o" / "c.png"
    for args, words in [(["--methods", "gla-proxyclip,nope"], "nope"),
                        (["--methods", "gla-proxyclip,corrclip"], "needs region masks"),
                        (["--methods", "gla-proxyclip,gla-proxyclip"], "distinct"),
                        (["--methods", "gla-proxyclip", "-o", str(tmp_path / "c.jpg")], "PNG")]:
        r = run(files6, str(image), "-c", CLASSES, "-o", str(out), *args)
        assert r.returncode != 0 and words in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())
