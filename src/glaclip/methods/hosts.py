"""CLIP host recipes: what replaces CLIP's last block, window-local or global (GLA), on CLIP's own q/k.

Every recipe turns the tokens entering CLIP's last block into final patch tokens (before ln_post and
the projection), as a method's registry entry (`methods.Method`: attention, residual, neighbourhood,
smoothed_init) describes it. Window-local recipes attend within a window; global ones extend the
host's keys to the tokens of all windows and use the proxy anchor and dynamic normalisation of
METHOD.md step 5 (`attention.gla_attention`), with one weight matrix shared by all heads. The
families in `families.py` call these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config.presets import AttentionConfig
from ..config.registry import Method
from ..models.towers import ClipTower


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # B x H x T x hd


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


def neighbourhood(gh: int, gw: int, std: float, dtype: torch.dtype, device) -> torch.Tensor:
    """NACLIP's additive term: exp(-|p_i - p_j|^2 / (2 std^2)) between patch positions, 0 for the CLS token."""
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).to(torch.float64)
    g = torch.exp(-torch.cdist(pos, pos).pow(2) / (2 * std * std))
    out = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=torch.float64, device=device)
    out[1:, 1:] = g
    return out.to(dtype)


def local_tokens(method: Method, clip: ClipTower, tokens: torch.Tensor, grid: tuple[int, int],
                 cfg: AttentionConfig) -> torch.Tensor:
    """Window-local CLIP recipe: B x (1+L) x D tokens entering the last block -> B x L x D final patch tokens.

    'block': the unmodified block; 'value': the value path; otherwise the sum of one softmax per
    affinity ('q.q', 'k.k', 'q.k'), NACLIP's Gaussian added to the logits when `method.neighbourhood`,
    and the block's residual and FFN when `method.residual`."""
    blk = clip.last_block
    if method.attention == "block":
        batch_first = getattr(clip.visual.transformer, "batch_first", True)
        out = blk(tokens) if batch_first else blk(tokens.transpose(0, 1)).transpose(0, 1)
        return out[:, 1:]
    q, k, v = clip.qkv(tokens)
    if method.attention == "value":
        return clip.out_proj(v[:, 1:])
    h = clip.heads
    parts = {"q": _heads(q, h), "k": _heads(k, h)}
    v = _heads(v, h)
    scale = parts["q"].shape[-1] ** -0.5
    omega = neighbourhood(*grid, cfg.gaussian_std, v.dtype, v.device) if method.neighbourhood else None
    weights = None
    for pair in _affinities(method):
        a, b = parts[pair[0]], parts[pair[1]]
        logits = a @ b.transpose(-1, -2) * scale
        if omega is not None:
            logits = logits + omega
        w = logits.softmax(-1)
        weights = w if weights is None else weights + w
    attended = clip.out_proj(_merge(weights @ v))
    if method.residual:  # SCLIP keeps the block's residual and FFN
        x = tokens + blk.ls_1(attended)
        return (x + blk.ls_2(blk.mlp(blk.ln_2(x))))[:, 1:]
    return attended[:, 1:]


def _affinities(method: Method) -> list[tuple[str, str]]:
    """'q.q+k.k' -> [('q', 'q'), ('k', 'k')]."""
    pairs = [tuple(p.split(".")) for p in method.attention.split("+")]
    if not pairs or any(len(p) != 2 or not set(p) <= {"q", "k"} for p in pairs):
        raise ValueError(f"{method.name}: attention {method.attention!r} is not a CLIP affinity recipe")
    return pairs


def global_keys(method: Method, clip: ClipTower, tokens: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """GLA CLIP host, per window batch: ([keys per attention], values, raw q), patch tokens only, B x L x D each."""
    q, k, v = clip.qkv(tokens)
    parts = {"q": q, "k": k}
    keys = [parts[a] for a, b in _affinities(method) if a == b]  # symmetric affinities: the keys are their side
    return [F.normalize(x[:, 1:], dim=-1) for x in keys], v[:, 1:], q[:, 1:]


def smoothed_proxy(raw: torch.Tensor, index: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The GLA release's initial proxy for ClearCLIP: per token, the mean of the raw vectors over the
    union of {tokens with the same image-pixel index (itself and its twins in other windows)} and
    {its 8 neighbours in its own window}; L2-normalised.

    raw: N x D (windows x gh x gw, row-major); index: N image-pixel indices (`windows.token_index`).
    """
    gh, gw = grid_hw
    acc = raw.to(torch.promote_types(raw.dtype, torch.float32))
    b = raw.shape[0] // (gh * gw)
    same_sum = torch.zeros(int(index.max()) + 1, acc.shape[1], dtype=acc.dtype, device=acc.device)
    same_sum.index_add_(0, index, acc)
    same_cnt = torch.bincount(index, minlength=same_sum.shape[0]).to(acc.dtype)
    total, count = same_sum[index], same_cnt[index]
    x = acc.view(b, gh, gw, -1)
    idx = index.view(b, gh, gw)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            # neighbour (r + dy, c + dx) of every token (r, c) that has one inside its window
            ys, yd = slice(max(dy, 0), gh + min(dy, 0)), slice(max(-dy, 0), gh + min(-dy, 0))
            xs, xd = slice(max(dx, 0), gw + min(dx, 0)), slice(max(-dx, 0), gw + min(-dx, 0))
            extra = (idx[:, ys, xs] != idx[:, yd, xd]).to(acc.dtype)  # not already counted as a twin
            t = total.view(b, gh, gw, -1)
            c = count.view(b, gh, gw)
            t[:, yd, xd] += x[:, ys, xs] * extra[..., None]
            c[:, yd, xd] += extra
    return F.normalize(total / count[:, None], dim=-1)
