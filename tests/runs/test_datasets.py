import shutil

import numpy as np
import pytest
from datafixtures import label_map, label_map16, write_folder, write_layout
from PIL import Image

from glaclip import GlaclipError
from glaclip.config.datasets import SPECS, builtin_classes
from glaclip.runs.datasets import open_dataset


def test_builtin_class_files():
    counts = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
              "cityscapes": 19, "ade20k": 150, "ade847": 847, "context459": 459}
    for name, n in counts.items():
        assert len(builtin_classes(SPECS[name])) == n, name
    voc = builtin_classes(SPECS["voc21"])
    assert voc.synonyms[0][:3] == ("sky", "wall", "tree") and len(voc.synonyms[0]) == 26
    assert voc.synonyms[15][0] == "person" and len(voc.synonyms[15]) == 7
    assert voc.synonyms[20] == ("television monitor", "tv monitor", "monitor", "television", "screen")
    assert builtin_classes(SPECS["coco_object"]).synonyms[1][-1] == "body"
    # CorrCLIPv2's lists: ADE-847 names keep their commas, one query per class
    ade = builtin_classes(SPECS["ade847"])
    assert ade.names[:3] == ("wall", "building, edifice", "sky") and len(ade.queries) == 847
    assert ade.names[300] == "altar, communion table, lords table"  # CAT-Seg's list: "lord's"
    assert ade.names[-1] == "adding machine, totalizer, totaliser"
    pc = builtin_classes(SPECS["context459"])
    assert pc.names[:3] == ("accordion", "aeroplane", "air conditioner") and pc.names[-1] == "wool"
    assert len(pc.queries) == 459 and pc.names[255] == "monkey"


def test_reduce_zero_label_sets():
    assert {n for n, s in SPECS.items() if s.reduce_zero_label} == {"voc20", "context59", "ade20k"}


@pytest.mark.parametrize("name", list(SPECS))
def test_readers_on_each_layout(tmp_path, name):
    names = write_layout(tmp_path, name)
    ds = open_dataset(name, tmp_path)
    assert [s.name for s in ds.samples] == names
    raw = np.array(Image.open(ds.samples[1].label))
    lab = ds.load_label(ds.samples[1])
    if SPECS[name].reduce_zero_label:
        assert (lab[raw == 0] == 255).all() and (lab[(raw > 0) & (raw < 255)] == raw[(raw > 0) & (raw < 255)] - 1).all()
    else:
        np.testing.assert_array_equal(lab, raw)
    assert (lab[:, 60] == ds.ignore_index).all() and ds.ignore_index == SPECS[name].ignore_index


@pytest.mark.parametrize("name", ["ade847", "context459"])
def test_catseg_16bit_tif_layouts(tmp_path, name):
    names = write_layout(tmp_path, name)
    ds = open_dataset(name, tmp_path)
    assert ds.ignore_index == 65535 and len(ds.classes) == {"ade847": 847, "context459": 459}[name]
    assert [s.name for s in ds.samples] == names  # context459: the extra image in JPEGImages is not a sample
    with Image.open(ds.samples[0].label) as img:
        assert img.mode == "I;16" and img.format == "TIFF"
    lab = ds.load_label(ds.samples[0])
    np.testing.assert_array_equal(lab, label_map16(60, 120, len(ds.classes), seed=0))
    assert lab.max() == 65535 and lab[lab != 65535].max() == len(ds.classes) - 1 > 255
    # mmseg's IoUMetric default (the CorrCLIPv2 release's evaluator): 255 is ignored, 65535 is a label
    assert open_dataset(name, tmp_path, ignore_index=255).ignore_index == 255


def test_16bit_tif_written_by_cv2_reads_alike(tmp_path):
    import cv2

    write_layout(tmp_path, "ade847", n=1)
    ds = open_dataset("ade847", tmp_path)
    lab = label_map16(60, 120, 847, seed=5)
    assert cv2.imwrite(str(ds.samples[0].label), lab)
    np.testing.assert_array_equal(ds.load_label(ds.samples[0]), lab)


def test_context459_images_missing_for_labels_are_named(tmp_path):
    write_layout(tmp_path, "context459")
    (tmp_path / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(GlaclipError, match="2008_000001.jpg"):
        open_dataset("pc459", tmp_path)
    shutil.rmtree(tmp_path / "annotations_detectron2")
    with pytest.raises(GlaclipError, match="pc459_val"):
        open_dataset("context459", tmp_path)


def test_palette_labels_read_as_indices(tmp_path):
    write_layout(tmp_path, "voc21")
    ds = open_dataset("voc21", tmp_path)
    assert Image.open(ds.samples[0].label).mode == "P"
    np.testing.assert_array_equal(ds.load_label(ds.samples[0]), label_map(60, 120, 21, seed=0))


def test_folder_dataset(tmp_path):
    write_folder(tmp_path)
    ds = open_dataset("folder", tmp_path)
    assert len(ds) == 4 and ds.classes.names == ("sky", "road", "car")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(GlaclipError, match="not a folder"):
        open_dataset("voc21", tmp_path / "nowhere")
    with pytest.raises(GlaclipError, match="JPEGImages"):
        open_dataset("voc21", tmp_path)
    write_layout(tmp_path, "voc21")
    (tmp_path / "SegmentationClass" / "2008_000001.png").unlink()
    with pytest.raises(GlaclipError, match="2008_000001.png"):
        open_dataset("voc21", tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(GlaclipError, match="val.txt"):
        open_dataset("voc21", tmp_path)
    with pytest.raises(GlaclipError, match="unknown dataset"):
        open_dataset("imagenet", tmp_path)
