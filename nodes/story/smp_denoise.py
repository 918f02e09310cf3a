"""Training the SMP and its cross-attention through a frozen denoiser: the paper's objective (pure torch).

StoryDiffusion trains its Semantic Motion Predictor end to end: the per-frame embeddings it predicts
from a clip's first and last frame condition a frozen video diffusion model through image-prompt
cross-attention, and the diffusion loss of every frame trains the predictor and the cross-attention
weights. Here the denoiser is any SD-style UNet whose batch items are the clip's frames (plain SD1.5,
or a video model that takes frames as batch items), reached through a ``Denoise`` callable, so this
module needs no ComfyUI: ``scripts/train_smp.py --denoiser`` builds the callable from a ComfyUI model
(``apply_model`` with :mod:`motion_patch`'s attn2 patch, exactly what Apply Motion Conditioning
installs for sampling).

Noise follows ComfyUI's k-diffusion convention: ``x = x0 + sigma * noise`` goes in, the denoised
``x0`` estimate comes out, and the loss is the epsilon error ``((x - denoised) / sigma - noise)^2``
that SD models were trained with. One sigma per clip (a video model is trained that way), drawn
uniformly from the model's training sigmas.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .csa import Attend, sdpa_attention
from .motion_patch import CrossLayer, MotionCrossAttention
from .motion_tokens import ConditionerConfig, MotionConditioner
from .smp import SemanticMotionPredictor, interpolate
from .smp_train import WALK_FRAMES, all_clip_index, random_clip_index

# (noisy latents [R, c, h, w], sigmas [R], attn2 patches by layer key) -> denoised latents [R, c, h, w]
Denoise = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def fresh_conditioner(attn2_modules: Sequence[nn.Module], embed_dim: int, tokens: int = 4,
                      seed: int = 0) -> MotionConditioner:
    """New cross-attention weights for a UNet, initialised as IP-Adapter is: each layer's image keys
    and values start as copies of its text keys and values (``to_k``/``to_v``), so the image tokens
    enter through projections the UNet already reads; the token projection is random."""
    cross_dim = int(attn2_modules[0].to_k.weight.shape[1])
    inner = tuple(int(m.to_q.weight.shape[0]) for m in attn2_modules)
    model = MotionConditioner(ConditionerConfig(embed_dim=embed_dim, tokens=tokens, cross_dim=cross_dim,
                                                inner_dims=inner))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.image_proj.proj.weight.copy_(torch.randn(model.image_proj.proj.weight.shape, generator=generator)
                                           / embed_dim ** 0.5)
        model.image_proj.proj.bias.zero_()
        for index, attn2 in enumerate(attn2_modules):
            model.layer(index).to_k_ip.weight.copy_(attn2.to_k.weight.float())
            model.layer(index).to_v_ip.weight.copy_(attn2.to_v.weight.float())
    return model


def denoising_loss(denoise: Denoise, sigmas_s: torch.Tensor, conditioner: MotionConditioner,
                   layers: Sequence[CrossLayer], embeds_bld: torch.Tensor, latents_blchw: torch.Tensor,
                   generator: torch.Generator, weight: float = 1.0, attend: Attend = sdpa_attention) -> torch.Tensor:
    """Epsilon MSE ``[B, L]`` of every frame of ``B`` clips, each frame conditioned on its embedding.

    Differentiable in ``embeds_bld`` and the conditioner's weights; noise and sigmas come from
    ``generator`` (on the CPU, so a seed gives the same draws on any device)."""
    b, l = latents_blchw.shape[:2]
    x0_r = latents_blchw.flatten(0, 1)                                                  # [R = B*L, c, h, w]
    tokens_rnc = conditioner.image_proj(embeds_bld.flatten(0, 1).to(conditioner.image_proj.proj.weight.dtype))
    patch = MotionCrossAttention(layers, conditioner, tokens_rnc, None, weight, attend)
    patches = {layer.key: patch for layer in layers}
    sigma_b = sigmas_s[torch.randint(0, sigmas_s.shape[0], (b,), generator=generator)]
    sigma_r = sigma_b.repeat_interleave(l).to(x0_r.device, x0_r.dtype).view(-1, 1, 1, 1)
    noise_r = torch.randn(x0_r.shape, generator=generator).to(x0_r.device, x0_r.dtype)
    x_r = x0_r + sigma_r * noise_r
    denoised_r = denoise(x_r, sigma_r.flatten(), patches)
    eps_r = (x_r - denoised_r) / sigma_r
    return (eps_r - noise_r).pow(2).mean(dim=(1, 2, 3)).view(b, l)


@dataclasses.dataclass(frozen=True)
class DenoiserSettings:
    steps: int = 500
    batch: int = 2              # clips per step (each clip is ``frames`` UNet batch items)
    frames: int = WALK_FRAMES   # frames per clip
    lr: float = 1e-4            # predictor
    projection_lr: float = 1e-4  # cross-attention weights (0 = keep them frozen, e.g. a released IP-Adapter)
    weight: float = 1.0         # image-attention scale during training (Apply Motion Conditioning's weight)
    seed: int = 0


def train_through_denoiser(predictor: SemanticMotionPredictor, conditioner: MotionConditioner,
                           layers: Sequence[CrossLayer], denoise: Denoise, sigmas_s: torch.Tensor,
                           embeds_ckfd: torch.Tensor, latents_ckfchw: torch.Tensor, settings: DenoiserSettings,
                           log: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """Adam on random clips of the cycles (embeddings ``[C, K, F, D]`` and latents ``[C, K, F, c, h, w]``
    of the same frames); returns the loss per step. Frame 0 and L-1 condition on their own (given)
    embeddings, the frames between on the predictor's."""
    generator = torch.Generator().manual_seed(settings.seed)
    groups = [{"params": list(predictor.parameters()), "lr": settings.lr}]
    if settings.projection_lr > 0:
        groups.append({"params": list(conditioner.parameters()), "lr": settings.projection_lr})
    conditioner.requires_grad_(settings.projection_lr > 0)
    optimizer = torch.optim.Adam(groups)
    predictor.train()
    conditioner.train()
    device = predictor.input_proj.weight.device
    losses = []
    for step in range(settings.steps):
        where = random_clip_index(embeds_ckfd.shape[0], embeds_ckfd.shape[1], settings.batch, settings.frames,
                                  generator)
        clips_bld, latents = embeds_ckfd[where].to(device), latents_ckfchw[where].to(device)
        embeds_bld = predictor(clips_bld[:, 0], clips_bld[:, -1], settings.frames)
        loss = denoising_loss(denoise, sigmas_s, conditioner, layers, embeds_bld, latents, generator,
                              settings.weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if log:
            log(step, losses[-1])
    predictor.eval()
    conditioner.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def evaluate_denoising(predictor: SemanticMotionPredictor, conditioner: MotionConditioner,
                       layers: Sequence[CrossLayer], denoise: Denoise, sigmas_s: torch.Tensor,
                       embeds_ckfd: torch.Tensor, latents_ckfchw: torch.Tensor, frames: int = WALK_FRAMES,
                       seed: int = 0, batch: int = 2, weight: float = 1.0) -> dict:
    """Mean epsilon MSE on the in-between frames of every clip of ``frames`` frames, conditioned on the
    SMP's embeddings, on linearly interpolated ones (the baseline), and on the true frames' own
    embeddings (what a perfect predictor would reach). Every method sees the same noise and sigmas."""
    where = all_clip_index(embeds_ckfd.shape[0], embeds_ckfd.shape[1], frames)
    clips_nld, latents = embeds_ckfd[where], latents_ckfchw[where]
    device = predictor.input_proj.weight.device
    sums = {"smp": 0.0, "linear": 0.0, "true_frames": 0.0}
    for start in range(0, clips_nld.shape[0], batch):
        truth_bld = clips_nld[start:start + batch].to(device)
        latents_b = latents[start:start + batch].to(device)
        guesses = {"smp": predictor(truth_bld[:, 0], truth_bld[:, -1], frames),
                   "linear": interpolate(truth_bld[:, 0], truth_bld[:, -1], frames), "true_frames": truth_bld}
        for name, embeds_bld in guesses.items():
            generator = torch.Generator().manual_seed(seed + start)
            loss_bl = denoising_loss(denoise, sigmas_s, conditioner, layers, embeds_bld, latents_b, generator, weight)
            sums[name] += float(loss_bl[:, 1:-1].sum())
    count = clips_nld.shape[0] * (frames - 2)
    return {**{name: total / count for name, total in sums.items()}, "frames_scored": count}
