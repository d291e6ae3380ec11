"""The paths users and the README type keep working after the layered restructure, and the command line
starts without torch."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest


def test_every_root_name_resolves_to_its_home():
    import glaclip

    assert set(glaclip.__all__) >= {"Segmenter", "Segmentation", "Preset", "PRESETS", "get_preset", "WindowConfig",
                                    "AttentionConfig", "DecisionConfig", "GlaclipError", "resolve", "effective",
                                    "parse_classes", "read_class_file", "pipeline", "ImageEncoding", "Method",
                                    "register", "__version__"}
    from glaclip.config.registry import register
    from glaclip.segmenter import Segmenter
    from glaclip.steps.encoding import ImageEncoding

    assert glaclip.Segmenter is Segmenter and glaclip.ImageEncoding is ImageEncoding and glaclip.register is register
    for name in glaclip.__all__:
        assert getattr(glaclip, name) is not None
    assert callable(glaclip.pipeline)  # the function, not a subpackage of that name
    with pytest.raises(AttributeError):
        glaclip.no_such_name  # noqa: B018


def test_module_paths_the_readme_and_users_type():
    from glaclip.cli import main
    from glaclip.methods import METHODS, Method, Variant, register
    from glaclip.models import load_clip, load_vfm
    from glaclip.segmenter import Segmenter

    assert callable(main) and callable(register) and callable(load_clip) and callable(load_vfm)
    assert "gla-proxyclip" in METHODS and Method and Variant and Segmenter
    for name in ["supervision", "pipeline", "cvat", "fiftyone", "labelstudio"]:
        importlib.import_module(f"glaclip.integrations.{name}")


def test_moved_modules_are_kept_as_re_exports():
    import glaclip.io.masks as masks
    import glaclip.models.sam2 as sam2
    import glaclip.regions as regions
    import glaclip.steps.text as steps_text
    import glaclip.text as text
    from glaclip.config.classes import parse_classes

    assert regions.load_masks is masks.load_masks and regions.load_sam2 is sam2.load_sam2
    assert regions.DEFAULT_SAM == "sam2-hiera-large" and regions.mask_file_for
    assert text.text_encoder is steps_text.text_encoder and text.parse_classes is parse_classes
    for module in (regions, text):
        assert all(hasattr(module, name) for name in module.__all__)


def test_the_command_line_starts_without_torch():
    """`glaclip --help`, `methods`, `presets` (also one method on one data set) and `datasets` in a fresh
    interpreter: torch, numpy and PIL stay out of sys.modules."""
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from glaclip.cli import app\n"
        "out = {}\n"
        "for args in (['--help'], ['methods'], ['presets'], ['datasets'], ['version'],\n"
        "             ['presets', '--method', 'trident', '--dataset', 'voc21', '--json']):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    out[' '.join(args)] = [r.exit_code, len(r.output)]\n"
        "out['loaded'] = sorted(m for m in ('torch', 'numpy', 'PIL', 'cv2', 'open_clip', 'timm') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("loaded") == []
    assert all(rc == 0 and n > 0 for rc, n in out.values()), out


def test_the_torch_check_can_fail():
    code = "import sys, glaclip\nglaclip.Segmenter\nprint('torch' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "True"  # asking for the Segmenter does import torch
