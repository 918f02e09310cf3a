"""NUWA-Infinity sampling: reproducibility, interrupt/resume, state files, outpainting, errors."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

adc = pack_module("nodes.infinity.adc")
config = pack_module("nodes.infinity.config")
ncp_mod = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
errors = pack_module("nodes.common.errors")

Extents = config.Extents


class Interrupt(Exception):
    pass


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_model(0)
    first = sampler.generate_canvas(model, 3, 2, batch=2, seed=7, top_k=8)
    again = sampler.generate_canvas(model, 3, 2, batch=2, seed=7, top_k=8)
    other = sampler.generate_canvas(model, 3, 2, batch=2, seed=8, top_k=8)
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)
    assert not torch.equal(first.tokens[0], first.tokens[1])      # batch rows draw differently
    assert first.complete and first.finished and first.ncp is None
    assert int(first.tokens.min()) >= 0


def test_kv_cache_on_and_off_give_identical_tokens():
    model = tiny_model(1, torch.float64)
    with_cache = sampler.generate_canvas(model, 2, 2, seed=3)
    without = sampler.generate_canvas(model, 2, 2, seed=3, use_kv_cache=False)
    assert torch.equal(with_cache.tokens, without.tokens)


def test_top_k_one_is_greedy():
    model = tiny_model(1)
    greedy = sampler.generate_canvas(model, 2, 2, temperature=0)
    top1 = sampler.generate_canvas(model, 2, 2, seed=99, top_k=1)
    assert torch.equal(greedy.tokens, top1.tokens)


@pytest.mark.parametrize("unit,stop_at", [("token", 7), ("patch", 3)])
def test_interrupt_save_resume_matches_uninterrupted(tmp_path, unit, stop_at):
    model = tiny_model(2)
    reference = sampler.generate_canvas(model, 4, 3, seed=11, order="right")
    state = state_mod.plan_fill(state_mod.empty_state(model, 4, 3), "right")
    calls = []

    def progress(done, total, preview=None):
        calls.append((done, total))
        if len(calls) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        sampler.run(model, state, seed=11, progress=progress, progress_unit=unit)
    # Consistent between calls: exactly the committed patches are done and known.
    committed = sum(step.generate for _, step in state.plan.flat[:state.step])
    # Token mode calls 4 times per 4-token patch, the 4th right after the patch is committed.
    assert int(state.done.sum()) == committed == (stop_at if unit == "patch" else stop_at // 4)
    assert int((state.tokens >= 0).sum()) == committed * 4
    path = str(tmp_path / "state.safetensors")
    state.save(path)
    resumed = state_mod.CanvasState.load(path)
    more = []
    sampler.run(model, resumed, seed=11, progress=lambda d, t, p=None: more.append((d, t)), progress_unit=unit)
    assert torch.equal(resumed.tokens, reference.tokens)
    total = 12 * (4 if unit == "token" else 1)
    assert calls[-1][1] == total and more[-1] == (total, total)
    assert more[0][0] == (committed * 4 + 1 if unit == "token" else committed + 1)


def test_state_file_round_trip(tmp_path):
    model = tiny_model(3)
    state = state_mod.plan_fill(state_mod.state_from_tokens(
        model, torch.randint(0, 64, (2, 4, 6)), extents=Extents(1, 1, 0), tokenizer="tok", factor=16), "down")
    state = state_mod.plan_outpaint(state, [("right", 2), ("up", 1)])

    def stop(done, total, preview=None):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        sampler.run(model, state, seed=1, progress=stop)
    assert state.ncp is not None and len(state.ncp) > 0
    path = str(tmp_path / "s.safetensors")
    state.save(path)
    loaded = state_mod.CanvasState.load(path)
    assert torch.equal(loaded.tokens, state.tokens) and torch.equal(loaded.done, state.done)
    assert loaded.plan == state.plan and loaded.step == state.step
    assert (loaded.extents, loaded.wrap, loaded.tokenizer, loaded.factor) == (Extents(1, 1, 0), False, "tok", 16)
    assert loaded.model_fingerprint == model.fingerprint()
    assert loaded.ncp.region == state.ncp.region and loaded.ncp.positions() == state.ncp.positions()
    for (pos, cache), (_, original) in zip(loaded.ncp.items(), state.ncp.items()):
        assert torch.equal(cache.hidden, original.hidden)
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(errors.BoundlessError, match="not a readable"):
        state_mod.CanvasState.load(str(tmp_path / "bad.safetensors"))


def test_outpaint_keeps_the_image_and_precaches_its_border():
    model = tiny_model(4)
    given = torch.randint(0, 64, (1, 4, 4))
    state = state_mod.state_from_tokens(model, given)
    grown = sampler.outpaint(model, state, "left", 3, seed=2)
    assert grown.grid == (1, 2, 5) and grown.complete
    assert torch.equal(grown.frame_tokens()[:, :, 6:], given)          # the image moved right, unchanged
    assert torch.equal(state.tokens[:, 0], given) and state.plan.n_steps == 0   # input untouched
    cached = [s.pos for s in grown.plan.phases[0].steps if not s.generate]
    assert sorted(cached) == [(0, 0, 3), (0, 0, 4), (0, 1, 3), (0, 1, 4)]
    chained = sampler.outpaint(model, grown, "down", 1, seed=2)
    assert chained.grid == (1, 3, 5) and torch.equal(chained.tokens[:, :, :4], grown.tokens)


def test_outpaint_combination_and_video_frames():
    model = tiny_model(5)
    state = state_mod.state_from_tokens(model, torch.randint(0, 64, (1, 2, 2)))
    grown = state_mod.plan_outpaint(state, [("right", 1), ("down", 1), ("left", 1), ("up", 1)])
    assert [p.order for p in grown.plan.phases] == ["right", "down", "left", "up"]
    assert grown.plan.n_generate == 3 * 3 - 1
    sampler.run(model, grown, seed=0)
    assert grown.complete and torch.equal(grown.tokens[:, 0, 2:4, 2:4], state.tokens[:, 0])
    video = state_mod.plan_outpaint(state, [("future", 2)])
    assert video.grid == (3, 1, 1)
    sampler.run(model, video, seed=0)
    assert video.complete and torch.equal(video.tokens[:, 0], state.tokens[:, 0])


def test_wrap_outpaint_closes_the_loop():
    model = tiny_model(6)
    state = state_mod.state_from_tokens(model, torch.randint(0, 64, (1, 2, 6)), wrap=True)
    grown = state_mod.plan_outpaint(state, [("right", 2)])
    # The last new column (4) sees column 0 across the seam, so column 0 is pre-cached too.
    assert {s.pos[2] for s in grown.plan.phases[0].steps if not s.generate} == {0, 1, 2}
    contexts = []
    original = ncp_mod.NearbyContextPool.select

    def spy(self, pos):
        found = original(self, pos)
        contexts.append((pos, {item.pos for item in found}))
        return found

    ncp_mod.NearbyContextPool.select = spy
    try:
        sampler.run(model, grown, seed=0)
    finally:
        ncp_mod.NearbyContextPool.select = original
    assert {(0, 0, 3), (0, 0, 0)} <= dict(contexts)[(0, 0, 4)]


def test_regional_text_is_asked_per_patch():
    model = tiny_model(7, text_dim=8)
    prompts = {0: torch.randn(1, 2, 8), 1: torch.randn(1, 3, 8)}
    asked = []

    def text(pos):
        asked.append(pos)
        return prompts[pos[2] % 2]

    sampler.generate_canvas(model, 2, 2, text=text, seed=0)
    assert sorted(asked) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]


def test_progress_and_preview():
    model = tiny_model(8)
    seen = []

    def progress(done, total, preview=None):
        seen.append((done, total, preview()))

    def preview(state, pos):
        return torch.full((1, 2, 2, 3), float(state.done.sum()))

    sampler.generate_canvas(model, 3, 1, progress=progress, preview=preview)
    assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [float(img[0, 0, 0, 0]) for _, _, img in seen] == [1.0, 2.0, 3.0]


def test_errors():
    model = tiny_model(0)
    with pytest.raises(errors.BoundlessError, match="multiple"):
        state_mod.state_from_tokens(model, torch.zeros(1, 3, 4, dtype=torch.int64))
    with pytest.raises(errors.BoundlessError, match="trained for"):
        state_mod.empty_state(model, 3, 3, extents=Extents(2, 1, 0))
    with pytest.raises(errors.BoundlessError, match="partly known"):
        partial = torch.zeros(1, 2, 2, dtype=torch.int64)
        partial[0, 0, 0] = -1
        state_mod.state_from_tokens(model, partial)
    with pytest.raises(errors.BoundlessError, match="codes"):
        state_mod.state_from_tokens(model, torch.full((1, 2, 2), 64, dtype=torch.int64))
    with pytest.raises(errors.BoundlessError, match="bound"):
        state_mod.empty_state(model, 4096, 2048)
    with pytest.raises(errors.BoundlessError, match="wrap"):
        state_mod.empty_state(model, 2, 2, wrap=True)
    state = state_mod.plan_fill(state_mod.empty_state(model, 3, 2), "down")
    with pytest.raises(errors.BoundlessError, match="another NUWA-Infinity model"):
        sampler.run(tiny_model(1), state)
    with pytest.raises(errors.BoundlessError, match="GiB bound"):
        sampler.run(model, state, max_pool_bytes=1024)
    with pytest.raises(errors.BoundlessError, match="progress_unit"):
        sampler.run(model, state, progress_unit="frame")
    with pytest.raises(errors.BoundlessError, match="crop"):
        state_mod.crop_state(state, 2, 0, 2, 2)
    assert state.step == 0 and not state.done.any()        # refused runs leave the state alone


def test_crop_keeps_tokens_and_drops_wrap_unless_full_width():
    model = tiny_model(0)
    tokens = torch.randint(0, 64, (1, 4, 8))
    state = state_mod.state_from_tokens(model, tokens, wrap=True)
    crop = state_mod.crop_state(state, 1, 0, 2, 2)
    assert torch.equal(crop.frame_tokens(), tokens[:, :, 2:6]) and not crop.wrap
    assert state_mod.crop_state(state, 0, 1, 4, 1).wrap


def test_frame_tokens_marks_or_fills_unknown_patches():
    model = tiny_model(0)
    state = state_mod.empty_state(model, 2, 1)
    assert torch.equal(state.frame_tokens(), torch.full((1, 2, 4), -1))
    assert torch.equal(state.frame_tokens(fill=5), torch.full((1, 2, 4), 5))
    with pytest.raises(errors.BoundlessError, match="frame 1"):
        state.frame_tokens(1)
    with pytest.raises(errors.BoundlessError, match="another VQGAN"):
        model.tokenizer = "taming.vqgan:a"
        state_mod.state_from_tokens(model, torch.zeros(1, 2, 2, dtype=torch.int64), tokenizer="taming.vqgan:b")


def test_fingerprint_survives_casting():
    model = tiny_model(0)
    state = state_mod.plan_fill(state_mod.empty_state(model, 2, 1), "down")
    sampler.run(model.to(torch.float64), state)
    assert state.complete
