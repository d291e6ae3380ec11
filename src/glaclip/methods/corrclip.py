"""CorrCLIP (Zhang et al., ICCV 2025; official code zdk258/CorrCLIP, folder CorrCLIPv1) and GLA on it:
the mask-guided families (MASKHOSTS.md section 1).

Per window, from the VFM's last-block q+k (`VfmTower.last_qk`, L2-normalised, on the VFM grid) and the
window's region-id map (padding carries `PAD_ID`):
  1. region merging (`merge_regions`): with more than 2 ids, the mean feature of every id but the
     smallest, DBSCAN (eps 0.2, min_samples 1) on max(cos) - cos, merged ids 10000 + cluster;
  2. scope reconstruction (`scope_weights`): cosine similarities kept within a merged region, and for
     the smallest id's tokens (unsegmented) wherever they exceed the mean of the whole matrix;
     softmax(4 x cos);
  3. CLIP (`clip_branches`): blocks 0..L-2 unchanged for the image tokens, plus one region token per
     region of the CLIP grid (a copy of CLS after ln_pre that sees CLS and its region's patches);
     the spatial branch is the mean of the tokens after the middle blocks;
  4. value reconstruction: the weights of 2 applied to the last block's values of the main and the
     spatial tokens (resized to the VFM grid), out_proj, no residual; the semantic branch is the last
     block run on the region tokens, each VFM-grid token taking its region's;
  5. ln_post per branch, main + 1.0 spatial + 0.5 semantic, projection.
The decision and map correction (`postprocess.mask_vote`) follow the text product as for every method.

`gla-corrclip` (this project's own combination): one merged region map per image (DBSCAN over the
regions' mean features of all windows) and steps 2 and 4 over the tokens of ALL windows of the image
(the mean of step 2 over the image's whole similarity matrix), a block of query rows at a time.
With a single window it is CorrCLIP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GlaclipError
from ..io.images import clip_to_imagenet
from .families import Family, Features

TAU = 4.0  # temperature of the similarity softmax
ALPHA, BETA = 1.0, 0.5  # weights of the spatial and semantic branches
EPS, MIN_SAMPLES = 0.2, 1  # DBSCAN
PAD_ID = 10000  # region id of window padding
MERGED = 10000  # merged regions get MERGED + cluster


def spatial_layers(num_layers: int) -> int:
    """How many middle blocks the spatial branch averages: 5 / 12 / 28 for 12 / 24 / 32 blocks, else L - 4."""
    return {12: 5, 24: 12, 32: 28}.get(num_layers, num_layers - 4)


def merge_regions(ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Region merging (M ids, M x C unit features) -> M merged ids.

    With at most 2 distinct ids nothing changes. Otherwise the smallest id stays (it stands for the
    unsegmented pixels, even when it is not 0) and every other id becomes MERGED + its DBSCAN cluster,
    clustering the L2-normalised mean features of the regions on the distance max(cos) - cos."""
    from sklearn.cluster import DBSCAN

    values = torch.unique(ids)
    if values.numel() <= 2:
        return ids
    means = torch.stack([feats[ids == v].mean(dim=0) for v in values])
    means = F.normalize(means, dim=1)[1:]
    sim = means @ means.T
    dist = sim.max() - sim
    dist = (dist.float() if dist.dtype == torch.bfloat16 else dist).cpu().numpy()  # numpy has no bfloat16
    cluster = DBSCAN(metric="precomputed", eps=EPS, min_samples=MIN_SAMPLES).fit_predict(dist)
    out = ids.clone()
    for v, c in zip(values[1:].tolist(), cluster.tolist()):
        if c != -1:
            out[ids == v] = MERGED + c
    return out


def allowed_pairs(ids_q: torch.Tensor, ids_k: torch.Tensor, sim: torch.Tensor, smallest: int,
                  mean: torch.Tensor | float) -> torch.Tensor:
    """The scope rule for rows `ids_q` and columns `ids_k` (rows x cols bool): same merged region other
    than the smallest id, or either token in the smallest id's region with similarity above `mean`."""
    zq, zk = ids_q == smallest, ids_k == smallest
    same = (ids_q[:, None] == ids_k[None, :]) & ~zq[:, None]
    return same | ((zq[:, None] | zk[None, :]) & (sim > mean))


