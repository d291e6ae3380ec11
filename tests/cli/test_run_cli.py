"""`run_cli` (the CLI in the test process, which most CLI tests use) gives what `python -m glaclip` gives in
a process of its own: exit code, stdout, stderr and output files, for a listing, an early error and a run."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import run_cli, structured_image
from PIL import Image

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _process(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "glaclip", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _same(args, cwd):
    a, b = run_cli(*args, cwd=cwd), _process(*args, cwd=cwd)
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), (a, b)
    return a


def test_listing_and_early_error_match_a_process(tmp_path):
    assert _same(["presets", "--method", "sclip", "--dataset", "voc21", "--json"], tmp_path).returncode == 0
    r = _same(["segment", str(tmp_path / "missing.png"), "--classes", "a, b"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("glaclip: error:")


def test_a_run_matches_a_process(tiny_files, tmp_path):
    Image.fromarray(structured_image(60, 80)).save(tmp_path / "a.png")
    outs = []
    for how, runner in (("in", run_cli), ("proc", _process)):
        out = tmp_path / how
        r = runner("segment", tmp_path / "a.png", "--classes", "sky; road", "-o", out, "--clip", tiny_files["clip"],
                   "--clip-weights", tiny_files["clip_weights"], "--vfm", tiny_files["vfm"], "--vfm-weights",
                   tiny_files["vfm_weights"], "--device", "cpu", "--no-cache", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append((r.stdout, r.stderr.replace(str(out), "OUT"), (out / "a_labels.png").read_bytes()))
    assert outs[0][0] == outs[1][0] and outs[0][2] == outs[1][2]
    # times differ, and so does how often the progress bar redraws: its lines aside, the same text
    timeless = [[re.sub(r"\d+(\.\d+)?", "N", line) for line in re.split(r"[\r\n]", o[1])
                 if line.strip() and not line.startswith("segmenting:")] for o in outs]
    assert timeless[0] == timeless[1] and len(timeless[0]) >= 3
