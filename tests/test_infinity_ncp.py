"""Nearby Context Pool and Arbitrary Direction Controller: pure bookkeeping, no model."""
from __future__ import annotations

import itertools

import pytest
import torch

from packpath import pack_module

adc = pack_module("nodes.infinity.adc")
ncp_mod = pack_module("nodes.infinity.ncp")
config = pack_module("nodes.infinity.config")
geometry = pack_module("nodes.infinity.geometry")
errors = pack_module("nodes.common.errors")

Extents, Region = config.Extents, geometry.Region
DUMMY = ncp_mod.PatchCache(torch.zeros(1, 1, 1, 1))


def brute_window(region, extents, wrap, pos):
    """Every other position within the extents (frames only backwards), computed naively."""
    f, r, c = pos
    found = set()
    for other in region.positions():
        of, orow, oc = other
        dw = oc - c
        if wrap:
            dw = min(((oc - c) % region.cols, (oc - c) % region.cols - region.cols), key=abs)
        if other != pos and abs(dw) <= extents.w and abs(orow - r) <= extents.h and -extents.f <= of - f <= 0:
            found.add(other)
    return found


def simulate(region, order_name, extents, wrap):
    """Run the pool over a scan, checking the invariants at every step; return the pool sizes."""
    pool = ncp_mod.NearbyContextPool(region, extents, wrap)
    sequence = adc.scan(region, order_name)
    last = pool.last_uses(sequence)
    windows = {pos: brute_window(region, extents, wrap, pos) for pos in sequence}
    sizes = []
    for step, pos in enumerate(sequence):
        selected = pool.select(pos)
        earlier = set(sequence[:step])
        window = windows[pos]
        # Every selected patch is already generated, inside the window, and nothing usable is missed.
        assert {item.pos for item in selected} == window & earlier
        assert len(selected) <= extents.cells - 1
        pool.add(pos, DUMMY)
        sizes.append(len(pool))
        before = set(pool.positions())
        removed = set(pool.remove(step, last))
        selectable_later = set().union(*(windows[q] for q in sequence[step + 1:]))
        wanted = (earlier | {pos}) & selectable_later
        # remove() drops exactly the caches that no later patch can select, and keeps all others.
        assert set(pool.positions()) == wanted
        assert removed == before - wanted
    assert len(pool) == 0
    return sizes


@pytest.mark.parametrize("order", adc.ORDERS)
@pytest.mark.parametrize("extents,wrap", [(Extents(1, 1, 0), False), (Extents(1, 1, 1), False),
                                          (Extents(2, 1, 0), True), (Extents(1, 2, 1), True)])
def test_pool_invariants(order, extents, wrap):
    simulate(Region(0, 0, 0, 2, 4, 5), order, extents, wrap)


def test_pool_memory_does_not_grow_along_the_scan():
    """The pool holds about one scan line: its peak is the same for a 6- and a 60-patch-long strip."""
    ext = Extents(1, 1, 0)
    short = max(simulate(Region(0, 0, 0, 1, 3, 6), "right", ext, False))
    long = max(simulate(Region(0, 0, 0, 1, 3, 60), "right", ext, False))
    assert short == long
    # With a cross-section of at most 2e+1 patches it stays within the window size itself.
    assert long <= ext.cells
    pool = ncp_mod.NearbyContextPool(Region(0, 0, 0, 1, 3, 60), ext)
    order = adc.scan(pool.region, "right")
    assert ncp_mod.peak_pool_size(pool, order, pool.last_uses(order)) == long


def test_remove_returns_exactly_the_expired():
    region = Region(0, 0, 0, 1, 3, 3)
    pool = ncp_mod.NearbyContextPool(region, Extents(1, 1, 0))
    order = adc.scan(region, "down")
    last = pool.last_uses(order)
    for step, pos in enumerate(order[:4]):
        pool.add(pos, DUMMY)
        pool.remove(step, last)
    # After (1,0) every cache is still needed: row 0 by (1,1)/(1,2), (1,0) by (1,1) and row 2.
    assert pool.positions() == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    pool.add(order[4], DUMMY)
    # (1,1) was the last patch whose window holds (0,0).
    assert pool.remove(4, last) == [(0, 0, 0)]


def test_wrap_selects_across_the_seam():
    region = Region.whole(1, 2, 5)
    pool = ncp_mod.NearbyContextPool(region, Extents(1, 1, 0), wrap=True)
    for pos in region.positions():
        pool.add(pos, DUMMY)
    by_pos = {item.pos: item.offset for item in pool.select((0, 1, 0))}
    assert by_pos[(0, 1, 4)] == (-1, 0, 0) and by_pos[(0, 0, 4)] == (-1, -1, 0)
    by_pos = {item.pos: item.offset for item in pool.select((0, 0, 4))}
    assert by_pos[(0, 0, 0)] == (1, 0, 0) and by_pos[(0, 1, 0)] == (1, 1, 0)
    flat = ncp_mod.NearbyContextPool(region, Extents(1, 1, 0), wrap=False)
    for pos in region.positions():
        flat.add(pos, DUMMY)
    assert all(item.pos[2] <= 1 for item in flat.select((0, 1, 0)))
    with pytest.raises(errors.BoundlessError, match="2·e_w\\+1"):
        ncp_mod.NearbyContextPool(Region.whole(1, 2, 2), Extents(1, 1, 0), wrap=True)


