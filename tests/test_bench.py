import os
import subprocess
import sys

import pytest
from PIL import Image

from glaclip import GlaclipError
from glaclip.bench import native_settings, parse_size, plot, token_count
from glaclip.images import resized_shape


def test_sizes_and_tokens():
    assert parse_size("560x1120") == (560, 1120)
    with pytest.raises(GlaclipError):
        parse_size("560by1120")
    assert token_count(336, 448) == (6, 4704)
    assert token_count(560, 1120) == (36, 28224)
    assert token_count(1080, 1920) == (153, 153 * 784)
    for h, w in ((1080, 1920), (2160, 3840), (336, 448)):
        s = native_settings(h, w)
        assert resized_shape(h, w, s["short_side"], s["max_long_side"]) == (h, w)  # native: no resize


def test_plot_writes_png(tmp_path):
    rows = [{"tokens": n, "block": {"seconds": n / 1e3, "growth_mb": 50 + n / 100},
             "dense": {"seconds": n / 9e2, "growth_mb": n * n * 4 / 2**20} if n < 20000 else None}
            for n in (4704, 11760, 28224)]
    plot(rows, tmp_path / "p.png")
    img = Image.open(tmp_path / "p.png")
    assert img.size == (1000, 420) and len(img.getcolors(100000)) > 3


def test_bench_command_end_to_end(tiny_files, tmp_path):
    cmd = [sys.executable, "-m", "glaclip", "bench", "--size", "100x150", "--method", "gla-proxyclip", "--clip",
           tiny_files["clip"], "--vfm", tiny_files["vfm"], "--device", "cpu", "--out", str(tmp_path / "b.md"),
           "--plot", str(tmp_path / "b.png")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    table = (tmp_path / "b.md").read_text()
    row = [l for l in table.splitlines() if l.startswith("| 100x150")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["1", "294", "gla-proxyclip"]  # one window padded to 112x168 -> 14x21 tokens
    assert all(float(c) >= 0 for c in cells[4:10])
    assert (tmp_path / "b.png").stat().st_size > 1000
