"""The frozen towers GLA-CLIP runs, as pure wrappers: no files, no hub, no prints (loading: `models`).

`ClipTower` wraps an open_clip ViT and exposes the pieces of its last block the methods recombine;
`VfmTower` wraps a timm ViT (DINO, DINOv2) and gives its final-norm patch tokens at any grid.
Both resize position embeddings as the official releases do (`resize_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GlaclipError


def resize_positions(grid: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """1 x D x n0h x n0w patch position embeddings -> 1 x D x gh x gw, as the official CLIP-based
    segmenters and DINO resize them: bicubic, align_corners False, with the scale factors
    ((gh + 0.1) / n0h, (gw + 0.1) / n0w) (not the target size), which sets both the output size
    (floor -> gh x gw) and the sampling positions (source = (out + 0.5) / scale - 0.5)."""
    n0h, n0w = grid.shape[-2:]
    work = grid.to(torch.promote_types(grid.dtype, torch.float32))
    out = F.interpolate(work, scale_factor=((gh + 0.1) / n0h, (gw + 0.1) / n0w), mode="bicubic",
                        align_corners=False)
    if tuple(out.shape[-2:]) != (gh, gw):  # cannot happen for gh, gw >= 1; kept as a guard
        raise RuntimeError(f"position grid {tuple(out.shape[-2:])} != {(gh, gw)}")
    return out.to(grid.dtype)


# ----------------------------------------------------------------------------------------- CLIP


@dataclass
class ClipTower:
    """An open_clip CLIP model; gives the value path of the last block and the text encoder."""

    model: nn.Module
    name: str
    weights: str

    def __post_init__(self):
        visual = self.model.visual
        last = getattr(getattr(visual, "transformer", None), "resblocks", [None])[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention) or getattr(visual, "attn_pool", None):
            raise GlaclipError(f"CLIP model {self.name!r} is not a plain open_clip ViT; GLA-CLIP needs one")
        self.visual = visual

    def tokenizer(self):
        """open_clip's tokenizer for this architecture."""
        import open_clip

        return open_clip.get_tokenizer(self.name)

    @property
    def patch_size(self) -> int:
        return self.visual.conv1.kernel_size[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        nh, nw = self.visual.grid_size
        if (gh, gw) == (nh, nw):
            return pos
        patch_pos = pos[1:].reshape(1, nh, nw, -1).permute(0, 3, 1, 2)
        patch_pos = resize_positions(patch_pos, gh, gw).permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([pos[:1], patch_pos])

    @property
    def last_block(self) -> nn.Module:
        return self.visual.transformer.resblocks[-1]

    @property
    def heads(self) -> int:
        return self.last_block.attn.num_heads

    def last_block_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Bx3xHxW (CLIP-normalised) -> (B x (1+L) x D tokens entering the last block, CLS first; grid).

        All blocks but the last run unchanged; the positional embedding is interpolated only when the
        grid differs from the model's own (METHOD.md step 4)."""
        v = self.visual
        x, (gh, gw) = self.embed(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in v.transformer.resblocks[:-1]:
            x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x, (gh, gw)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Bx3xHxW (CLIP-normalised) -> (B x (1+L) x D tokens entering the first block, CLS first; grid):
        patch embedding, CLS, position embeddings (resized when the grid differs), ln_pre."""
        v = self.visual
        x = v.conv1(x.to(self.dtype))
        b, d, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self._positional(gh, gw).to(x.dtype)
        return v.ln_pre(x), (gh, gw)

    def qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B x T x D tokens -> q, k, v of the last block from ln_1(tokens), each B x T x D (heads side by side)."""
        attn = self.last_block.attn
        return F.linear(self.last_block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def value_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW (CLIP-normalised) -> BxDxghxgw values of the last block's patch tokens (step 4)."""
        tokens, (gh, gw) = self.last_block_input(x)
        attn, d = self.last_block.attn, tokens.shape[-1]
        values = F.linear(self.last_block.ln_1(tokens[:, 1:]), attn.in_proj_weight[2 * d :], attn.in_proj_bias[2 * d :])
        return values.transpose(1, 2).reshape(tokens.shape[0], d, gh, gw)

    def out_proj(self, attended: torch.Tensor) -> torch.Tensor:
        return self.last_block.attn.out_proj(attended)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """...xD final tokens -> ...xE embeddings: ln_post, visual projection."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def project(self, attended: torch.Tensor) -> torch.Tensor:
        """...xD attention outputs (heads side by side) -> ...xE: out_proj, ln_post, visual projection."""
        return self.head(self.out_proj(attended))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def text_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every parameter and buffer outside the image tower (what text embeddings depend on)."""
        return [(k, v) for k, v in self.model.state_dict().items() if not k.startswith("visual.")]


# ------------------------------------------------------------------------------------------ VFM


@dataclass
class VfmTower:
    """A timm ViT used as the VFM: the final-norm patch tokens of the last block."""

    model: nn.Module
    name: str
    weights: str

    def __post_init__(self):
        if not hasattr(self.model, "patch_embed") or not hasattr(self.model, "forward_features"):
            raise GlaclipError(f"VFM {self.name!r} is not a timm vision transformer")

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.patch_embed.proj.weight.dtype

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW (ImageNet-normalised) -> BxCxghxgw (METHOD.md step 3).

        timm's forward with one change: at a grid other than the model's own, the position
        embeddings are resized as the official DINO release resizes them (`resize_positions`)."""
        m = self.model
        x, (gh, gw) = self._embed(x)
        x = m.norm(m.blocks(x))[:, m.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def last_qk(self, x: torch.Tensor) -> torch.Tensor:
        """Bx3xHxW (ImageNet-normalised) -> BxCxghxgw: q + k of the last block's attention (its qkv
        projection of the normalised tokens, heads side by side, not scaled), patch tokens only, as
        CorrCLIP reads DINO (a hook on the last block's qkv)."""
        m = self.model
        x, (gh, gw) = self._embed(x)
        for blk in m.blocks[:-1]:
            x = blk(x)
        last = m.blocks[-1]
        q, k, _ = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)
        x = (q + k)[:, m.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding, prefix tokens and resized position embeddings: B x (prefix + L) x C, grid."""
        m = self.model
        b = x.shape[0]
        x = m.patch_embed(x.to(self.dtype))  # B x gh x gw x C (dynamic_img_size)
        gh, gw = x.shape[1:3]
        x = x.reshape(b, gh * gw, -1)
        prefix = [t.expand(b, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        pos = self._positional(gh, gw)
        if m.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return m.norm_pre(m.patch_drop(m.pos_drop(x))), (gh, gw)

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        m = self.model
        pos = m.pos_embed
        n0h, n0w = m.patch_embed.grid_size
        if (gh, gw) == (n0h, n0w):
            return pos
        k = 0 if m.no_embed_class else m.num_prefix_tokens
        grid = pos[:, k:].reshape(1, n0h, n0w, -1).permute(0, 3, 1, 2)
        grid = resize_positions(grid, gh, gw).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:, :k], grid], dim=1)


def openai_templates() -> list:
    """open_clip's 80 OpenAI ImageNet prompt templates (callables name -> prompt)."""
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
