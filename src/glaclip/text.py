"""Class lists and text queries (METHOD.md step 6 and the class-name file format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import GlaclipError

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

    A single string is one class list item per line. Empty lists, empty names, two classes with
    the same name and a synonym repeated within one class are errors. A synonym shared by two
    classes is allowed, as in the released class files (COCO-Object's background lists "bed"):
    both classes then score it alike and the lower index wins the tie.
    """
    if isinstance(classes, str):
        classes = [line for line in classes.splitlines() if line.strip()]
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


def read_class_file(path: str | Path) -> ClassQueries:
    """One class per line in index order; synonyms separated by '; '. Blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise GlaclipError(f"class file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GlaclipError(f"cannot read class file {p}: {exc}") from None
    try:
        return parse_classes(text)
    except GlaclipError as exc:
        raise GlaclipError(f"class file {p}: {exc}") from None


def templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates ("a bad photo of a {}." ...)."""
    import open_clip

    return list(open_clip.OPENAI_IMAGENET_TEMPLATES)


class TextEncoder:
    """Embeds text queries with a CLIP text tower; each query is encoded once per encoder."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], tokenizer: Callable, device: torch.device,
                 prompt_templates: Sequence[Callable[[str], str]] | None = None, batch_size: int = 256):
        self._encode = encode
        self._tokenizer = tokenizer
        self._device = device
        self._templates = list(prompt_templates or templates())
        self._batch = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed_one(self, query: str) -> torch.Tensor:
        """E-vector: templates -> embeddings, each L2-normalised, averaged, L2-normalised again."""
        if query not in self._cache:
            prompts = [t(query) for t in self._templates]
            chunks = []
            for start in range(0, len(prompts), self._batch):
                tokens = self._tokenizer(prompts[start : start + self._batch]).to(self._device)
                emb = self._encode(tokens)
                chunks.append(F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1))
            mean = torch.cat(chunks).mean(dim=0)
            self._cache[query] = F.normalize(mean, dim=-1)
        return self._cache[query]

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """Q x E float32 unit vectors."""
        return torch.stack([self.embed_one(q) for q in queries])
