"""The Paella v1 sampler (2022 ``utils.sample``, identical in the Replicate demo).

Progress ``r`` runs over ``linspace(0, 1, T+1)[:-1]``; each step predicts all tokens (CFG as a lerp
against an all-zero condition), applies locally typical filtering, draws by Gumbel-max at the
step's temperature, re-pins known tokens when a mask is given, and re-noises a ``cos(r_next*pi/2)``
fraction of the positions from the start tokens ('start'), the step's input ('prev') or fresh
random tokens ('rand'). RNG order on one CPU generator seeded with ``seed``: ``randint`` (start
tokens, when none are given or a mask is used), per step ``uniform`` over ``[B*H*W, K]``, then
``bernoulli`` for re-noising and, in 'rand' mode, ``randint``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..common.draws import MODEL_DEVICE, Draws
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from .v1_model import PaellaV1

RENOISE_MODES = ("start", "prev", "rand")


def locally_typical(rows_nk: torch.Tensor, mass: float = 0.2, min_tokens: int = 1) -> torch.Tensor:
    """Keep, per row, the classes whose surprisal is closest to the row's entropy, up to ``mass``.

    Classes are ranked by ``|-log p - H|``; the kept prefix is the longest one whose cumulative
    probability (softmax of the raw rows taken in that order) stays below ``mass``, plus the boundary
    class (ties with it are kept too). Removed classes become ``-inf``.
    """
    logp_nk = torch.log_softmax(rows_nk, dim=-1)
    entropy_n1 = -torch.nansum(logp_nk * logp_nk.exp(), dim=-1, keepdim=True)
    deviation_nk = (-logp_nk - entropy_n1).abs()
    sorted_dev_nk, order_nk = torch.sort(deviation_nk)
    cumulative_nk = rows_nk.gather(-1, order_nk).softmax(dim=-1).cumsum(dim=-1)
    boundary_n1 = (cumulative_nk < mass).sum(dim=1, keepdim=True)
    remove_sorted_nk = sorted_dev_nk > sorted_dev_nk.gather(1, boundary_n1)
    if min_tokens > 1:
        remove_sorted_nk[:, :min_tokens] = False
    remove_nk = remove_sorted_nk.scatter(1, order_nk, remove_sorted_nk)
    return rows_nk.masked_fill(remove_nk, float("-inf"))


def check_grid(model: PaellaV1, height: int, width: int) -> None:
    m = model.config.token_multiple
    if height % m or width % m or height < 2 * m or width < 2 * m:
        raise BoundlessError(f"Paella v1 token grids must be multiples of {m} and at least {2 * m} "
                             f"(images multiples of {8 * m} px, at least {16 * m} px), got {width}x{height} tokens")


def check_condition(model: PaellaV1, c: torch.Tensor) -> None:
    width = model.config.c_clip
    if c is None or c.ndim not in (2, 4) or c.shape[1] != width:
        got = None if c is None else tuple(c.shape)
        raise BoundlessError(f"Paella v1 needs one CLIP vector per image [B, {width}] (OpenCLIP ViT-g-14) or a "
                             f"regional map [B, {width}, h, w], got {got}")


def sample_v1(model: PaellaV1, c: torch.Tensor, *, seed: int, size: tuple[int, int], T: int = 12,
              uncond: Optional[torch.Tensor] = None,
              x: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None, starting_t: int = 0,
              temp_range: tuple[float, float] = (1.0, 1.0), typical_filtering: bool = True,
              typical_mass: float = 0.2, typical_min_tokens: int = 1, classifier_free_scale: float = 5.0,
              renoise_steps: int = 11, renoise_mode: str = "start", progress: Progress = no_progress,
              preview: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
              draws: str = MODEL_DEVICE) -> torch.Tensor:
    """Tokens ``[B, H, W]``. ``c``: ``[B, C]`` or a spatial map ``[B, C, h, w]`` (regional prompts).

    uncond: the CFG reference condition (default: all zeros, as trained); x: start tokens (structural
    editing, or the known tokens with a mask); mask: ``[B, H, W]``, 1 = generate, 0 = keep ``x``.
    ``classifier_free_scale`` < 0 disables CFG (0 still runs it).
    """
    if not isinstance(model, PaellaV1):
        raise BoundlessError(f"the v1 sampler needs a Paella v1 checkpoint (model_600000.pt), got "
                             f"{type(model).__name__}; use the v3 sampler for Paella v3")
    check_condition(model, c)
    height, width = size
    check_grid(model, height, width)
    if renoise_mode not in RENOISE_MODES:
        raise BoundlessError(f"unknown renoise mode {renoise_mode!r}; use one of {', '.join(RENOISE_MODES)}")
    if not 0 <= starting_t < T:
        raise BoundlessError(f"starting step {starting_t} must lie in [0, {T - 1}]")
    if mask is not None and x is None:
        raise BoundlessError("a mask needs the start tokens to keep (x); encode the image first")
    batch = c.shape[0]
    num_labels = model.config.num_labels
    device = model.clf.weight.device
    dtype = model.clf.weight.dtype
    for name, grid in (("x", x), ("mask", mask)):
        if grid is not None and tuple(grid.shape) != (batch, height, width):
            raise BoundlessError(f"{name} has shape {tuple(grid.shape)}, expected {(batch, height, width)}")
    c = c.to(device, dtype)
    if uncond is None:
        uncond = torch.zeros_like(c)
    elif uncond.shape != c.shape and not (uncond.ndim == 2 and c.ndim == 4 and uncond.shape == c.shape[:2]):
        raise BoundlessError(f"the unconditional vector {tuple(uncond.shape)} does not match the condition "
                             f"{tuple(c.shape)}")
    else:
        uncond = uncond.to(device, dtype)
        if c.ndim == 4 and uncond.ndim == 2:
            uncond = uncond[:, :, None, None].expand_as(c)
    rng = Draws(seed, device, draws)

    def random_tokens() -> torch.Tensor:
        return rng.randint(num_labels, (batch, height, width))

    generate = None if mask is None else mask.to(device).bool()
    if x is None:
        x = random_tokens()
    elif generate is not None:
        x = torch.where(generate, random_tokens(), x.to(device))
    else:
        x = x.to(device)
    x0 = x
    # float32 schedules as the reference builds them, read once as Python numbers
    r_all = torch.linspace(0, 1, T + 1)
    keep_prob_i = torch.cos(r_all[1:] * math.pi / 2).clamp(0, 1).tolist()   # step i re-noises at r_{i+1}
    temp_i = torch.linspace(temp_range[0], temp_range[1], T).clamp(min=1e-10).tolist()
    r_all = r_all.tolist()
    for i in range(starting_t, T):
        prev = x
        r_b = torch.full((batch,), r_all[i], device=device)
        logits = model(x, c, r_b).float()
        if classifier_free_scale >= 0:
            logits = torch.lerp(model(x, uncond, r_b).float(), logits, classifier_free_scale)
        rows_nk = logits.permute(0, 2, 3, 1).reshape(-1, num_labels)
        if typical_filtering:
            rows_nk = locally_typical(rows_nk, typical_mass, typical_min_tokens)
        uniform_nk = rng.uniform(rows_nk.shape)
        gumbel_nk = -torch.log(-torch.log(uniform_nk + 1e-20) + 1e-20)
        scores_nk = rows_nk / temp_i[i] + gumbel_nk
        x = scores_nk.argmax(dim=-1).view(batch, height, width)
        if generate is not None:
            x = torch.where(generate, x, x0)
        if i < renoise_steps:
            renoise = rng.bernoulli(keep_prob_i[i], (batch, height, width))
            source = {"start": lambda: x0, "prev": lambda: prev, "rand": random_tokens}[renoise_mode]()
            x = torch.where(renoise.bool(), source, x)
        progress(i + 1 - starting_t, T - starting_t, None if preview is None else (lambda tokens=x: preview(tokens)))
    return x
