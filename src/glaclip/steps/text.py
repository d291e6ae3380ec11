"""Text queries and their embeddings (METHOD.md step 6; class lists themselves: `config.classes`).

`text_encoder(clip)` is the one way the package builds a text encoder: it owns the tokenizer, the
exact short-context encoding and the on-disk cache (`text_cache`); callers only call `embed`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from ..models.towers import openai_templates, short_context_encoder

if TYPE_CHECKING:
    from ..models.towers import ClipTower
    from .text_cache import EmbeddingCache

FULL_CONTEXT_ENV = "GLACLIP_FULL_CONTEXT_TEXT"  # set: encode at the full context (benchmarks compare both)


def templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates ("a bad photo of a {}." ...)."""
    return openai_templates()


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
    from .text_cache import cache_root, clip_text_cache

    chosen = list(prompt_templates or templates())
    if short_context is None:
        short_context = not os.environ.get(FULL_CONTEXT_ENV)
    disk = None
    if cache not in (None, False) and clip.weights != "random":
        root = cache_root() if cache is True else Path(cache)
        disk = clip_text_cache(clip, lambda: [t("{}") for t in chosen], root)
    return TextEncoder(clip.encode_text, clip.tokenizer(), clip.visual.conv1.weight.device,
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
