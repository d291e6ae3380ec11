"""A bank's manifest (io/bank_manifest.py) against a naive restatement of the release's files
(mb/manifest.py: '{stem}#{idx}' per id, '{stem}\\t{start}\\t{count}' per image, append-only, a batch
sorted by stem, images without regions skipped), atomic appends, mask files, mask ids -> bank ids."""

import os

import numpy as np
import pytest
from PIL import Image

from glaclip.errors import GlaclipError
from glaclip.io import bank_manifest as bm


def naive_files(batches):
    """The two files' bytes after appending `batches` (lists of (stem, count)) one after the other."""
    txt, tsv, known, next_id = "", "", set(), 0
    for batch in batches:
        for stem, n in sorted(batch):
            if stem in known or n == 0:
                continue
            known.add(stem)
            tsv += f"{stem}\t{next_id}\t{n}\n"
            txt += "".join(f"{stem}#{i}\n" for i in range(n))
            next_id += n
    return txt.encode(), tsv.encode()


def test_appends_match_the_naive_files(tmp_path):
    batches = [[("b", 3), ("a", 2), ("z", 0), ("c", 1)], [("a", 5), ("aa", 4), ("0", 1)], [], [("b", 3)]]
    for i, batch in enumerate(batches):
        new = bm.append_images(tmp_path, "mine", batch)
        txt, tsv = bm.manifest_paths(tmp_path, "mine")
        want = naive_files(batches[: i + 1])
        assert (txt.read_bytes(), tsv.read_bytes()) == want
    m = bm.read_manifest(tmp_path, "mine")
    assert [(r.stem, r.start, r.count) for r in m.images] == [("a", 0, 2), ("b", 2, 3), ("c", 5, 1), ("0", 6, 1),
                                                              ("aa", 7, 4)]
    assert m.next_id == 11 and m.stems == {"a", "b", "c", "0", "aa"} and m.stale_lines == 0
    assert list(m.row("b").ids) == [2, 3, 4] and m.row("z") is None
    assert new == []  # the last batch held only a known stem: nothing written


def test_empty_and_untouched(tmp_path):
    m = bm.read_manifest(tmp_path, "none")
    assert m.images == [] and m.next_id == 0
    assert bm.append_images(tmp_path, "none", [("x", 0)]) == []
    assert not (tmp_path / "manifests").exists() or not any((tmp_path / "manifests").iterdir())


def test_interrupted_append_is_put_right(tmp_path):
    bm.append_images(tmp_path, "b", [("a", 2)])
    txt, tsv = bm.manifest_paths(tmp_path, "b")
    with open(txt, "a") as f:  # manifest.txt renamed, images.tsv not: a cut append
        f.write("b#0\nb#1\n")
    m = bm.read_manifest(tmp_path, "b")
    assert m.next_id == 2 and m.stale_lines == 2
    bm.append_images(tmp_path, "b", [("c", 1)])
    assert (txt.read_bytes(), tsv.read_bytes()) == naive_files([[("a", 2)], [("c", 1)]])


def test_a_failed_write_leaves_the_old_files(tmp_path, monkeypatch):
    bm.append_images(tmp_path, "b", [("a", 2)])
    before = [p.read_bytes() for p in bm.manifest_paths(tmp_path, "b")]

    def broken(path, lines):
        with open(path, "w") as f:
            f.write("half")
        raise OSError("disk full")

    monkeypatch.setattr(bm, "_write_lines", broken)
    with pytest.raises(GlaclipError, match="cannot write the manifest of bank b.*disk full"):
        bm.append_images(tmp_path, "b", [("c", 1)])
    assert [p.read_bytes() for p in bm.manifest_paths(tmp_path, "b")] == before
    assert sorted(os.listdir(tmp_path / "manifests")) == ["b.images.tsv", "b.manifest.txt"]


@pytest.mark.parametrize("tsv, match", [
    ("a\t0\t2\nb\t3\t1\n", "line 2: image b starts at id 3"),
    ("a\t0\t2\na\t2\t1\n", "image a is listed twice"),
    ("a\t0\tx\n", "line 1 is not 'stem<TAB>start<TAB>count'"),
    ("a\t0\t2", "ends in the middle of a line"),
    ("a\t0\t0\n", "one or more regions per image"),
])
def test_broken_files_are_one_line(tmp_path, tsv, match):
    txt_path, tsv_path = bm.manifest_paths(tmp_path, "b")
    txt_path.parent.mkdir()
    txt_path.write_text("a#0\na#1\nb#0\n")
    tsv_path.write_text(tsv)
    with pytest.raises(GlaclipError, match=match):
        bm.read_manifest(tmp_path, "b")


