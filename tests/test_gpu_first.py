"""GPU-first budgets, checked on a CPU stand-in device (tests/standin_device.py).

Every sampler runs with its model on the stand-in: no tensor may be made on the wrong device, the
tokens must be exactly those of a plain CPU run (the default draws are the authors' draws), and the
host may wait for the device only as often as the issue's budget allows: Infinity never per token,
VAR and Paella never per scale or step, CSA at most once per model call (one sigma read).
"""
from __future__ import annotations

import sys

import pytest
import torch

import paella_tiny
from infinity_tiny import one_thread, tiny_model  # noqa: F401  (one_thread: autouse fixture)
from packpath import ROOT, pack_module
from standin_device import STANDIN, StandInDevice
from var_tiny import random_transformer, random_vqvae, tiny_transformer_config

sys.path.insert(0, str(ROOT / "bench"))
import host_syncs  # noqa: E402  (bench/: the CSA scenario the benchmark counts too)

draws_mod = pack_module("nodes.common.draws")
infinity_sampler = pack_module("nodes.infinity.sampler")
var_sampling = pack_module("nodes.var.sampling")
sampling_v3 = pack_module("nodes.paella.sampling_v3")
sampling_v1 = pack_module("nodes.paella.sampling_v1")
prior_mod = pack_module("nodes.paella.prior")
Draws = draws_mod.Draws


# --------------------------------------------------------------------------- the tools themselves
def test_the_stand_in_refuses_mixed_devices_and_counts_what_would_wait():
    with StandInDevice() as dev:
        x = torch.rand(4, 5, device=STANDIN)
        assert x.device == STANDIN and (x * 2).device == STANDIN
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(4, 5)
        assert (x + torch.tensor(1.0)).device == STANDIN            # a 0-dim CPU tensor is fine, as in CUDA
        assert dev.syncs == 0
        float(x.sum())
        x.cpu()
        x[x > 0.5]
        torch.multinomial(x.softmax(-1), 1)
        x.tolist()
        assert dev.syncs == 5, dev.report()
        dev.reset()
        Draws(0, STANDIN).categorical(x.softmax(-1))
        assert dev.syncs == 0, dev.report()


@pytest.mark.parametrize("shape", [(6, 40), (1, 300), (3, 1, 7)])
def test_device_draws_are_torch_multinomial_bit_for_bit(shape):
    probs = torch.rand(*shape, generator=torch.Generator().manual_seed(1)).softmax(-1).reshape(-1, shape[-1])
    probs[:, ::3] = 0.0                                               # impossible classes stay impossible
    strided = torch.rand(1, 16, 4, 4).softmax(1).permute(0, 2, 3, 1).reshape(-1, 16)   # batch-1 view
    for p in (probs, strided):
        expected = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(7))[:, 0]
        for mode in draws_mod.MODES:
            assert torch.equal(Draws(7, "cpu", mode).categorical(p), expected)
    assert not strided.is_contiguous()
    drawn = Draws(7, "cpu").categorical(probs)
    assert bool((probs.gather(1, drawn[:, None]) > 0).all())


def test_cpu_draws_on_the_stand_in_equal_device_draws_and_land_on_the_device():
    probs = torch.rand(5, 30).softmax(-1)
    with StandInDevice() as dev:
        on_device = probs.to(STANDIN)
        device_tokens = Draws(3, STANDIN).categorical(on_device)
        host_tokens = Draws(3, STANDIN, draws_mod.CPU).categorical(on_device)
        assert device_tokens.device == STANDIN and host_tokens.device == STANDIN
        assert torch.equal(device_tokens.cpu(), host_tokens.cpu())
    with pytest.raises(Exception, match="drawn on one of"):
        Draws(0, "cpu", "gpu")


