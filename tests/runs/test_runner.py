"""The collection runner (runner.py): its preamble and loop alone, and the run identity by weight
content that batch `segment` and `eval` share."""

import json
import shutil

import pytest
import torch
from conftest import structured_image
from datafixtures import write_folder
from PIL import Image

from glaclip import GlaclipError, Segmenter
from glaclip.config.classes import parse_classes
from glaclip.runs.batch import Options, segment_collection
from glaclip.runs.collection import Shard, collect, read_logs
from glaclip.runs.datasets import open_dataset
from glaclip.runs.evaluate import evaluate
from glaclip.runs.runner import Run, begin, run_items

IDENTITY = {"clip": {"model": "m", "weights": "abc"}, "vfm": None, "setting": 1}


def _run(tmp_path):
    return Run(tmp_path / "out", "run.json", "logs", key="name", restart="--again")


def _loop(run, items, group=1, failed=None, seen=None):
    def load(i):
        if i == 3:
            raise GlaclipError("item 3 is damaged")
        return i * 10

    def handle(batch):
        seen.append([i for i, _ in batch]) if seen is not None else None
        for i, value in batch:
            yield i, {"name": str(i), "value": value}

    return run_items(run, Shard(), items, len(items), load, handle, group=group, workers=2, failed=failed,
                     progress=False)


def test_loop_groups_in_order_logs_each_item_and_lists_failures(tmp_path):
    run = _run(tmp_path)
    begin(run, IDENTITY, Shard())
    seen = []
    failures = _loop(run, list(range(7)), group=2, seen=seen,
                     failed=lambda i, reason: {"name": str(i), "failed": reason})
    assert failures == [(3, "item 3 is damaged")]
    assert seen == [[0, 1], [2, 4], [5, 6]]  # a failed load leaves its group; order kept
    logged = read_logs(run.log_folder)
    assert [logged[str(i)].get("value") for i in range(7)] == [0, 10, 20, None, 40, 50, 60]
    assert logged["3"]["failed"] == "item 3 is damaged"


def test_loop_without_failure_records_raises_after_logging_the_earlier_items(tmp_path):
    run = _run(tmp_path)
    begin(run, IDENTITY, Shard())
    with pytest.raises(GlaclipError, match="item 3 is damaged"):
        _loop(run, list(range(7)))
    assert sorted(read_logs(run.log_folder)) == ["0", "1", "2"]


def test_preamble_resumes_refuses_and_starts_over(tmp_path):
    run = _run(tmp_path)
    begin(run, IDENTITY, Shard(), extra={"info": "a"})
    _loop(run, [0, 1])
    assert json.loads((run.folder / "run.json").read_text()) == {**IDENTITY, "info": "a"}
    again = begin(run, IDENTITY, Shard(), extra={"info": "b"})  # extras are not compared
    assert again.resuming and sorted(again.done) == ["0", "1"] and again.attempt == 1
    with pytest.raises(GlaclipError, match=r"other settings \(setting differ\).*--again"):
        begin(run, {**IDENTITY, "setting": 2}, Shard(), extra={"info": "c"})
    fresh = begin(run, {**IDENTITY, "setting": 2}, Shard(), resume=False)
    assert not fresh.done and not list(run.log_folder.glob("rank*.jsonl"))
    _loop(run, [0])
    (run.folder / "run.json").unlink()
    with pytest.raises(GlaclipError, match="run.json is missing or cannot be read.*--again"):
        begin(run, IDENTITY, Shard())
    random = {**IDENTITY, "clip": {"model": "m", "weights": "random"}}
    begin(run, random, Shard(), resume=False)
    _loop(run, [0])
    with pytest.raises(GlaclipError, match="random weights"):
        begin(run, random, Shard())


def _replace(path, prefix: str | None = None) -> None:
    """Rewrite a weights file at the same path with other values (only keys starting with prefix)."""
    state = torch.load(path, weights_only=True)
    torch.manual_seed(1)
    for k, v in state.items():
        if v.is_floating_point() and (prefix is None or k.startswith(prefix)):
            v.add_(0.01 * torch.randn_like(v))
    torch.save(state, path)


@pytest.mark.parametrize("replaced", ["clip text", "clip image", "vfm"])
def test_weights_replaced_at_the_same_path_are_another_run(tiny_files, tmp_path, replaced):
    files = dict(tiny_files)
    for key in ("clip_weights", "vfm_weights"):
        files[key] = str(shutil.copy(tiny_files[key], tmp_path / f"{key}.pt"))
    before = Segmenter.from_pretrained(device="cpu", dtype="fp32", short_side=224, **files)
    write_folder(tmp_path / "data", n=2)
    ds = open_dataset("folder", tmp_path / "data")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(structured_image(40, 60)).save(tmp_path / "imgs" / "a.png")
    items, queries = collect([tmp_path / "imgs"]), parse_classes("road,sky")
    evaluate(before, ds, tmp_path / "eval", limit=1, progress=False)
    segment_collection(before, items, queries, tmp_path / "seg", Options(), progress=False)
    manifest = json.loads((tmp_path / "seg" / "glaclip-run.json").read_text())
    assert manifest["weights_from"]["clip"]["weights"] == files["clip_weights"]  # the path, for information
    assert len(manifest["clip"]["weights"]) == 40 and len(manifest["clip"]["text_weights"]) == 40

    if replaced == "vfm":
        _replace(files["vfm_weights"])
    else:
        _replace(files["clip_weights"], "visual." if replaced == "clip image" else "transformer.")
    after = Segmenter.from_pretrained(device="cpu", dtype="fp32", short_side=224, **files)
    assert after.models() == before.models()  # the same paths
    differ = "vfm" if replaced == "vfm" else "clip"
    with pytest.raises(GlaclipError, match=rf"other settings \({differ} differ\).*--no-resume"):
        evaluate(after, ds, tmp_path / "eval", limit=1, progress=False)
    with pytest.raises(GlaclipError, match=rf"other settings \({differ} differ\).*--overwrite"):
        segment_collection(after, items, queries, tmp_path / "seg", Options(), progress=False)
    evaluate(after, ds, tmp_path / "eval", limit=1, progress=False, resume=False)
    segment_collection(after, items, queries, tmp_path / "seg", Options(overwrite=True), progress=False)
    # the same weights loaded again (another load of the same files): the run continues
    again = Segmenter.from_pretrained(device="cpu", dtype="fp32", short_side=224, **files)
    evaluate(again, ds, tmp_path / "eval", limit=1, progress=False)
    segment_collection(again, items, queries, tmp_path / "seg", Options(), progress=False)
