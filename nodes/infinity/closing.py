"""Closing a loop: drawing a patch that meets finished work ahead of it several times and keeping the best.

A scan order grows a canvas away from what is finished, so a patch's context normally lies behind
it in the scan. Some patches also meet finished patches *ahead* of them: the last column of a 360°
panorama (the first column lies across the seam), or a gap between given regions. The model reads
them (they are in its NCP window), but a patch is drawn token by token from the side behind it and
its rows reach the side ahead last, with whatever they drifted into: on the world panorama model 2
of 12 360° canvases closed with a block of water that stops at the seam (BENCHMARKS.md).

With ``candidates`` N > 1 such a patch is drawn N times in one batch (candidate 0 from the patch's
own random stream, so it is the patch an ordinary run draws, up to the arithmetic of a bigger
batch), and each batch row keeps the candidate under which the finished patches ahead are most
likely: each of them is scored by the model itself, teacher-forced, as if it had been drawn after
the candidate (its context: the finished patches behind it in the order, the candidate among them).
The side ahead thus has its say in the one way an autoregressive model can give it, by how naturally
it would continue each candidate; the side behind already had its say in drawing them. (Adding the
candidate's own log-likelihood to the score closed the 360° seam less on both seed ranges measured:
BENCHMARKS.md "Closing the 360° loop".)
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..common.draws import Draws, stream_seed
from ..common.errors import BoundlessError
from .adc import ORDERS
from .geometry import PatchPos, read_patch
from .model import InfinityTransformer
from .ncp import ContextItem, NearbyContextPool, Offset, PatchCache


def _scan_key(offset: Offset, order: str) -> tuple[int, int]:
    """Where ``offset`` lies along ``order``'s scan, as (major, minor) steps: positive = later."""
    dw, dh, _ = offset
    return {"right": (dw, dh), "left": (-dw, dh), "down": (dh, dw), "up": (-dh, dw)}[order]


def is_ahead(offset: Offset, order: str) -> bool:
    """Whether a patch at ``offset`` (same frame) comes after the current one in ``order``'s scan of a
    plain (not wrapped) canvas, i.e. lies on the side the scan has not reached yet."""
    if order not in ORDERS:
        raise BoundlessError(f"unknown patch order {order!r}; use one of {', '.join(ORDERS)}")
    return offset[2] == 0 and _scan_key(offset, order) > (0, 0)


def finished_ahead(pool: NearbyContextPool, pos: PatchPos, order: str) -> list[PatchPos]:
    """The finished patches in the window of ``pos`` that lie ahead of it in ``order``: the ones a
    patch drawn at ``pos`` has to close up with."""
    return [item.pos for item in pool.select(pos) if is_ahead(item.offset, order)]


def _rows(cache: PatchCache, rows: int) -> PatchCache:
    """A cache with its batch repeated (as whole groups) to ``rows`` rows."""
    b = cache.hidden.shape[1]
    return cache if b == rows else PatchCache(cache.hidden.repeat(1, rows // b, 1, 1))


def scoring_context(pool: NearbyContextPool, successor: PatchPos, pos: PatchPos, candidates: PatchCache,
                    order: str) -> list[ContextItem]:
    """The context of ``successor`` as if it were drawn after the patch at ``pos``: the finished patches
    of its window behind it in ``order`` (earlier frames included), with ``candidates``
    (``[depth, N·B, T, dim]``) at ``pos``. Every cache is repeated to the candidates' rows."""
    rows = candidates.hidden.shape[1]
    context = []
    for other, offset in pool.window(successor):
        if is_ahead(offset, order):
            continue
        if other == pos:
            context.append(ContextItem(other, offset, candidates))
        elif other in pool:
            context.append(ContextItem(other, offset, _rows(pool.cache_of(other), rows)))
    return context


@torch.no_grad()
def successor_log_likelihood(model: InfinityTransformer, pool: NearbyContextPool, tokens_bfhw: torch.Tensor,
                             pos: PatchPos, candidates: PatchCache, order: str,
                             text_of: Callable[[PatchPos], Optional[torch.Tensor]]) -> torch.Tensor:
    """Log-likelihood ``[N·B]`` (float32) of the finished patches ahead of ``pos`` under each candidate
    row of ``candidates``, each patch teacher-forced in its ``scoring_context``; 0 where none is ahead.
    ``text_of``: the prompt of a patch position (``[1 or B, L, C]``) or None."""
    cfg = model.config
    rows = candidates.hidden.shape[1]
    oid = ORDERS.index(order)
    device = model.pos_emb.device
    total_n = torch.zeros(rows, dtype=torch.float32, device=device)
    for successor in finished_ahead(pool, pos, order):
        patch_bt = read_patch(tokens_bfhw, successor, cfg.patch_h, cfg.patch_w).to(device)
        b = patch_bt.shape[0]
        scanned_nt = model.scanned(patch_bt.repeat(rows // b, 1), oid)
        text = text_of(successor)
        if text is not None and text.shape[0] not in (1, rows):
            text = text.repeat(rows // text.shape[0], 1, 1)
        logits_ntv, _ = model(scanned_nt, scoring_context(pool, successor, pos, candidates, order), oid, text)
        total_n += logits_ntv.float().log_softmax(-1).gather(-1, scanned_nt[..., None])[..., 0].sum(-1)
    return total_n


def best_candidates(score_n: torch.Tensor, batch: int) -> torch.Tensor:
    """Row of the best-scoring candidate for each of the ``batch`` outputs: candidates are stacked
    candidate-major (rows ``k·B .. k·B + B - 1`` are candidate ``k``), ties go to the lower ``k``."""
    best_b = score_n.view(-1, batch).argmax(dim=0)
    return best_b * batch + torch.arange(batch, device=score_n.device)


def candidate_seed(seed: int, k: int) -> int:
    """The random stream of candidate ``k`` > 0 of a patch whose own stream is seeded ``seed``."""
    return stream_seed(seed, "candidate", k)


class CandidateDraws:
    """Draws for ``count`` candidates stacked candidate-major: candidate 0 from ``first`` (the patch's
    own stream), candidate ``k`` from its own stream (``candidate_seed``), so each candidate is what
    some single draw would give, and candidate 0 what a run without candidates gives."""

    def __init__(self, first: Draws, seed: int, count: int, device, mode: str):
        self.streams = [first] + [Draws(candidate_seed(seed, k), device, mode) for k in range(1, count)]

    def categorical(self, probs_nk: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream.categorical(chunk)
                          for stream, chunk in zip(self.streams, probs_nk.chunk(len(self.streams)))])
