"""The one loading skeleton (`models.builder`): its steps in order for each route, and every public loader
(CLIP, VFM, SAM, SAM 2, RADIO) going through it."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from glaclip.errors import GlaclipError, MissingWeights
from glaclip.models import builder


def one_line_error(fn, *args, must=(), **kwargs):
    with pytest.raises(GlaclipError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in must:
        assert part in msg, (part, msg)


class Tiny(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.lin = nn.Linear(width, 2)


def _recipe(calls, hub=None):
    def step(name, result):
        def run(*args):
            calls.append(name)
            return result(*args) if callable(result) else result
        return run

    def check(name):
        calls.append("check")
        if name != "tiny":
            raise GlaclipError(f"unknown tiny model {name!r}")
        return "tiny"

    return builder.Recipe(
        "TINY", check=check, default=step("default", lambda arch, w: w if w is not None else "random"),
        make=lambda arch, where, options: calls.append(f"make:{where}") or Tiny(**options),
        hub=step("hub", hub), fit=step("fit", lambda arch, sd, path, scripted: builder.FileFit(arch, {}, sd)),
        freeze=step("freeze", lambda model, dev, dt: model.eval().requires_grad_(False).to(dev, dt)),
        wrap=lambda model, arch, source, dev, dt: (model, arch, source, dev, dt))


def test_random_route_builds_real_parameters_and_freezes():
    calls = []
    model, arch, source, dev, dt = builder.load(_recipe(calls), "tiny", None, device="cpu", dtype="fp64")
    assert calls == ["check", "default", "make:cpu", "freeze"]
    assert (arch, source, dev.type, dt) == ("tiny", "random", "cpu", torch.float64)
    assert model.lin.weight.dtype == torch.float64 and not model.lin.weight.requires_grad
    assert not model.lin.weight.is_meta


def test_file_route_reads_fits_builds_empty_and_takes_the_tensors(tmp_path):
    ref = Tiny()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    calls = []
    model, _, source, _, _ = builder.load(_recipe(calls), "tiny", str(tmp_path / "w.pt"), device="cpu",
                                          dtype="fp32")
    assert calls == ["check", "default", "fit", "make:meta", "freeze"]  # empty build: no random init
    assert source == str(tmp_path / "w.pt") and torch.equal(model.lin.weight, ref.lin.weight)


def test_hub_route_may_hand_back_a_file(tmp_path):
    ref = Tiny()
    torch.save(ref.state_dict(), tmp_path / "cached.pt")
    calls = []
    recipe = _recipe(calls, hub=lambda arch, w: (tmp_path / "cached.pt", "hub repo x"))
    model, _, source, _, _ = builder.load(recipe, "tiny", "a-tag", device="cpu", dtype="fp32")
    assert calls == ["check", "default", "hub", "fit", "make:meta", "freeze"] and source == "hub repo x"
    assert torch.equal(model.lin.weight, ref.lin.weight)


def test_file_problems_are_one_line_naming_the_file(tmp_path):
    one_line_error(builder.load, _recipe([]), "tiny", str(tmp_path / "none.pt"), device="cpu",
                   must=["TINY weights file not found", "none.pt"])
    torch.save(Tiny(width=5).state_dict(), tmp_path / "other.pt")
    one_line_error(builder.load, _recipe([]), "tiny", str(tmp_path / "other.pt"), device="cpu",
                   must=["TINY weights", "other.pt", "do not fit", "wrong shape"])
    one_line_error(builder.load, _recipe([]), "huge", "random", device="cpu", must=["unknown tiny model"])


@pytest.mark.parametrize("which", ["clip", "vfm", "sam", "sam2", "radio"])
def test_every_public_loader_goes_through_the_skeleton(which, arch_dir, monkeypatch):
    """Patching `builder.load` must bite for every loader: none keeps a private copy of the steps."""
    from glaclip.models.loading import load_clip, load_vfm
    from glaclip.models.radio import load_radio
    from glaclip.models.sam import load_sam
    from glaclip.models.sam2 import load_sam2

    seen = []
    real = builder.load

    def recording(recipe, *args, **kwargs):
        seen.append(recipe.what)
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(builder, "load", recording)
    call = {"clip": lambda: load_clip(str(arch_dir / "glaclip-tiny-clip.json"), "random", device="cpu"),
            "vfm": lambda: load_vfm(str(arch_dir / "glaclip-tiny-vfm.json"), "random", device="cpu"),
            "sam": lambda: load_sam("sam-vit-b", None, device="cpu"),
            "sam2": lambda: load_sam2("sam2-hiera-tiny", "random", device="cpu"),
            "radio": lambda: load_radio("tiny-random", radio_repo=Path(__file__).parent / "radio_standin",
                                        device="cpu")}[which]
    if which == "sam":
        with pytest.raises(MissingWeights, match="sam_vit_b"):  # None names the file to get, from the skeleton
            call()
    else:
        call()
    assert seen == [{"clip": "CLIP", "vfm": "VFM", "sam": "SAM", "sam2": "SAM 2", "radio": "RADIO"}[which]]
