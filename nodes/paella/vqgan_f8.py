"""Paella v1's tokenizer: ruDALL-E's Gumbel VQGAN f8 on the taming-transformers encoder/decoder.

The encoder and decoder are the pack's taming modules (``nodes.vq.vqgan``); only the Gumbel
quantizer (``quantize.proj`` code logits, ``quantize.embed`` codebook) is specific to this file.

Images in [0, 1] are mapped to [-1, 1], encoded to code logits (``quantize.proj``), and either the
argmax code (deterministic) or a hard Gumbel-softmax sample (Paella v1's own encode) is taken.
Decoding looks up ``quantize.embed`` rows. Pure torch; names match the released state dict; every
size (channels, multipliers, residual blocks, attention levels) is read from the keys.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from ..common.errors import BoundlessError
from ..vq.vqgan import Decoder, Encoder, VQGANConfig


@dataclasses.dataclass(frozen=True)
class VQGANF8Config:
    taming: VQGANConfig         # encoder / decoder layout (its n_embed / embed_dim are unused here)
    quant_width: int            # quant_conv output = quantize.proj input
    embed_dim: int
    n_embed: int

    @property
    def factor(self) -> int:
        return self.taming.factor

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "VQGANF8Config":
        if "quantize.embed.weight" not in shapes or "quantize.proj.weight" not in shapes:
            raise BoundlessError("not a Gumbel VQGAN (ruDALL-E f8): quantize.embed / quantize.proj are missing")
        ch, in_channels = shapes["encoder.conv_in.weight"][:2]
        levels = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        ch_mult = tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in range(levels))
        num_res = len({m.group(1) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
        attn_levels = tuple(sorted({int(m.group(1)) for k in shapes
                                    if (m := re.match(r"encoder\.down\.(\d+)\.attn\.", k))}))
        n_embed, embed_dim = shapes["quantize.embed.weight"]
        taming = VQGANConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res, attn_levels=attn_levels,
                             mid_attn="encoder.mid.attn_1.q.weight" in shapes, in_channels=in_channels,
                             out_ch=shapes["decoder.conv_out.weight"][0], z_channels=shapes["quant_conv.weight"][1],
                             embed_dim=embed_dim, n_embed=n_embed)
        return cls(taming=taming, quant_width=shapes["quant_conv.weight"][0], embed_dim=embed_dim, n_embed=n_embed)


class GumbelQuantize(nn.Module):
    """Code logits and codebook of the Gumbel VQGAN; float32 (code choice and lookup)."""

    keeps_float32 = True

    def __init__(self, z_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)


class VQGANF8(nn.Module):
    def __init__(self, config: VQGANF8Config):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg.taming)
        self.decoder = Decoder(cfg.taming)
        self.quantize = GumbelQuantize(cfg.quant_width, cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.taming.z_channels, cfg.quant_width, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.taming.z_channels, 1)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype encoder and decoder compute in (logits and codebook stay float32)."""
        return self.quant_conv.weight.dtype

    @property
    def codebook(self) -> torch.Tensor:
        """[n_embed, embed_dim]"""
        return self.quantize.embed.weight

    def code_logits(self, image_b3hw: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] -> code logits ``[B, n_embed, H/f, W/f]``."""
        f = self.config.factor
        if image_b3hw.shape[-2] % f or image_b3hw.shape[-1] % f:
            raise BoundlessError(f"the f{f} VQGAN needs image sides that are multiples of {f} px, got "
                                 f"{image_b3hw.shape[-1]}x{image_b3hw.shape[-2]}; crop or resize the image")
        features = self.quant_conv(self.encoder(2 * image_b3hw.to(self.weight_dtype) - 1))
        return self.quantize.proj(features.float())

    def encode(self, image_b3hw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices ``[B, H/f, W/f]``: argmax code, or (with a generator) Paella v1's hard Gumbel sample.

        Gumbel RNG: one ``exponential_`` draw of the logits' shape on the generator's device.
        """
        logits_bkhw = self.code_logits(image_b3hw)
        if generator is None:
            return logits_bkhw.argmax(dim=1)
        exp_bkhw = torch.empty(logits_bkhw.shape, device=generator.device).exponential_(1.0, generator=generator)
        noisy_bkhw = logits_bkhw + (-exp_bkhw.to(logits_bkhw.device).log())
        return noisy_bkhw.softmax(dim=1).max(dim=1).indices

    def decode_indices(self, indices_bhw: torch.Tensor) -> torch.Tensor:
        """Indices -> image ``[B, 3, f*h, f*w]`` in [0, 1]."""
        z_bchw = self.quantize.embed(indices_bhw).permute(0, 3, 1, 2)
        y = self.decoder(self.post_quant_conv(z_bchw.to(self.weight_dtype))).float()
        return (y.clamp(-1.0, 1.0) + 1.0) / 2.0
