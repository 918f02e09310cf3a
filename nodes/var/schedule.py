"""Patch schedules of VAR's next-scale prediction and the resampling rules between scales (pure torch).

A schedule ``(pn_0, ..., pn_{K-1})`` lists the side of each square token map, coarsest first. The
transformer sequence is the scales laid end to end (``L = sum(pn^2)``), and the VQVAE quantiser
works on a ``P x P`` latent with ``P = pn_{K-1}``. Neither checkpoint stores the schedule: the
transformer's length ``L`` (or its ``lvl_1L`` buffer) identifies it, and the VQVAE serves any
schedule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
# Present in the authors' training arguments; no released weights use it.
SCHEDULE_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
KNOWN_SCHEDULES = (SCHEDULE_256, SCHEDULE_512, SCHEDULE_1024)

# Pixels per latent cell of the multi-scale VQVAE (four stride-2 downsamplings).
PIXELS_PER_TOKEN = 16


def sequence_length(patch_nums: tuple[int, ...]) -> int:
    return sum(pn * pn for pn in patch_nums)


def scale_starts(patch_nums: tuple[int, ...]) -> list[int]:
    """First sequence position of every scale, plus L at the end."""
    starts = [0]
    for pn in patch_nums:
        starts.append(starts[-1] + pn * pn)
    return starts


def levels(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Scale index of every sequence position, int64 ``[L]``."""
    return torch.cat([torch.full((pn * pn,), k, dtype=torch.int64) for k, pn in enumerate(patch_nums)])


def block_causal_mask(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """Boolean ``[L, L]``: position t may attend to u iff ``level(u) <= level(t)``."""
    lvl_L = levels(patch_nums)
    return lvl_L[None, :] <= lvl_L[:, None]


def schedule_from_levels(lvl_L: torch.Tensor) -> tuple[int, ...] | None:
    """Recover the schedule from a ``lvl_1L`` buffer, or None when it is not a valid level map."""
    lvl_L = lvl_L.reshape(-1)
    if lvl_L.numel() == 0 or bool((lvl_L[1:] < lvl_L[:-1]).any()) or int(lvl_L[0]) != 0:
        return None
    counts = torch.bincount(lvl_L)
    sides = [math.isqrt(int(c)) for c in counts]
    if any(s * s != int(c) or s == 0 for s, c in zip(sides, counts)):
        return None
    return tuple(sides)


def schedule_for_length(length: int) -> tuple[int, ...]:
    """The known schedule with ``length`` positions (680 -> 256 px, 2240 -> 512 px)."""
    for schedule in KNOWN_SCHEDULES:
        if sequence_length(schedule) == length:
            return schedule
    known = ", ".join(f"{sequence_length(s)} ({s[-1] * PIXELS_PER_TOKEN} px)" for s in KNOWN_SCHEDULES)
    raise BoundlessError(f"the transformer has {length} token positions, which matches no VAR patch schedule "
                         f"(known lengths: {known}); the file is not a released VAR checkpoint")


def schedule_for_image(side: int) -> tuple[int, ...]:
    """The known schedule whose finest map covers a ``side x side`` image."""
    for schedule in KNOWN_SCHEDULES:
        if schedule[-1] * PIXELS_PER_TOKEN == side:
            return schedule
    sizes = ", ".join(str(s[-1] * PIXELS_PER_TOKEN) for s in KNOWN_SCHEDULES)
    raise BoundlessError(f"VAR works on square images of {sizes} px, got {side} px; "
                         "resize or crop the image first")


def check_schedule(patch_nums) -> tuple[int, ...]:
    """Validate a user-given schedule: positive, strictly increasing sides."""
    schedule = tuple(int(pn) for pn in patch_nums)
    if not schedule or any(pn <= 0 for pn in schedule) or any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise BoundlessError(f"patch schedule {schedule} must be strictly increasing positive sides, "
                             f"e.g. {SCHEDULE_256}")
    return schedule


def phi_index_table(num_scales: int, num_phis: int) -> tuple[int, ...]:
    """Which of the ``num_phis`` residual convolutions scale k of ``num_scales`` uses.

    Scale k maps to ``k / (K-1)`` in [0, 1] and takes the nearest of ``num_phis`` ticks. With four
    convolutions the ticks are ``linspace(1/12, 11/12, 4)``; otherwise ``linspace(1/(2n), 1-1/(2n), n)``.
    The ticks are built as ``start + i * step`` in float64, the order of operations that decides the
    exact tie of scale 2 of 10 (it goes to convolution 1).
    """
    if num_phis == 1 or num_scales == 1:
        return (0,) * num_scales
    start = 1 / 3 / num_phis if num_phis == 4 else 1 / 2 / num_phis
    stop = 1 - start
    step = (stop - start) / (num_phis - 1)
    ticks = [i * step + start for i in range(num_phis - 1)] + [stop]
    table = []
    for k in range(num_scales):
        at = k / (num_scales - 1)
        distances = [abs(t - at) for t in ticks]
        table.append(distances.index(min(distances)))
    return tuple(table)


def area_down(x_bchw: torch.Tensor, side: int) -> torch.Tensor:
    """Area (adaptive-average) resampling to ``side x side``; windows may overlap."""
    return F.interpolate(x_bchw, size=(side, side), mode="area")


def bicubic_up(x_bchw: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubic (a = -0.75, align_corners=False, unclamped) resampling to ``side x side``."""
    return F.interpolate(x_bchw, size=(side, side), mode="bicubic", align_corners=False)
