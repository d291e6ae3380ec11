"""The method registry: one entry per method, from which every listing derives; the package's layout."""

import ast
from pathlib import Path

import numpy as np
import pytest
from conftest import structured_image
from typer.testing import CliRunner

import glaclip
from glaclip import PRESETS, GlaclipError, get_preset, resolve
from glaclip.cli.main import app
from glaclip.config.protocols import PROTOCOLS, protocol_name
from glaclip.config.registry import (
    CLIP_LOCAL,
    GLOBAL,
    METHODS,
    VARIANTS,
    Method,
    Variant,
    preset_names,
    register,
    unregister,
)
from glaclip.integrations.demo import method_choices

SRC = Path(glaclip.__file__).parent


def _flat(text: str) -> str:
    """CLI output without the help panels' wrapping and borders."""
    return "".join(text.replace("│", " ").split())


@pytest.fixture
def toy():
    entry = register(Method("toy-kk", CLIP_LOCAL, "k.k", "k-k attention, for a test", "Toy (tests)", host="naclip"))
    variant = register(Variant("toy-kk-wide", "toy-kk", {"short_side": 448}, "a named preset, for a test"))
    yield entry, variant
    unregister(variant.name)
    unregister(entry.name)


def test_a_registered_method_is_found_everywhere(toy, segmenter):
    runner = CliRunner()
    assert "toy-kk" in METHODS and "toy-kk-wide" in VARIANTS and {"toy-kk", "toy-kk-wide"} <= set(preset_names())
    assert list(PRESETS) == preset_names() and PRESETS["toy-kk-wide"].window.short_side == 448
    assert protocol_name("toy-kk") == "gla" and protocol_name("toy-kk", "host") == "naclip"
    assert resolve("toy-kk", "voc21", "host").decision.pamr_steps == 10  # the host's protocol row
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0 and "Toy (tests): k-k attention, for a test [CLIP only, no VFM]" in r.output
    r = runner.invoke(app, ["presets"])
    assert r.exit_code == 0 and "preset=toy-kk-wide method=toy-kk" in r.output
    for command in ("segment", "eval", "demo"):
        r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})
        assert r.exit_code == 0 and "toy-kk," in _flat(r.output) and "toy-kk-wide." in _flat(r.output), command
    assert {"toy-kk", "toy-kk-wide"} <= set(method_choices())
    result = segmenter.with_preset(get_preset("toy-kk")).predict(structured_image(90, 120), ["sky", "road"])
    assert result.preset.method == "toy-kk" and result.labels.shape == (90, 120)
    np.testing.assert_allclose(result.probs.sum(0), 1.0, atol=1e-5)


def test_unregistered_method_is_gone(toy):
    unregister("toy-kk-wide")
    unregister("toy-kk")
    assert "toy-kk" not in PRESETS and "toy-kk" not in preset_names()
    with pytest.raises(GlaclipError, match="unknown preset or method 'toy-kk'"):
        resolve("toy-kk")
    register(toy[0])  # the fixture removes them again
    register(toy[1])


@pytest.mark.parametrize("entry, problem", [
    (Method("bad-1", GLOBAL, "q.k", "", ""), "symmetric"),
    (Method("bad-2", CLIP_LOCAL, "vfm", "", ""), "cannot run"),
    (Method("bad-3", "sideways", "q.q", "", ""), "family must be"),
    (Method("bad-4", GLOBAL, "q.q", "", "", residual=True), "residual"),
    (Method("bad-5", CLIP_LOCAL, "q.q", "", "", smoothed_init=True), "smoothed_init"),
    (Method("clip", CLIP_LOCAL, "q.q", "", ""), "already registered"),
    (Variant("bad-6", "nowhere", {}, ""), "unknown method"),
])
def test_bad_entries_are_refused(entry, problem):
    with pytest.raises(GlaclipError, match=problem):
        register(entry)
    assert "bad-" not in " ".join(preset_names())


def test_every_entry_resolves_on_every_protocol():
    for name in preset_names():
        assert resolve(name).method in METHODS
        for protocol in ("default", "host", *PROTOCOLS):
            assert resolve(name, "voc21", protocol).protocol in PROTOCOLS


def _string_constants(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)]


def test_method_names_are_spelled_only_in_the_registry():
    """No module but config/registry.py spells a method or preset name (config/protocols.py may spell its
    protocol rows, which share names with the hosts)."""
    names = set(preset_names()) - {"clip"}  # 'clip' also keys the CLIP tower in model records
    found = {}
    paths = sorted(SRC.rglob("*.py"))
    assert SRC / "config" / "registry.py" in paths and len(paths) > 50  # the whole package, not vacuous
    for path in paths:
        rel = path.relative_to(SRC).as_posix()
        if rel == "config/registry.py":
            continue
        allowed = set(PROTOCOLS) if rel == "config/protocols.py" else set()
        spelled = sorted({s for s in _string_constants(path) if s in names} - allowed)
        if spelled:
            found[rel] = spelled
    assert found == {}


