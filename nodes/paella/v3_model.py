"""The Paella v3 token model (2023, ``paella_v3.pt``): a U-Net over discrete VQGAN tokens (pure torch).

Tokens are embedded, patchified (PixelUnshuffle), run through ConvNeXt-style residual blocks,
noise-level modulation and self+cross attention to a conditioning sequence (ByT5 states, CLIP text
tokens, CLIP image tokens), and mapped back to per-position logits over the codebook. Module and
parameter names reproduce the released state dict so it loads strictly; every hyper-parameter is
read from the keys and shapes (``PaellaV3Config.from_shapes``).
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import BoundlessError
from .layers import ChannelsLastLayerNorm, GlobalResponseNorm, LayerNorm2d, layer_norm_2d, sinusoid_embedding

# Not stored in the checkpoint: the released model uses 16 heads in every attention level.
NUM_HEADS = 16


@dataclasses.dataclass(frozen=True)
class PaellaV3Config:
    num_labels: int
    c_in: int                      # token embedding width
    c_out: int                     # width before the classifier
    patch_size: int
    c_hidden: tuple[int, ...]      # per level
    level_config: tuple[str, ...]  # per level, e.g. "CTA" (ResBlock, TimestepBlock, AttnBlock)
    blocks: tuple[int, ...]        # repetitions of the level string per level
    c_cond: int
    c_r: int
    byt5_width: int
    clip_width: int
    clip_seq_len: int
    kernel_size: int = 3
    num_heads: int = NUM_HEADS

    @property
    def token_multiple(self) -> int:
        """Token grids must be multiples of this (patchify, then one halving per extra level)."""
        return self.patch_size * 2 ** (len(self.c_hidden) - 1)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "PaellaV3Config":
        """Read the configuration from a state dict's {key: shape}."""
        try:
            num_labels, c_in = shapes["in_mapper.0.weight"]
            c_cond, byt5_width = shapes["byt5_mapper.weight"]
            clip_rows, clip_width = shapes["clip_mapper.weight"]
            c_first, patched = shapes["embedding.1.weight"][:2]
            c_out = shapes["out_mapper.1.weight"][1]
        except KeyError as exc:
            raise BoundlessError(f"not a Paella v3 checkpoint: key {exc} is missing") from exc
        patch_size = math.isqrt(patched // c_in)
        levels = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"down_blocks\.(\d+)\.", k)))
        c_hidden, level_config, blocks, c_r, kernel = [], [], [], None, 3
        for level in range(levels):
            kinds = _block_kinds(shapes, f"down_blocks.{level}.", skip_first=level > 0)
            period = next(p for p in range(1, len(kinds) + 1)
                          if len(kinds) % p == 0 and kinds == kinds[:p] * (len(kinds) // p))
            level_config.append(kinds[:period])
            blocks.append(len(kinds) // period)
            first = 1 if level > 0 else 0
            res_index = first + kinds.index("C")
            c_hidden.append(shapes[f"down_blocks.{level}.{res_index}.depthwise.weight"][0])
            kernel = shapes[f"down_blocks.{level}.{res_index}.depthwise.weight"][-1]
            if "T" in kinds:
                c_r = shapes[f"down_blocks.{level}.{first + kinds.index('T')}.mapper.weight"][1]
        if c_r is None:
            raise BoundlessError("Paella v3 checkpoint has no timestep blocks; cannot read the noise-level width")
        return cls(num_labels=num_labels, c_in=c_in, c_out=c_out, patch_size=patch_size,
                   c_hidden=tuple(c_hidden), level_config=tuple(level_config), blocks=tuple(blocks),
                   c_cond=c_cond, c_r=c_r, byt5_width=byt5_width, clip_width=clip_width,
                   clip_seq_len=clip_rows // c_cond, kernel_size=kernel)


def _block_kinds(shapes, prefix: str, skip_first: bool) -> str:
    """The block-type string of one level from which sub-keys each index has."""
    indices = sorted({int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})
    kinds = ""
    for index in indices[1 if skip_first else 0:]:
        head = f"{prefix}{index}."
        if head + "depthwise.weight" in shapes:
            kinds += "C"
        elif head + "mapper.weight" in shapes:
            kinds += "T"
        elif head + "attention.attn.in_proj_weight" in shapes:
            kinds += "A"
        else:
            raise BoundlessError(f"Paella v3 checkpoint: cannot tell what block {head[:-1]} is")
    return kinds


class ResBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> channel MLP with GRN, residual. An optional skip is
    concatenated before the grouped depthwise conv (each output channel sees a consecutive pair)."""

    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(c + c_skip, c, kernel_size, padding=kernel_size // 2, groups=c)
        self.channelwise = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), GlobalResponseNorm(4 * c),
                                         nn.Identity(),  # dropout in training
                                         nn.Linear(4 * c, c))

    def forward(self, x_bchw: torch.Tensor, skip_bchw: torch.Tensor | None = None) -> torch.Tensor:
        residual = x_bchw
        if skip_bchw is not None:
            x_bchw = torch.cat([x_bchw, skip_bchw], dim=1)
        x_bhwc = layer_norm_2d(self.depthwise(x_bchw)).permute(0, 2, 3, 1)
        return self.channelwise(x_bhwc).permute(0, 3, 1, 2) + residual


class TimestepBlock(nn.Module):
    """FiLM by the noise-level embedding: ``x * (1 + a) + b``."""

    def __init__(self, c: int, c_r: int):
        super().__init__()
        self.mapper = nn.Linear(c_r, 2 * c)

    def forward(self, x_bchw: torch.Tensor, r_emb_br: torch.Tensor) -> torch.Tensor:
        a_bc11, b_bc11 = self.mapper(r_emb_br)[:, :, None, None].chunk(2, dim=1)
        return x_bchw * (1 + a_bc11) + b_bc11


class PackedAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout (packed q|k|v).

    ``key_weights`` implements the official notebook's re-weighting: the post-softmax probabilities
    of the last ``len(key_weights)`` keys are multiplied by these weights, without renormalising.
    """

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * c, c))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = nn.Linear(c, c)
        if not self.in_proj_weight.is_meta:
            nn.init.xavier_uniform_(self.in_proj_weight)   # as nn.MultiheadAttention initialises it

    def forward(self, q_bnc: torch.Tensor, kv_bmc: torch.Tensor,
                key_weights: torch.Tensor | None = None) -> torch.Tensor:
        batch, n, c = q_bnc.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads(t_blc: torch.Tensor) -> torch.Tensor:  # -> [B, heads, L, d]
            return t_blc.view(batch, t_blc.shape[1], self.num_heads, c // self.num_heads).transpose(1, 2)

        q = heads(F.linear(q_bnc, w_q, b_q))
        k = heads(F.linear(kv_bmc, w_k, b_k))
        v = heads(F.linear(kv_bmc, w_v, b_v))
        if key_weights is None:
            out_bhnd = F.scaled_dot_product_attention(q, k, v)
        else:
            probs_bhnm = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            scale_m = torch.ones(k.shape[2], dtype=probs_bhnm.dtype, device=probs_bhnm.device)
            scale_m[-key_weights.shape[0]:] = key_weights.to(scale_m)
            out_bhnd = (probs_bhnm * scale_m) @ v
        return self.out_proj(out_bhnd.transpose(1, 2).reshape(batch, n, c))


class Attention2D(nn.Module):
    """Self-attention over the image tokens plus cross-attention to the conditioning, one softmax."""

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.attn = PackedAttention(c, num_heads)

    def forward(self, x_bchw: torch.Tensor, kv_bmc: torch.Tensor,
                key_weights: torch.Tensor | None) -> torch.Tensor:
        batch, c, h, w = x_bchw.shape
        q_bnc = x_bchw.view(batch, c, h * w).permute(0, 2, 1)
        out_bnc = self.attn(q_bnc, torch.cat([q_bnc, kv_bmc], dim=1), key_weights)
        return out_bnc.permute(0, 2, 1).reshape(batch, c, h, w)


class AttnBlock(nn.Module):
    def __init__(self, c: int, c_cond: int, num_heads: int):
        super().__init__()
        self.attention = Attention2D(c, num_heads)
        self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

    def forward(self, x_bchw: torch.Tensor, cond_blc: torch.Tensor,
                key_weights: torch.Tensor | None) -> torch.Tensor:
        return x_bchw + self.attention(layer_norm_2d(x_bchw), self.kv_mapper(cond_blc), key_weights)


class PaellaV3(nn.Module):
    """Token logits ``[B, num_labels, H, W]`` for tokens ``[B, H, W]`` at noise level ``r`` in [0, 1]."""

    def __init__(self, config: PaellaV3Config):
        super().__init__()
        self.config = cfg = config
        p = cfg.patch_size
        self.byt5_mapper = nn.Linear(cfg.byt5_width, cfg.c_cond)
        self.clip_mapper = nn.Linear(cfg.clip_width, cfg.c_cond * cfg.clip_seq_len)
        self.clip_image_mapper = nn.Linear(cfg.clip_width, cfg.c_cond * cfg.clip_seq_len)
        self.in_mapper = nn.Sequential(nn.Embedding(cfg.num_labels, cfg.c_in), ChannelsLastLayerNorm())
        self.embedding = nn.Sequential(nn.PixelUnshuffle(p), nn.Conv2d(cfg.c_in * p * p, cfg.c_hidden[0], 1),
                                       LayerNorm2d())
        levels = len(cfg.c_hidden)
        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            level = nn.ModuleList()
            if i > 0:
                level.append(nn.Sequential(LayerNorm2d(), nn.Conv2d(cfg.c_hidden[i - 1], cfg.c_hidden[i], 2, 2)))
            for _ in range(cfg.blocks[i]):
                for kind in cfg.level_config[i]:
                    level.append(self._block(kind, cfg.c_hidden[i]))
            self.down_blocks.append(level)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            level = nn.ModuleList()
            for rep in range(cfg.blocks[i]):
                for k, kind in enumerate(cfg.level_config[i]):
                    takes_skip = i < levels - 1 and rep == 0 and k == 0 and kind == "C"
                    level.append(self._block(kind, cfg.c_hidden[i], cfg.c_hidden[i] if takes_skip else 0))
            if i > 0:
                level.append(nn.Sequential(LayerNorm2d(),
                                           nn.ConvTranspose2d(cfg.c_hidden[i], cfg.c_hidden[i - 1], 2, 2)))
            self.up_blocks.append(level)
        self.clf = nn.Sequential(LayerNorm2d(), nn.Conv2d(cfg.c_hidden[0], cfg.c_out * p * p, 1), nn.PixelShuffle(p))
        self.out_mapper = nn.Sequential(LayerNorm2d(), nn.Conv2d(cfg.c_out, cfg.num_labels, 1, bias=False))

    def _block(self, kind: str, c: int, c_skip: int = 0) -> nn.Module:
        cfg = self.config
        if kind == "C":
            return ResBlock(c, c_skip, cfg.kernel_size)
        if kind == "T":
            return TimestepBlock(c, cfg.c_r)
        return AttnBlock(c, cfg.c_cond, cfg.num_heads)

    def condition_sequence(self, byt5_blc: torch.Tensor, clip_bc: torch.Tensor | None,
                           clip_image: torch.Tensor | None) -> torch.Tensor:
        """[ByT5 tokens, CLIP text tokens, CLIP image tokens (per vector, in order)], LayerNormed.

        ``clip_image`` is ``[B, C]`` (one vector) or ``[B, N, C]`` (N vectors, the notebook's list).
        """
        cfg = self.config
        batch = byt5_blc.shape[0]
        parts = [self.byt5_mapper(byt5_blc)]
        if clip_bc is not None:
            parts.append(self.clip_mapper(clip_bc).view(batch, cfg.clip_seq_len, cfg.c_cond))
        if clip_image is not None:
            images_bnc = clip_image[:, None] if clip_image.ndim == 2 else clip_image
            for n in range(images_bnc.shape[1]):
                parts.append(self.clip_image_mapper(images_bnc[:, n]).view(batch, cfg.clip_seq_len, cfg.c_cond))
        return F.layer_norm(torch.cat(parts, dim=1), (cfg.c_cond,), eps=1e-6)

    def forward(self, tokens_bhw: torch.Tensor, r_b: torch.Tensor, byt5_blc: torch.Tensor,
                clip_bc: torch.Tensor | None = None, clip_image: torch.Tensor | None = None,
                attn_weights: torch.Tensor | None = None) -> torch.Tensor:
        r_emb_br = sinusoid_embedding(r_b, self.config.c_r, self.out_mapper[1].weight.dtype)
        cond_blc = self.condition_sequence(byt5_blc, clip_bc, clip_image)
        x = self.embedding(self.in_mapper(tokens_bhw).permute(0, 3, 1, 2))
        level_outputs = []
        for level in self.down_blocks:
            for block in level:
                x = self._run_block(block, x, r_emb_br, cond_blc, attn_weights)
            level_outputs.insert(0, x)
        x = level_outputs[0]
        for i, level in enumerate(self.up_blocks):
            for j, block in enumerate(level):
                skip = level_outputs[i] if isinstance(block, ResBlock) and j == 0 and i > 0 else None
                x = self._run_block(block, x, r_emb_br, cond_blc, attn_weights, skip)
        return self.out_mapper(self.clf(x))

    @staticmethod
    def _run_block(block, x, r_emb_br, cond_blc, attn_weights, skip=None):
        if isinstance(block, ResBlock):
            return block(x, skip)
        if isinstance(block, TimestepBlock):
            return block(x, r_emb_br)
        if isinstance(block, AttnBlock):
            return block(x, cond_blc, attn_weights)
        return block(x)
