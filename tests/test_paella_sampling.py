"""Paella v3 / v1 samplers: determinism, masks, guidance, filtering, progress and errors."""
import pytest
import torch

import paella_tiny
from packpath import pack_module

sampling_v3 = pack_module("nodes.paella.sampling_v3")
sampling_v1 = pack_module("nodes.paella.sampling_v1")
errors = pack_module("nodes.common.errors")

K = paella_tiny.NUM_LABELS


@pytest.fixture(scope="module")
def v3():
    return paella_tiny.tiny_v3()


@pytest.fixture(scope="module")
def v1():
    return paella_tiny.tiny_v1()


def cond(seed=0, length=5):
    g = torch.Generator().manual_seed(seed)
    return sampling_v3.V3Condition(torch.randn(1, length, paella_tiny.BYT5_WIDTH, generator=g),
                                   torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g))


def run_v3(model, seed=1, uncond="default", **kw):
    uncond = cond(9, 1) if uncond == "default" else uncond
    return sampling_v3.sample_v3(model, cond(), uncond, seed=seed, shape=kw.pop("shape", (2, 8, 8)),
                                 steps=kw.pop("steps", 3), **kw)


def test_v3_same_seed_same_tokens_other_seed_other_tokens(v3):
    a, b, c = run_v3(v3, seed=1), run_v3(v3, seed=1), run_v3(v3, seed=2)
    assert a.shape == (2, 8, 8) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < K
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_v3_unit_guidance_equals_no_guidance(v3):
    assert torch.equal(run_v3(v3, cfg=(1.0, 1.0)), run_v3(v3, uncond=None))


def test_v3_inpainting_keeps_known_tokens(v3):
    known = torch.randint(0, K, (2, 8, 8), generator=torch.Generator().manual_seed(3))
    keep = torch.zeros(2, 8, 8, dtype=torch.bool)
    keep[:, 2:6, 2:6] = True
    out = run_v3(v3, keep_mask=keep, known=known)
    assert torch.equal(out[~keep], known[~keep])
    assert not torch.equal(out[keep], known[keep])


def test_v3_progress_reports_each_step_with_a_lazy_preview(v3):
    calls = []

    def progress(done, total, preview=None):
        calls.append((done, total, preview().shape if preview else None))

    run_v3(v3, steps=3, progress=progress, preview=lambda t: torch.zeros(1, 4 * t.shape[1], 4 * t.shape[2], 3))
    assert calls == [(1, 3, (1, 32, 32, 3)), (2, 3, (1, 32, 32, 3)), (3, 3, (1, 32, 32, 3))]


def test_v3_interrupt_raised_by_progress_stops_the_loop(v3):
    seen = []

    def progress(done, total, preview=None):
        seen.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_v3(v3, steps=5, progress=progress)
    assert seen == [1]


@pytest.mark.parametrize("kw, message", [
    ({"shape": (1, 12, 8)}, "multiples of 8"),
    ({"mode": "quant"}, "needs the VQGAN codebook"),
    ({"mode": "top-k"}, "unknown sampling mode"),
])
def test_v3_bad_requests_raise(v3, kw, message):
    with pytest.raises(errors.BoundlessError, match=message):
        run_v3(v3, **kw)


def test_v3_sampler_refuses_v1_checkpoint_and_missing_byt5(v1, v3):
    with pytest.raises(errors.BoundlessError, match="v3 sampler needs a Paella v3 checkpoint"):
        run_v3(v1)
    no_byt5 = sampling_v3.V3Condition(None, torch.zeros(1, paella_tiny.CLIP_WIDTH))
    with pytest.raises(errors.BoundlessError, match="needs ByT5 hidden states"):
        sampling_v3.sample_v3(v3, no_byt5, None, seed=0, shape=(1, 8, 8), steps=1)


def test_notebook_attention_weights():
    w = sampling_v3.notebook_attention_weights(7)
    assert w.tolist() == pytest.approx([1.2, 1.2, 1.2, 0.4, 0.4, 0.4, 0.4])


def test_locally_typical_keeps_the_typical_set():
    rows = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]]).log()
    kept = torch.isfinite(sampling_v1.locally_typical(rows, mass=0.2))
    # row 0: the most likely token is also the most typical; row 1: the two tied typical tokens win
    assert kept.tolist() == [[True, False, False], [False, True, True]]
    assert torch.isfinite(sampling_v1.locally_typical(rows[:1], mass=0.8)).tolist() == [[True, True, False]]
    assert torch.isfinite(sampling_v1.locally_typical(rows, mass=0.2, min_tokens=3)).all()


def run_v1(model, seed=1, **kw):
    c = kw.pop("c", torch.randn(2, paella_tiny.CLIP_WIDTH, generator=torch.Generator().manual_seed(0)))
    return sampling_v1.sample_v1(model, c, seed=seed, size=kw.pop("size", (8, 8)), T=kw.pop("T", 3),
                                 renoise_steps=kw.pop("renoise_steps", 2), **kw)


def test_v1_determinism_and_zero_default_uncond(v1):
    a = run_v1(v1)
    assert torch.equal(a, run_v1(v1))
    assert not torch.equal(a, run_v1(v1, seed=2))
    assert torch.equal(a, run_v1(v1, uncond=torch.zeros(2, paella_tiny.CLIP_WIDTH)))


@pytest.mark.parametrize("mode", ["start", "prev", "rand"])
def test_v1_mask_keeps_known_tokens(v1, mode):
    x = torch.randint(0, K, (2, 8, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(2, 8, 12, dtype=torch.long)
    mask[:, :, 8:] = 1
    out = run_v1(v1, size=(8, 12), x=x, mask=mask, renoise_mode=mode)
    assert torch.equal(out[:, :, :8], x[:, :, :8])


@pytest.mark.parametrize("kw, message", [
    ({"size": (8, 6)}, "multiples of 4"),
    ({"size": (4, 4)}, "at least 8"),
    ({"starting_t": 3}, "starting step 3"),
    ({"renoise_mode": "fresh"}, "unknown renoise mode"),
    ({"mask": torch.ones(2, 8, 8, dtype=torch.long)}, "needs the start tokens"),
    ({"c": torch.zeros(2, 5)}, r"one CLIP vector per image \[B, 16\]"),
])
def test_v1_bad_requests_raise(v1, kw, message):
    with pytest.raises(errors.BoundlessError, match=message):
        run_v1(v1, **kw)


def test_v1_sampler_refuses_v3_checkpoint(v3):
    with pytest.raises(errors.BoundlessError, match="v1 sampler needs a Paella v1 checkpoint"):
        run_v1(v3)
