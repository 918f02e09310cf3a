"""Closing a loop (``closing``): a patch that meets finished work ahead of it is chosen among candidates
by how likely the model finds that work after it."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

closing = pack_module("nodes.infinity.closing")
config = pack_module("nodes.infinity.config")
geometry = pack_module("nodes.infinity.geometry")
model_mod = pack_module("nodes.infinity.model")
ncp = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
draws_mod = pack_module("nodes.common.draws")
errors = pack_module("nodes.common.errors")

EXTENTS = config.Extents(1, 1, 0)
SEED = 9                # a seed whose best candidates are not candidate 0 (asserted below)


def tiny(seed: int = 0, **overrides) -> model_mod.InfinityTransformer:
    values = dict(n_embed=32, patch_h=3, patch_w=4, trained_extents=EXTENTS, rope_base=100, mirrored_scan=True)
    return tiny_model(seed, **{**values, **overrides})


def wrap_canvas(model, order: str, batch: int = 1, **options):
    state = sampler.plan_fill(sampler.empty_state(model, 4, 2, 1, batch, EXTENTS, True), order)
    stats = sampler.run(model, state, seed=3, top_k=8, **options)
    return state, stats


@pytest.mark.parametrize("order, ahead, behind", [
    ("right", [(1, 0, 0), (1, 1, 0), (1, -1, 0), (0, 1, 0)], [(-1, 0, 0), (-1, 1, 0), (0, -1, 0)]),
    ("left", [(-1, 0, 0), (-1, -1, 0), (0, 1, 0)], [(1, 0, 0), (1, 1, 0), (0, -1, 0)]),
    ("down", [(0, 1, 0), (-1, 1, 0), (1, 0, 0)], [(0, -1, 0), (1, -1, 0), (-1, 0, 0)]),
    ("up", [(0, -1, 0), (-1, -1, 0), (1, 0, 0)], [(0, 1, 0), (1, 1, 0), (-1, 0, 0)]),
])
def test_ahead_is_the_side_the_scan_has_not_reached_and_earlier_frames_never_are(order, ahead, behind):
    assert all(closing.is_ahead(offset, order) for offset in ahead)
    assert not any(closing.is_ahead(offset, order) for offset in behind)
    assert not closing.is_ahead((1, 0, -1), order)


def test_on_a_360_canvas_only_the_last_column_meets_finished_patches_ahead():
    region = geometry.Region.whole(1, 2, 4)
    pool = ncp.NearbyContextPool(region, EXTENTS, wrap=True)
    cache = ncp.PatchCache(torch.zeros(2, 1, 12, 32))
    for pos in [(0, r, c) for c in range(3) for r in range(2)]:             # columns 0-2 finished
        pool.add(pos, cache)
    assert closing.finished_ahead(pool, (0, 0, 3), "right") == [(0, 0, 0), (0, 1, 0)]
    assert closing.finished_ahead(pool, (0, 1, 2), "right") == []                  # column 3 is not done
    plain = ncp.NearbyContextPool(region, EXTENTS, wrap=False)
    for pos in [(0, r, c) for c in range(3) for r in range(2)]:
        plain.add(pos, cache)
    assert closing.finished_ahead(plain, (0, 0, 3), "right") == []


@pytest.mark.parametrize("order", ("right", "left", "down", "up"))
def test_closing_patches_are_chosen_among_candidates_and_the_rest_is_untouched(order):
    model = tiny(1)
    plain, plain_stats = wrap_canvas(model, order)
    closed, closed_stats = wrap_canvas(model, order, close_candidates=4)
    assert plain_stats.closed == 0 and closed_stats.closed == 2     # one closing patch per row / column
    static, _ = wrap_canvas(model, order, close_candidates=4, decoder="static")   # its own graph for the rows
    assert torch.equal(static.tokens, closed.tokens)
    if order in ("right", "left"):                                   # the closing column comes last
        last = 3 if order == "right" else 0
        keep = torch.ones(4, dtype=torch.bool)
        keep[last] = False
        cols = torch.arange(16) // 4
        assert torch.equal(plain.tokens[..., keep[cols]], closed.tokens[..., keep[cols]])
    assert not torch.equal(plain.tokens, closed.tokens)


def test_the_kept_candidate_is_the_one_under_which_the_patches_ahead_are_most_likely():
    """Recompute by hand, for the first closing patch of a 360° canvas in order right, every candidate's
    score: the patches ahead teacher-forced after it; the run must keep the best one."""
    model = tiny(2)
    batch, count = 2, 4
    state = sampler.plan_fill(sampler.empty_state(model, 4, 2, 1, batch, EXTENTS, True), "right")
    flat = state.plan.flat
    closing_step = next(i for i, (_, step) in enumerate(flat) if step.pos == (0, 0, 3))
    # Run up to the closing patch, then draw its candidates by hand with the run's own streams.
    stop = {"at": closing_step}

    class Stop(Exception):
        pass

    def progress(done, total, preview):
        if done == stop["at"]:
            raise Stop

    with pytest.raises(Stop):
        sampler.run(model, state, seed=SEED, top_k=8, progress=progress)
    pool_state = state                  # read only until the run below goes on
    pos = (0, 0, 3)
    context = pool_state.ncp.select(pos)
    first = draws_mod.Draws(sampler.patch_seed(SEED, pos), "cpu")
    candidate_draws = closing.CandidateDraws(first, sampler.patch_seed(SEED, pos), count, "cpu", draws_mod.MODEL_DEVICE)
    temperatures = sampler.token_temperatures(context, 3, 4, 1.0, 1.0)
    tokens_nt, cache = sampler._sample_patch(model, context, 0, None, count * batch, candidate_draws, temperatures,
                                             (8, 1.0, 0.0), True, lambda i: None)
    by_hand = torch.zeros(count * batch)
    for successor in ((0, 0, 0), (0, 1, 0)):
        for row in range(count * batch):
            behind = [ncp.ContextItem(p, o, ncp.PatchCache(cache.hidden[:, row:row + 1]) if p == pos
                                      else ncp.PatchCache(pool_state.ncp.cache_of(p).hidden[:, row % batch:row % batch + 1]))
                      for p, o in pool_state.ncp.window(successor)
                      if not closing.is_ahead(o, "right") and (p == pos or p in pool_state.ncp)]
            successor_t = geometry.read_patch(pool_state.tokens, successor, 3, 4)[row % batch:row % batch + 1]
            logits, _ = model(successor_t, behind, 0)
            by_hand[row] += logits.log_softmax(-1).gather(-1, successor_t[..., None]).sum()
    best_b = by_hand.view(count, batch).argmax(0)
    assert best_b.tolist() != [0, 0]          # the choice matters in this case
    sampler.run(model, state, seed=SEED, top_k=8, close_candidates=count)
    for b in range(batch):
        chosen = tokens_nt[best_b[b] * batch + b]
        assert torch.equal(geometry.read_patch(state.tokens, pos, 3, 4)[b], chosen)


def test_candidate_zero_draws_from_the_patch_stream_and_the_others_from_their_own():
    probs = torch.rand(6, 10)
    first = draws_mod.Draws(7, "cpu")
    picked = closing.CandidateDraws(first, 7, 3, "cpu", draws_mod.MODEL_DEVICE).categorical(probs)
    assert torch.equal(picked[:2], draws_mod.Draws(7, "cpu").categorical(probs[:2]))
    assert torch.equal(picked[4:], draws_mod.Draws(closing.candidate_seed(7, 2), "cpu").categorical(probs[4:]))


def test_best_candidates_picks_per_batch_row_from_candidate_major_rows():
    score = torch.tensor([0.0, 5.0, 3.0, 1.0, 3.0, 9.0])                      # 3 candidates × batch 2
    assert closing.best_candidates(score, 2).tolist() == [2, 5]               # ties go to the lower candidate


def test_close_candidates_must_be_a_whole_number_of_at_least_one():
    model = tiny(0)
    state = sampler.plan_fill(sampler.empty_state(model, 4, 1, 1, 1, EXTENTS, True), "right")
    for bad in (0, 2.5):
        with pytest.raises(errors.BoundlessError, match="close_candidates"):
            sampler.run(model, state, close_candidates=bad)


@pytest.mark.parametrize("options", [{"neighbour_guidance": 1.5}, {"guidance": 2.0}])
def test_candidates_go_with_guidance_and_per_row_prompts(options):
    """Candidates stack as rows beside guidance groups and a batch of prompts; the patches before the
    closing column are drawn exactly as without candidates."""
    model = tiny(4, text_dim=8)
    text = torch.randn(2, 5, 8)                         # one prompt per batch row
    extra = {"empty_text": torch.zeros(1, 5, 8)} if "guidance" in options else {}
    runs = [wrap_canvas(model, "right", batch=2, text=text, close_candidates=n, **options, **extra) for n in (1, 3)]
    (plain, _), (closed, stats) = runs
    assert stats.closed == 2
    assert torch.equal(plain.tokens[..., :12], closed.tokens[..., :12])
    assert not torch.equal(plain.tokens[..., 12:], closed.tokens[..., 12:])


def test_video_loops_close_in_every_frame_and_the_decoders_agree():
    """A 360° clip of a frame-aligned model: the last column closes in each frame (its patches ahead are
    scored with their previous frame in context, as they were drawn), the same in every decoder."""
    video = config.Extents(1, 1, 1)
    model = tiny(5, trained_extents=video, frame_align=True)
    clips = []
    for decoder in ("dynamic", "static"):
        state = sampler.plan_fill(sampler.empty_state(model, 4, 2, 2, 1, video, True), "right")
        stats = sampler.run(model, state, seed=1, top_k=8, close_candidates=3, decoder=decoder)
        assert stats.closed == 4
        clips.append(state.tokens)
    assert torch.equal(clips[0], clips[1])
    pool = ncp.NearbyContextPool(geometry.Region.whole(2, 2, 4), video, wrap=True)
    cache = ncp.PatchCache(torch.zeros(2, 1, 12, 32))
    for pos in [(f, r, c) for f in range(2) for r in range(2) for c in range(4) if (f, c) != (1, 3)]:
        pool.add(pos, cache)
    context = closing.scoring_context(pool, (1, 0, 0), (1, 0, 3), cache, "right")
    assert {item.pos for item in context} == {(1, 0, 3), (0, 0, 0), (0, 0, 3), (0, 1, 0), (0, 1, 3),
                                              (0, 0, 1), (0, 1, 1)}


def test_a_run_interrupted_inside_a_closing_patch_resumes_to_the_same_canvas(tmp_path):
    """Candidates draw from streams seeded by the patch, so a closing patch interrupted between its tokens
    is drawn again, the same, from a saved state."""
    model = tiny(6)
    reference, _ = wrap_canvas(model, "right", close_candidates=4)
    state = sampler.plan_fill(sampler.empty_state(model, 4, 2, 1, 1, EXTENTS, True), "right")

    class Interrupt(Exception):
        pass

    tokens = 12
    stop = 6 * tokens + 5                        # the 5th token of the 7th patch, the first closing one

    def progress(done, total, preview=None):
        if done == stop:
            raise Interrupt

    with pytest.raises(Interrupt):
        sampler.run(model, state, seed=3, top_k=8, close_candidates=4, progress=progress, progress_unit="token")
    assert state.step == 6
    path = str(tmp_path / "state.safetensors")
    state.save(path)
    resumed = state.load(path)
    stats = sampler.run(model, resumed, seed=3, top_k=8, close_candidates=4)
    assert stats.closed == 2 and torch.equal(resumed.tokens, reference.tokens)
