import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli
from datafixtures import kill_when_logged, write_folder, write_layout

from glaclip import GlaclipError, get_preset
from glaclip.runs.datasets import open_dataset
from glaclip.runs.evaluate import evaluate
from glaclip.runs.metrics import boundary_iou_counts, confusion, summarize, summarize_boundary

SMALL = {"short_side": 224}  # 60x120 images -> 224x448: three windows, fast with tiny models


@pytest.fixture
def small_seg(segmenter):
    return segmenter.with_preset(get_preset("gla-proxyclip", **SMALL))


def test_metrics_match_direct_computation(small_seg, tmp_path):
    write_folder(tmp_path / "data")
    ds = open_dataset("folder", tmp_path / "data")
    result = evaluate(small_seg, ds, tmp_path / "out", progress=False)
    preds = [small_seg.predict(str(s.image), ds.classes).labels for s in ds.samples]
    cm = sum(confusion(p, ds.load_label(s), 3) for p, s in zip(preds, ds.samples))
    direct = summarize(cm, ds.classes.names)
    assert result["mIoU"] == pytest.approx(direct["mIoU"]) and result["aAcc"] == pytest.approx(direct["aAcc"])
    counts = [boundary_iou_counts(p, ds.load_label(s), 3) for p, s in zip(preds, ds.samples)]
    inter, union = sum(i for i, _ in counts), sum(u for _, u in counts)
    mbiou, per_class = summarize_boundary(inter, union)
    assert result["mBoundaryIoU"] == pytest.approx(mbiou) and 0 < mbiou <= 100 and result["boundary_dilation"] == 0.02
    assert [r["BoundaryIoU"] for r in result["per_class"]] == pytest.approx(per_class)
    assert [r["boundary_union"] for r in result["per_class"]] == union.tolist()
    assert result["images"] == 4 and result["boundary_pairs"] > 0 and 0 <= result["BER"] <= 100
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["mIoU"] == result["mIoU"] and "rho=0.55" in saved["preset_line"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| mIoU | mBoundaryIoU | aAcc | mAcc | BER |" in md and "| road |" in md


def test_resume_after_interruption_gives_identical_numbers(small_seg, tmp_path):
    write_folder(tmp_path / "data", n=5)
    ds = open_dataset("folder", tmp_path / "data")
    full = evaluate(small_seg, ds, tmp_path / "full", progress=False)

    seen = []

    def stop_after_two(name):
        seen.append(name)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(small_seg, ds, tmp_path / "cut", progress=False, on_image=stop_after_two)
    assert not (tmp_path / "cut" / "results.json").exists()
    later = []
    resumed = evaluate(small_seg, ds, tmp_path / "cut", progress=False, on_image=later.append)
    assert later == [s.name for s in ds.samples[2:]]  # finished images are not recomputed
    for key in ("mIoU", "mBoundaryIoU", "aAcc", "mAcc", "BER", "confusion"):
        assert resumed[key] == full[key], key


def test_resume_refuses_other_settings(segmenter, small_seg, tmp_path):
    write_folder(tmp_path / "data", n=2)
    ds = open_dataset("folder", tmp_path / "data")
    evaluate(small_seg, ds, tmp_path / "out", progress=False)
    other = segmenter.with_preset(get_preset("gla-proxyclip", rho=0.6, **SMALL))
    with pytest.raises(GlaclipError, match="preset"):
        evaluate(other, ds, tmp_path / "out", progress=False)
    evaluate(other, ds, tmp_path / "out", progress=False, resume=False)  # starting over is allowed


def test_mismatched_label_size_is_named(small_seg, tmp_path):
    write_folder(tmp_path / "data", n=1)
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "data" / "labels" / "img0.png")
    with pytest.raises(GlaclipError, match="img0.png"):
        evaluate(small_seg, open_dataset("folder", tmp_path / "data"), tmp_path / "out", progress=False)


def _eval_args(tiny_files, *args):
    return ["eval", *args, "--clip", tiny_files["clip"], "--clip-weights", tiny_files["clip_weights"], "--vfm",
            tiny_files["vfm"], "--vfm-weights", tiny_files["vfm_weights"], "--device", "cpu", "--set", "short_side=224"]


