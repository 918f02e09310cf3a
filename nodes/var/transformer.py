"""The VAR transformer: a class-conditional GPT-2-like decoder over scales (pure torch).

Parameter names follow the released ``var_d*.pth`` files. The recomputable buffers those files
also carry (``lvl_1L``, ``attn_bias_for_masking``, ``blocks.<i>.attn.zero_k_bias``) are not part of
this module's state dict (they follow from the schedule): the checkpoint loader checks and drops
them (see ``checkpoint.py``).

The modules are stateless: the key/value cache of next-scale sampling is an explicit ``KVCache``
object passed in by the caller, so one loaded model can serve any number of concurrent samplers.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedule import SCHEDULE_256, levels, scale_starts, sequence_length, block_causal_mask

HEAD_DIM = 64
NORM_EPS = 1e-6
MAX_LOG_SCALE = math.log(100.0)   # clamp of the learned per-head attention scale (l2 attention)
LEGACY_ATTENTION_SCALE = 0.25 / math.sqrt(HEAD_DIM)  # plain attention of checkpoints before 2024-04-15


@dataclasses.dataclass(frozen=True)
class VARConfig:
    """Everything a VAR transformer checkpoint's keys and shapes determine."""

    depth: int = 16
    width: int = 1024                  # C
    ffn_hidden: int = 4096             # 4C in every release
    latent_channels: int = 32          # Cvae of the VQVAE the model was trained with
    vocab_size: int = 4096             # V
    num_classes: int = 1000            # N; class_emb has N+1 rows, row N = unconditional
    patch_nums: tuple[int, ...] = SCHEDULE_256
    l2_attention: bool = True          # False for the legacy plain-attention files
    shared_adaln: bool = False         # True for var_d36

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @property
    def length(self) -> int:
        return sequence_length(self.patch_nums)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * 16


@dataclasses.dataclass
class KVCache:
    """Keys (already l2-normalised where the model normalises) and values of every block so far."""

    keys: list = dataclasses.field(default_factory=list)
    values: list = dataclasses.field(default_factory=list)

    def extend(self, block: int, k_bhlc: torch.Tensor, v_bhlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this scale's keys/values of one block; return everything cached for it."""
        if block == len(self.keys):
            self.keys.append(k_bhlc)
            self.values.append(v_bhlc)
        else:
            self.keys[block] = torch.cat((self.keys[block], k_bhlc), dim=2)
            self.values[block] = torch.cat((self.values[block], v_bhlc), dim=2)
        return self.keys[block], self.values[block]


def layer_norm(x_blc: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, eps 1e-6."""
    return F.layer_norm(x_blc, x_blc.shape[-1:], eps=NORM_EPS)


class SelfAttention(nn.Module):
    """Multi-head attention with a q/v bias (no k bias) and optional l2-normalised q, k."""

    def __init__(self, config: VARConfig):
        super().__init__()
        width = config.width
        self.heads = config.heads
        self.l2_attention = config.l2_attention
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        if config.l2_attention:
            self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, self.heads, 1, 1))
        self.proj = nn.Linear(width, width)

    def forward(self, x_blc: torch.Tensor, attn_mask_ll: torch.Tensor | None, cache: KVCache | None,
                block: int) -> torch.Tensor:
        b, l, c = x_blc.shape
        bias_3c = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv_bl3hd = F.linear(x_blc, self.mat_qkv.weight, bias_3c).view(b, l, 3, self.heads, HEAD_DIM)
        q_bhld, k_bhld, v_bhld = qkv_bl3hd.permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2_attention:
            gain_1h11 = self.scale_mul_1H11.clamp_max(MAX_LOG_SCALE).exp()
            q_bhld = F.normalize(q_bhld, dim=-1) * gain_1h11
            k_bhld = F.normalize(k_bhld, dim=-1)
            scale = 1.0
        else:
            scale = LEGACY_ATTENTION_SCALE
        if cache is not None:
            k_bhld, v_bhld = cache.extend(block, k_bhld, v_bhld)
        out_bhld = F.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld, attn_mask=attn_mask_ll, scale=scale)
        return self.proj(out_bhld.transpose(1, 2).reshape(b, l, c))


class FeedForward(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.ffn_hidden)
        self.fc2 = nn.Linear(config.ffn_hidden, config.width)

    def forward(self, x_blc: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_blc), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """Attention + FFN, each modulated by six class-conditioned vectors (gamma1, gamma2, s1, s2, b1, b2)."""

    def __init__(self, config: VARConfig):
        super().__init__()
        self.width = config.width
        self.attn = SelfAttention(config)
        self.ffn = FeedForward(config)
        if config.shared_adaln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, config.width))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 6 * config.width))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Six ``[B,1,C]`` vectors; ``cond`` is ``[B,C]`` (per-block) or ``[B,1,6,C]`` (shared AdaLN)."""
        if hasattr(self, "ada_gss"):
            return (self.ada_gss + cond).unbind(2)
        return self.ada_lin(cond).view(-1, 1, 6, self.width).unbind(2)

    def forward(self, x_blc: torch.Tensor, cond: torch.Tensor, attn_mask_ll: torch.Tensor | None,
                cache: KVCache | None, block: int) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)
        attn_in_blc = layer_norm(x_blc) * (scale1 + 1) + shift1
        x_blc = x_blc + self.attn(attn_in_blc, attn_mask_ll, cache, block) * gamma1
        ffn_in_blc = layer_norm(x_blc) * (scale2 + 1) + shift2
        return x_blc + self.ffn(ffn_in_blc) * gamma2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, config: VARConfig):
        super().__init__()
        self.width = config.width
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 2 * config.width))


