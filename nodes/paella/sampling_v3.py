"""The official Paella v3 sampler (``src/utils.py``, ``src_distributed/utils.py`` and the notebook).

One algorithm with the three variants' options: start from uniform random tokens (or given start
tokens), predict every token at noise level t, sample, and re-noise a fraction ``t_next`` of the
positions **back to the initial noise tokens**; temperature and CFG scale are linear schedules, CFG is
``cond * w + uncond * (1 - w)`` for the first ``conditional_steps`` steps, and the notebook's attention
re-weighting applies to conditional passes only.

Masked in/out-painting wraps the same loop (v3 has no mask input): known tokens are pinned after
every step. Without a mask every random draw matches the reference bit for bit on CPU:
``randint`` (initial noise), then per step ``multinomial`` over ``[B*H*W, K]`` rows in b, h, w order,
then ``rand`` for re-noising; all from one generator seeded with ``seed`` (``common.draws``: on the
model's device, as the reference, or on the CPU). Schedules are Python floats, so a step waits for
the device at most once (the preview, when one is asked for).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from ..common.draws import MODEL_DEVICE, Draws
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from .v3_model import PaellaV3

MODES = ("multinomial", "argmax", "quant")


@dataclasses.dataclass(frozen=True)
class V3Condition:
    """Encoder outputs for one side (conditional or unconditional) of a v3 CFG pass.

    byt5: ByT5-XL ``last_hidden_state`` ``[B, L, 2560]``; clip: OpenCLIP ViT-H-14 text vector
    ``[B, 1024]`` or None; clip_image: image vector(s) ``[B, 1024]`` / ``[B, N, 1024]`` or None.
    """

    byt5: torch.Tensor
    clip: Optional[torch.Tensor] = None
    clip_image: Optional[torch.Tensor] = None

    def to(self, device, dtype=None) -> "V3Condition":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype or t.dtype)
        return V3Condition(move(self.byt5), move(self.clip), move(self.clip_image))

    def expand(self, batch: int) -> "V3Condition":
        """Repeat a batch-1 condition to ``batch`` rows (other sizes must already match)."""
        def grow(t):
            if t is None or t.shape[0] == batch:
                return t
            if t.shape[0] != 1:
                raise BoundlessError(f"conditioning has batch {t.shape[0]} but {batch} images are sampled; "
                                     "use one prompt or as many prompts as images")
            return t.expand(batch, *t.shape[1:])
        return V3Condition(grow(self.byt5), grow(self.clip), grow(self.clip_image))

    def check(self, model: PaellaV3, what: str) -> None:
        cfg = model.config
        if self.byt5 is None or self.byt5.ndim != 3 or self.byt5.shape[-1] != cfg.byt5_width or self.byt5.shape[1] < 1:
            got = None if self.byt5 is None else tuple(self.byt5.shape)
            raise BoundlessError(f"{what}: Paella v3 needs ByT5 hidden states [B, L, {cfg.byt5_width}], got {got}; "
                                 "connect a Paella v3 conditioning with ByT5-XL states")
        if self.clip is not None and (self.clip.ndim != 2 or self.clip.shape[-1] != cfg.clip_width):
            raise BoundlessError(f"{what}: the CLIP text vector must be [B, {cfg.clip_width}], got "
                                 f"{tuple(self.clip.shape)}; use OpenCLIP ViT-H-14 pooled text embeddings")
        if self.clip_image is not None and (self.clip_image.ndim not in (2, 3)
                                            or self.clip_image.shape[-1] != cfg.clip_width):
            raise BoundlessError(f"{what}: CLIP image vectors must be [B, {cfg.clip_width}] or "
                                 f"[B, N, {cfg.clip_width}], got {tuple(self.clip_image.shape)}")


def notebook_attention_weights(byt5_length: int) -> torch.Tensor:
    """The notebook's re-weighting: one weight per ByT5 position, 1.2, except the last 4 at 0.4."""
    weights = torch.full((byt5_length,), 1.2)
    weights[-4:] = 0.4
    return weights


def check_grid(model: PaellaV3, height: int, width: int) -> None:
    m = model.config.token_multiple
    if height < m or width < m or height % m or width % m:
        raise BoundlessError(f"Paella v3 token grids must be multiples of {m} (images multiples of {4 * m} px), "
                             f"got {width}x{height} tokens; pick a size divisible by {4 * m} px")


