"""Next-scale sampling of VAR: class-conditional generation and zero-shot editing (pure torch).

The loop follows the authors' ``autoregressive_infer_cfg`` so that, for the same seed on CPU, it
draws the very same tokens:

* one seeded stream (``common.draws.Draws``, on the model's device by default, as the authors'
  ``rng``; on the CPU in "cpu" mode) is the only randomness; it is consumed in a fixed order (labels
  when not given, then per scale one categorical draw over ``B * pn^2`` rows, then Gumbel noise of
  shape ``[B, pn^2, V]`` when ``more_smooth``). The scale loop never waits for the device;
* classifier-free guidance ramps linearly over the scales: ``t = cfg * k / (K-1)`` and
  ``g = (1 + t) * cond - t * uncond``, so the 1x1 scale is unguided;
* top-k keeps ties at the threshold; top-p (after top-k) removes the ascending-sorted prefix whose
  cumulative probability is <= 1 - p but always keeps the largest entry.

Editing (in/out-painting, class-conditional editing) teacher-forces the kept tokens: after each
scale is drawn, the code vectors of kept cells are replaced by those of the source image's tokens,
so the next scale sees the mixed ``f_hat``. Tokens are still drawn everywhere, keeping the RNG
stream identical to unedited sampling.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..common.draws import Draws
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from .schedule import area_down, block_causal_mask, scale_starts
from .transformer import KVCache, VARTransformer
from .vqvae import VQVAE


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Guidance and filtering; the defaults are the authors' demo settings."""

    cfg: float = 4.0
    top_k: int = 900          # 0 = off
    top_p: float = 0.95       # 0 = off
    more_smooth: bool = False  # Gumbel-softmax soft embeddings instead of hard code vectors

    def __post_init__(self):
        if self.top_k < 0:
            raise BoundlessError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise BoundlessError(f"top_p must lie in [0, 1] (0 turns it off), got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class EditGuide:
    """Tokens to keep while sampling: ``source[k]`` ``[B,pn,pn]`` wherever ``keep[k]`` ``[B,pn,pn]`` is true."""

    source: tuple[torch.Tensor, ...]
    keep: tuple[torch.Tensor, ...]


@dataclasses.dataclass(frozen=True)
class SampleResult:
    tokens: tuple[torch.Tensor, ...]          # per scale ``[B,pn,pn]``: what entered f_hat
    drawn: tuple[torch.Tensor, ...]           # per scale ``[B,pn,pn]``: the raw draws (edit-kept cells too)
    labels: torch.Tensor                      # ``[B]`` class ids used (N = unconditional)
    f_hat: torch.Tensor                       # ``[B,Cvae,P,P]`` float32 decoder input


def resolve_labels(labels, batch_size: int, num_classes: int, draws: Draws) -> torch.Tensor:
    """Class ids ``[B]`` (int64, CPU) from None (drawn uniformly), an int, or a sequence/tensor.

    A negative id or ``num_classes`` means unconditional. Drawing consumes the generator exactly as
    the authors' sampler does: one multinomial of B draws over a uniform row of N classes.
    """
    if batch_size < 1:
        raise BoundlessError(f"batch size must be at least 1, got {batch_size}")
    if labels is None:
        uniform_1n = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=draws.where)
        return torch.multinomial(uniform_1n, num_samples=batch_size, replacement=True,
                                 generator=draws.generator).reshape(batch_size).cpu()
    if isinstance(labels, int):
        labels = [labels] * batch_size
    labels_b = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
    if labels_b.numel() == 1 and batch_size > 1:
        labels_b = labels_b.expand(batch_size)
    if labels_b.numel() != batch_size:
        raise BoundlessError(f"got {labels_b.numel()} class labels for a batch of {batch_size}; give one label "
                             "or one per image")
    bad = labels_b[(labels_b > num_classes) | (labels_b < -1)]
    if bad.numel():
        raise BoundlessError(f"class id {int(bad[0])} is out of range: this model knows classes 0..{num_classes - 1} "
                             f"(use -1 or {num_classes} for unconditional)")
    return torch.where(labels_b < 0, torch.full_like(labels_b, num_classes), labels_b)


def guided_logits(logits_2blv: torch.Tensor, cfg: float, ratio: float) -> torch.Tensor:
    """CFG with the linear ramp: rows ``[:B]`` conditional, ``[B:]`` unconditional."""
    batch = logits_2blv.shape[0] // 2
    t = cfg * ratio
    return (1 + t) * logits_2blv[:batch] - t * logits_2blv[batch:]


