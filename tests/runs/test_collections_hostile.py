"""Collections against hostile inputs and reruns (issue 16): output names unique by construction,
COCO file names that exist, --overwrite and changed extras leave exactly a plain run's files, a
different input set is refused, a failing image under several processes ends in our own lines."""

import json
import random
from pathlib import PurePosixPath

from test_batch import _files, _img, run, run_process

from glaclip.runs.collection import RUN_FILES, collect, output_suffixes

ADVERSARIAL = ["x_png_png.png", "x.bmp", "x.png", "x_png.png"]


def _claims(items):
    """Every output file each item could get, and every folder its outputs need."""
    files, dirs = [], set()
    for it in items:
        files += [(it.rel + s).casefold() for s in output_suffixes()]
        dirs |= {p.as_posix().casefold() for p in PurePosixPath(it.rel).parents if p.as_posix() != "."}
    return files, dirs


def _assert_unique(items):
    files, dirs = _claims(items)
    assert len(files) == len(set(files)), "two images share an output file"
    assert not set(files) & dirs, "an output file has the name of an output folder"
    assert not set(files) & {f.casefold() for f in RUN_FILES}, "an output file has the name of a run file"


def test_adversarial_names_get_distinct_outputs(tmp_path):
    data = tmp_path / "in"
    for name in ADVERSARIAL:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"")
    items = collect([str(data / n) for n in ADVERSARIAL])
    assert [it.rel for it in items] == ["x_png_png", "x", "x_png", "x_png_png_2"]
    assert [it.name for it in items] == ADVERSARIAL
    _assert_unique(items)
    # the run's own files, a folder named like an output file, names differing only in case
    for name in ["summary.png", "coco.png", "glaclip-run.png", "x_labels.png/y.png", "coco.json/a.png", "X.png",
                 "a.encoding.safetensors", "a.png"]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"")
    items = collect([str(data)])
    _assert_unique(items)
    by_name = {it.name: it.rel for it in items}
    assert by_name["summary.png"] == "summary_png" and by_name["x_labels.png/y.png"] == "x_labels.png_2/y"
    assert by_name["coco.json/a.png"] == "coco.json_2/a"


def test_random_name_sets_never_collide(tmp_path):
    rng = random.Random(16)
    parts = ["x", "X", "_png", "_labels", "_overlay", "_probs", ".png", ".bmp", ".json", "summary", "coco"]
    for trial in range(25):
        root = tmp_path / f"t{trial}"
        names = set()
        for _ in range(30):
            stem = "".join(rng.choice(parts) for _ in range(rng.randint(1, 3)))
            folder = "".join(rng.choice(parts) for _ in range(rng.randint(1, 2))) + "/" if rng.random() < 0.3 else ""
            names.add(folder + stem + rng.choice([".png", ".bmp", ".jpg", ".encoding.safetensors"]))
        made = []
        for n in sorted(names):
            p = root / n
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"")
                made.append(p)
            except OSError:  # a folder and a file of one name in the same set: keep the first
                continue
        items = collect([str(p) for p in made])
        assert len(items) == len(made)
        _assert_unique(items)


