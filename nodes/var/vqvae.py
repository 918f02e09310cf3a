"""VAR's multi-scale VQVAE: the taming conv encoder/decoder plus a residual multi-scale quantiser (pure torch).

Module and parameter names follow the released ``vae_ch160v4096z32.pth`` so its state dict loads
strictly. The encoder and decoder are ``vq.vqgan``'s (five levels, attention at the coarsest one and
in the middle) with one difference: VAR's attention block computes q, k and v with a single 1x1
conv (``FusedAttnBlock``). An image becomes K token maps (one per scale of a patch schedule): each
scale quantises what the coarser scales left unexplained, and the decoder sees the sum ``f_hat`` of
all scales' up-sampled, convolved code vectors. The quantiser always computes in float32, whatever
the dtype of the convolutions, because the residual sums are sensitive to rounding.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import BoundlessError
from ..vq.vqgan import Decoder, Encoder, VQGANConfig, group_norm
from .schedule import PIXELS_PER_TOKEN, area_down, bicubic_up, check_schedule, phi_index_table

CHANNEL_MULTIPLIERS = (1, 1, 2, 2, 4)
ENCODER_BLOCKS_PER_LEVEL = 2   # the decoder has one more per level, as in taming
PHI_RESIDUAL_RATIO = 0.5


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """What a VAR VQVAE checkpoint's shapes determine; the rest is fixed by the architecture."""

    ch: int = 160            # base width (encoder.conv_in output channels)
    latent_channels: int = 32  # Cvae
    vocab_size: int = 4096   # V
    num_phis: int = 4        # residual convolutions shared across scales

    def autoencoder(self) -> VQGANConfig:
        """The taming layout of the encoder/decoder: RGB ``[B,3,16P,16P]`` <-> latent ``[B,Cvae,P,P]``."""
        return VQGANConfig(ch=self.ch, ch_mult=CHANNEL_MULTIPLIERS, num_res_blocks=ENCODER_BLOCKS_PER_LEVEL,
                           attn_levels=(len(CHANNEL_MULTIPLIERS) - 1,), mid_attn=True, in_channels=3, out_ch=3,
                           z_channels=self.latent_channels, embed_dim=self.latent_channels,
                           n_embed=self.vocab_size)


class FusedAttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions; one 1x1 conv makes q, k, v in that order."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x_bchw.shape
        qkv_b3cn = self.qkv(self.norm(x_bchw)).reshape(b, 3, c, h * w)
        q_b1nc, k_b1nc, v_b1nc = (qkv_b3cn[:, i].transpose(1, 2).unsqueeze(1) for i in range(3))
        out_b1nc = F.scaled_dot_product_attention(q_b1nc, k_b1nc, v_b1nc)  # scale 1/sqrt(C)
        out_bchw = out_b1nc.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x_bchw + self.proj_out(out_bchw)


class PhiConvs(nn.Module):
    """Holder of the shared residual convolutions (key ``quant_resi.qresi_ls.<j>``); see ``phi``."""

    def __init__(self, channels: int, count: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(count))