def test_manifest_lines_must_follow_the_images(tmp_path):
    txt_path, tsv_path = bm.manifest_paths(tmp_path, "b")
    txt_path.parent.mkdir()
    tsv_path.write_text("a\t0\t2\n")
    txt_path.write_text("a#0\n")
    with pytest.raises(GlaclipError, match="has 1 ids, b.images.tsv lists 2"):
        bm.read_manifest(tmp_path, "b")
    txt_path.write_text("a#0\nx#1\n")
    with pytest.raises(GlaclipError, match="line 2 is 'x#1', b.images.tsv makes it 'a#1'"):
        bm.read_manifest(tmp_path, "b")


def test_batch_checks(tmp_path):
    with pytest.raises(GlaclipError, match="comes twice in the batch"):
        bm.append_images(tmp_path, "b", [("a", 1), ("a", 2)])
    with pytest.raises(GlaclipError, match="cannot go into a manifest"):
        bm.append_images(tmp_path, "b", [("a\tb", 1)])
    assert bm.append_images(tmp_path, "b", [("a", 1), ("a", 1)])[0].count == 1  # the same image twice: once


def test_mask_files_and_bank_ids(tmp_path):
    ids = np.zeros((6, 7), np.int64)
    ids[0, :3], ids[2:4, 2:5], ids[5, 6] = 40, 9, 300
    np.savez_compressed(tmp_path / "a.npz", instance_mask=ids)
    Image.fromarray(ids.astype(np.uint16)).save(tmp_path / "a.png")
    stack = np.stack([ids == 9, ids == 300, ids != 0])
    np.savez_compressed(tmp_path / "s.npz", instance_mask=stack)
    for name in ("a.npz", "a.png"):
        m = bm.read_region_masks(tmp_path / name)
        assert m.dtype == np.int32 and np.array_equal(m, ids)
        assert bm.count_regions(m) == 3
        values, bank = bm.bank_ids(m, 10)
        assert values.tolist() == [9, 40, 300] and bank.tolist() == [10, 11, 12]
        pix = bm.pixel_bank_ids(m, 10)
        naive = np.vectorize(lambda v: {0: -1, 9: 10, 40: 11, 300: 12}[v])(ids)
        assert np.array_equal(pix, naive)
    s = bm.read_region_masks(tmp_path / "s.npz")
    assert s.dtype == np.bool_ and s.shape == (3, 6, 7) and bm.count_regions(s) == 3
    assert bm.bank_ids(s, 4)[1].tolist() == [4, 5, 6]
    assert bm.count_regions(np.zeros((3, 3), np.int32)) == 0
    np.savez_compressed(tmp_path / "b.npz", instance_mask=ids == 9)  # a 2-D boolean map: one region, id 1
    b = bm.read_region_masks(tmp_path / "b.npz")
    assert b.dtype == np.int32 and np.array_equal(b, (ids == 9).astype(np.int32)) and bm.count_regions(b) == 1


def test_mask_file_errors(tmp_path):
    np.savez_compressed(tmp_path / "e.npz", instance_mask=np.zeros((2, 4, 4), bool))
    with pytest.raises(GlaclipError, match="slice 0 of the boolean stack covers no pixel"):
        bm.read_region_masks(tmp_path / "e.npz")
    np.savez_compressed(tmp_path / "i.npz", instance_mask=np.ones((2, 4, 4), np.uint8))
    with pytest.raises(GlaclipError, match="must be an N x H x W boolean stack, not uint8"):
        bm.read_region_masks(tmp_path / "i.npz")
    np.savez_compressed(tmp_path / "k.npz", other=np.ones((4, 4), np.uint8))
    with pytest.raises(GlaclipError, match="no 'instance_mask' array"):
        bm.read_region_masks(tmp_path / "k.npz")
    np.savez_compressed(tmp_path / "n.npz", instance_mask=-np.ones((4, 4), np.int32))
    with pytest.raises(GlaclipError, match="negative ids"):
        bm.read_region_masks(tmp_path / "n.npz")
