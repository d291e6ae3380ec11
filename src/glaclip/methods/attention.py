"""The attention variants of METHOD.md step 5, on plain tensors.

`gla_attention` is the global attention across all windows (proxy anchor + dynamic normalisation),
computed a block of query rows at a time: every query row depends only on its own proxy and on
all keys, so blocks are independent and peak memory is O(block_rows * N), never N x N.
`proxyclip_attention` is the window-local host. `dense_gla_attention` materialises the N x N
matrix and exists only as a reference for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config.presets import AttentionConfig

_BYTES_PER_ENTRY = 4 * 6  # fp32 scores plus the mask, weights and temporaries of one block row


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores, softmax and logits are kept in fp32 for fp16/bf16/fp32 models, fp64 for fp64 ones."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_block_rows(n_tokens: int, memory_mb: int) -> int:
    return int(max(1, min(n_tokens, memory_mb * 2**20 // (_BYTES_PER_ENTRY * max(n_tokens, 1)))))


def dynamic_beta(num_windows: int, alpha_beta: float) -> float:
    return 1.0 + alpha_beta * math.log(1.0 + num_windows)


def _block_weights(queries: torch.Tensor, keys: torch.Tensor, keys_acc: torch.Tensor, offset: int,
                   num_windows: int, cfg: AttentionConfig) -> torch.Tensor:
    """Softmax attention weights (fp32/fp64, b x N) of the query rows offset..offset+b.

    `queries` are the initial proxies of those rows (the keys themselves, or any unit vectors);
    `keys_acc` is `keys` in the accumulation dtype: proxies sum up to N keys, which fp16 cannot hold.
    """
    b = queries.shape[0]
    acc = keys_acc.dtype
    diag = torch.arange(b, device=keys.device)
    proxy = queries

    def mask_of(scores):
        m = scores > cfg.rho
        empty = ~m.any(dim=1)
        if empty.any():
            m[diag[empty], offset + diag[empty]] = True
        return m

    if cfg.proxy_iters == 0:
        mask = mask_of(proxy @ keys.T)
    for _ in range(cfg.proxy_iters):
        mask = mask_of(proxy @ keys.T)
        summed = mask.to(acc) @ keys_acc
        proxy = F.normalize(summed / (mask.sum(1, keepdim=True).to(acc) + 1e-6), dim=-1).to(keys.dtype)
    counts = mask.sum(1, keepdim=True).to(acc)
    del mask
    scores = (proxy @ keys.T).to(acc)
    mu = scores.mean(dim=1, keepdim=True).clamp_min(0.0)
    if cfg.dynamic:
        beta = dynamic_beta(num_windows, cfg.alpha_beta) if cfg.dynamic_beta else cfg.beta
        gamma = 1.0 + cfg.alpha_gamma / counts
    else:
        beta, gamma = cfg.beta, cfg.gamma
    scores = (scores - beta * mu).mul_(gamma)
    thresh = scores.amax(dim=1, keepdim=True).clamp_max(0.0)
    scores.masked_fill_(scores < thresh, float("-inf"))
    return scores.softmax(dim=1)


def gla_attention(keys: torch.Tensor, values: torch.Tensor, num_windows: int, cfg: AttentionConfig,
                  init_proxy: torch.Tensor | None = None) -> torch.Tensor:
    """Global-local attention over all windows.

    keys: N x C, L2-normalised VFM tokens of all windows; values: N x D (all heads side by side,
    since every head uses the same weights). init_proxy: N x C unit vectors the proxy iteration
    starts from (default: the keys). Returns N x D in the dtype of `values`.
    """
    n = keys.shape[0]
    rows = cfg.block_rows or auto_block_rows(n, cfg.memory_mb)
    keys_acc = keys.to(accumulation_dtype(keys.dtype))
    start_proxy = keys if init_proxy is None else init_proxy.to(keys.dtype)
    out = values.new_empty(values.shape)
    for start in range(0, n, rows):
        weights = _block_weights(start_proxy[start : start + rows], keys, keys_acc, start, num_windows, cfg)
        out[start : start + rows] = (weights.to(values.dtype) @ values)
    return out


def dense_gla_attention(keys: torch.Tensor, values: torch.Tensor, num_windows: int,
                        cfg: AttentionConfig) -> torch.Tensor:
    """Reference: the same computation with the whole N x N matrix in memory (O(N^2))."""
    weights = _block_weights(keys, keys, keys.to(accumulation_dtype(keys.dtype)), 0, num_windows, cfg)
    return weights.to(values.dtype) @ values


def proxyclip_attention(keys: torch.Tensor, values: torch.Tensor, cfg: AttentionConfig) -> torch.Tensor:
    """Window-local ProxyCLIP: keys B x n x C (L2-normalised), values B x n x D -> B x n x D.

    sim = K K^T per window, (sim - beta * mean) * gamma with the fixed beta/gamma, where mean is ONE
    scalar per window (the mean of all n x n entries, official ProxyCLIP) or, with `token_norm`, each
    row's mean; entries below min(rowmax, 0) masked, softmax over the window's own tokens. (Official
    ProxyCLIP masks below 0 and yields NaN for a row with no entry >= 0; such a row keeps its maximum.)
    """
    b, n, _ = keys.shape
    per_window = max(1, cfg.memory_mb * 2**20 // (_BYTES_PER_ENTRY * n * n))
    out = values.new_empty(values.shape)
    for start in range(0, b, per_window):
        k = keys[start : start + per_window]
        sim = (k @ k.transpose(1, 2)).to(accumulation_dtype(k.dtype))
        mean = sim.mean(dim=-1, keepdim=True) if cfg.token_norm else sim.mean(dim=(1, 2), keepdim=True)
        sim = (sim - cfg.beta * mean).mul_(cfg.gamma)
        thresh = sim.amax(dim=-1, keepdim=True).clamp_max(0.0)
        sim.masked_fill_(sim < thresh, float("-inf"))
        out[start : start + per_window] = sim.softmax(dim=-1).to(values.dtype) @ values[start : start + per_window]
    return out
