"""benchmarks/bank_release.py: the harness around the release's memory-bank builder (the release is not in
the repository: its inputs, the folder scan, glaclip's side on the stand-in RADIO and the detectron2
stand-in; the comparison itself is a maintainer run, see the script's docstring)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_benchmarks
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def harness():
    return import_benchmarks("bank_release")[0]


def test_inputs_scan_and_glaclip_side(harness, tmp_path):
    from glaclip.io.bank_manifest import manifest_paths
    from glaclip.models.radio import load_radio

    batches = harness.make_inputs(tmp_path / "inputs")
    assert sorted(batches[0]) == ["a1", "b_dog", "c0", "empty", "street", "sub/nomask"]
    scan_dir = tmp_path / "scan"
    scan_dir.mkdir()
    harness.stage(tmp_path / "inputs", batches[0], scan_dir)
    found = harness.scan(scan_dir, tmp_path / "inputs" / "masks")
    assert sorted(found) == ["a1", "b_dog", "c0", "empty", "street"]  # nomask: no mask file
    radio = load_radio("tiny-random", radio_repo=ROOT / "tests" / "models" / "radio_standin", device="cpu",
                       dtype="fp32")
    out = harness.glaclip_run(tmp_path / "bank", scan_dir, tmp_path / "inputs" / "masks", radio)
    assert out["images"] == 4 and out["regions"] == 442 and out["index"]["trained_on"] == 442  # "empty" skipped
    tsv = manifest_paths(tmp_path / "bank", harness.NAME)[1].read_text().splitlines()
    assert [line.split("\t")[0] for line in tsv] == ["a1", "b_dog", "c0", "street"]  # sorted by stem
    store = tmp_path / "bank" / "vfm_embeddings" / f"{harness.NAME}_radiov3.pt"
    q = torch.load(store).float().numpy()[:8]
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    same = harness.compare_index(faiss, store.with_suffix(".faiss"), store.with_suffix(".faiss"), q)
    assert same["bytes_equal"] and same["top20_ids_equal"] and same["ours"]["nlist"] == int(8 * np.sqrt(442))
    assert harness.compare_stores(store, store)["rows_equal"] == 442


@pytest.mark.parametrize("orientation", range(1, 9))
def test_detectron2_stand_in_is_pil_exif_transpose(harness, orientation):
    stub = harness._detectron2_stub()["detectron2.data.detection_utils"]._apply_exif_orientation
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    assert np.array_equal(np.asarray(stub(img)), np.asarray(ImageOps.exif_transpose(img)))