@pytest.mark.parametrize("order", adc.ORDERS)
def test_orders_cover_each_patch_once(order):
    region = Region(1, 2, 3, 2, 3, 4)
    sequence = adc.scan(region, order)
    assert sorted(sequence) == sorted(region.positions()) and len(set(sequence)) == region.size
    # Frames run forward in every order.
    assert [p[0] for p in sequence] == sorted(p[0] for p in sequence)


def test_scan_directions():
    region = Region.whole(1, 2, 3)
    assert adc.scan(region, "down")[:4] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    assert adc.scan(region, "up")[:4] == [(0, 1, 0), (0, 1, 1), (0, 1, 2), (0, 0, 0)]
    assert adc.scan(region, "right")[:3] == [(0, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert adc.scan(region, "left")[:3] == [(0, 0, 2), (0, 1, 2), (0, 0, 1)]
    with pytest.raises(errors.BoundlessError, match="unknown patch order"):
        adc.scan(region, "diagonal")


def test_relative_positions_are_a_bijection():
    trained = Extents(1, 1, 1)
    assert trained.cells == 18
    cells = [adc.relative_index((dw, dh, df), trained)
             for dw, dh, df in itertools.product((-1, 0, 1), (-1, 0, 1), (-1, 0))]
    assert sorted(cells) == list(range(18))
    assert adc.center_index(trained) == adc.relative_index((0, 0, 0), trained)
    with pytest.raises(errors.BoundlessError):
        adc.relative_index((0, 0, 1), trained)      # a future frame is never context
    with pytest.raises(errors.BoundlessError):
        adc.relative_index((2, 0, 0), trained)


def _check_plan_precaches(plan, known, extents, wrap):
    """Each phase: steps in scan order, generated = unknown, and every known neighbour that precedes
    a generated patch is pre-cached before it."""
    for phase in plan.phases:
        pool = ncp_mod.NearbyContextPool(phase.region, extents, wrap)
        sequence = adc.scan(phase.region, phase.order)
        index = {p: i for i, p in enumerate(sequence)}
        positions = [s.pos for s in phase.steps]
        assert positions == sorted(positions, key=index.get)
        seen = set()
        for step in phase.steps:
            assert step.generate == (not known(phase, step.pos))
            if step.generate:
                for other, _ in pool.window(step.pos):
                    if index[other] < index[step.pos]:
                        assert other in seen
            seen.add(step.pos)


def test_outpaint_plan_right_then_down():
    layout = adc.extension((1, 2, 3), [("right", 2), ("down", 1)])
    assert layout.final == (1, 3, 5) and layout.shift == (0, 0, 0)
    assert layout.orders == ("right", "down")
    assert layout.regions == (Region(0, 0, 0, 1, 2, 5), Region(0, 0, 0, 1, 3, 5))
    layout = adc.extension((1, 2, 3), [("left", 1), ("up", 2)])
    assert layout.final == (1, 4, 4) and layout.shift == (0, 2, 1)
    assert layout.regions[0] == Region(0, 2, 0, 1, 2, 4)
    with pytest.raises(errors.BoundlessError, match="direction"):
        adc.extension((1, 2, 3), [("sideways", 1)])
    with pytest.raises(errors.BoundlessError, match="whole number"):
        adc.extension((1, 2, 3), [("left", 0)])


@pytest.mark.parametrize("wrap", [False, True])
def test_phase_precaches_needed_known_patches(wrap):
    region = Region.whole(1, 3, 6)
    ext = Extents(1, 1, 0)

    def known(pos):
        return pos[2] < 3                          # left half given, right half to generate

    phase = adc.plan_phase(region, "right", known, ext, wrap, precache_rings=1)
    plan = adc.Plan((phase,))
    _check_plan_precaches(plan, lambda _, pos: known(pos), ext, wrap)
    cached = {s.pos for s in phase.steps if not s.generate}
    # Column 2 is needed, column 1 is its ring; column 0 only with wrap (right neighbour of column 5).
    assert {p[2] for p in cached} == ({0, 1, 2} if wrap else {1, 2})
    assert plan.n_generate == 9
    bare = adc.plan_phase(region, "right", known, ext, False, precache_rings=0)
    assert {s.pos[2] for s in bare.steps if not s.generate} == {2}
