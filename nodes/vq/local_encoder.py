"""Give a trained VQGAN an encoder whose codes are local: a crop encodes like the same place in the
whole picture.

Why: a taming encoder's codes depend on the whole picture it is given. Its attention blocks mix all
positions, and every GroupNorm normalises with the statistics of the whole picture. Encoding the left
half of a world panorama alone changes 60-80 % of its tokens, and the 1024 codes sit so close together
that a small shift of the latent flips the choice. So the tokens at the edge of a picture a user
outpaints are of a kind the NUWA-Infinity models never saw (a one-token pan keeps 95 % of them:
what matters is how much of the scene is left out, which moves the statistics).

Measured (BENCHMARKS.md, session 9): the GroupNorm statistics carry most of the dependence, not the
attention, and the student below doubles the share of crop tokens that match the whole picture's
(0.29 -> 0.61) while picking other codes among near-duplicate twins (``merge_codes.py`` removes
those). It is a tool for experiments; ``consistency_loss`` is the form meant for training a new
tokenizer. The student keeps everything the world models were trained on: the codebook and the
decoder are left untouched (the same tokens decode to the same pictures), and only the encoder is
fine-tuned as a student of the original ("teacher") one:

* its attention blocks are switched off in place (``proj_out`` zero and frozen, so each block is the
  identity while the taming key layout stays and every loader still reads the file);
* it is shown token-aligned crops of every size and place, and learns the code the teacher chose for
  that position *in the whole picture*: cross-entropy over the codebook distances, plus the squared
  distance to that code, which pulls latents to the middle of their code's cell so small changes of
  context no longer flip it.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from .vqgan import VQGAN


def switch_off_encoder_attention(model: VQGAN) -> int:
    """Make every encoder attention block the identity (``proj_out`` zero, frozen); returns how many."""
    count = 0
    for module in model.encoder.modules():
        if hasattr(module, "proj_out"):
            with torch.no_grad():
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
            for param in module.parameters():
                param.requires_grad_(False)
            count += 1
    return count


class AlignedCropSampler:
    """Token-aligned crops of pictures with their teacher codes.

    ``pictures`` are ``(x_3hw in [-1, 1], codes_hw)`` with ``H, W = factor * (h, w)``; a crop spans
    ``min_tokens`` to ``max_tokens`` tokens on each side and at most ``max_area`` tokens in all, so
    its edges fall anywhere in the picture (or on the picture's own edges)."""

    def __init__(self, pictures: list[tuple[torch.Tensor, torch.Tensor]], factor: int, seed: int,
                 min_tokens: int = 6, max_tokens: int = 48, max_area: int = 512):
        self.pictures, self.factor = pictures, factor
        self.min_tokens, self.max_tokens, self.max_area = min_tokens, max_tokens, max_area
        self.rng = random.Random(seed)

    def one(self) -> tuple[torch.Tensor, torch.Tensor]:
        x_3hw, codes_hw = self.rng.choice(self.pictures)
        h, w = codes_hw.shape
        ch = self.rng.randint(min(self.min_tokens, h), min(self.max_tokens, h))
        cw_cap = min(self.max_tokens, w, max(self.min_tokens, self.max_area // ch))
        cw = self.rng.randint(min(self.min_tokens, cw_cap), cw_cap)
        ty, tx = self.rng.randint(0, h - ch), self.rng.randint(0, w - cw)
        f = self.factor
        crop_3hw = x_3hw[:, ty * f:(ty + ch) * f, tx * f:(tx + cw) * f]
        return crop_3hw, codes_hw[ty:ty + ch, tx:tx + cw]


def code_logits(z_bchw: torch.Tensor, codebook_ke: torch.Tensor, temperature: float) -> torch.Tensor:
    """``-||z - e_k||^2 / temperature`` for every code: ``[B, K, h, w]`` (fp32: distances need it)."""
    z_bhwc = z_bchw.float().permute(0, 2, 3, 1)
    dist_bhwk = (z_bhwc.square().sum(-1, keepdim=True) - 2 * z_bhwc @ codebook_ke.float().t()
                 + codebook_ke.float().square().sum(-1))
    return (-dist_bhwk / temperature).permute(0, 3, 1, 2)


def distill_step(student: VQGAN, opt: torch.optim.Optimizer, crops: list[tuple[torch.Tensor, torch.Tensor]],
                 temperature: float, pull: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimiser step over ``crops`` (of different sizes, so one forward each, gradients summed);
    returns detached 0-d statistics (cross-entropy, pull, share of the teacher's codes chosen)."""
    codebook_ke = student.quantize.embedding.weight.detach()
    opt.zero_grad(set_to_none=True)
    total = {name: torch.zeros((), device=codebook_ke.device) for name in ("ce", "pull", "agree")}
    for x_3hw, codes_hw in crops:
        z_bchw = student.quant_conv(student.encoder(x_3hw[None]))
        logits_bkhw = code_logits(z_bchw, codebook_ke, temperature)
        ce = F.cross_entropy(logits_bkhw, codes_hw[None])
        target_bchw = codebook_ke[codes_hw].permute(2, 0, 1)[None]
        pulled = F.mse_loss(z_bchw.float(), target_bchw)
        ((ce + pull * pulled) / len(crops)).backward()
        total["ce"] += ce.detach() / len(crops)
        total["pull"] += pulled.detach() / len(crops)
        total["agree"] += (logits_bkhw.argmax(1)[0] == codes_hw).float().mean() / len(crops)
    opt.step()
    return total


@torch.no_grad()
def nearest_distance_sq(z_bchw: torch.Tensor, codebook_ke: torch.Tensor) -> float:
    """Mean squared distance of latents to their nearest code: the scale of the code logits."""
    return (-code_logits(z_bchw, codebook_ke, 1.0)).min(1).values.mean().item()


def consistency_loss(model: VQGAN, x_bchw: torch.Tensor, idx_bhw: torch.Tensor, rng: random.Random,
                     min_tokens: int = 4) -> torch.Tensor:
    """For training a tokenizer whose codes are local from the start: a random token-aligned
    sub-crop of the batch, encoded on its own, should pick the codes the whole crop picked there.

    Cross-entropy over the code distances plus the squared distance to those codes, both measured
    in units of the codebook's cell size (``code_spacing_sq``), so the loss has no units; only the
    sub-crop's encoding gets gradients: the whole crop's codes are the target, as in ``distill_step``. The sub-crop is smaller than the crop (``min_tokens`` up to one token less)."""
    f = model.factor
    h, w = idx_bhw.shape[-2:]
    th = rng.randint(min(min_tokens, h - 1), h - 1)
    tw = rng.randint(min(min_tokens, w - 1), w - 1)
    ty, tx = rng.randint(0, h - th), rng.randint(0, w - tw)
    sub_bchw = x_bchw[..., ty * f:(ty + th) * f, tx * f:(tx + tw) * f]
    z_bchw = model.quant_conv(model.encoder(sub_bchw)).float()
    codebook_ke = model.quantize.embedding.weight.detach()
    target_bhw = idx_bhw[:, ty:ty + th, tx:tx + tw]
    target_bchw = codebook_ke[target_bhw].permute(0, 3, 1, 2)
    temperature = code_spacing_sq(codebook_ke)
    logits_bkhw = code_logits(z_bchw, codebook_ke, temperature)
    pulled = (z_bchw - target_bchw).square().sum(1).mean() / temperature
    return F.cross_entropy(logits_bkhw, target_bhw) + pulled


@torch.no_grad()
def code_spacing_sq(codebook_ke: torch.Tensor) -> torch.Tensor:
    """Mean squared distance from each code to its nearest other code: the size of a code's cell."""
    codes = codebook_ke.float()
    dist_kk = torch.cdist(codes, codes).square()
    dist_kk.fill_diagonal_(float("inf"))
    return dist_kk.min(1).values.mean().clamp_min(1e-8)