# --------------------------------------------------------------------------- NUWA-Infinity
def _canvas_on_standin(patch: int, **options):
    model = tiny_model(patch_h=patch, patch_w=patch)
    with torch.no_grad(), StandInDevice() as dev:
        model.to(STANDIN)
        dev.reset()
        state = infinity_sampler.generate_canvas(model, 3, 2, order="right", seed=5, **options)
    return state, dev


@pytest.mark.parametrize("options", [{"top_k": 8}, {"temperature": 0.0}, {"temperature": 0.7, "top_k": 0}])
def test_infinity_never_waits_per_token_and_draws_the_cpu_tokens(options):
    small, dev_small = _canvas_on_standin(2, **options)        # 4 tokens per patch
    large, dev_large = _canvas_on_standin(4, **options)        # 16 tokens per patch
    assert dev_small.syncs == dev_large.syncs, (dev_small.report(), dev_large.report())
    commits = sum(n for where, n in dev_large.where.items() if "sampler.py" in where)
    assert commits == 6, dev_large.report()                     # one read-back per finished patch
    reference = infinity_sampler.generate_canvas(tiny_model(patch_h=4, patch_w=4), 3, 2, order="right", seed=5,
                                                 **options)
    assert torch.equal(large.tokens, reference.tokens)


@pytest.mark.parametrize("guidance", [dict(guidance=3.0), dict(neighbour_guidance=1.5),
                                      dict(guidance=2.0, neighbour_guidance=1.5, edge_temperature=0.7)])
def test_infinity_guidance_never_waits_per_token(guidance):
    """Guidance runs its row groups as one bigger batch on the device (the rows without neighbours
    masked there); the token loop still never reads back."""
    text_bld, empty_bld = torch.randn(1, 3, 8), torch.zeros(1, 3, 8)
    counters = []
    for patch in (2, 4):
        model = tiny_model(patch_h=patch, patch_w=patch, text_dim=8)
        with torch.no_grad(), StandInDevice() as dev:
            model.to(STANDIN)
            dev.reset()
            infinity_sampler.generate_canvas(model, 3, 2, order="right", seed=5, top_k=8, text=text_bld.to(STANDIN),
                                             empty_text=empty_bld.to(STANDIN), **guidance)
        counters.append(dev)
    assert counters[0].syncs == counters[1].syncs, (counters[0].report(), counters[1].report())
    assert sum(n for where, n in counters[1].where.items() if "sampler.py" in where) == 6, counters[1].report()


# --------------------------------------------------------------------------- VAR
@pytest.mark.parametrize("settings", [{}, {"more_smooth": True}])
def test_var_never_waits_per_scale_and_draws_the_cpu_tokens(settings):
    counts = []
    for patch_nums in [(1, 2, 3), (1, 2, 3, 4, 6)]:
        vae, var = random_vqvae(), random_transformer(tiny_transformer_config(patch_nums=patch_nums), seed=7)
        sampler_settings = var_sampling.SamplingSettings(**settings)
        with torch.no_grad():
            reference = var_sampling.sample(var, vae, 2, Draws(0, "cpu"), labels=None, settings=sampler_settings)
            with StandInDevice() as dev:
                vae.to(STANDIN), var.to(STANDIN)
                dev.reset()
                result = var_sampling.sample(var, vae, 2, Draws(0, STANDIN), labels=None, settings=sampler_settings)
                counts.append(dev.syncs)
                tokens = [t.cpu() for t in result.tokens]
        assert all(torch.equal(a, b) for a, b in zip(tokens, reference.tokens))
    assert counts[0] == counts[1] <= 2, counts                  # the random labels: one draw per run


# --------------------------------------------------------------------------- Paella
def _v3_conditions():
    g = torch.Generator().manual_seed(0)
    cond = sampling_v3.V3Condition(torch.randn(1, 5, paella_tiny.BYT5_WIDTH, generator=g),
                                   torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g))
    return cond, sampling_v3.V3Condition(torch.zeros(1, 5, paella_tiny.BYT5_WIDTH),
                                         torch.zeros(1, paella_tiny.CLIP_WIDTH))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode", ["multinomial", "argmax"])
