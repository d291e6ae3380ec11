"""files.py: temporary name + rename, the umask's permissions, and stale temporaries removed
(only files with our own temporary naming)."""

import os
import stat

import pytest

from glaclip.io.files import atomic_paths, is_temporary, remove_stale_temporaries, write_atomic


def test_atomic_paths_leave_nothing_on_error(tmp_path):
    targets = [tmp_path / "a.png", tmp_path / "b.json"]
    with pytest.raises(RuntimeError):
        with atomic_paths(targets) as tmp:
            tmp[0].write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_paths(targets) as tmp:
        for t in tmp:
            t.write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.json"]


def test_replacing_keeps_the_old_file_until_the_rename(tmp_path):
    path = tmp_path / "sub" / "run.json"
    write_atomic(path, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_paths([path]) as (tmp,):
            tmp.write_text("new, half")
            assert path.read_text() == "old"
            raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(path.parent) == ["run.json"]
    write_atomic(path, "new")
    assert path.read_text() == "new"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode


def _killed_temporary(folder, name):
    """What a process killed inside `atomic_paths` leaves behind."""
    paths = []

    class Killed(BaseException):
        pass

    try:
        with atomic_paths([folder / name]) as (tmp,):
            tmp.write_text("half")
            paths.append(tmp)
            os.link(tmp, folder / (tmp.name + ".keep"))  # survives the cleanup a SIGKILL would not run
            raise Killed
    except Killed:
        pass
    kept = folder / (paths[0].name + ".keep")
    os.replace(kept, paths[0])
    return paths[0]


def test_stale_temporaries_removed_and_nothing_else(tmp_path):
    (tmp_path / "deep").mkdir()
    ours = [_killed_temporary(tmp_path, "a_labels.png"), _killed_temporary(tmp_path / "deep", "b.json"),
            _killed_temporary(tmp_path, "noext")]
    assert all(p.exists() and is_temporary(p) for p in ours)
    theirs = [tmp_path / n for n in (
        ".a_labels.png.part.png",            # no random part
        ".a.png.ABCDEFGH.part.png",          # not mkstemp's alphabet
        ".a.png.abcdefgh.partial",           # another suffix
        "a.png.abcdefgh.part.png",           # not hidden
        ".a.png.abcdefg.part.png",           # 7 characters
        ".part", ".bashrc", "notes.part.txt", "x.png", "y.json")]
    for p in theirs:
        p.write_text("user's")
    folder_like = tmp_path / ".d.png.abcdefgh.part.png"  # our naming, but a folder: not ours
    folder_like.mkdir()
    assert remove_stale_temporaries(tmp_path) == len(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.read_text() == "user's" for p in theirs) and folder_like.is_dir()
    assert remove_stale_temporaries(tmp_path) == 0
