"""Host methods: what replaces CLIP's last block, window-local or global (GLA).

Every method turns the tokens entering CLIP's last block into final patch tokens (before ln_post and
the projection). Window-local hosts attend within a window; GLA hosts extend the host's keys to the
tokens of all windows and use the proxy anchor and dynamic normalisation of METHOD.md step 5
(`attention.gla_attention`), with one weight matrix shared by all heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import gla_attention
from .presets import AttentionConfig
from .towers import ClipTower


@dataclass(frozen=True)
class Method:
    name: str
    host: str
    is_global: bool
    needs_vfm: bool
    recipe: str
    smoothed_init: bool = False  # GLA release's ClearCLIP path: the proxy starts from a smoothed key


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("clip", "clip", False, False,
           "CLIP (Radford et al., ICML 2021): the unmodified last block, q-k attention with residual and FFN"),
    Method("clip-vanilla", "vanilla", False, False,
           "Vanilla CLIP as ClearCLIP and the GLA release define it: the last block's q-k attention only; "
           "no residual, no FFN"),
    Method("maskclip", "maskclip", False, False,
           "MaskCLIP (Zhou et al., ECCV 2022): value path of the last block, out_proj only; no residual, no FFN"),
    Method("sclip", "sclip", False, False,
           "SCLIP (Wang et al., ECCV 2024): correlative self-attention softmax(qq^T)+softmax(kk^T); "
           "residual and FFN kept"),
    Method("clearclip", "clearclip", False, False,
           "ClearCLIP (Lan et al., ECCV 2024): q-q attention; no residual, no FFN"),
    Method("naclip", "naclip", False, False,
           "NACLIP (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood (std 5 patches) on "
           "the logits; no residual, no FFN"),
    Method("proxyclip", "proxyclip", False, True,
           "ProxyCLIP (Lan et al., ECCV 2024): VFM affinities as attention over CLIP values, per window"),
    Method("gla-proxyclip", "proxyclip", True, True,
           "GLA-CLIP (CVPR 2026) on ProxyCLIP: VFM keys of all windows, proxy anchor, dynamic normalisation"),
    Method("gla-clearclip", "clearclip", True, False,
           "GLA on ClearCLIP: CLIP q of all windows as keys; no residual, no FFN"),
    Method("gla-clearclip-release", "clearclip", True, False,
           "GLA on ClearCLIP as released: the proxy starts from each token's q averaged with its 8 neighbours "
           "and the tokens at the same image position in other windows; beta fixed at 1.2", smoothed_init=True),
    Method("gla-sclip", "sclip", True, False,
           "GLA on SCLIP: GLA weights from q plus GLA weights from k (all windows); no residual, no FFN"),
    Method("gla-naclip", "naclip", True, False,
           "GLA on NACLIP: CLIP k of all windows as keys; no residual, no FFN"),
]}


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
    """Window-local CLIP host: B x (1+L) x D tokens entering the last block -> B x L x D final patch tokens."""
    blk = clip.last_block
    if method.host == "clip":
        batch_first = getattr(clip.visual.transformer, "batch_first", True)
        out = blk(tokens) if batch_first else blk(tokens.transpose(0, 1)).transpose(0, 1)
        return out[:, 1:]
    q, k, v = clip.qkv(tokens)
    if method.host == "maskclip":
        return clip.out_proj(v[:, 1:])
    h = clip.heads
    q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
    scale = q.shape[-1] ** -0.5
    if method.host == "clearclip":
        weights = (q @ q.transpose(-1, -2) * scale).softmax(-1)
    elif method.host == "sclip":
        weights = (q @ q.transpose(-1, -2) * scale).softmax(-1) + (k @ k.transpose(-1, -2) * scale).softmax(-1)
    elif method.host == "vanilla":
        weights = (q @ k.transpose(-1, -2) * scale).softmax(-1)
    elif method.host == "naclip":
        omega = neighbourhood(*grid, cfg.gaussian_std, k.dtype, k.device)
        weights = (k @ k.transpose(-1, -2) * scale + omega).softmax(-1)
    else:
        raise ValueError(f"{method.name} is not a window-local CLIP host")
    attended = clip.out_proj(_merge(weights @ v))
    if method.host == "sclip":  # SCLIP keeps the block's residual and FFN
        x = tokens + blk.ls_1(attended)
        return (x + blk.ls_2(blk.mlp(blk.ln_2(x))))[:, 1:]
    return attended[:, 1:]


def global_keys(method: Method, clip: ClipTower, tokens: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """GLA CLIP host, per window batch: ([keys per attention], values, raw q), patch tokens only, B x L x D each."""
    q, k, v = clip.qkv(tokens)
    keys = {"clearclip": [q], "naclip": [k], "sclip": [q, k]}[method.host]
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


def global_tokens(method: Method, clip: ClipTower, keys: list[torch.Tensor], values: torch.Tensor, num_windows: int,
                  cfg: AttentionConfig, init_proxy: torch.Tensor | None = None) -> torch.Tensor:
    """N x C keys (one per attention) and N x D values of all windows -> N x D final patch tokens."""
    attended = sum(gla_attention(k, values, num_windows, cfg, init_proxy) for k in keys)
    return clip.out_proj(attended)
