"""Bad input from a hostile trial: a clear one-line error (exit 2), a warning, or a correct result."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli, structured_image
from datafixtures import write_folder
from PIL import Image
from test_cli import run

from glaclip import GlaclipError, Segmenter, parse_classes
from glaclip.io.images import load_image
from glaclip.runs.datasets import open_dataset
from glaclip.runs.evaluate import evaluate


def _one_error_line(r, words):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("glaclip: error:") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_api_class_string_uses_the_cli_syntax(segmenter):
    q = parse_classes("sky, car; vehicle, road\ntree")
    assert q.names == ("sky", "car", "road", "tree") and q.synonyms[1] == ("car", "vehicle")
    assert parse_classes(["sky, car"]).names == ("sky, car",)  # list items are taken as they are
    assert segmenter.predict(structured_image(60, 80), "sky, car, road").classes == ["sky", "car", "road"]


def test_float_images_must_be_in_unit_range():
    rgb = structured_image(20, 30)
    with pytest.raises(GlaclipError, match=r"must lie in \[0, 1\].*uint8"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(GlaclipError, match="must lie in"):
        load_image(torch.from_numpy(rgb).float())
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255.0), rgb)


def test_pixel_limit_per_image_and_the_run_goes_on(tiny_files, tmp_path, monkeypatch):
    big = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(big)  # 400 megapixels: beyond Pillow's own bomb guard too
    ok = tmp_path / "ok.png"
    Image.fromarray(structured_image(60, 80)).save(ok)
    out = tmp_path / "out"
    r = run([str(big), str(ok), "-c", "sky, road", "-o", str(out)], tiny_files, tmp_path)
    assert r.returncode == 2 and "400.0 megapixels" in r.stderr and "GLACLIP_MAX_PIXELS" in r.stderr
    assert "Traceback" not in r.stderr and "DecompressionBomb" not in r.stderr
    assert (out / "ok_labels.png").exists() and not (out / "bomb_labels.png").exists()
    monkeypatch.setenv("GLACLIP_MAX_PIXELS", "1000")
    with pytest.raises(GlaclipError, match="over the limit"):
        load_image(structured_image(40, 40))
    with pytest.raises(GlaclipError, match="over the limit"):
        load_image(ok)


def test_unwritable_out_fails_before_models_load(tiny_files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 50)).save(img)
    r = run([str(img), "-c", "cat", "-o", str(blocker / "sub"), "--clip-weights", "/nonexistent.pt"], tiny_files,
            tmp_path)  # the weights would fail later: the folder must be reported first
    _one_error_line(r, "cannot write to --out")


@pytest.mark.parametrize("setting", ["logit_scale=nan", "rho=inf", "prob_thd=-inf", "alpha_gamma=nan"])
def test_non_finite_settings_are_rejected(tiny_files, tmp_path, setting):
    r = run([str(tmp_path / "x.png"), "-c", "cat", "--set", setting], tiny_files, tmp_path)
    _one_error_line(r, "finite")


def test_garbled_and_missing_weights(tiny_files, tmp_path):
    garbled = tmp_path / "clip.pt"
    garbled.write_bytes(b"PK\x03\x04 not a zip or pickle at all" * 10)
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 50)).save(img)
    r = run([str(img), "-c", "cat", "-o", str(tmp_path / "o"), "--clip-weights", str(garbled)], tiny_files, tmp_path)
    _one_error_line(r, "is not a CLIP weights file")
    assert "weights_only" not in r.stderr
    # a process of its own: huggingface_hub reads HF_HOME when it is imported
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("GLACLIP_CLIP_WEIGHTS", None)
    env.pop("GLACLIP_VFM_WEIGHTS", None)
    r = subprocess.run([sys.executable, "-m", "glaclip", "segment", str(img), "-c", "cat", "-o", str(tmp_path / "o"),
                        "--device", "cpu"], capture_output=True, text=True, env=env)
    _one_error_line(r, "CLIP ViT-B-16-quickgelu:openai")
    assert "VFM vit_base_patch8_224.dino" in r.stderr and len(r.stderr) < 400


def test_long_class_name_warns_naming_it(segmenter):
    name = " ".join(["extraordinarily"] * 40)
    with pytest.warns(RuntimeWarning, match="too long for CLIP") as rec:
        segmenter.text.embed([name, "cat"])
    assert len(rec) == 1 and "extraordinarily" in str(rec[0].message)


def test_out_of_range_labels_warn_with_share_and_values(segmenter, tmp_path):
    write_folder(tmp_path / "data", n=2)
    label = tmp_path / "data" / "labels" / "img0.png"
    arr = np.asarray(Image.open(label)).copy()
    arr[:5, :10] = 7  # classes are 0..2
    arr[5:6, :4] = 200
    Image.fromarray(arr).save(label)
    seg = segmenter.with_preset(segmenter.preset.with_overrides(short_side=224))
    with pytest.warns(RuntimeWarning, match=r"54 labelled pixels .* outside 0..2 .*7, 200"):
        result = evaluate(seg, open_dataset("folder", tmp_path / "data"), tmp_path / "out", progress=False)
    assert result["out_of_range_labels"]["pixels"] == 54 and result["out_of_range_labels"]["values"] == [7, 200]


def test_random_weight_runs_do_not_resume(tiny_files, tmp_path):
    write_folder(tmp_path / "data", n=3)
    seg = Segmenter.from_pretrained(clip=tiny_files["clip"], clip_weights="random", vfm=tiny_files["vfm"],
                                    vfm_weights="random", device="cpu", short_side=224)
    ds = open_dataset("folder", tmp_path / "data")
    evaluate(seg, ds, tmp_path / "out", limit=1, progress=False)
    with pytest.raises(GlaclipError, match="random weights"):
        evaluate(seg, ds, tmp_path / "out", progress=False)
    evaluate(seg, ds, tmp_path / "out", progress=False, resume=False)  # starting over is fine


def test_bench_rejects_unknown_methods():
    r = run_cli("bench", "--method", "foo", "--size", "224x224")
    _one_error_line(r, "method 'foo'")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_respect_the_umask(tiny_files, tmp_path, umask, mode):
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 50)).save(img)
    out = tmp_path / "o"
    old = os.umask(umask)
    try:
        r = run_cli("segment", img, "-c", "cat, dog", "-o", out, "--save-probs", "-q", "--device", "cpu",
                    *(x for k, v in tiny_files.items() for x in (f"--{k.replace('_', '-')}", v)))
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len([f for f in files if f.name.startswith("a")]) == 4  # labels, overlay, JSON, probabilities
    assert all(stat.S_IMODE(f.stat().st_mode) == mode for f in files), [(f.name, oct(f.stat().st_mode)) for f in files]


def test_fp16_on_cpu_warns():
    from glaclip.models.devices import resolve_dtype

    with pytest.warns(RuntimeWarning, match="bf16"):
        resolve_dtype("fp16", torch.device("cpu"))


def test_help_shows_the_demo_extra():
    for args in (["--help"], ["demo", "--help"]):
        r = run_cli(*args)
        assert "glaclip[demo]" in r.stdout, r.stdout