def test_colliding_names_and_coco_file_names_under_two_processes(tiny_files, tmp_path):
    """Adversarial names and a broken image under --processes 2: every image its own outputs, COCO
    file names that exist under the input root, one line of ours per failing process, exit 2."""
    data = tmp_path / "in"
    for i, name in enumerate(ADVERSARIAL + ["summary.png", "sub/coco.png"]):
        _img(data / name, i, size=(40 + 4 * i, 56))
    (data / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    r = run_process(tiny_files, str(data), "-c", "sky, road", "-o", str(out), "--export", "coco", "--processes", "2")
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr[-3000:]
    assert [ln for ln in lines if not ln.startswith("glaclip: skipped")] == [ln for ln in lines if ln.startswith(
        "glaclip: error: ")] and len(lines) <= 3, lines
    assert any(ln.startswith("glaclip: error: 1 of 7 images failed (others were written)") for ln in lines), lines
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert len({r["output"] for r in rows}) == 7 and sum(r["status"] == "ok" for r in rows) == 6
    for row in rows:  # each image's record names its own image: nothing was overwritten
        if row["status"] == "ok":
            assert json.loads((out / (row["output"] + ".json")).read_text())["image"] == row["image"]
    doc = json.loads((out / "coco.json").read_text())
    names = [im["file_name"] for im in doc["images"]]
    assert names == sorted(n for n in ADVERSARIAL + ["summary.png", "sub/coco.png"])  # input order: sorted walk
    assert all((data / n).is_file() for n in names)


def test_overwrite_removes_exactly_the_earlier_runs_files(tiny_files, tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        _img(data / ("sub" if i else "") / f"im{i}.png", i)
    out = tmp_path / "o"
    first = run(tiny_files, str(data), "-c", "sky, road", "-o", str(out), "--export", "coco", "--save-probs")
    assert first.returncode == 0, first.stderr
    assert (out / "coco.json").exists() and len(list(out.rglob("*_probs.npz"))) == 3
    # files the project did not write stay, even one named like an output or listed in a forged log line
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "mine_probs.npz").write_bytes(b"mine")
    victim = tmp_path / "victim_labels.png"
    victim.write_bytes(b"mine")
    with open(out / ".glaclip-progress" / "rank0.jsonl", "a") as fh:
        fh.write(json.dumps({"output": "forged", "status": "ok", "files": {"labels": "../victim_labels.png"}}) + "\n")
    again = run(tiny_files, str(data), "-c", "car, tree, sky", "-o", str(out), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert not (out / "coco.json").exists() and list(out.rglob("*_probs.npz")) == [out / "sub" / "mine_probs.npz"]
    assert victim.read_bytes() == b"mine" and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "sub" / "mine_probs.npz").unlink()
    fresh = run(tiny_files, str(data), "-c", "car, tree, sky", "-o", str(tmp_path / "fresh"))
    assert fresh.returncode == 0, fresh.stderr
    assert _files(out) == _files(tmp_path / "fresh")
    assert not (out / ".glaclip-progress" / "superseded.json").exists()


def test_rerun_with_other_extras_continues_and_other_settings_are_refused(tiny_files, tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        _img(data / f"im{i}.png", i)
    base = [str(data), "-c", "sky, road"]
    out = tmp_path / "o"
    assert run(tiny_files, *base, "-o", str(out), "--export", "coco", "--save-probs").returncode == 0
    before = _files(out)
    other = run(tiny_files, *base, "-o", str(out), "--set", "rho=0.6")
    assert other.returncode == 2 and other.stderr.strip().splitlines() == [
        f"glaclip: error: {out} holds a segmentation run with other settings (preset, settings differ); "
        "use another --out, or start over with --overwrite"]
    assert _files(out) == before
    dropped = run(tiny_files, *base, "-o", str(out))  # only fewer extras: the run goes on, without them
    assert dropped.returncode == 0, dropped.stderr
    assert "removed 4 files of the earlier invocation that this one does not write" in dropped.stderr
    fresh = run(tiny_files, *base, "-o", str(tmp_path / "fresh"))
    assert fresh.returncode == 0, fresh.stderr
    assert _files(out) == _files(tmp_path / "fresh")
    added = run(tiny_files, *base, "-o", str(out), "--save-probs", "--export", "coco")  # recomputed with them
    assert added.returncode == 0, added.stderr
    assert _files(out) == before


def test_rerun_on_another_input_set_is_refused(tiny_files, tmp_path):
    data = tmp_path / "in"
    for i in range(3):
        _img(data / ("sub" if i else "") / f"im{i}.png", i)
    out = tmp_path / "o"
    assert run(tiny_files, str(data), "-c", "sky, road", "-o", str(out), "--export", "coco").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    sub = run(tiny_files, str(data / "sub"), "-c", "sky, road", "-o", str(out), "--export", "coco")
    assert sub.returncode == 2 and sub.stderr.strip().splitlines() == [
        f"glaclip: error: {out} holds a segmentation run over other inputs (3 images under {data.resolve()}; now 2 "
        f"under {(data / 'sub').resolve()}); a different input set is a different run: use another --out, or start "
        "over with --overwrite"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    replaced = run(tiny_files, str(data / "sub"), "-c", "sky, road", "-o", str(out), "--export", "coco", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*") if p.name != ".glaclip-progress") == [
        "coco.json", "glaclip-run.json", "im1.json", "im1_labels.png", "im1_overlay.png", "im2.json",
        "im2_labels.png", "im2_overlay.png", "summary.csv", "summary.json"]
    assert [im["file_name"] for im in json.loads((out / "coco.json").read_text())["images"]] == ["im1.png", "im2.png"]
