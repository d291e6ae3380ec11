"""A direct, naive transcription of CorrCLIP's per-window forward (MASKHOSTS.md section 1, steps 3-5),
for checking the package against. `naive_branches` and `naive_project` are its CLIP side before and
after the correlation weights (for GLA on CorrCLIP, whose weights span all windows).

Written as the release lays it out: one window at a time, the region tokens prepended to the sequence
with one boolean attention mask over all blocks, python loops over regions, the dense matrices. It
touches only the raw open_clip / timm modules and numpy/sklearn, never glaclip's own code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IN_MEAN = (0.485, 0.456, 0.406)
IN_STD = (0.229, 0.224, 0.225)


def naive_merge(ids: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """ids: M ints; feats: M x C unit rows."""
    values = sorted(set(ids.tolist()))
    if len(values) <= 2:
        return ids.copy()
    means = []
    for v in values:
        m = feats[ids == v].mean(axis=0)
        means.append(m / max(np.linalg.norm(m), 1e-12))
    means = np.stack(means)[1:]
    sim = means @ means.T
    labels = DBSCAN(metric="precomputed", eps=0.2, min_samples=1).fit_predict(sim.max() - sim)
    out = ids.copy()
    for v, c in zip(values[1:], labels):
        if c != -1:
            out[ids == v] = 10000 + c
    return out


def naive_scope(feats: np.ndarray, ids: np.ndarray) -> np.ndarray:
    sim = feats @ feats.T
    values = sorted(set(ids.tolist()))
    allowed = np.zeros(sim.shape, dtype=bool)
    for v in values[1:]:
        m = ids == v
        allowed |= np.outer(m, m)
    m0 = ids == values[0]
    allowed |= (m0[None, :] | m0[:, None]) & (sim > sim.mean())
    logits = np.where(allowed, 4.0 * sim, -np.inf)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def naive_qk(vfm, x: torch.Tensor) -> torch.Tensor:
    """DINO q+k of the last block through a hook on its qkv projection (as the release reads it)."""
    out = {}
    h = vfm.blocks[-1].attn.qkv.register_forward_hook(lambda mod, i, o: out.__setitem__("qkv", o))
    gh, gw = x.shape[-2] // vfm.patch_embed.patch_size[0], x.shape[-1] // vfm.patch_embed.patch_size[0]
    # the official DINO position resize (MASKHOSTS / METHOD.md): bicubic with scale (g + 0.1) / n0
    pos = vfm.pos_embed
    n0 = vfm.patch_embed.grid_size[0]
    grid = pos[:, 1:].reshape(1, n0, n0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / n0, (gw + 0.1) / n0), mode="bicubic",
                         align_corners=False)
    t = vfm.patch_embed(x)
    t = t.reshape(1, gh * gw, -1)
    t = torch.cat([vfm.cls_token, t], dim=1) + torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    vfm.blocks(t)
    h.remove()
    qkv = out["qkv"].reshape(1, t.shape[1], 3, -1)
    return F.normalize((qkv[:, :, 0] + qkv[:, :, 1])[0, 1:], dim=-1), (gh, gw)


def _block(blk, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: T x D one sequence; mask: T x T bool, True = may attend."""
    d = x.shape[-1]
    h = blk.attn.num_heads
    y = blk.ln_1(x)
    q, k, v = F.linear(y, blk.attn.in_proj_weight, blk.attn.in_proj_bias).split(d, dim=-1)
    hd = d // h
    outs = []
    for i in range(h):
        qi, ki, vi = q[:, i * hd : (i + 1) * hd], k[:, i * hd : (i + 1) * hd], v[:, i * hd : (i + 1) * hd]
        logits = (qi @ ki.T) / hd**0.5
        logits = logits.masked_fill(~mask, float("-inf"))
        outs.append(logits.softmax(-1) @ vi)
    x = x + blk.attn.out_proj(torch.cat(outs, dim=-1))
    return x + blk.mlp(blk.ln_2(x))


