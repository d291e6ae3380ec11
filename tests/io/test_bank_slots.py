"""A store being built (io/bank_slots.py): slots made, written in any order, marks after rows, resumed,
grown when the manifest grows, finished into the store (old rows first), left-over work files removed."""

import numpy as np
import pytest
import torch

from glaclip.errors import GlaclipError
from glaclip.io.bank_slots import Slots, slot_paths
from glaclip.io.bank_store import write_store


def rows(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float16)


def test_fill_in_any_order_then_finish(tmp_path):
    store = tmp_path / "x_metaclip_b.pt"
    want = rows(10, 4, 0)
    slots = Slots.prepare(store, 10, 4)
    assert slots.first == 0 and all(p.exists() for p in slot_paths(store))
    slots.open().write(6, want[6:10])
    assert not slots.finish() and not store.exists()  # slots missing: nothing written
    Slots(store, 0, 10, 4).open().write(0, torch.from_numpy(want[:6]).float())  # another process, torch rows
    assert Slots.prepare(store, 10, 4).done().all()  # resumed, not remade
    assert Slots(store, 0, 10, 4).finish()
    assert torch.equal(torch.load(store), torch.from_numpy(want))
    assert not any(p.exists() for p in slot_paths(store))
    assert Slots.prepare(store, 10, 4) is None  # complete


def test_extend_a_store_and_grow_the_slots(tmp_path):
    store = tmp_path / "x.pt"
    old, new = rows(5, 8, 1), rows(7, 8, 2)
    write_store(store, [old], 8)
    slots = Slots.prepare(store, 9, 8)
    assert slots.first == 5 and slots.done().shape == (4,)
    slots.open().write(5, new[:2])
    grown = Slots.prepare(store, 12, 8)  # images came into the manifest after an interrupted build
    assert list(grown.done()) == [True, True] + [False] * 5
    grown.open().write(7, new[2:])
    assert grown.finish()
    assert torch.equal(torch.load(store), torch.from_numpy(np.concatenate([old, new])))


def test_leftovers_and_mismatches(tmp_path):
    store = tmp_path / "x.pt"
    write_store(store, [rows(6, 4, 3)], 4)
    for p in slot_paths(store):  # a kill after the store was renamed, before the work files went
        np.save(p, np.zeros(2))
    assert Slots.prepare(store, 6, 4) is None and not any(p.exists() for p in slot_paths(store))
    with pytest.raises(GlaclipError, match="has 6 rows, its manifest 5"):
        Slots.prepare(store, 5, 4)
    with pytest.raises(GlaclipError, match="width 4, this model gives 8"):
        Slots.prepare(store, 9, 8)
    Slots.prepare(store, 9, 4)
    np.save(slot_paths(store)[0], np.zeros((5, 4), np.float32))
    with pytest.raises(GlaclipError, match="holds .* float32, this build needs"):
        Slots.prepare(store, 9, 4)
    with pytest.raises(GlaclipError, match="do not fit"):
        Slots(store, 6, 9, 4).write(5, rows(1, 4, 0))


def test_marks_without_rows_are_dropped(tmp_path):
    store = tmp_path / "x.pt"
    slots = Slots.prepare(store, 3, 2)
    slots.open().write(0, rows(3, 2, 4))
    slot_paths(store)[0].unlink()  # the rows file lost: its marks mean nothing
    assert not Slots.prepare(store, 3, 2).done().any()