def sample_v3(model: PaellaV3, cond: V3Condition, uncond: Optional[V3Condition], *, seed: int,
              shape: tuple[int, int, int], steps: int = 12, renoise_steps: Optional[int] = None,
              temperature: tuple[float, float] = (1.0, 0.2), cfg: tuple[float, float] = (8.0, 8.0),
              t_start: float = 1.0, t_end: float = 0.0, mode: str = "multinomial",
              conditional_steps: Optional[int] = None, quant_steps: Optional[int] = None,
              attn_weights: Optional[torch.Tensor] = None, init_x: Optional[torch.Tensor] = None,
              keep_mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
              codebook: Optional[torch.Tensor] = None,
              quantize: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
              progress: Progress = no_progress,
              preview: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
              draws: str = MODEL_DEVICE) -> torch.Tensor:
    """Tokens ``[B, H, W]`` (int64, on the model's device).

    uncond: None disables CFG. init_x: start tokens (img2img / structural editing: encoded tokens
    re-noised to ``t_start``). keep_mask + known: bool ``[B, H, W]`` (True = generate) and the tokens
    to keep elsewhere (in/out-painting). codebook + quantize: the VQGAN codebook ``[K, c]`` and its
    nearest-index function, needed for the ``quant`` mode. preview(tokens) -> IMAGE for the progress bar.
    """
    if not isinstance(model, PaellaV3):
        raise BoundlessError(f"the v3 sampler needs a Paella v3 checkpoint (paella_v3.pt), got "
                             f"{type(model).__name__}; use the v1 sampler for Paella v1 (model_600000.pt)")
    batch, height, width = shape
    num_labels = model.config.num_labels
    check_grid(model, height, width)
    if steps < 1:
        raise BoundlessError(f"steps must be at least 1, got {steps}")
    if mode not in MODES:
        raise BoundlessError(f"unknown sampling mode {mode!r}; use one of {', '.join(MODES)}")
    renoise_steps = steps - 1 if renoise_steps is None else renoise_steps
    conditional_steps = steps if conditional_steps is None else conditional_steps
    quant_steps = steps if quant_steps is None else quant_steps
    if (mode == "quant" or quant_steps < steps) and (codebook is None or quantize is None):
        raise BoundlessError("the 'quant' sampling mode needs the VQGAN codebook; connect the v3 VQGAN")
    if codebook is not None and codebook.shape[0] != num_labels:
        raise BoundlessError(f"the VQGAN has {codebook.shape[0]} codes but the Paella model predicts {num_labels}; "
                             "use the VQGAN released with this model (vqgan_f4.pt for paella_v3.pt)")
    cond.check(model, "conditioning")
    if uncond is not None:
        uncond.check(model, "unconditional (negative) conditioning")
    device = model.out_mapper[1].weight.device
    dtype = model.out_mapper[1].weight.dtype
    cond = cond.expand(batch).to(device, dtype)
    uncond = None if uncond is None else uncond.expand(batch).to(device, dtype)
    if attn_weights is not None:
        attn_weights = attn_weights.to(device, dtype)
    if keep_mask is not None:
        wanted = (batch, height, width)
        if known is None or tuple(keep_mask.shape) != wanted or tuple(known.shape) != wanted:
            raise BoundlessError(f"in/out-painting needs a token mask and known tokens of shape {wanted}")
        keep_mask = keep_mask.to(device=device, dtype=torch.bool)
        known = known.to(device)

    rng = Draws(seed, device, draws)
    noise0 = rng.randint(num_labels, (batch, height, width))
    if init_x is not None and tuple(init_x.shape) != (batch, height, width):
        raise BoundlessError(f"start tokens have shape {tuple(init_x.shape)}, expected {(batch, height, width)}")
    x = noise0 if init_x is None else init_x.to(device)
    if keep_mask is not None:
        x = torch.where(keep_mask, x, known)
    # float32 schedules as the reference builds them, read once as Python numbers
    t_i = torch.linspace(t_start, t_end, steps + 1).tolist()
    temp_i = torch.linspace(temperature[0], temperature[1], steps).tolist()
    cfg_i = torch.linspace(cfg[0], cfg[1], steps)
    cfg_w, cfg_1mw = cfg_i.tolist(), (1 - cfg_i).tolist()
    for i in range(steps):
        r_b = torch.full((batch,), t_i[i], device=device)     # float32: the level embedding needs it
        logits = model(x, r_b, cond.byt5, cond.clip, cond.clip_image, attn_weights).float()
        if uncond is not None and i < conditional_steps:
            logits_uncond = model(x, r_b, uncond.byt5, uncond.clip, uncond.clip_image).float()
            logits = logits * cfg_w[i] + logits_uncond * cfg_1mw[i]
        step_mode = "quant" if i >= quant_steps else mode
        if step_mode == "argmax":
            x = logits.argmax(dim=1)
        else:
            probs_bkhw = logits.div(temp_i[i]).softmax(dim=1)
            if step_mode == "multinomial":
                # Exactly the reference's view: at batch 1 the reshape is a strided view of the
                # [1, K, H, W] probabilities, and the draw fills its variates in memory order, so
                # making it contiguous would give other tokens (shared OPS.md, RNG contract).
                rows_nk = probs_bkhw.permute(0, 2, 3, 1).reshape(-1, num_labels)
                x = rng.categorical(rows_nk).view(batch, height, width)
            else:
                mixed_nc = probs_bkhw.permute(0, 2, 3, 1).reshape(-1, num_labels).to(codebook.device) @ codebook.float()
                x = quantize(mixed_nc).view(batch, height, width).to(device)
        if keep_mask is not None:
            x = torch.where(keep_mask, x, known)
        if i < renoise_steps:
            u_bhw = rng.rand((batch, height, width))
            x = torch.where(u_bhw <= t_i[i + 1], noise0, x)
            if keep_mask is not None:
                x = torch.where(keep_mask, x, known)
        progress(i + 1, steps, None if preview is None else (lambda tokens=x: preview(tokens)))
    return x
