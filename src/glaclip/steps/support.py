"""Support from a memory bank (CorrCLIPv2's VISR and DMCE, CORRCLIP2.md section 3), as steps any
method's logits can take:

  1. `region_queries`: per region of the resized id map (every id, the smallest included, ascending),
     the mean of the unit per-pixel VFM features over its pixels, L2-normalised;
  2. `retrieve`: the bank's top-k neighbours of each query (float32 for FAISS; ids through the index's
     id map, -1 where none);
  3. `support_logits`: per region the mean of the store rows of its neighbours (-1 dropped), L2, times
     the text embeddings -> R x Q; `paint` puts each region's logits on its pixels;
  4. `support_map`: the main store with the main CLIP's text embeddings and, with DMCE, the auxiliary
     store with the auxiliary CLIP's, added and halved;
  5. `fuse`: alpha x the image's own logits + (1 - alpha) x the support, at the resized size.

Steps 1-2 depend on the image only (kept with an image encoding); 3-5 on the class queries too.
A region none of whose neighbours exists (possible only with fewer bank vectors than k and no match)
takes no support: its pixels keep their own logits (the release would give NaN there).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

ALPHA = 0.5  # weight of the image's own logits in the fusion (the release's alpha)


def region_queries(feats: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """C x h x w unit per-pixel features and an h x w id map -> (the R ids ascending, R x C unit queries)."""
    values, inverse = torch.unique(ids.flatten(), return_inverse=True)
    flat = feats.flatten(1).T
    sums = flat.new_zeros(values.numel(), flat.shape[1]).index_add_(0, inverse.to(flat.device), flat)
    counts = torch.bincount(inverse, minlength=values.numel()).to(flat.device, flat.dtype)
    return values, F.normalize(sums / counts[:, None], dim=-1)


def retrieve(bank, queries: torch.Tensor, k: int) -> torch.Tensor:
    """R x C queries -> R x k bank ids (int64, -1 where the index has no neighbour), searched in float32."""
    return torch.from_numpy(bank.search(queries.detach().to("cpu", torch.float32).numpy(), k))


def support_logits(bank, role: str, neighbours: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """R x k bank ids and Q x D text embeddings -> R x Q: per region the mean of the neighbours' rows of
    store `role` (cast to the text's dtype; -1 ids dropped), L2-normalised, times the text. A region
    with no neighbour gets NaN (see the module's note)."""
    rows = []
    for ids in neighbours.tolist():
        kept = np.asarray([i for i in ids if i >= 0], dtype=np.int64)
        if kept.size == 0:
            rows.append(text.new_full((text.shape[1],), float("nan")))
            continue
        rows.append(bank.rows(role, kept).to(text.device, text.dtype).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1) @ text.T


def paint(values: torch.Tensor, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """R region ids (ascending), an h x w id map whose ids are all among them, R x Q logits -> Q x h x w."""
    index = torch.searchsorted(values.to(ids.device), ids.flatten().to(values.dtype)).to(logits.device)
    return logits[index].T.reshape(logits.shape[1], *ids.shape)


def support_map(bank, values: torch.Tensor, neighbours: torch.Tensor, ids: torch.Tensor,
                texts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The support logits Q x h x w on the resized id map `ids`: one store per role of `texts` ({role:
    Q x D text embeddings of that role's CLIP}); with two ('main', 'aux') their mean."""
    maps = [paint(values, ids, support_logits(bank, role, neighbours, text)) for role, text in texts.items()]
    if len(maps) == 1:
        return maps[0]
    return (maps[0] + maps[1]) * 0.5 if len(maps) == 2 else sum(maps) / len(maps)


def fuse(logits: torch.Tensor, support: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """alpha x logits + (1 - alpha) x support (both Q x h x w); pixels without support keep their logits."""
    fused = logits * alpha + support.to(logits.dtype) * (1 - alpha)
    return torch.where(torch.isnan(support), logits, fused)


def bank_for(root, name: str | None, clip_name: str, radio_name: str, aux_name: str | None,
             encoders: Mapping[str, str] | None = None):
    """The files of a bank for these models (store names from the CLIPs' architectures, the index's from
    RADIO's; `encoders` {'main': key, 'aux': key} names the stores of other CLIPs), checked to exist before
    any model loads."""
    from ..config.backbones import BANK_AUX_KEYS, BANK_MAIN_KEYS, DEFAULT_BANK_NAME, RADIO_MODELS
    from ..errors import GlaclipError
    from ..io.bank import bank_files

    if encoders is not None:
        keys = {"main": encoders["main"], **({"aux": encoders["aux"]} if aux_name is not None else {})}
        return bank_files(root, name or DEFAULT_BANK_NAME, keys, RADIO_MODELS[radio_name].bank_key
                          if radio_name in RADIO_MODELS else encoders.get("vfm", radio_name))
    if clip_name not in BANK_MAIN_KEYS:
        raise GlaclipError(f"no memory-bank store is named for CLIP {clip_name!r} (known: {', '.join(BANK_MAIN_KEYS)})")
    if radio_name not in RADIO_MODELS:
        raise GlaclipError(f"no memory-bank index is named for RADIO {radio_name!r} (known: {', '.join(RADIO_MODELS)})")
    encoders = {"main": BANK_MAIN_KEYS[clip_name]}
    if aux_name is not None:
        if aux_name not in BANK_AUX_KEYS:
            raise GlaclipError(f"no memory-bank store is named for the auxiliary CLIP {aux_name!r} (known: "
                               f"{', '.join(BANK_AUX_KEYS)})")
        encoders["aux"] = BANK_AUX_KEYS[aux_name]
    return bank_files(root, name or DEFAULT_BANK_NAME, encoders, RADIO_MODELS[radio_name].bank_key)


def support_extras(bank, feats: torch.Tensor, ids: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """What an image encoding keeps for the support: its regions (ids ascending) and their k bank
    neighbours, from the image's unit features (C x h x w) and resized id map (h x w)."""
    values, queries = region_queries(feats, ids.to(feats.device))
    return {"support_regions": values.cpu(), "support_ids": retrieve(bank, queries, k)}


def open_bank_for(files, towers: Mapping):
    """Open and check a bank (`bank_for`'s files) against the loaded towers: the stores' widths against the
    CLIPs' outputs (the main store's against 'bank_clip' when loaded, else 'clip'), the index's against
    RADIO's features."""
    from ..io.bank import MemoryBank

    dims = {"main": towers.get("bank_clip", towers["clip"]).visual.output_dim}
    if "aux_clip" in towers:
        dims["aux"] = towers["aux_clip"].visual.output_dim
    return MemoryBank.open(files, dims, towers["radio"].dim)