def filter_logits(logits_blv: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k (ties at the k-th value survive), then top-p; removed entries become -inf (new tensor)."""
    vocab = logits_blv.shape[-1]
    if top_k > 0:
        kth_bl1 = logits_blv.topk(min(top_k, vocab), dim=-1, largest=True, sorted=False)[0].amin(-1, keepdim=True)
        logits_blv = logits_blv.masked_fill(logits_blv < kth_bl1, -torch.inf)
    if top_p > 0:
        sorted_blv, order_blv = logits_blv.sort(dim=-1, descending=False)
        drop_sorted_blv = sorted_blv.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted_blv[..., -1:] = False
        drop_blv = torch.zeros_like(drop_sorted_blv).scatter(-1, order_blv, drop_sorted_blv)
        logits_blv = logits_blv.masked_fill(drop_blv, -torch.inf)
    return logits_blv


def draw_tokens(filtered_blv: torch.Tensor, draws: Draws) -> torch.Tensor:
    """One token per (batch, position) row from ``softmax`` (the authors' one-sample multinomial): ``[B, l]``."""
    b, l, vocab = filtered_blv.shape
    probs_nv = filtered_blv.float().softmax(dim=-1).reshape(b * l, vocab)
    return draws.categorical(probs_nv).reshape(b, l)


def gumbel_soft_codes(filtered_blv: torch.Tensor, ratio: float, draws: Draws,
                      codebook_vc: torch.Tensor) -> torch.Tensor:
    """``more_smooth`` embeddings ``softmax((g * (1 + r) + G) / tau) @ E``: ``[B, l, Cvae]`` float32."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits_blv = filtered_blv.float() * (1 + ratio)
    gumbel_blv = -draws.exponential_like(logits_blv).log()
    weights_blv = ((logits_blv + gumbel_blv) / tau).softmax(dim=-1)
    return weights_blv.to(codebook_vc.device) @ codebook_vc.float()


def keep_maps_from_mask(keep_hw: torch.Tensor, patch_nums: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Per-scale boolean keep maps from a ``[B,P,P]`` (or ``[P,P]``) map of 1 = keep, 0 = generate.

    Each scale takes the bilinear (align_corners=False, no antialias) resize of the map and keeps
    cells above 0.5; the 1x1 scale (any scale with at most 3 cells) is always kept.
    """
    keep_bhw = keep_hw.float().reshape(-1, *keep_hw.shape[-2:])
    maps = []
    for pn in patch_nums:
        if pn * pn <= 3:
            maps.append(torch.ones(keep_bhw.shape[0], pn, pn, dtype=torch.bool, device=keep_bhw.device))
        else:
            resized_b1hw = F.interpolate(keep_bhw.unsqueeze(1), size=(pn, pn), mode="bilinear", align_corners=False)
            maps.append(resized_b1hw[:, 0] > 0.5)
    return tuple(maps)


# running f_hat [B,Cvae,P,P] -> preview IMAGE [1,H,W,3] in [0, 1]
PreviewDecoder = Callable[[torch.Tensor], Optional[torch.Tensor]]


def sample(transformer: VARTransformer, vae: VQVAE, batch_size: int, draws: Draws,
           labels=None, settings: SamplingSettings = SamplingSettings(), guide: EditGuide | None = None,
           use_cache: bool = True, progress: Progress = no_progress,
           preview: PreviewDecoder | None = None) -> SampleResult:
    """Sample token maps at every scale of the transformer's schedule (see module docstring).

    ``use_cache=False`` recomputes the whole block-causal prefix at each scale instead of reusing
    cached keys/values; it gives the same tokens and exists to check the cache. ``preview`` maps
    the running ``f_hat`` to a preview image for ``progress`` (called lazily).
    """
    config = transformer.config
    patch_nums = config.patch_nums
    if config.latent_channels != vae.config.latent_channels or config.vocab_size != vae.config.vocab_size:
        raise BoundlessError(f"the transformer expects a VQVAE with {config.latent_channels} latent channels and "
                             f"{config.vocab_size} codes, but this VQVAE has {vae.config.latent_channels} and "
                             f"{vae.config.vocab_size}; use the VQVAE released with this transformer")
    labels_b = resolve_labels(labels, batch_size, config.num_classes, draws)
    device = transformer.weight_device
    quantizer = vae.quantize
    codebook_vc = quantizer.codebook.float()
    last = len(patch_nums) - 1
    starts = scale_starts(patch_nums)

    uncond_b = torch.full_like(labels_b, config.num_classes)
    cond_2bc = transformer.condition(torch.cat((labels_b, uncond_b)))
    block_cond = transformer.block_condition(cond_2bc)
    lvl_pos_1lc = transformer.level_positions()
    tokens_2blc = transformer.start_tokens(cond_2bc, lvl_pos_1lc)
    cache = KVCache() if use_cache else None
    prefix: list[torch.Tensor] = []   # all scales' input tokens, for the cache-free path
    full_mask_ll = None if use_cache else block_causal_mask(patch_nums).to(device)

    f_hat_bchw = torch.zeros(batch_size, config.latent_channels, patch_nums[-1], patch_nums[-1],
                             dtype=torch.float32, device=device)
    kept, drawn = [], []
    for k, pn in enumerate(patch_nums):
        ratio = k / last if last else 0.0
        if use_cache:
            hidden_2blc = transformer.run_blocks(tokens_2blc, block_cond, None, cache)
        else:
            prefix.append(tokens_2blc)
            end = starts[k + 1]
            hidden_2blc = transformer.run_blocks(torch.cat(prefix, dim=1), block_cond,
                                                 full_mask_ll[:end, :end])[:, starts[k]:]
        logits_blv = guided_logits(transformer.logits(hidden_2blc, cond_2bc), settings.cfg, ratio)
        filtered_blv = filter_logits(logits_blv, settings.top_k, settings.top_p)
        idx_bl = draw_tokens(filtered_blv, draws)
        idx_bhw = idx_bl.reshape(batch_size, pn, pn).to(device)
        if settings.more_smooth:
            codes_blc = gumbel_soft_codes(filtered_blv, ratio, draws, codebook_vc)
            h_bchw = codes_blc.transpose(1, 2).reshape(batch_size, config.latent_channels, pn, pn)
        else:
            h_bchw = quantizer.embed(idx_bhw)
        drawn.append(idx_bhw)
        if guide is not None:
            keep_b1hw = guide.keep[k].to(device).unsqueeze(1)
            source_bhw = guide.source[k].to(device)
            h_bchw = torch.where(keep_b1hw, quantizer.embed(source_bhw), h_bchw)
            idx_bhw = torch.where(keep_b1hw[:, 0], source_bhw, idx_bhw)
        kept.append(idx_bhw)
        f_hat_bchw = f_hat_bchw + quantizer.scale_contribution(h_bchw, k, patch_nums)
        if k != last:
            inputs_blv = area_down(f_hat_bchw, patch_nums[k + 1]).flatten(2).transpose(1, 2)
            tokens_2blc = transformer.scale_tokens(inputs_blv, k + 1, lvl_pos_1lc).repeat(2, 1, 1)
        progress(k + 1, len(patch_nums), _lazy_preview(preview, f_hat_bchw))
    return SampleResult(tokens=tuple(kept), drawn=tuple(drawn), labels=labels_b, f_hat=f_hat_bchw)


def _lazy_preview(preview: PreviewDecoder | None, f_hat_bchw: torch.Tensor):
    if preview is None:
        return None
    return lambda: preview(f_hat_bchw)


def decoded_preview(vae: VQVAE) -> PreviewDecoder:
    """Preview = the first image decoded from the running ``f_hat``: coarse scales look blurred,
    and each scale sharpens it. Costs one single-image VQVAE decode per scale."""
    def decode(f_hat_bchw: torch.Tensor) -> torch.Tensor:
        return ((vae.decode_fhat(f_hat_bchw[:1]) + 1) * 0.5).permute(0, 2, 3, 1).cpu()
    return decode


def edit_guide(vae: VQVAE, image_bchw: torch.Tensor, keep_hw: torch.Tensor,
               patch_nums: tuple[int, ...]) -> EditGuide:
    """Source tokens of an image in [-1, 1] plus the per-scale keep maps of a ``[P,P]``/``[B,P,P]`` map."""
    side = patch_nums[-1]
    if tuple(keep_hw.shape[-2:]) != (side, side):
        raise BoundlessError(f"the keep map must be {side}x{side} (one cell per finest token), got "
                             f"{tuple(keep_hw.shape)}")
    _, source = vae.image_to_indices(image_bchw, patch_nums)
    keep = keep_maps_from_mask(keep_hw.to(image_bchw.device), patch_nums)
    batch = image_bchw.shape[0]
    if keep[0].shape[0] not in (1, batch):
        raise BoundlessError(f"got {keep[0].shape[0]} masks for {batch} images; give one mask or one per image")
    keep = tuple(m.expand(batch, -1, -1) for m in keep)
    return EditGuide(source=tuple(source), keep=keep)


def teacher_forcing_inputs(vae: VQVAE, maps: list[torch.Tensor], patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Transformer inputs ``[B, L-1, Cvae]`` for the token maps of scales ``0..K-2``.

    The pn_{k+1}^2 inputs of scale k+1 are the running sum ``f_hat`` after scale k, area-resized to
    ``pn_{k+1}`` and flattened row-major.
    """
    if len(maps) != len(patch_nums) - 1:
        raise BoundlessError(f"teacher forcing needs the token maps of the first {len(patch_nums) - 1} scales, "
                             f"got {len(maps)}")
    sums = vae.quantize.running_sums(list(maps), patch_nums)
    return torch.cat([area_down(f_hat_bchw, patch_nums[k + 1]).flatten(2).transpose(1, 2)
                      for k, f_hat_bchw in enumerate(sums)], dim=1)
