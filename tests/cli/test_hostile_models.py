"""Issue 25, models and integrations: SAM 2 weights of another size, every missing file in one line,
the CVAT module's parameters, a mask file given to the pipeline, URLs given as images."""

import importlib.util
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import structured_image
from PIL import Image
from typer.testing import CliRunner

from glaclip import GlaclipError
from glaclip.errors import one_line

needs_sam2 = pytest.mark.skipif(importlib.util.find_spec("sam2") is None and not os.environ.get("CI"),
                                reason="sam2 is not installed (pip install 'glaclip[masks]')")
CLASSES = "sky, road; street, car"


def one_line_error(fn, *args, must=(), **kwargs) -> str:
    with pytest.raises(GlaclipError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for part in must:
        assert str(part) in msg, (part, msg)
    return msg


def cli(*args):
    from glaclip.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(res.exception, GlaclipError), (res.output, res.exception)
    msg = str(res.exception)
    assert "\n" not in msg, msg
    return msg


def model_args(files):
    return [x for k, v in files.items() for x in ("--" + k.replace("_", "-"), v)]


# ------------------------------------------------------------------------- 1. SAM 2 weights' size


def sam2_file(folder, name):
    """A checkpoint with the tensor names and shapes of SAM 2 `name` (all zeros, one float of storage each)."""
    from sam2.build_sam import build_sam2

    from glaclip.config.backbones import SAM2_MODELS
    from glaclip.models.checkpoints import build

    path = folder / f"{name}.pt"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(lambda d: build_sam2(SAM2_MODELS[name].config, None, device=d, apply_postprocessing=False),
                          empty=True)
        zero = torch.zeros(())
        sd = {k: zero.expand(v.shape) if v.numel() > 1 else torch.zeros(v.shape) for k, v in model.state_dict().items()}
        torch.save({"model": sd}, path)
    return path


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sam2")


@needs_sam2
@pytest.mark.parametrize("given,fits", [("sam2-hiera-large", "sam2-hiera-small"),
                                        ("sam2-hiera-tiny", "sam2-hiera-small"),
                                        ("sam2-hiera-small", "sam2-hiera-base-plus")])
def test_sam2_weights_of_another_size_name_both(sam_dir, given, fits):
    from glaclip.models.sam2 import load_sam2

    path = sam2_file(sam_dir, fits)
    one_line_error(load_sam2, given, path, device="cpu",
                   must=[path, f"fits {fits}, not {given}", f"give --sam {fits}"])


@needs_sam2
def test_sam2_weights_of_another_size_on_the_command_line(sam_dir, files6, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 60)).save(img)
    small = sam2_file(sam_dir, "sam2-hiera-small")
    msg = cli("segment", img, "-c", CLASSES, "-o", tmp_path / "out", "--method", "corrclip", "--device", "cpu",
              "--sam", "sam2-hiera-large", "--sam-weights", small, *model_args(files6))
    assert f"--sam-weights {small} fits sam2-hiera-small, not sam2-hiera-large: give --sam sam2-hiera-small" in msg


@needs_sam2
def test_sam2_weights_alone_build_the_architecture_they_fit(sam_dir):
    from glaclip.config.protocols import effective
    from glaclip.runs.mask_source import mask_request, open_masks, sam_request

    small = sam2_file(sam_dir, "sam2-hiera-small")
    request = sam_request(None, str(small))
    assert request == mask_request(None, None, str(small), effective("corrclip")[0])
    source = open_masks(request, SimpleNamespace(device=torch.device("cpu")))
    assert source.generator.name == "sam2-hiera-small" and "sam2-hiera-small" in source.describe()
    assert source.identity()["sam"]["model"] == "sam2-hiera-small"
    explicit = sam_request("sam2-hiera-large", str(small))  # --sam given: named, never replaced
    one_line_error(open_masks, explicit, SimpleNamespace(device=torch.device("cpu")), must=["give --sam"])


