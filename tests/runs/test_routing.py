"""One routing of --masks/--sam/--sam-weights for every command, and model options that default to the
method's own backbones in every command."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from typer.testing import CliRunner

from glaclip.cli import app
from glaclip.config.protocols import effective
from glaclip.errors import GlaclipError
from glaclip.runs.mask_source import MaskRequest, route


def preset(name):
    return effective(name)[0]


def test_sam_options_go_to_tridents_sam_or_to_the_sam2_generator(tmp_path):
    r = route([preset("trident")], sam_weights="random")
    assert r.sam == {"sam": None, "sam_weights": "random"} and r.request is None
    r = route([preset("corrclip")], sam_weights="random")
    assert r.sam == {} and r.request == MaskRequest(sam="sam2-hiera-large", sam_weights="random")
    with pytest.raises(GlaclipError, match="unknown --sam 'sam2-hiera-tiny' for trident"):
        route([preset("trident")], sam="sam2-hiera-tiny")
    with pytest.raises(GlaclipError, match="needs region masks"):
        route([preset("corrclip")])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert route([preset("proxyclip")], sam_weights="random") == route([preset("proxyclip")])
    assert "does not use region masks" in str(seen[0].message)
    # several methods (compare): Trident takes --sam, the mask reader then takes --masks FILE
    masks = tmp_path / "m.npz"
    masks.write_bytes(b"")
    mixed = route([preset("proxyclip"), preset("trident"), preset("corrclip")], masks, None, "random")
    assert mixed.sam == {"sam": None, "sam_weights": "random"} and mixed.request == MaskRequest(path=masks)
    assert route([preset("proxyclip"), preset("sclip")], masks).ignored
    # the demo: masks come with each upload; only a generator is asked for, and only for a mask reader
    assert route([preset("corrclip")], optional=True).request is None
    assert route([preset("corrclip")], sam="sam2-hiera-tiny", optional=True).request.sam == "sam2-hiera-tiny"
    assert route([preset("proxyclip")], sam_weights="random", optional=True).ignored
    assert route([preset("trident")], sam_weights="random", optional=True).sam == {"sam": None,
                                                                                   "sam_weights": "random"}


def test_every_command_defaults_its_models_to_the_methods_own():
    for command in app.registered_commands:
        params = inspect.signature(command.callback).parameters
        for name in ("clip", "vfm", "sam", "clip_weights", "vfm_weights", "sam_weights"):
            if name in params:
                default = getattr(params[name].default, "default", params[name].default)  # typer.Option(...)
                if command.callback.__name__ == "bench" and name.endswith("_weights"):
                    assert default == "random"  # speed does not depend on the values
                else:
                    assert default is None, (command.callback.__name__, name)


def test_the_demo_loads_trident_with_its_sam_and_its_own_vfm(tiny_files, monkeypatch):
    """`glaclip demo --method trident --sam-weights random --random-weights`: the Segmenter it serves has a
    SAM, and the VFM is Trident's (DINO ViT-B/16), not the GLA default."""
    from conftest import tiny_sam

    import glaclip.integrations.demo as demo
    import glaclip.models.loading as loading
    import glaclip.models.sam as sam_module

    built, served = [], {}
    real_vfm = loading.load_vfm

    def load_vfm(name, weights, device="auto", dtype="auto"):  # a tiny stand-in, named as asked
        built.append(("vfm", name, weights))
        return real_vfm(tiny_files["vfm"], weights, device=device, dtype=dtype)

    def load_sam(name, weights, device="auto", dtype="auto"):
        built.append(("sam", name, weights))
        return tiny_sam(dtype=torch.float32)

    monkeypatch.setattr(loading, "load_vfm", load_vfm)
    monkeypatch.setattr(sam_module, "load_sam", load_sam)
    monkeypatch.setattr(demo, "launch", lambda seg, problem, *a, **k: served.update(seg=seg, problem=problem))
    res = CliRunner().invoke(app, ["demo", "--method", "trident", "--sam-weights", "random", "--random-weights",
                                   "--clip", tiny_files["clip"], "--device", "cpu", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert served["problem"] is None and served["seg"].sam is not None
    assert built == [("vfm", "vit_base_patch16_224.dino", "random"), ("sam", "sam-vit-b", "random")]
