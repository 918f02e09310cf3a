"""Arbitrary Direction Controller (ADC): patch orders, relative positions and generation plans.

Training uses four scan orders so the model learns every side of a patch as context:
``right`` (columns left→right, each column top→bottom), ``left`` (columns right→left), ``down``
(rows top→bottom, each row left→right) and ``up`` (rows bottom→top). Frames always run forward.
The order name also selects the model's order embedding, so the model knows which neighbours
are still to come.

Outpainting extends the canvas one direction at a time; each direction uses the scan order that
moves away from the known image (``right`` for extending to the right, ...), so the given patches
come first in the scan and are *pre-cached*: the model runs over their known tokens and their
per-layer caches enter the NCP, without generating anything for them. A combination of directions
is a sequence of such phases on a growing region.

Relative positions are one learned embedding per window cell (dw, dh, df) of the model's trained
extents: (2e_w+1)(2e_h+1)(e_f+1) cells, e.g. 18 for (1, 1, 1). Which cells are actually filled
depends on the order (the "dynamic" part): in ``down`` a patch sees the row above and its left
neighbour, in ``right`` the column to its left and the patch above.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from ..common.errors import BoundlessError
from .config import Extents
from .geometry import PatchPos, Region
from .ncp import NearbyContextPool, Offset

ORDERS = ("right", "left", "down", "up")
# Outpainting direction -> the scan order that moves away from the known image.
DIRECTIONS = {"right": "right", "left": "left", "down": "down", "up": "up"}
# Extending in time: new frames after the last one, scanned with a spatial order.
FUTURE = "future"


def order_id(order: str) -> int:
    if order not in ORDERS:
        raise BoundlessError(f"unknown patch order {order!r}; use one of {', '.join(ORDERS)}")
    return ORDERS.index(order)


def scan(region: Region, order: str) -> list[PatchPos]:
    """Every patch of ``region`` exactly once, frame by frame, in the given scan order."""
    order_id(order)
    rows = range(region.r0, region.r0 + region.rows)
    cols = range(region.c0, region.c0 + region.cols)
    found = []
    for f in range(region.f0, region.f0 + region.frames):
        if order == "right":
            found += [(f, r, c) for c in cols for r in rows]
        elif order == "left":
            found += [(f, r, c) for c in reversed(cols) for r in rows]
        elif order == "down":
            found += [(f, r, c) for r in rows for c in cols]
        else:
            found += [(f, r, c) for r in reversed(rows) for c in cols]
    return found


def relative_index(offset: Offset, trained: Extents) -> int:
    """Row of the model's relative-position table for a context patch at ``offset`` = (dw, dh, df)."""
    dw, dh, df = offset
    if abs(dw) > trained.w or abs(dh) > trained.h or not -trained.f <= df <= 0:
        raise BoundlessError(f"relative offset {offset} lies outside the trained extents "
                             f"{trained.as_tuple()}; use smaller extents")
    return ((df + trained.f) * (2 * trained.h + 1) + (dh + trained.h)) * (2 * trained.w + 1) + (dw + trained.w)


def center_index(trained: Extents) -> int:
    """Table row of the current patch itself (offset (0, 0, 0))."""
    return relative_index((0, 0, 0), trained)


@dataclasses.dataclass(frozen=True)
class Step:
    """One patch of a phase: ``generate`` samples its tokens, otherwise it is pre-cached."""

    pos: PatchPos
    generate: bool


@dataclasses.dataclass(frozen=True)
class Phase:
    """A run of steps in one scan order over one region, sharing one NCP."""

    region: Region
    order: str
    steps: tuple[Step, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The phases a canvas state still has to run; ``flat`` numbers their steps globally."""

    phases: tuple[Phase, ...]

    @property
    def flat(self) -> list[tuple[int, Step]]:
        return [(index, step) for index, phase in enumerate(self.phases) for step in phase.steps]

    @property
    def n_steps(self) -> int:
        return sum(len(phase.steps) for phase in self.phases)

    @property
    def n_generate(self) -> int:
        return sum(step.generate for phase in self.phases for step in phase.steps)

    def phase_start(self, phase_index: int) -> int:
        """Global index of the first step of a phase."""
        return sum(len(phase.steps) for phase in self.phases[:phase_index])


def plan_phase(region: Region, order: str, known: Callable[[PatchPos], bool], extents: Extents,
               wrap: bool = False, precache_rings: int = 1) -> Phase:
    """Steps that fill every unknown patch of ``region`` in ``order``.

    Known patches are pre-cached only where needed: those inside the window of a patch to generate
    that precede it in the scan, plus ``precache_rings`` further rings of known patches that those
    ones attend to, so the needed caches are themselves computed with context. The cost of a phase
    therefore scales with the area to generate, not with the size of the given image.
    """
    if precache_rings < 0:
        raise BoundlessError(f"precache_rings must be >= 0, got {precache_rings}")
    sequence = scan(region, order)
    index = {pos: i for i, pos in enumerate(sequence)}
    geometry = NearbyContextPool(region, extents, wrap)
    targets = [pos for pos in sequence if not known(pos)]
    included = set(targets)
    frontier = targets
    for _ in range(precache_rings + 1):
        ring = set()
        for pos in frontier:
            for other, _ in geometry.window(pos):
                if other not in included and index[other] < index[pos] and known(other):
                    ring.add(other)
        included |= ring
        frontier = ring
    steps = tuple(Step(pos, not known(pos)) for pos in sequence if pos in included)
    return Phase(region, order, steps)


@dataclasses.dataclass(frozen=True)
class Extension:
    """Geometry of an outpainting request on a canvas of ``old`` = (frames, rows, cols) patches.

    final: (frames, rows, cols) after every move. shift: where the old canvas's (0, 0, 0) lands.
    regions: the growing region after each move (one phase per move). orders: each phase's order.
    """

    old: tuple[int, int, int]
    final: tuple[int, int, int]
    shift: tuple[int, int, int]
    regions: tuple[Region, ...]
    orders: tuple[str, ...]


def extension(old: tuple[int, int, int], moves: Sequence[tuple[str, int]], frame_order: str = "down") -> Extension:
    """Lay out a sequence of moves ``(direction, patches)``; direction in DIRECTIONS or "future"."""
    if not moves:
        raise BoundlessError("outpainting needs at least one (direction, patches) move")
    order_id(frame_order)
    frames, rows, cols = old
    grow = {"left": 0, "right": 0, "up": 0, "down": 0, FUTURE: 0}
    for direction, count in moves:
        if direction not in grow:
            raise BoundlessError(f"unknown outpaint direction {direction!r}; use one of "
                                 f"{', '.join(list(DIRECTIONS) + [FUTURE])}")
        if not isinstance(count, int) or count < 1:
            raise BoundlessError(f"outpaint by {count!r} patches: give a whole number of at least 1")
        grow[direction] += count
    final = (frames + grow[FUTURE], rows + grow["up"] + grow["down"], cols + grow["left"] + grow["right"])
    shift = (0, grow["up"], grow["left"])
    f0, r0, c0 = shift
    nf, nr, nc = frames, rows, cols
    regions, orders = [], []
    for direction, count in moves:
        if direction == "left":
            c0 -= count
            nc += count
        elif direction == "right":
            nc += count
        elif direction == "up":
            r0 -= count
            nr += count
        elif direction == "down":
            nr += count
        else:
            nf += count
        regions.append(Region(f0, r0, c0, nf, nr, nc))
        orders.append(frame_order if direction == FUTURE else DIRECTIONS[direction])
    return Extension(old, final, shift, tuple(regions), tuple(orders))