def naive_window(clip_model, vfm, crop: torch.Tensor, masks: torch.Tensor, feats=None, merge: bool = True
                 ) -> torch.Tensor:
    """One padded window: crop 1 x 3 x h x w (normalised as the release's CLIP input), masks h x w int
    (padding 10000) -> M x E final embeddings (before the final L2 normalisation) on the DINO grid.
    feats: (M x C unit features, grid) instead of DINO's q+k (CorrCLIPv2: RADIO's); merge: DBSCAN merging (v1)."""
    if feats is None:
        mean, std = (torch.tensor(c, dtype=crop.dtype).view(1, 3, 1, 1) for c in (CLIP_MEAN, CLIP_STD))
        imean, istd = (torch.tensor(c, dtype=crop.dtype).view(1, 3, 1, 1) for c in (IN_MEAN, IN_STD))
        f, fgrid = naive_qk(vfm, ((crop * std + mean) - imean) / istd)
    else:
        f, fgrid = feats
    m_dino = F.interpolate(masks[None, None].float(), size=fgrid, mode="nearest")[0, 0].int().flatten()
    merged = torch.from_numpy(naive_merge(m_dino.numpy(), f.numpy())).int() if merge else m_dino
    attn = torch.from_numpy(naive_scope(f.numpy(), merged.numpy()))
    v_main, v_spatial, semantic = naive_branches(clip_model, crop, merged, fgrid)
    return naive_project(clip_model, attn.to(v_main.dtype) @ v_main, attn.to(v_main.dtype) @ v_spatial, semantic)


def naive_branches(clip_model, crop: torch.Tensor, merged: torch.Tensor, fgrid: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP's side of one window given its (merged) region ids on the feature grid (M ints): the last
    block's values of the main and the spatial tokens resized to the feature grid (M x D each, before the
    correlation weights) and the semantic tokens on the feature grid (M x D)."""
    v = clip_model.visual
    p = v.conv1.kernel_size[0]
    cgrid = (crop.shape[-2] // p, crop.shape[-1] // p)
    x = v.conv1(crop).flatten(2).transpose(1, 2)[0]
    nh, nw = v.grid_size
    pos = v.positional_embedding
    grid = pos[1:].reshape(1, nh, nw, -1).permute(0, 3, 1, 2)
    if cgrid != (nh, nw):
        grid = F.interpolate(grid, scale_factor=((cgrid[0] + 0.1) / nh, (cgrid[1] + 0.1) / nw), mode="bicubic",
                             align_corners=False)
    x = torch.cat([v.class_embedding[None], x]) + torch.cat([pos[:1], grid.flatten(2).transpose(1, 2)[0]])
    x = v.ln_pre(x)
    m_clip = F.interpolate(merged.view(1, 1, *fgrid).float(), size=cgrid, mode="nearest")[0, 0].int().flatten()
    region_ids = sorted(set(m_clip.tolist()))
    regions = [m_clip == r for r in region_ids]
    r = len(regions)
    seq = torch.cat([x[:1].repeat(r, 1), x])
    t = seq.shape[0]
    allowed = torch.zeros(t, t, dtype=torch.bool)
    allowed[r:, r:] = True
    allowed[:r, r] = True
    for i, reg in enumerate(regions):
        allowed[i, r + 1 :] = reg
    blocks = v.transformer.resblocks
    n = len(blocks)
    ns = {12: 5, 24: 12, 32: 28}.get(n, n - 4)
    spatial = []
    for idx, blk in enumerate(blocks[:-1]):
        seq = _block(blk, seq, allowed)
        if n - 2 - ns <= idx <= n - 3:
            spatial.append(seq[r:])
    last = blocks[-1]
    d = seq.shape[-1]
    branches = []
    for tokens in (seq[r:], torch.stack(spatial).mean(0)):
        vals = F.linear(last.ln_1(tokens), last.attn.in_proj_weight[2 * d :], last.attn.in_proj_bias[2 * d :])[1:]
        vals = vals.T.reshape(1, d, *cgrid)
        branches.append(F.interpolate(vals, size=fgrid, mode="bilinear", align_corners=False).flatten(2)[0].T)
    mct = _block(last, seq, allowed)[:r]
    expand = F.interpolate(torch.stack(regions).view(r, 1, *cgrid).to(mct.dtype), size=fgrid, mode="nearest").flatten(1)
    return branches[0], branches[1], expand.T @ mct


def naive_project(clip_model, main: torch.Tensor, spatial: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """Weighted main and spatial values (M x D) and semantic tokens -> M x E: out_proj on the first two,
    ln_post per branch, main + 1.0 spatial + 0.5 semantic, projection."""
    v = clip_model.visual
    out_proj = v.transformer.resblocks[-1].attn.out_proj
    ln = v.ln_post
    return (ln(out_proj(main)) + ln(out_proj(spatial)) * 1.0 + ln(semantic) * 0.5) @ v.proj


def naive_vote(labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Map correction as the release writes it: torch.mode over each region but the smallest id."""
    pred = torch.from_numpy(labels.copy())
    m = torch.from_numpy(masks)
    for v in torch.unique(m)[1:]:
        sel = m == v
        pred[sel] = torch.mode(pred[sel])[0]
    return pred.numpy()