def test_paella_v3_never_waits_per_step_and_draws_the_cpu_tokens(batch, mode):
    cond, uncond = _v3_conditions()
    for steps in (2, 5):
        model = paella_tiny.tiny_v3()
        with torch.no_grad():
            reference = sampling_v3.sample_v3(model, cond, uncond, seed=1, shape=(batch, 8, 8), steps=steps, mode=mode)
            with StandInDevice() as dev:
                model.to(STANDIN)
                dev.reset()
                tokens = sampling_v3.sample_v3(model, cond, uncond, seed=1, shape=(batch, 8, 8), steps=steps,
                                               mode=mode)
                assert tokens.device == STANDIN
                tokens = tokens.cpu()
        assert dev.syncs == 1, dev.report()                       # the .cpu() above
        assert torch.equal(tokens, reference)


def test_paella_v1_and_prior_never_wait_per_step():
    clip = torch.randn(1, paella_tiny.CLIP_WIDTH, generator=torch.Generator().manual_seed(2))
    for steps in (2, 5):
        v1, prior = paella_tiny.tiny_v1(), paella_tiny.tiny_prior()
        with torch.no_grad():
            reference = sampling_v1.sample_v1(v1, clip, seed=1, size=(8, 8), T=steps, renoise_steps=steps - 1)
            prior_reference = prior_mod.sample_prior(prior, torch.randn(1, prior.config.clip_width,
                                                                        generator=torch.Generator().manual_seed(3)),
                                                     1, steps=steps)
            with StandInDevice() as dev:
                v1.to(STANDIN), prior.to(STANDIN)
                dev.reset()
                tokens = sampling_v1.sample_v1(v1, clip, seed=1, size=(8, 8), T=steps, renoise_steps=steps - 1)
                text = torch.randn(1, prior.config.clip_width, generator=torch.Generator().manual_seed(3))
                vector = prior_mod.sample_prior(prior, text.to(STANDIN), 1, steps=steps)
                assert dev.syncs == 0, dev.report()
                tokens, vector = tokens.cpu(), vector.cpu()
        assert torch.equal(tokens, reference)
        torch.testing.assert_close(vector, prior_reference)


# --------------------------------------------------------------------------- StoryDiffusion CSA
def test_csa_waits_at_most_once_per_model_call_and_keeps_the_bank_off_the_device():
    steps = 4
    reference, _ = host_syncs.csa_story(pack_module, "cpu", steps)
    with torch.no_grad(), StandInDevice() as dev:
        outs, bank = host_syncs.csa_story(pack_module, STANDIN, steps)
        reads = dev.syncs
        outs = [o.cpu() for o in outs]
    calls = 2 * steps                                              # identity pass + panel pass
    assert reads <= calls + 2, dev.report()                        # one sigma per call + one schedule per run
    assert bank.entries and all(k.device.type == "cpu" and v.device.type == "cpu" for k, v in bank.entries.values())
    for ours, theirs in zip(outs, reference):
        torch.testing.assert_close(ours, theirs)


def test_closing_a_360_loop_never_waits_per_token():
    """Candidates of the closing column are rows of one batch, scored and chosen on the device: the token
    loop still never reads back, and a patch is read back once when it is committed."""
    counters = []
    for patch in (2, 4):
        model = tiny_model(patch_h=patch, patch_w=patch)
        with torch.no_grad(), StandInDevice() as dev:
            model.to(STANDIN)
            dev.reset()
            state = infinity_sampler.plan_fill(infinity_sampler.empty_state(model, 3, 2, wrap=True), "right")
            stats = infinity_sampler.run(model, state, seed=5, top_k=8, close_candidates=4)
        assert stats.closed == 2
        counters.append(dev)
    assert counters[0].syncs == counters[1].syncs, (counters[0].report(), counters[1].report())
    assert sum(n for where, n in counters[1].where.items() if "sampler.py" in where) == 6, counters[1].report()