def scope_weights(feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Scope reconstruction of one window: M x C unit features and M merged ids -> M x M weights
    softmax(TAU x cos), cos set to -inf outside the scope (`allowed_pairs`, mean of the whole matrix)."""
    sim = feats @ feats.T
    keep = allowed_pairs(ids, ids, sim, int(ids.min()), sim.mean())
    return (sim.masked_fill(~keep, float("-inf")) * TAU).softmax(dim=-1)


def nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w integer maps resized by nearest neighbour (as F.interpolate on floats) -> B x size, int32."""
    return F.interpolate(ids[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.int32)


def _cross_block(blk, tokens: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One residual block for region tokens that attend to `context` (the image tokens entering the same
    block) under an additive mask, with the block's own modules: x + attn(ln_1 x, ln_1 c), then the MLP."""
    kv = blk.ln_1(context)
    att = blk.attn(blk.ln_1(tokens), kv, kv, need_weights=False, attn_mask=mask)[0]
    x = tokens + blk.ls_1(att)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def region_mask(regions: list[torch.Tensor], tokens: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask of the region tokens: (B x heads) x Rmax x (1 + N); region r of window b
    sees CLS and its own patches (regions[b]: N region indices); rows past a window's R see CLS only."""
    b, rmax = len(regions), max(int(r.max()) + 1 for r in regions)
    allowed = torch.zeros(b, rmax, tokens, dtype=torch.bool, device=regions[0].device)
    allowed[:, :, 0] = True
    for i, r in enumerate(regions):
        allowed[i, :, 1:] = r[None, :] == torch.arange(rmax, device=r.device)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
    return mask[:, None].expand(b, heads, rmax, tokens).reshape(b * heads, rmax, tokens)


def clip_branches(clip, crops: torch.Tensor, regions: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """CLIP's side of CorrCLIP for B windows: (last block's values of the main tokens, of the spatial
    tokens (both B x N x D, patch tokens), region tokens after the last block (B x Rmax x D), CLIP grid).

    regions: per window, the region index (0..R-1) of each of its N CLIP-grid patch tokens."""
    v = clip.visual
    if not getattr(v.transformer, "batch_first", True):
        raise GlaclipError("CorrCLIP needs an open_clip transformer with batch_first=True")
    x, grid = clip.embed(crops)
    blocks = v.transformer.resblocks
    n_layers = len(blocks)
    first = n_layers - 2 - spatial_layers(n_layers)
    if first > n_layers - 3:
        raise GlaclipError(f"CorrCLIP needs a CLIP with at least 5 blocks (its spatial branch), not {n_layers}")
    mask = region_mask(regions, x.shape[1], clip.heads, x.dtype)
    mct = x[:, :1].expand(-1, mask.shape[1], -1)
    spatial, count = torch.zeros_like(x), 0
    for idx, blk in enumerate(blocks[:-1]):
        mct = _cross_block(blk, mct, x, mask)
        x = blk(x)  # image tokens see image tokens only: the unchanged block
        if first <= idx <= n_layers - 3:
            spatial, count = spatial + x, count + 1
    spatial = spatial / count
    last = blocks[-1]
    mct = _cross_block(last, mct, x, mask)
    d = x.shape[-1]
    wv, bv = last.attn.in_proj_weight[2 * d :], last.attn.in_proj_bias[2 * d :]
    values = [F.linear(last.ln_1(t), wv, bv)[:, 1:] for t in (x, spatial)]
    return values[0], values[1], mct, grid


def to_grid(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """B x N x D tokens on `grid` -> B x M x D on `size`, bilinear (align_corners False)."""
    b, _, d = tokens.shape
    t = tokens.transpose(1, 2).reshape(b, d, *grid)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class _MaskGuided(Family):
    """Shared steps of the mask-guided families; `features(crops, masks)` returns final embeddings."""

    mask_pad_id = PAD_ID

    def embed(self, final: torch.Tensor) -> torch.Tensor:
        return final  # already projected (ln_post per branch, then the weighted sum)

    def _vfm(self, crops: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        f = self.backbones.vfm.last_qk(clip_to_imagenet(crops))
        return F.normalize(f.flatten(2).transpose(1, 2), dim=-1), tuple(f.shape[-2:])

    def _clip(self, crops: torch.Tensor, ids: torch.Tensor, vfm_grid: tuple[int, int]):
        """CLIP branches of B windows given their merged ids on the VFM grid (B x M): main and spatial
        values on the VFM grid (B x M x D each), the semantic tokens on the VFM grid (B x M x D)."""
        clip = self.backbones.clip
        p = clip.patch_size
        grid = (crops.shape[-2] // p, crops.shape[-1] // p)
        on_clip = nearest(ids.view(-1, *vfm_grid), grid).flatten(1)
        regions = [torch.unique(r, return_inverse=True)[1] for r in on_clip]
        v_main, v_spatial, mct, grid = clip_branches(clip, crops, regions)
        index = nearest(torch.stack(regions).view(-1, *grid), vfm_grid).flatten(1).long()
        semantic = torch.gather(mct, 1, index[..., None].expand(-1, -1, mct.shape[-1]))
        return to_grid(v_main, grid, vfm_grid), to_grid(v_spatial, grid, vfm_grid), semantic

    def _project(self, main: torch.Tensor, spatial: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        clip = self.backbones.clip
        ln = clip.visual.ln_post
        x = ln(clip.out_proj(main)) + ln(clip.out_proj(spatial)) * ALPHA + ln(semantic) * BETA
        return x @ clip.visual.proj

    def _scoped(self, crops: torch.Tensor, f: torch.Tensor, ids: torch.Tensor, vfm_grid: tuple[int, int]
                ) -> torch.Tensor:
        """CorrCLIP's window forward without merging (CorrCLIPv2's, and the bank builder's) given the windows'
        unit correlation features (B x M x C) and region ids (B x M) on `vfm_grid`: B x M x E final embeddings,
        `window_batch` windows per CLIP forward."""
        out = []
        step = self.window_batch
        for s in range(0, crops.shape[0], step):
            v_main, v_spatial, semantic = self._clip(crops[s : s + step], ids[s : s + step], vfm_grid)
            for b in range(v_main.shape[0]):
                w = scope_weights(f[s + b], ids[s + b])
                out.append(self._project(w @ v_main[b], w @ v_spatial[b], semantic[b]))
        return torch.stack(out)

    def final_tokens(self, feats, grid, grid_hw):
        return feats["finals"].flatten(0, 1)


class CorrClip(_MaskGuided):
    """CorrCLIP as released: every step within each window."""

    def features(self, crops, masks=None):
        if masks is None:
            raise ValueError("CorrCLIP needs the windows' region masks")
        f, vfm_grid = self._vfm(crops)
        ids = nearest(masks, vfm_grid).flatten(1)
        ids = torch.stack([merge_regions(i, fi) for i, fi in zip(ids, f)])
        v_main, v_spatial, semantic = self._clip(crops, ids, vfm_grid)
        out = []
        for b in range(crops.shape[0]):
            w = scope_weights(f[b], ids[b])
            out.append(self._project(w @ v_main[b], w @ v_spatial[b], semantic[b]))
        return {"finals": torch.stack(out)}, vfm_grid


class GlaCorrClip(_MaskGuided):
    """GLA on CorrCLIP: one merged region map per image; scope and softmax over all windows' tokens."""

    per_image = True  # `features` gets all windows of one image

    def features(self, crops, masks=None):
        if masks is None:
            raise ValueError("gla-corrclip needs the windows' region masks")
        step = self.window_batch
        parts = [self._vfm(crops[i : i + step]) for i in range(0, crops.shape[0], step)]
        f, vfm_grid = torch.cat([p[0] for p in parts]), parts[0][1]
        b, m = f.shape[:2]
        ids = merge_regions(nearest(masks, vfm_grid).flatten(), f.flatten(0, 1)).view(b, m)
        branches = [self._clip(crops[i : i + step], ids[i : i + step], vfm_grid) for i in range(0, b, step)]
        v_main, v_spatial, semantic = (torch.cat(t) for t in zip(*branches))
        attended = global_scope_attention(f.flatten(0, 1), ids.flatten(), torch.cat([v_main, v_spatial], -1)
                                          .flatten(0, 1), self.attention.block_rows or _rows(b * m, self.attention))
        main, spatial = attended.view(b, m, -1).chunk(2, dim=-1)
        return {"finals": self._project(main, spatial, semantic)}, vfm_grid


def _rows(n: int, cfg) -> int:
    """Query rows per block so that a block's n-wide similarity rows stay within cfg.memory_mb (about 4
    n-wide float64 buffers per row)."""
    return max(1, min(n, cfg.memory_mb * 2**20 // (32 * n)))


def global_scope_attention(feats: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    """softmax(TAU x cos) under the scope rule over all N tokens of an image (N x C unit features, N
    merged ids, N x V values) -> N x V, `rows` query rows at a time; the rule's mean is that of the
    whole N x N similarity matrix (summed block by block)."""
    n = feats.shape[0]
    total = feats.new_zeros(())
    for s in range(0, n, rows):
        total = total + (feats[s : s + rows] @ feats.T).sum()
    mean = total / (n * n)
    smallest = int(ids.min())
    out = []
    for s in range(0, n, rows):
        sim = feats[s : s + rows] @ feats.T
        keep = allowed_pairs(ids[s : s + rows], ids, sim, smallest, mean)
        out.append((sim.masked_fill(~keep, float("-inf")) * TAU).softmax(dim=-1) @ values)
    return torch.cat(out)


__all__ = ["CorrClip", "GlaCorrClip", "merge_regions", "scope_weights", "allowed_pairs", "clip_branches",
           "global_scope_attention", "spatial_layers", "Features"]
