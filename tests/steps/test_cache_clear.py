"""`glaclip cache clear` removes only what the text cache wrote and says what really happened
(issue 16, items 7 and 8)."""

import errno
import os
import pathlib
import sys

import pytest
import torch
from conftest import run_cli

from glaclip.steps.text_cache import EmbeddingCache, cache_info, clear_cache, scan_cache


def _fill(root, model, queries):
    cache = EmbeddingCache(root, lambda: {"model": model, "dtype": "float32", "templates": ["a {}."],
                                          "text_weights": "0" * 40})
    cache.put_many({q: torch.nn.functional.normalize(torch.randn(8), dim=0) for q in queries})
    return cache.folder


@pytest.fixture
def home(tmp_path):
    """A cache dir that is also a user's folder ($GLACLIP_CACHE_DIR=$HOME): two models' entries among
    files the cache did not write."""
    root = tmp_path / "home"
    a = _fill(root, "A", ["cat", "dog", "tv monitor"])
    b = _fill(root, "B", ["sky"])
    foreign = {root / "notes.txt": b"mine", root / "text" / "todo.txt": b"keep me",
               root / "text" / "photos" / "a.jpg": b"\xff\xd8",
               a / "x.safetensors": b"not a cache name",
               a / ("0" * 40 + ".safetensors"): b"a cache name, not the cache's format",
               a / "model.json.bak": b"{}"}
    for path, data in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (a / "link.safetensors").symlink_to(root / "notes.txt")
    (a / (".xyz" + "0" * 37 + ".safetensors.k3j.part.safetensors")).write_bytes(b"")  # not a hash: foreign
    leftover = b / f".{EmbeddingCache._name('sky')}.x1y2.part.safetensors"  # an interrupted write
    leftover.write_bytes(b"partial")
    return root, a, b, foreign, leftover


def _cli(root, *args):
    env = dict(os.environ, GLACLIP_CACHE_DIR=str(root))
    return run_cli("cache", *args, env=env)


def test_clear_removes_only_the_caches_own_files(home):
    root, a, b, foreign, leftover = home
    assert cache_info(root)["entries"] == 4 and cache_info(root)["models"] == 2
    r = _cli(root, "info")
    assert r.returncode == 0 and "entries:  4 query embeddings (2 text models)" in r.stdout
    assert "other:    7 files that are not cache entries" in r.stdout, r.stdout
    r = _cli(root, "clear")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == f"removed 4 query embeddings from {root}"
    assert lines[1].startswith("kept 7 files or folders that the cache did not write: ") and len(lines) == 2
    for path, data in foreign.items():
        assert path.read_bytes() == data
    assert (a / "link.safetensors").is_symlink() and (root / "notes.txt").read_bytes() == b"mine"
    assert not b.exists() and not leftover.exists()  # all of B was the cache's: its folder went too
    assert sorted(p.name for p in a.iterdir()) == sorted(["x.safetensors", "0" * 40 + ".safetensors",
                                                          "model.json.bak", "link.safetensors",
                                                          ".xyz" + "0" * 37 + ".safetensors.k3j.part.safetensors"])
    assert scan_cache(root).entries == [] and _cli(root, "clear").stdout.startswith("removed 0 query embeddings")


def test_clear_of_a_cache_that_only_holds_its_own_files_leaves_nothing(tmp_path):
    root = tmp_path / "c"
    _fill(root, "A", ["cat"])
    report = clear_cache(root)
    assert (report.removed, report.failed, report.kept) == (1, [], [])
    assert list(root.iterdir()) == []  # text/ was the cache's: gone; the root itself stays


def test_clear_never_removes_a_text_folder_the_cache_did_not_fill(tmp_path):
    (tmp_path / "text").mkdir()
    assert clear_cache(tmp_path).removed == 0 and (tmp_path / "text").is_dir()


def _refuse_under(monkeypatch, folder):
    """Make unlink/rmdir fail under `folder` as on a read-only file system (tests may run as root)."""
    for name in ("unlink", "rmdir"):
        real = getattr(pathlib.Path, name)

        def refuse(self, *args, _real=real, **kwargs):
            if folder in self.parents or self == folder:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, name, refuse)


def _main(monkeypatch, capsys, root):
    from glaclip.cli.main import main

    monkeypatch.setenv("GLACLIP_CACHE_DIR", str(root))
    monkeypatch.setattr(sys, "argv", ["glaclip", "cache", "clear"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_clear_on_a_read_only_cache_says_so_and_fails(home, monkeypatch, capsys):
    root, a, b, foreign, leftover = home
    _refuse_under(monkeypatch, root / "text")
    code, out, err = _main(monkeypatch, capsys, root)
    assert code == 2
    assert out.splitlines()[0] == f"removed 0 query embeddings from {root}"
    assert err.count("\n") == 1 and err.startswith("glaclip: error: could not remove 7 cache files "
                                                   "(Read-only file system: "), err
    assert scan_cache(root).entries and cache_info(root)["entries"] == 4  # nothing claimed, nothing lost


def test_clear_partly_read_only_counts_what_went(home, monkeypatch, capsys):
    root, a, b, foreign, leftover = home
    _refuse_under(monkeypatch, b)  # model B's folder cannot change; A's can
    code, out, err = _main(monkeypatch, capsys, root)
    assert code == 2 and out.splitlines()[0] == f"removed 3 query embeddings from {root}"
    assert "could not remove 3 cache files (Read-only file system: " in err and "and others" in err
    assert cache_info(root)["entries"] == 1 and not (a / "model.json").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file modes")
def test_clear_on_a_read_only_folder_for_real(home):
    root, a, b, foreign, leftover = home
    for d in (a, b):
        d.chmod(0o555)
    try:
        r = _cli(root, "clear")
    finally:
        for d in (a, b):
            d.chmod(0o755)
    assert r.returncode == 2 and r.stdout.startswith(f"removed 0 query embeddings from {root}")
    assert "glaclip: error: could not remove" in r.stderr and cache_info(root)["entries"] == 4