@needs_sam2
def test_sam2_weights_that_fit_no_architecture_say_what_differs(sam_dir, tmp_path):
    from glaclip.models.sam2 import load_sam2

    sd = torch.load(sam2_file(sam_dir, "sam2-hiera-small"), weights_only=True)["model"]
    del sd["image_encoder.trunk.pos_embed"]
    torch.save(sd, tmp_path / "cut.pt")
    for name in ("sam2-hiera-small", None):
        one_line_error(load_sam2, name, tmp_path / "cut.pt", device="cpu",
                       must=["do not fit the architecture: 1 missing (e.g. image_encoder.trunk.pos_embed)"])


# ------------------------------------------------------------------ 2. every missing file at once


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GLACLIP_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("GLACLIP_VFM_WEIGHTS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache


@needs_sam2
def test_missing_sam2_weights_named_with_clips(offline, files6, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 60)).save(img)
    vfm = {k: v for k, v in files6.items() if k.startswith("vfm")}
    msg = cli("segment", img, "-c", CLASSES, "-o", tmp_path / "out", "--method", "corrclip", "--device", "cpu",
              "--sam", "sam2-hiera-large", *model_args(vfm))
    assert "CLIP" in msg and "metaclip" in msg.lower() and "sam2_hiera_large.pt" in msg, msg


