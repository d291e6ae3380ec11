"""Class lists: names with synonyms flattened into text queries, and the class-name file format
(METHOD.md step 6). No torch: the CLI reads class files before any model loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

from ..errors import GlaclipError

ClassSpec = Union[str, Sequence[str]]


SYNONYM_SEP = ";"


@dataclass(frozen=True)
class ClassQueries:
    """Classes with their synonyms flattened into text queries."""

    names: tuple[str, ...]  # display name of each class (its first synonym)
    synonyms: tuple[tuple[str, ...], ...]
    queries: tuple[str, ...]  # every synonym of every class, class by class
    query_class: tuple[int, ...]  # index of the class each query belongs to

    def __len__(self) -> int:
        return len(self.names)


def parse_classes(classes: Iterable[ClassSpec] | str) -> ClassQueries:
    """Items are a name, a list of synonyms, or one string with '; '-separated synonyms.

    A single string is a whole class list in the one class syntax used everywhere (CLI, class
    files, API, demo): commas and newlines separate classes, ';' separates synonyms of one class,
    e.g. "sky, car; vehicle, road". Items of a list are never split at commas. Empty lists, empty
    names, two classes with the same name and a synonym repeated within one class are errors. A synonym shared by two
    classes is allowed, as in the released class files (COCO-Object's background lists "bed"):
    both classes then score it alike and the lower index wins the tie.
    """
    if isinstance(classes, str):
        classes = [item for line in classes.splitlines() for item in line.split(",") if item.strip()]
    synonyms: list[tuple[str, ...]] = []
    for item in classes:
        if isinstance(item, str):
            parts = item.split(SYNONYM_SEP)
        elif isinstance(item, (list, tuple)) and all(isinstance(p, str) for p in item):
            parts = list(item)
        else:
            raise GlaclipError(f"a class must be a name or a list of synonym names, got {item!r}")
        names = tuple(" ".join(p.split()) for p in parts)
        if not names or any(not n for n in names):
            raise GlaclipError(f"empty class name in {item!r}")
        synonyms.append(names)
    if not synonyms:
        raise GlaclipError("the class list is empty; give at least one class name")
    seen: dict[str, int] = {}
    for idx, names in enumerate(synonyms):
        lowered = [n.lower() for n in names]
        if len(set(lowered)) != len(lowered):
            raise GlaclipError(f"duplicate synonym in class {idx} {'; '.join(names)!r}")
        if lowered[0] in seen:
            raise GlaclipError(f"duplicate class name {names[0]!r} (classes {seen[lowered[0]]} and {idx})")
        seen[lowered[0]] = idx
    queries = tuple(n for names in synonyms for n in names)
    query_class = tuple(i for i, names in enumerate(synonyms) for _ in names)
    return ClassQueries(tuple(s[0] for s in synonyms), tuple(synonyms), queries, query_class)


def parse_class_file(text: str, name: str) -> ClassQueries:
    """A class file's text: a .json file is a list with one item per class (a name, which may hold
    commas, or a list of synonyms); any other file is the class syntax (one class per line)."""
    if not name.lower().endswith(".json"):
        return parse_classes(text)
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise GlaclipError(f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise GlaclipError("a .json class file holds a list (one item per class)")
    return parse_classes(items)


def read_class_file(path: str | Path) -> ClassQueries:
    """One class per line in index order; synonyms separated by '; '. Blank lines are skipped.
    A .json file: a list, one item per class (`parse_class_file`)."""
    p = Path(path)
    if not p.is_file():
        raise GlaclipError(f"class file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GlaclipError(f"cannot read class file {p}: {exc}") from None
    try:
        return parse_class_file(text, p.name)
    except GlaclipError as exc:
        raise GlaclipError(f"class file {p}: {exc}") from None
