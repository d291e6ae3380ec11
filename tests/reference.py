"""A direct, naive transcription of METHOD.md steps 1-8, for checking the package against.

Written for clarity, not speed: one window at a time, the dense N x N matrix, explicit loops.
It touches only the raw open_clip / timm modules, never glaclip's own code.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
IN_MEAN = np.array([0.485, 0.456, 0.406])
IN_STD = np.array([0.229, 0.224, 0.225])


def step1_resize(rgb, short=336, long=2048, dtype=torch.float32):
    h, w = rgb.shape[:2]
    factor = min(long / max(h, w), short / min(h, w))
    nh, nw = int(h * factor + 0.5), int(w * factor + 0.5)
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float64) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.tensor(x, dtype=dtype).permute(2, 0, 1)


def step2_windows(H, W, c=224, s=112):
    h_grids = max(H - c + s - 1, 0) // s + 1
    w_grids = max(W - c + s - 1, 0) // s + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1 = i * s
            x1 = j * s
            y2 = min(y1 + c, H)
            x2 = min(x1 + c, W)
            y1 = max(y2 - c, 0)
            x1 = max(x2 - c, 0)
            out.append((y1, y2, x1, x2))
    return out


def _cubic(t, A=-0.75):
    t = abs(t)
    if t <= 1:
        return ((A + 2) * t - (A + 3)) * t * t + 1
    if t < 2:
        return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A
    return 0.0


def _resize_axis(x, n_out, scale):
    """Bicubic along the last axis as the official releases resize position grids: the given scale
    factor sets the sampling (src = (i + 0.5) / scale - 0.5), taps clamped to the border."""
    n_in = x.shape[-1]
    out = []
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        x0 = math.floor(src)
        t = src - x0
        acc = 0
        for k in range(-1, 3):
            j = min(max(x0 + k, 0), n_in - 1)
            acc = acc + _cubic(k - t) * x[..., j]
        out.append(acc)
    return torch.stack(out, dim=-1)


def official_pos(grid, gh, gw):
    """D x n0h x n0w position grid -> D x gh x gw, scale factors ((gh + 0.1)/n0h, (gw + 0.1)/n0w)."""
    n0h, n0w = grid.shape[1:]
    cols = _resize_axis(grid, gw, (gw + 0.1) / n0w)
    return _resize_axis(cols.transpose(1, 2), gh, (gh + 0.1) / n0h).transpose(1, 2)


def pad_amounts(n, m=56):
    if n % m == 0:
        return 0, 0
    total = m - n % m
    return total // 2, total - total // 2


def vfm_tokens(vfm, window):
    """window: 3xhxw CLIP-normalised -> C x gh x gw final-norm patch tokens."""
    def col(v):
        return torch.tensor(v, dtype=window.dtype)[:, None, None]

    mean, std, imean, istd = col(CLIP_MEAN), col(CLIP_STD), col(IN_MEAN), col(IN_STD)
    x = ((window * std + mean) - imean) / istd
    p = vfm.patch_embed.patch_size[0]
    gh, gw = x.shape[1] // p, x.shape[2] // p
    patches = vfm.patch_embed.proj(x[None])[0].flatten(1).T  # L x C (conv floors odd sides)
    n_prefix_pos = 0 if vfm.no_embed_class else vfm.num_prefix_tokens
    pos = vfm.pos_embed[0]
    n0 = int(round(math.sqrt(pos.shape[0] - n_prefix_pos)))
    grid = pos[n_prefix_pos:].T.reshape(-1, n0, n0)
    if (gh, gw) != (n0, n0):
        grid = official_pos(grid, gh, gw)
    patch_pos = grid.reshape(grid.shape[0], -1).T
    prefix = [vfm.cls_token[0]] + ([vfm.reg_token[0]] if vfm.reg_token is not None else [])
    if vfm.no_embed_class:
        seq = torch.cat(prefix + [patches + patch_pos])
    else:
        seq = torch.cat(prefix + [patches]) + torch.cat([pos[:n_prefix_pos], patch_pos])
    t = vfm.norm(vfm.blocks(seq[None]))[0, vfm.num_prefix_tokens :]
    return t.T.reshape(-1, gh, gw)


def clip_block_input(visual, window):
    """window: 3xhxw -> ((1+L) x D tokens entering the last block, CLS first; (gh, gw))."""
    x = visual.conv1(window[None])[0]  # D x gh x gw
    D, gh, gw = x.shape
    tokens = x.reshape(D, gh * gw).T
    pos = visual.positional_embedding
    nh, nw = visual.grid_size
    if (gh, gw) != (nh, nw):
        grid = official_pos(pos[1:].reshape(nh, nw, D).permute(2, 0, 1), gh, gw)
        pos = torch.cat([pos[:1], grid.permute(1, 2, 0).reshape(gh * gw, D)])
    seq = torch.cat([visual.class_embedding[None], tokens]) + pos
    seq = visual.ln_pre(seq)[None]
    for blk in visual.transformer.resblocks[:-1]:
        seq = blk(seq)
    return seq[0], (gh, gw)


def clip_values(visual, window):
    """window: 3xhxw -> (heads, head_dim, gh, gw) value projection of ln_1 of the last block's input."""
    seq, (gh, gw) = clip_block_input(visual, window)
    D = seq.shape[1]
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(seq)[1:]
    Wv = last.attn.in_proj_weight[2 * D :]
    bv = last.attn.in_proj_bias[2 * D :]
    v = y @ Wv.T + bv  # L x D
    heads = last.attn.num_heads
    return v.T.reshape(heads, D // heads, gh, gw)


def gla(K, V, n_windows, rho=0.55, T=2, dynamic=True, ab=0.3, ag=30.0, beta_fixed=1.2, gamma_fixed=3.0, tie=0.0,
        P0=None, dynamic_beta=True):
    """Step 5 with the whole N x N matrix. K: N x C (normalised), V: heads x N x hd -> heads x N x hd.
    P0: the proxy the iteration starts from (default K); dynamic_beta False: beta_fixed with dynamic gamma.

    Also returns the rows with a decision within `tie` of its boundary (A_ij vs rho, A'_ij vs t_i):
    there float rounding may decide either way, and both outcomes are right.
    """
    N = K.shape[0]
    ties = torch.zeros(N, dtype=torch.bool)

    def fix(M):
        for i in range(N):
            if M[i].sum() == 0:
                M[i, i] = 1.0
        return M

    if T == 0:
        A = (K if P0 is None else P0) @ K.T
        ties |= ((A - rho).abs() < tie).any(1)
        M = fix((A > rho).to(K.dtype))
    else:
        P = K if P0 is None else P0
        for _ in range(T):
            A = P @ K.T
            ties |= ((A - rho).abs() < tie).any(1)
            M = fix((A > rho).to(K.dtype))
            P = F.normalize((M @ K) / (M.sum(1, keepdim=True) + 1e-6), dim=1)
        A = P @ K.T
    c = M.sum(1)
    mu = torch.clamp(A.mean(1), min=0)
    if dynamic:
        beta = 1 + ab * math.log(1 + n_windows) if dynamic_beta else beta_fixed
        gamma = 1 + ag / c
    else:
        beta, gamma = beta_fixed, torch.full_like(c, gamma_fixed)
    A2 = (A - beta * mu[:, None]) * gamma[:, None]
    t = torch.clamp(A2.max(1).values, max=0)
    ties |= ((A2 - t[:, None]).abs() < tie * gamma[:, None]).any(1) & (t == 0)
    A2 = torch.where(A2 < t[:, None], torch.tensor(float("-inf"), dtype=A2.dtype), A2)
    S = torch.softmax(A2, dim=1)
    return torch.stack([S @ V[h] for h in range(V.shape[0])]), ties


def proxyclip_local(K, V, beta=1.2, gamma=3.0, tie=0.0, token_norm=False):
    """Window-local host: K n x C, V heads x n x hd. Also returns the near-tie rows (see gla).

    Official ProxyCLIP: ONE scalar mean over the window's n x n matrix; token_norm: per-row means."""
    A = K @ K.T
    mean = A.mean(1, keepdim=True) if token_norm else A.mean()
    A2 = (A - mean * beta) * gamma
    t = torch.clamp(A2.max(1).values, max=0)
    ties = ((A2 - t[:, None]).abs() < tie * gamma).any(1) & (t == 0)
    A2 = torch.where(A2 < t[:, None], torch.tensor(float("-inf"), dtype=A2.dtype), A2)
    S = torch.softmax(A2, dim=1)
    return torch.stack([S @ V[h] for h in range(V.shape[0])]), ties


def text_queries(clip_model, tokenizer, queries):
    import open_clip

    out = []
    for q in queries:
        embs = []
        for template in open_clip.OPENAI_IMAGENET_TEMPLATES:
            e = clip_model.encode_text(tokenizer([template(q)]))[0]
            embs.append(e / e.norm())
        m = torch.stack(embs).mean(0)
        out.append(m / m.norm())
    return torch.stack(out)


@torch.no_grad()
def segment(clip_model, vfm, tokenizer, rgb, synonyms, method="gla-proxyclip", short=336, long=2048, rho=0.55, T=2,
            dynamic=True, logit_scale=40.0, prob_thd=0.0, tie=0.0, crop=None, stride=112, pad=56):
    """Returns class probabilities C x H x W, labels H x W, and the pixels that tokens with a
    near-tie decision (see gla) reach through stitching, all at the original size."""
    visual = clip_model.visual
    dtype = visual.conv1.weight.dtype
    img = step1_resize(rgb, short, long, dtype)
    H, W = img.shape[1:]
    if crop is None:
        crop = 224 if method == "gla-proxyclip" else 336
    boxes = step2_windows(H, W, crop, stride)
    keys, vals, shapes = [], [], []
    for (y1, y2, x1, x2) in boxes:
        crop = img[:, y1:y2, x1:x2]
        h, w = crop.shape[1:]
        t, b = pad_amounts(h, pad)
        l, r = pad_amounts(w, pad)
        crop = F.pad(crop, (l, r, t, b))
        k = vfm_tokens(vfm, crop)  # C x gh x gw
        v = clip_values(visual, crop)  # heads x hd x ch x cw
        v = F.interpolate(v, size=k.shape[1:], mode="bilinear", align_corners=False)
        keys.append(F.normalize(k.reshape(k.shape[0], -1).T, dim=1))
        vals.append(v.reshape(v.shape[0], v.shape[1], -1).transpose(1, 2))
        shapes.append((h, w, t, l, crop.shape[1], crop.shape[2], k.shape[1], k.shape[2]))
    n_per = keys[0].shape[0]
    if method == "gla-proxyclip":
        O, ties = gla(torch.cat(keys), torch.cat(vals, dim=1), len(boxes), rho=rho, T=T, dynamic=dynamic, tie=tie)
    else:
        parts = [proxyclip_local(k, v, tie=tie) for k, v in zip(keys, vals)]
        O, ties = torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts])
    O = O.permute(1, 0, 2).reshape(O.shape[1], -1)  # concatenate heads
    last = visual.transformer.resblocks[-1]
    E = visual.ln_post(last.attn.out_proj(O)) @ visual.proj
    E = E / E.norm(dim=1, keepdim=True)
    queries = [q for syn in synonyms for q in syn]
    owner = [i for i, syn in enumerate(synonyms) for _ in syn]
    Tq = text_queries(clip_model, tokenizer, queries).to(dtype)
    canvas = torch.zeros(len(queries) + 1, H, W, dtype=dtype)  # last channel: near-tie indicator
    count = torch.zeros(1, H, W, dtype=dtype)
    for idx, (y1, y2, x1, x2) in enumerate(boxes):
        h, w, t, l, ph, pw, gh, gw = shapes[idx]
        rows = slice(idx * n_per, (idx + 1) * n_per)
        logit = torch.cat([E[rows] @ Tq.T, ties[rows, None].to(dtype)], dim=1).T.reshape(len(queries) + 1, gh, gw)
        logit = F.interpolate(logit[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
        canvas[:, y1:y2, x1:x2] += logit[:, t : t + h, l : l + w]
        count[:, y1:y2, x1:x2] += 1
    logits = F.interpolate((canvas / count)[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
    logits, tie_pixels = logits[:-1], logits[-1] > 0
    probs = torch.softmax(logit_scale * logits, dim=0)
    class_probs = torch.stack([torch.stack([probs[q] for q in range(len(queries)) if owner[q] == c]).max(0).values
                               for c in range(len(synonyms))])
    labels = class_probs.argmax(0)
    labels[class_probs.max(0).values < prob_thd] = 0
    return class_probs, labels, tie_pixels


def pamr(image, logits, steps=10, dilations=(8, 16)):
    """BASELINES.md's PAMR written out with gathered neighbours: image 3 x H x W, logits Q x H x W.
    Neighbour coordinates are clamped to the image (replicate padding)."""
    _, H, W = image.shape
    ys, xs = torch.arange(H)[:, None].expand(H, W), torch.arange(W)[None, :].expand(H, W)
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

    def neighbour(t, dy, dx):
        return t[:, (ys + dy).clamp(0, H - 1), (xs + dx).clamp(0, W - 1)]

    values = []
    for d in dilations:
        values.append(image)
        values += [neighbour(image, dy * d, dx * d) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    sigma = torch.stack(values).std(dim=0, unbiased=True)  # 3 x H x W, over 18 values
    a = torch.stack([(-(image - neighbour(image, dy, dx)).abs() / (1e-8 + 0.1 * sigma)).mean(0) for dy, dx in offsets])
    a = torch.softmax(a, dim=0)
    for _ in range(steps):
        logits = sum(a[k] * neighbour(logits, dy, dx) for k, (dy, dx) in enumerate(offsets))
    return logits


def area_threshold(P, thd):
    """SCLIP's area threshold on C x H x W class probabilities."""
    labels = P.argmax(0)
    areas = [int((labels == c).sum()) for c in range(P.shape[0])]
    total = sum(areas[1:])
    out = P.clone()
    for c in range(1, P.shape[0]):
        if not areas[c] > thd * total:
            out[c] = 0
    return out