class VARTransformer(nn.Module):
    """Predicts all tokens of scale k+1 from the class and the scales up to k (teacher-forced or cached)."""

    def __init__(self, config: VARConfig = VARConfig()):
        super().__init__()
        self.config = config
        c, length = config.width, config.length
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_1LC = nn.Parameter(torch.zeros(1, length, c))
        self.word_embed = nn.Linear(config.latent_channels, c)
        self.class_emb = nn.Embedding(config.num_classes + 1, c)
        self.lvl_embed = nn.Embedding(len(config.patch_nums), c)
        if config.shared_adaln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.blocks = nn.ModuleList(AdaLNBlock(config) for _ in range(config.depth))
        self.head_nm = AdaLNBeforeHead(config)
        self.head = nn.Linear(c, config.vocab_size)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.word_embed.weight.dtype

    @property
    def weight_device(self) -> torch.device:
        return self.word_embed.weight.device

    def level_positions(self) -> torch.Tensor:
        """``lvl_embed(level(t)) + pos_1LC[t]`` for every position, ``[1, L, C]``."""
        level_l = levels(self.config.patch_nums).to(self.weight_device)
        return self.lvl_embed.weight[level_l].unsqueeze(0) + self.pos_1LC

    def condition(self, labels_b: torch.Tensor) -> torch.Tensor:
        """Class embedding ``[B,C]`` (row N is the unconditional class)."""
        return self.class_emb(labels_b.to(self.weight_device))

    def block_condition(self, cond_bc: torch.Tensor) -> torch.Tensor:
        """What every block's AdaLN reads: the class vector, or the shared projection ``[B,1,6,C]``."""
        if self.config.shared_adaln:
            return self.shared_ada_lin(cond_bc).view(-1, 1, 6, self.config.width)
        return cond_bc

    def start_tokens(self, cond_bc: torch.Tensor, lvl_pos_1lc: torch.Tensor) -> torch.Tensor:
        """The single token of scale 0: ``class + pos_start + lvl_pos[0]``, ``[B,1,C]``."""
        return cond_bc.unsqueeze(1) + self.pos_start + lvl_pos_1lc[:, :1]

    def scale_tokens(self, inputs_blv: torch.Tensor, scale: int, lvl_pos_1lc: torch.Tensor) -> torch.Tensor:
        """Tokens of scale ``scale`` >= 1 from their ``[B, pn^2, Cvae]`` input vectors."""
        start, end = scale_starts(self.config.patch_nums)[scale:scale + 2]
        return self.word_embed(inputs_blv.to(self.weight_dtype)) + lvl_pos_1lc[:, start:end]

    def run_blocks(self, x_blc: torch.Tensor, block_cond: torch.Tensor, attn_mask_ll: torch.Tensor | None = None,
                   cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x_blc = block(x_blc, block_cond, attn_mask_ll, cache, i)
        return x_blc

    def logits(self, x_blc: torch.Tensor, cond_bc: torch.Tensor) -> torch.Tensor:
        """Head in float32: ``head(LN(x) * (1 + s) + b)`` -> ``[B, l, V]``."""
        ada = self.head_nm.ada_lin[1]
        scale_shift_bc = F.linear(F.silu(cond_bc.float()), ada.weight.float(), ada.bias.float())
        scale_b1c, shift_b1c = scale_shift_bc.view(-1, 1, 2, self.config.width).unbind(2)
        h_blc = layer_norm(x_blc.float()) * (scale_b1c + 1) + shift_b1c
        return F.linear(h_blc, self.head.weight.float(), self.head.bias.float())

    def teacher_forced_logits(self, labels_b: torch.Tensor, inputs_blv: torch.Tensor) -> torch.Tensor:
        """Logits of all L positions ``[B, L, V]`` from the labels and the ``[B, L-1, Cvae]`` inputs.

        Uses the block-causal mask (a position sees its own scale and all coarser ones); labels are
        used as given, with no label dropout.
        """
        cond_bc = self.condition(labels_b)
        lvl_pos_1lc = self.level_positions()
        x_blc = torch.cat((self.start_tokens(cond_bc, lvl_pos_1lc),
                           self.word_embed(inputs_blv.to(self.weight_dtype)) + lvl_pos_1lc[:, 1:]), dim=1)
        mask_ll = block_causal_mask(self.config.patch_nums).to(self.weight_device)
        return self.logits(self.run_blocks(x_blc, self.block_condition(cond_bc), mask_ll), cond_bc)
