import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from glaclip import GlaclipError, get_preset
from glaclip.runs.bench import bench, parse_size, tokens
from glaclip.steps.windows import window_grid

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None  # the [bench] extra; CI installs it


def test_parse_size():
    assert parse_size("560x1120") == (560, 1120)
    for bad in ("560by1120", "0x5", "-3x4", "12"):
        with pytest.raises(GlaclipError, match="560x1120"):
            parse_size(bad)


def test_tokens_are_those_of_the_encoding(segmenter):
    for h, w in ((100, 150), (40, 500)):
        enc = segmenter.encode_image(np.zeros((h, w, 3), np.uint8))
        assert tokens(segmenter, h, w) == (enc.grid.count, enc.grid.count * enc.embeddings.shape[1]
                                           * enc.embeddings.shape[2])


PEAK_CODE = """
import torch
from glaclip.runs.bench import PeakMemory
with PeakMemory(torch.device("cpu")) as small:
    pass
with PeakMemory(torch.device("cpu")) as big:
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    x.add_(1)
    del x
print(small.mb, big.mb)
"""


def test_peak_memory_sees_a_temporary_allocation():
    # in a fresh process: one that freed memory before (another test's, under pytest -n) may hold the
    # 64 MiB resident already, and its resident set then does not grow at all
    done = subprocess.run([sys.executable, "-c", PEAK_CODE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    small, big = map(float, done.stdout.split())
    assert big >= 60 and small < 30


def test_bench_rows_global_and_window_local(segmenter):
    lines = []
    rows = bench(segmenter.with_preset(get_preset("gla-proxyclip").with_overrides(short_side=112)), ["100x150"],
                 echo=lines.append)
    assert rows[0]["tokens"] == tokens(segmenter.with_preset(get_preset("gla-proxyclip").with_overrides(
        short_side=112)), 100, 150)[1]
    assert rows[0]["same_labels"] and rows[0]["dense_seconds"] > 0 and rows[0]["seconds"] > 0
    assert lines[2].startswith("| 100x150 |") and lines[2].endswith("| yes |")
    lines.clear()
    rows = bench(segmenter.with_preset(get_preset("clearclip").with_overrides(short_side=112)), ["100x150"],
                 echo=lines.append)
    assert "dense_seconds" not in rows[0] and "window-local" in lines[2]


def test_bench_command_end_to_end(tiny_files):
    r = run_cli("bench", "--size", "100x150", "--clip", tiny_files["clip"], "--vfm", tiny_files["vfm"],
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if line.startswith("| 100x150")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["8", "6272"]  # resized to 336x504 -> 2 x 4 windows of 28 x 28 tokens
    assert float(cells[3]) > 0 and float(cells[5]) > 0 and cells[7] == "yes"


# ------------------------------------------------------------------ the maintainers' scripts in benchmarks/

def _script(name, *args, timeout=600):
    r = subprocess.run([sys.executable, str(BENCH / name), *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _table_rows(path):
    """Body cells of every Markdown table in a file (headers and rules dropped)."""
    lines = Path(path).read_text().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines)
            if line.startswith("| ") and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]


def test_token_count_of_the_scripts_is_the_window_grid():
    sys.path.insert(0, str(BENCH))
    try:
        from common import token_count
    finally:
        sys.path.remove(str(BENCH))
    for h in range(1, 700, 23):
        for w in range(1, 900, 31):
            g = window_grid(h, w, 224, 112, 56)
            ph, pw = g.padded_size
            assert token_count(h, w) == (g.count, g.count * (ph // 8) * (pw // 8))


def test_run_script(tiny_files, tmp_path):
    plot = tmp_path / "r.png" if HAVE_MPL else "none"
    _script("run.py", "--size", "100x150", "--method", "gla-proxyclip", "--clip", tiny_files["clip"], "--vfm",
            tiny_files["vfm"], "--out", tmp_path / "r.md", "--plot", plot)
    (row,) = _table_rows(tmp_path / "r.md")
    assert row[:4] == ["100x150 native", "1", "294", "gla-proxyclip"]  # one window padded to 112x168
    assert all(float(c) >= 0 for c in row[4:10]) and row[10].endswith("x")
    if HAVE_MPL:
        assert Image.open(plot).size[0] > 500


def test_latency_script(tiny_files, tmp_path):
    plot = tmp_path / "l.png" if HAVE_MPL else "none"
    _script("latency.py", "--image", ROOT / "examples" / "street.png", "--classes", "examples/classes.txt",
            "--dtype", "fp32", "--clip", tiny_files["clip"], "--vfm", tiny_files["vfm"], "--clip-weights",
            tiny_files["clip_weights"], "--vfm-weights", tiny_files["vfm_weights"], "--out", tmp_path / "l.md",
            "--plot", plot)
    rows = _table_rows(tmp_path / "l.md")
    assert [r[2] for r in rows[:3]] == ["full context, no cache", "short context, cold cache",
                                        "short context, warm cache"]
    assert all(r[5] == "100.0%" for r in rows[:3])  # short context and cache: same labels
    assert rows[3][:2] == ["examples/classes.txt", "9"]
    if HAVE_MPL:
        assert Image.open(plot).size[0] > 500


def test_throughput_script(tiny_files, tmp_path):
    _script("throughput.py", "--count", "2", "--size", "60x80", "--clip", tiny_files["clip"], "--vfm",
            tiny_files["vfm"], "--clip-weights", tiny_files["clip_weights"], "--vfm-weights",
            tiny_files["vfm_weights"], "--out", tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert len(_table_rows(tmp_path / "t.md")) == 2 and "identical between the two modes: 100.0%" in text


def test_requery_script(tiny_files):
    out = _script("requery.py", "--repeat", "1", "--clip", tiny_files["clip"], "--vfm", tiny_files["vfm"],
                  "--dtype", "fp32")
    assert "| re-query (encoding, other classes) |" in out and "labels equal on 100.000%" in out


@pytest.mark.skipif(not HAVE_MPL, reason="charts need the [bench] extra (matplotlib)")
def test_charts_redraw_from_the_committed_tables(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from charts import latency_chart, latency_rows, results_rows, scaling_chart
    finally:
        sys.path.remove(str(BENCH))
    rows = results_rows(BENCH / "results-cpu.md")
    assert rows[0] == {"tokens": 4704, "block": {"seconds": 1.5, "growth_mb": 281.0},
                       "dense": {"seconds": 1.5, "growth_mb": 257.0}}
    assert rows[-1]["dense"] is None  # skipped at 1080x1920
    scaling_chart(rows, tmp_path / "s.png")
    latency_chart(latency_rows(BENCH / "latency-cpu.md"), tmp_path / "l.png")
    for name in ("s.png", "l.png"):
        img = Image.open(tmp_path / name)
        assert img.size[0] > 500 and len(img.convert("RGB").getcolors(1 << 20)) > 10