class MultiScaleQuantizer(nn.Module):
    """Residual quantisation of a ``P x P`` latent over a patch schedule (see module docstring)."""

    keeps_float32 = True     # codebook distances and the running f_hat sums

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.latent_channels)
        self.quant_resi = PhiConvs(config.latent_channels, config.num_phis)

    @property
    def codebook(self) -> torch.Tensor:
        """``[V, Cvae]`` code vectors."""
        return self.embedding.weight

    def embed(self, idx_bhw: torch.Tensor) -> torch.Tensor:
        """Token map ``[B,h,w]`` -> code vectors ``[B,Cvae,h,w]`` in float32."""
        return self.codebook.float()[idx_bhw].permute(0, 3, 1, 2)

    def phi(self, h_bchw: torch.Tensor, j: int) -> torch.Tensor:
        """``Phi_j(h) = 0.5 h + 0.5 conv3x3_j(h)`` in float32 (the convolution runs in the weights' dtype)."""
        weight_dtype = self.quant_resi.qresi_ls[j].weight.dtype
        conv_bchw = self.quant_resi.qresi_ls[j](h_bchw.to(weight_dtype)).float()
        return h_bchw * (1 - PHI_RESIDUAL_RATIO) + conv_bchw * PHI_RESIDUAL_RATIO

    def scale_contribution(self, h_bchw: torch.Tensor, k: int, patch_nums: tuple[int, ...]) -> torch.Tensor:
        """What scale k adds to ``f_hat``: ``Phi(up(h))``, without the up-sampling at the last scale."""
        last = len(patch_nums) - 1
        j = phi_index_table(len(patch_nums), len(self.quant_resi.qresi_ls))[k]
        if k != last:
            h_bchw = bicubic_up(h_bchw, patch_nums[-1])
        return self.phi(h_bchw, j)

    def nearest_codes(self, z_bchw: torch.Tensor) -> torch.Tensor:
        """Index of the closest code (squared Euclidean, no normalisation) per cell: ``[B,h,w]``."""
        b, c, h, w = z_bchw.shape
        z_nc = z_bchw.permute(0, 2, 3, 1).reshape(-1, c)
        codebook_vc = self.codebook.float()
        distances_nv = torch.addmm(z_nc.square().sum(1, keepdim=True) + codebook_vc.square().sum(1),
                                   z_nc, codebook_vc.T, beta=1, alpha=-2)
        return distances_nv.argmin(dim=1).reshape(b, h, w)

    def latent_to_indices(self, f_bchw: torch.Tensor, patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
        """Residual multi-scale encoding of a ``[B,Cvae,P,P]`` latent into K token maps."""
        rest_bchw = f_bchw.float().clone()
        last = len(patch_nums) - 1
        maps = []
        for k, pn in enumerate(patch_nums):
            z_bchw = area_down(rest_bchw, pn) if k != last else rest_bchw
            idx_bhw = self.nearest_codes(z_bchw)
            maps.append(idx_bhw)
            rest_bchw = rest_bchw - self.scale_contribution(self.embed(idx_bhw), k, patch_nums)
        return maps

    def running_sums(self, maps: list[torch.Tensor], patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
        """``f_hat`` after adding scales 0..k, for every k (float32 ``[B,Cvae,P,P]`` each)."""
        side = patch_nums[-1]
        f_hat_bchw = maps[0].new_zeros((maps[0].shape[0], self.codebook.shape[1], side, side), dtype=torch.float32)
        sums = []
        for k, idx_bhw in enumerate(maps):
            f_hat_bchw = f_hat_bchw + self.scale_contribution(self.embed(idx_bhw), k, patch_nums)
            sums.append(f_hat_bchw)
        return sums


class VQVAE(nn.Module):
    """The multi-scale VQVAE shared by every VAR depth (and both the 256- and 512-px schedules)."""

    def __init__(self, config: VQVAEConfig = VQVAEConfig()):
        super().__init__()
        self.config = config
        autoencoder = config.autoencoder()
        self.encoder = Encoder(autoencoder, attention_block=FusedAttnBlock)
        self.decoder = Decoder(autoencoder, attention_block=FusedAttnBlock)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=1)
        self.quantize = MultiScaleQuantizer(config)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @property
    def weight_device(self) -> torch.device:
        return self.quant_conv.weight.device

    def encode_latent(self, image_bchw: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> pre-quantisation latent ``quant_conv(encoder(x))`` in float32."""
        return self.quant_conv(self.encoder(image_bchw.to(self.weight_dtype))).float()

    def check_image(self, image_bchw: torch.Tensor, patch_nums: tuple[int, ...]) -> None:
        side = patch_nums[-1] * PIXELS_PER_TOKEN
        if image_bchw.ndim != 4 or image_bchw.shape[1] != 3 or tuple(image_bchw.shape[-2:]) != (side, side):
            raise BoundlessError(f"the VQVAE with patch schedule ending in {patch_nums[-1]} needs RGB images of "
                                 f"{side}x{side}, got shape {tuple(image_bchw.shape)}; resize the image to "
                                 f"{side}x{side}")

    def image_to_indices(self, image_bchw: torch.Tensor, patch_nums) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image ``[B,3,16P,16P]`` in [-1, 1] -> (latent ``[B,Cvae,P,P]``, K token maps ``[B,pn,pn]``)."""
        patch_nums = check_schedule(patch_nums)
        self.check_image(image_bchw, patch_nums)
        latent_bchw = self.encode_latent(image_bchw)
        return latent_bchw, self.quantize.latent_to_indices(latent_bchw, patch_nums)

    def check_indices(self, maps: list[torch.Tensor], patch_nums: tuple[int, ...]) -> None:
        sides = tuple(int(m.shape[-1]) for m in maps)
        if sides != patch_nums or any(m.ndim != 3 or m.shape[-2] != m.shape[-1] for m in maps):
            raise BoundlessError(f"token maps of sides {sides} do not follow the patch schedule {patch_nums}")
        top = max(int(m.max()) for m in maps)
        if min(int(m.min()) for m in maps) < 0 or top >= self.config.vocab_size:
            raise BoundlessError(f"token ids must lie in [0, {self.config.vocab_size}) for this VQVAE, got up to "
                                 f"{top}; these tokens come from another tokenizer")

    def fhat_from_indices(self, maps: list[torch.Tensor], patch_nums) -> list[torch.Tensor]:
        """Running sums ``f_hat_k`` over the scales (the debugging view of the decoder input)."""
        patch_nums = check_schedule(patch_nums)
        self.check_indices(maps, patch_nums)
        return self.quantize.running_sums(maps, patch_nums)

    def decode_fhat(self, f_hat_bchw: torch.Tensor) -> torch.Tensor:
        """``f_hat`` -> image in [-1, 1] (clamped)."""
        return self.decoder(self.post_quant_conv(f_hat_bchw.to(self.weight_dtype))).float().clamp(-1.0, 1.0)

    def indices_to_image(self, maps: list[torch.Tensor], patch_nums) -> torch.Tensor:
        """K token maps -> image ``[B,3,16P,16P]`` in [-1, 1]."""
        return self.decode_fhat(self.fhat_from_indices(maps, patch_nums)[-1])