def _cli(tiny_files, *args, launcher=None, timeout=600):
    """`glaclip eval ARGS` with the tiny models: in this process, or under `launcher` (torchrun) in processes."""
    if launcher is None:
        return run_cli(*_eval_args(tiny_files, *args))
    return subprocess.run([sys.executable, *launcher, "-m", "glaclip", *_eval_args(tiny_files, *args)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_cli_eval_on_voc_layout(tiny_files, tmp_path):
    write_layout(tmp_path / "VOC2012", "voc21", n=3)
    r = _cli(tiny_files, "--dataset", "voc21", "--data-root", str(tmp_path / "VOC2012"), "--out", str(tmp_path / "o"),
             "--limit", "2")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["images"] == 2 and res["preset"]["decision"]["prob_thd"] == 0.1 and len(res["per_class"]) == 21
    assert "mIoU | mBoundaryIoU" in r.stdout and "prob_thd=0.1" in r.stderr
    bad = _cli(tiny_files, "--dataset", "voc21", "--data-root", str(tmp_path / "missing"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("glaclip: error:") and "missing" in bad.stderr


def test_killed_process_resumes(tiny_files, tmp_path):
    write_folder(tmp_path / "data", n=6)
    args = ("--dataset", "folder", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "-q")
    cmd = [sys.executable, "-m", "glaclip", *_eval_args(tiny_files, *args)]  # killed: a process of its own
    log = tmp_path / "o" / "progress" / "rank0.jsonl"
    done_before = kill_when_logged(cmd, log)
    assert 2 <= done_before < 6
    assert _cli(tiny_files, *args).returncode == 0
    fresh = _cli(tiny_files, *args[:4], "--out", str(tmp_path / "fresh"), "-q")
    assert fresh.returncode == 0
    a = json.loads((tmp_path / "o" / "results.json").read_text())
    b = json.loads((tmp_path / "fresh" / "results.json").read_text())
    assert a["confusion"] == b["confusion"] and a["mIoU"] == b["mIoU"] and a["BER"] == b["BER"]
    assert a["mBoundaryIoU"] == b["mBoundaryIoU"] and a["per_class"] == b["per_class"]
    assert len(log.read_text().splitlines()) == 6


def test_two_process_gloo_equals_single(tiny_files, tmp_path):
    write_folder(tmp_path / "data", n=5)
    base = ("--dataset", "folder", "--data-root", str(tmp_path / "data"), "-q")
    single = _cli(tiny_files, *base, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    dist = _cli(tiny_files, *base, "--out", str(tmp_path / "two"),
                launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))
    assert dist.returncode == 0, dist.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["confusion"] == b["confusion"] and a["mIoU"] == b["mIoU"] and a["BER"] == b["BER"]
    assert a["mBoundaryIoU"] == b["mBoundaryIoU"] and a["per_class"] == b["per_class"]
    ranks = sorted(p.name for p in (tmp_path / "two" / "progress").iterdir())
    assert ranks == ["rank0.jsonl", "rank1.jsonl"]
    assert sum(len((tmp_path / "two" / "progress" / r).read_text().splitlines()) for r in ranks) == 5


def test_cli_eval_with_a_clip_only_method(tiny_files, tmp_path):
    write_layout(tmp_path / "ADE", "ade20k", n=2)
    r = _cli(tiny_files, "--dataset", "ade20k", "--data-root", str(tmp_path / "ADE"), "--out", str(tmp_path / "o"),
             "--method", "gla-naclip", "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["preset"]["method"] == "gla-naclip" and res["vfm"] is None and len(res["per_class"]) == 150


def test_eval_on_ade847_tif_layout_and_the_release_ignore_index(tiny_files, small_seg, tmp_path):
    from datafixtures import label_map16
    from PIL import Image

    write_layout(tmp_path / "ADE", "ade847", n=2)
    (tmp_path / "three.txt").write_text("wall\nbuilding, edifice\nsky\n")  # a text file: commas split classes
    for i, label in enumerate(sorted((tmp_path / "ADE" / "annotations_detectron2" / "validation").iterdir())):
        Image.fromarray(label_map16(60, 120, 4, seed=i)).save(label)  # 4 classes, 65535 stripe
    r = _cli(tiny_files, "--dataset", "ade_full", "--data-root", str(tmp_path / "ADE"), "--out", str(tmp_path / "o"),
             "--class-file", str(tmp_path / "three.txt"), "-q")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["dataset"] == "ade847" and res["ignore_index"] == 65535 and res["images"] == 2
    assert res["out_of_range_labels"]["pixels"] == 0 and 0 <= res["mBoundaryIoU"] <= 100
    # mmseg's IoUMetric default, which the CorrCLIPv2 release evaluates with: 65535 is a label outside the classes
    ds = open_dataset("ade847", tmp_path / "ADE", class_file=tmp_path / "three.txt", ignore_index=255)
    with pytest.warns(RuntimeWarning, match="65535"):
        rel = evaluate(small_seg, ds, tmp_path / "rel", progress=False)
    assert rel["ignore_index"] == 255 and rel["out_of_range_labels"]["values"] == [65535]
    assert rel["out_of_range_labels"]["pixels"] == 2 * 60
