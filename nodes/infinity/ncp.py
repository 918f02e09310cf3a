"""Nearby Context Pool (NCP): the per-layer caches of finished patches that later patches attend to.

When a patch is finished (generated, or pre-cached from known tokens) the hidden states of its
tokens in every layer are stored here (``add``). The next patch attends to the caches of the
already-finished patches inside its window (``select``), and after each patch every cache that no
later patch of the order can select is dropped (``remove``). The work per patch therefore depends on
the extents only; the pool's memory depends on the extents and on how many patches a scan line
holds (the order's cross-section), never on the canvas length along the scan.

Offsets are ``(dw, dh, df)`` of a context patch relative to the current one; frames only look back
(``df <= 0``). With ``wrap`` the column distance is measured modulo the region width, so on a 360°
panorama the rightmost column sees the leftmost one as its right neighbour.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import torch

from ..common.errors import BoundlessError
from .config import Extents
from .geometry import PatchPos, Region

Offset = tuple[int, int, int]  # (dw, dh, df) of a context patch relative to the current patch


@dataclasses.dataclass(frozen=True)
class PatchCache:
    """Hidden states of one finished patch in every layer (detached): what each layer's attention
    reads, i.e. its normalised input, from which the current patch projects context keys/values.

    hidden: ``[depth, B, T, dim]``; entry ``t`` belongs to the patch's token ``t`` (raster order).
    Caching states rather than projected keys/values halves the memory, and in training it lets the
    key/value projections learn from how later patches use a patch as context (the states are
    detached, the projections applied to them are not).
    """

    hidden: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def to(self, device=None, dtype=None) -> "PatchCache":
        return PatchCache(self.hidden.to(device=device, dtype=dtype))


@dataclasses.dataclass(frozen=True)
class ContextItem:
    """One selected context patch: where it is, its offset from the current patch, and its cache."""

    pos: PatchPos
    offset: Offset
    cache: PatchCache


class NearbyContextPool:
    """Caches of finished patches of one region, selected by an (e_w, e_h, e_f) window."""

    def __init__(self, region: Region, extents: Extents, wrap: bool = False):
        if wrap and region.cols < 2 * extents.w + 1:
            raise BoundlessError(
                f"horizontal wrap-around needs a canvas at least 2·e_w+1 = {2 * extents.w + 1} patches wide "
                f"(it is {region.cols}); widen the canvas or lower e_w")
        self.region = region
        self.extents = extents
        self.wrap = wrap
        self._caches: dict[PatchPos, PatchCache] = {}

    # -- geometry ---------------------------------------------------------------------------------
    def window(self, pos: PatchPos) -> list[tuple[PatchPos, Offset]]:
        """Every region position a patch at ``pos`` may attend to (itself excluded), with offsets.

        Ordered by frame offset, then row offset, then column offset, so the attention layout of a
        patch's context is deterministic.
        """
        f, r, c = pos
        reg, ext = self.region, self.extents
        found = []
        for df in range(-ext.f, 1):
            ff = f + df
            if not reg.f0 <= ff < reg.f0 + reg.frames:
                continue
            for dh in range(-ext.h, ext.h + 1):
                rr = r + dh
                if not reg.r0 <= rr < reg.r0 + reg.rows:
                    continue
                for dw in range(-ext.w, ext.w + 1):
                    if df == 0 and dh == 0 and dw == 0:
                        continue
                    if self.wrap:
                        cc = reg.c0 + (c - reg.c0 + dw) % reg.cols
                    else:
                        cc = c + dw
                        if not reg.c0 <= cc < reg.c0 + reg.cols:
                            continue
                    found.append(((ff, rr, cc), (dw, dh, df)))
        return found

    def last_uses(self, order: Sequence[PatchPos]) -> dict[PatchPos, int]:
        """For each position, the last step of ``order`` whose window contains it (-1 if none).

        ``remove(step, last_uses)`` drops a cache once ``step`` has passed that index; computing the
        map once per order keeps the per-patch cost of removal independent of the canvas size.
        """
        last = {pos: -1 for pos in order}
        for step, pos in enumerate(order):
            for other, _ in self.window(pos):
                last[other] = step
        return last

    # -- pool operations --------------------------------------------------------------------------
    def add(self, pos: PatchPos, cache: PatchCache) -> None:
        """Store a finished patch's per-layer cache (replacing an older one for the same patch)."""
        if pos not in self.region:
            raise BoundlessError(f"patch {pos} lies outside the pool's region {self.region.as_tuple()}")
        self._caches[pos] = cache

    def select(self, pos: PatchPos) -> list[ContextItem]:
        """The cached (hence already finished) patches inside the window of ``pos``."""
        return [ContextItem(other, offset, self._caches[other])
                for other, offset in self.window(pos) if other in self._caches]

    def cache_of(self, pos: PatchPos) -> PatchCache:
        """The cache of a finished patch in the pool."""
        return self._caches[pos]

    def remove(self, step: int, last_uses: Mapping[PatchPos, int]) -> list[PatchPos]:
        """Drop every cache whose last user in the order is at or before ``step``; return them."""
        expired = [pos for pos in self._caches if last_uses.get(pos, -1) <= step]
        for pos in expired:
            del self._caches[pos]
        return expired

    def clear(self) -> None:
        self._caches.clear()

    # -- inspection -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._caches)

    def __contains__(self, pos: PatchPos) -> bool:
        return pos in self._caches

    def positions(self) -> list[PatchPos]:
        return sorted(self._caches)

    def items(self) -> Iterator[tuple[PatchPos, PatchCache]]:
        return iter(sorted(self._caches.items()))

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self._caches.values())


def peak_pool_size(pool: NearbyContextPool, order: Sequence[PatchPos], last_uses: Mapping[PatchPos, int],
                   start: int = 0) -> int:
    """Most caches the pool will hold while ``order[start:]`` runs, counted without any tensors.

    The pool's current contents count as already present (a resumed run); the peak is taken right
    after each ``add``, before that step's ``remove``.
    """
    removal_at: dict[int, int] = {}
    live = len(pool)
    for pos in pool.positions():
        step = max(last_uses.get(pos, -1), start)
        removal_at[step] = removal_at.get(step, 0) + 1
    peak = live
    for step in range(start, len(order)):
        live += 1
        expires = max(last_uses.get(order[step], -1), step)
        removal_at[expires] = removal_at.get(expires, 0) + 1
        peak = max(peak, live)
        live -= removal_at.pop(step, 0)
    return peak