@needs_sam2
def test_missing_sam2_weights_alone_named(offline, files6, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(structured_image(40, 60)).save(img)
    msg = cli("segment", img, "-c", CLASSES, "-o", tmp_path / "out", "--method", "corrclip", "--device", "cpu",
              "--sam", "sam2-hiera-tiny", *model_args(files6))
    assert "sam2_hiera_tiny.pt" in msg and "CLIP" not in msg, msg


def test_missing_trident_sam_named_with_clips(offline, tiny_files):
    from glaclip import Segmenter

    vfm = {k: v for k, v in tiny_files.items() if k.startswith("vfm")}
    msg = one_line_error(Segmenter.from_pretrained, method="trident", device="cpu", dtype="fp32", **vfm)
    assert "CLIP" in msg and "sam_vit_b_01ec64.pth" in msg


# ----------------------------------------------------------------------------------- 3. CVAT


cvat_common = pytest.importorskip("cvat_cli._internal.common") if importlib.util.find_spec("cvat_cli") else None


def cvat_load(*params):
    from cvat_cli._internal import common, parsers

    args = [f"classes=str:{CLASSES}", "device=str:cpu", "dtype=str:fp32", *params]
    parameters = dict(parsers.parse_function_parameter(a) for a in args)
    return common.FunctionLoader("glaclip.integrations.cvat", None, parameters).load()


@pytest.fixture
def spy(monkeypatch):
    """Segmenter.from_pretrained recording its arguments instead of loading models."""
    from glaclip.integrations import cvat

    calls = []
    monkeypatch.setattr(cvat.Segmenter, "from_pretrained",
                        lambda **kw: calls.append(kw) or SimpleNamespace(preset=kw.get("preset")))
    return calls


@pytest.mark.skipif(cvat_common is None, reason="cvat-cli is not installed")
@pytest.mark.parametrize("param,words", [("method=str:corrclip", "region masks"),
                                         ("prob_thd=float:1.5", "prob_thd"),
                                         ("prob_thd=float:nan", "prob_thd"),
                                         ("prob_thd=str:high", "prob_thd"),
                                         ("polygons=str:false-ish", "polygons"),
                                         ("method=str:proxyclip", "sam")])
def test_cvat_bad_parameters_fail_at_create(spy, param, words):
    extra = ["sam_weights=str:random"] if "proxyclip" in param else []
    with pytest.raises(GlaclipError) as exc:
        cvat_load(param, *extra)
    msg = str(exc.value)
    assert "\n" not in msg and words in msg, msg
    assert not spy  # before any model loads
    cvat_load("method=str:sclip", "prob_thd=float:0.5")  # valid ones load
    assert len(spy) == 1


@pytest.mark.skipif(cvat_common is None, reason="cvat-cli is not installed")
def test_cvat_strict_booleans_and_numbers(spy):
    for text, kind in [("false", "mask"), ("False", "mask"), ("0", "mask"), ("no", "mask"),
                       ("true", "polygon"), ("YES", "polygon"), ("1", "polygon")]:
        fn = cvat_load(f"polygons=str:{text}")
        assert {lab.type for lab in fn.spec.labels} == {kind}, text
    assert {lab.type for lab in cvat_load("polygons=bool:false").spec.labels} == {"mask"}
    fn = cvat_load("prob_thd=str:0.25")
    assert fn.prob_thd == 0.25 and spy[-1]["preset"].decision.prob_thd == 0.25


@pytest.mark.skipif(cvat_common is None, reason="cvat-cli is not installed")
def test_cvat_routes_sam_to_trident(spy, tmp_path):
    weights = tmp_path / "sam_vit_b.pth"
    weights.write_bytes(b"x")
    cvat_load("method=str:trident", f"sam_weights=str:{weights}", "sam=str:sam-vit-b")
    assert spy[-1]["sam"] == "sam-vit-b" and spy[-1]["sam_weights"] == str(weights)
    with pytest.raises(GlaclipError, match="file not found"):
        cvat_load("method=str:trident", f"sam_weights=str:{tmp_path / 'none.pth'}")
    with pytest.raises(GlaclipError, match="unknown --sam"):
        cvat_load("method=str:trident", "sam=str:sam-vit-z")
    assert len(spy) == 1


# ---------------------------------------------------------------------------- 4. pipeline masks


def test_pipeline_reads_a_mask_file(files6, tmp_path):
    from glaclip import Segmenter
    from glaclip.integrations.pipeline import SegmentationPipeline

    seg = Segmenter.from_pretrained(method="corrclip", device="cpu", dtype="fp32", short_side=112, **files6)
    rgb = structured_image(60, 80, seed=7)
    regions = (np.arange(60 * 80).reshape(60, 80) // 800).astype(np.int32)
    np.savez(tmp_path / "a.npz", instance_mask=regions)
    Image.fromarray(regions.astype(np.uint16)).save(tmp_path / "a.png")
    pipe = SegmentationPipeline(seg)
    want = pipe(rgb, candidate_labels=CLASSES, masks=regions)
    for given in (str(tmp_path / "a.npz"), tmp_path / "a.png"):
        got = pipe(rgb, candidate_labels=CLASSES, masks=given)
        assert [(e["label"], e["score"]) for e in got] == [(e["label"], e["score"]) for e in want]
        assert all(np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"])) for a, b in zip(got, want))
    assert len(pipe([rgb, rgb], candidate_labels=CLASSES, masks=[str(tmp_path / "a.npz"), regions])) == 2
    one_line_error(pipe, structured_image(50, 80), candidate_labels=CLASSES, masks=str(tmp_path / "a.npz"),
                   must=["a.npz", "80x60", "80x50"])
    one_line_error(pipe, rgb, candidate_labels=CLASSES, masks=str(tmp_path / "none.npz"), must=["none.npz"])
    one_line_error(pipe, [rgb, rgb], candidate_labels=CLASSES, masks=str(tmp_path / "a.npz"), must=["one per image"])


# ------------------------------------------------------------------------------------------ 5. URLs


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://example.com//x/b.jpg"])
def test_url_images_keep_their_text(url, tiny_files, tmp_path):
    from glaclip.io.images import load_image

    one_line_error(load_image, url, must=[url, "URL"])
    msg = cli("segment", url, "-c", CLASSES, "-o", tmp_path / "out", *model_args(tiny_files))
    assert url in msg and "URL" in msg
    msg = cli("compare", url, "--methods", "sclip", "-c", CLASSES, "-o", tmp_path / "c.png", *model_args(tiny_files))
    assert url in msg and "URL" in msg


def test_missing_image_keeps_its_text(tmp_path):
    from glaclip.io.images import load_image

    text = str(tmp_path) + "//nope.png"
    assert one_line(one_line_error(load_image, text, must=[text]))
