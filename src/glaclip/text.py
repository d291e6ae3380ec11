"""Class lists, text queries and their embeddings (METHOD.md step 6 and the class-name file format).

`text_encoder(clip)` is the one way the package builds a text encoder: it owns the tokenizer, the
exact short-context encoding and the on-disk cache (`text_cache`); callers only call `embed`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import GlaclipError

if TYPE_CHECKING:
    from .text_cache import EmbeddingCache
    from .towers import ClipTower

FULL_CONTEXT_ENV = "GLACLIP_FULL_CONTEXT_TEXT"  # set: encode at the full context (benchmarks compare both)

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


def short_context_encoder(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An exact, faster `encode_text` for open_clip's CLIP text tower, or None where it would not be exact.

    The tower is causal and pools at the end-of-text token, so positions after the last end-of-text
    token of a batch change nothing: the batch is encoded only up to it (positional embedding and
    causal mask cut to match)."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_pool_type")
    if not all(hasattr(model, a) for a in needed) or model.attn_mask is None:
        return None
    if model.text_pool_type not in ("argmax", "eos") or getattr(model, "text", None) is not None:
        return None
    eos_id = getattr(model, "text_eos_id", None)
    if model.text_pool_type == "eos" and eos_id is None:
        return None
    from open_clip.transformer import text_global_pool

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        pool_at = tokens.argmax(dim=-1) if model.text_pool_type == "argmax" else (tokens == eos_id).int().argmax(-1)
        n = int(pool_at.max()) + 1
        t = tokens[:, :n]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        x = text_global_pool(x, t, model.text_pool_type, eos_token_id=eos_id)
        proj = model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return encode


def text_encoder(clip: "ClipTower", prompt_templates: Sequence[Callable[[str], str]] | None = None,
                 cache: bool | str | Path | None = True, short_context: bool | None = None,
                 progress: bool = True, batch_size: int = 256) -> "TextEncoder":
    """The text encoder of a loaded CLIP tower: `embed(queries)` gives Q x E unit vectors.

    prompt_templates: callables name -> prompt; None: the 80 OpenAI ImageNet templates.
    cache: True: the disk cache under `text_cache.cache_root()`; a folder: the disk cache under it;
        False/None: memory only. Random weights are never cached on disk.
    short_context: encode each batch only up to its longest prompt (exact, see `short_context_encoder`;
        towers where it would not be exact use the full context); None: on unless $GLACLIP_FULL_CONTEXT_TEXT
        is set. progress: a progress bar when encoding takes more than 2 s.
    """
    import open_clip

    from .text_cache import cache_root, clip_text_cache

    chosen = list(prompt_templates or templates())
    if short_context is None:
        short_context = not os.environ.get(FULL_CONTEXT_ENV)
    disk = None
    if cache not in (None, False) and clip.weights != "random":
        root = cache_root() if cache is True else Path(cache)
        disk = clip_text_cache(clip, lambda: [t("{}") for t in chosen], root)
    return TextEncoder(clip.encode_text, open_clip.get_tokenizer(clip.name), clip.visual.conv1.weight.device,
                       prompt_templates=chosen, batch_size=batch_size,
                       short_encode=short_context_encoder(clip.model) if short_context else None,
                       progress=progress, disk=disk)


class TextEncoder:
    """Embeds text queries with a CLIP text tower (METHOD.md step 6); build it with `text_encoder`.

    Each query is encoded once per encoder and, with `disk` (a text_cache.EmbeddingCache), once per
    model on this machine. Prompts of all new queries are encoded together, in batches of similar
    length, each batch only up to its longest prompt where `short_encode` is given (exact).
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], tokenizer: Callable, device: torch.device,
                 prompt_templates: Sequence[Callable[[str], str]] | None = None, batch_size: int = 256,
                 short_encode: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
                 disk: "EmbeddingCache | None" = None):
        self._encode = encode
        self._short = short_encode
        self._tokenizer = tokenizer
        self._device = device
        self._templates = list(prompt_templates or templates())
        self._batch = batch_size
        self._cache: dict[str, torch.Tensor] = {}
        self.disk = disk
        self.progress = progress
        self.context_length = getattr(tokenizer, "context_length", 77)

    def prompt_strings(self) -> list[str]:
        """The templates rendered with '{}' (what the cache key records)."""
        return [t("{}") for t in self._templates]

    def embed_one(self, query: str) -> torch.Tensor:
        """E-vector: templates -> embeddings, each L2-normalised, averaged, L2-normalised again."""
        return self.embed([query])[0]

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """Q x E float32 unit vectors."""
        missing = [q for q in dict.fromkeys(queries) if q not in self._cache]
        if missing and self.disk is not None:
            for q, vec in self.disk.get_many(missing).items():
                self._cache[q] = vec
            missing = [q for q in missing if q not in self._cache]
        if missing:
            fresh = self._compute(missing)
            self._cache.update(fresh)
            if self.disk is not None:
                self.disk.put_many(fresh)
        return torch.stack([self._cache[q] for q in queries])

    @torch.no_grad()
    def _compute(self, queries: list[str]) -> dict[str, torch.Tensor]:
        from tqdm import tqdm

        prompts = [t(q) for q in queries for t in self._templates]
        tokens = self._tokenizer(prompts)
        per = len(self._templates)
        full = (tokens[:, -1] != 0).view(len(queries), per).any(dim=1)  # the tokenizer cut these prompts
        for i in full.nonzero().flatten().tolist():
            warnings.warn(f"class name {queries[i]!r} is too long for CLIP's {tokens.shape[1]}-token text context "
                          "with the prompt templates; its end is cut off", RuntimeWarning, stacklevel=3)
        # batches of similar length: each is cut at its own longest prompt by the short encoder
        order = sorted(range(len(prompts)), key=lambda i: int((tokens[i] != 0).sum()))
        out: torch.Tensor | None = None
        encode = self._short or self._encode
        bar = tqdm(total=len(prompts), desc=f"encoding {len(queries)} class names", unit="prompt",
                   disable=not self.progress, delay=2.0, leave=False)
        for start in range(0, len(order), self._batch):
            idx = order[start : start + self._batch]
            emb = encode(tokens[idx].to(self._device))
            emb = F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1)
            if out is None:
                out = emb.new_empty(len(prompts), emb.shape[1])
            out[torch.tensor(idx, device=emb.device)] = emb
            bar.update(len(idx))
        bar.close()
        means = F.normalize(out.view(len(queries), per, -1).mean(dim=1), dim=-1)
        return {q: means[i] for i, q in enumerate(queries)}
