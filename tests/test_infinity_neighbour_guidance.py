"""Neighbour guidance: each token drawn from base + (g - 1) · (base - the same patch without its NCP context)."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

config = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
ncp = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
errors = pack_module("nodes.common.errors")

PATHS = [("dynamic", True), ("static", True), ("dynamic", False)]


def sharp_model(seed: int, **overrides):
    """A tiny model whose context changes its greedy choices: a random model's logits are nearly flat,
    so the head is scaled up (as in ``strong_text_model``)."""
    model = tiny_model(seed, rope_base=100, **overrides)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model


def _greedy_canvas(model, next_logits, text_bld=None) -> torch.Tensor:
    """A 2 x 1 canvas (order right) sampled greedily with full forward passes: ``next_logits(tokens,
    context, i)`` gives the mixed logits of token ``i``; the left patch has no neighbours, the right
    one sees the left one's cache (computed with ``text_bld``, as the sampler's base group)."""
    t = model.config.tokens_per_patch
    patches, context = [], []
    with torch.no_grad():
        for col in range(2):
            tokens = torch.empty(1, 0, dtype=torch.int64)
            for i in range(t):
                tokens = torch.cat([tokens, next_logits(tokens, context, i).argmax(-1, keepdim=True)], dim=1)
            _, cache = model(tokens, context, 0, text_bld)
            context = [ncp.ContextItem((0, 0, col), (-1, 0, 0), cache)]
            patches.append(tokens[0])
    return torch.cat(patches)


def _greedy_reference(model, guidance: float) -> torch.Tensor:
    """Neighbour guidance alone: alone + g · (with neighbours − alone)."""
    def next_logits(tokens, context, i):
        base, alone = model(tokens, context, 0)[0][:, i].float(), model(tokens, [], 0)[0][:, i].float()
        return alone + guidance * (base - alone)
    return _greedy_canvas(model, next_logits)


def _row_major(state, pw: int = 2) -> torch.Tensor:
    """The canvas's tokens patch by patch (left patch's raster, then the right one's)."""
    grid_hw = state.tokens[0, 0]
    return torch.cat([grid_hw[:, c * pw:(c + 1) * pw].reshape(-1) for c in range(grid_hw.shape[1] // pw)])


@pytest.mark.parametrize("decoder,use_kv_cache", PATHS)
def test_every_decoder_mixes_logits_with_and_without_the_neighbours(decoder, use_kv_cache):
    model = sharp_model(3)
    for guidance in (0.0, 2.5):
        state = sampler.generate_canvas(model, 2, 1, order="right", extents=config.Extents(1, 0, 0),
                                        temperature=0.0, neighbour_guidance=guidance, decoder=decoder,
                                        use_kv_cache=use_kv_cache)
        assert torch.equal(_row_major(state), _greedy_reference(model, guidance))
    plain = sampler.generate_canvas(model, 2, 1, order="right", extents=config.Extents(1, 0, 0), temperature=0.0)
    assert torch.equal(_row_major(plain), _greedy_reference(model, 1.0))
    assert not torch.equal(_row_major(plain), _greedy_reference(model, 0.0)), "the context must matter here"


@pytest.mark.parametrize("decoder,use_kv_cache", PATHS)
def test_guidance_zero_samples_each_patch_as_if_it_had_no_neighbours(decoder, use_kv_cache):
    """With the same draws, g = 0 is the canvas an NCP of extent 0 gives, on a video model too: the
    previous frame's frame-alignment shift is context and goes with it."""
    model = sharp_model(4, frame_align=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.frame_align.weight, std=0.5, generator=torch.Generator().manual_seed(4))
    common = dict(frames=2, order="right", seed=7, temperature=1.0, top_k=0, decoder=decoder,
                  use_kv_cache=use_kv_cache)
    zero = sampler.generate_canvas(model, 2, 2, extents=config.Extents(1, 1, 1), neighbour_guidance=0.0, **common)
    alone = sampler.generate_canvas(model, 2, 2, extents=config.Extents(0, 0, 0), **common)
    with_context = sampler.generate_canvas(model, 2, 2, extents=config.Extents(1, 1, 1), **common)
    assert torch.equal(zero.tokens, alone.tokens)
    assert not torch.equal(with_context.tokens, alone.tokens)


def test_rows_without_context_equal_a_decoder_given_none():
    """One batch, two groups over one row of context caches: the first row's logits are the decoder's
    with the context, the second's those of a decoder given no context at all (the static and the
    KV-cache decoder alike; frame alignment included)."""
    model = sharp_model(5, frame_align=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.frame_align.weight, std=0.5, generator=torch.Generator().manual_seed(5))
    t = model.config.tokens_per_patch
    with torch.no_grad():
        left = torch.randint(0, 64, (1, t), generator=torch.Generator().manual_seed(1))
        _, cache = model(left)
    context = [ncp.ContextItem((0, 0, 0), (-1, 0, 0), cache), ncp.ContextItem((0, 0, 0), (0, 0, -1), cache)]
    with torch.no_grad():
        both = model_mod.PatchDecoder(model, context, 0, None, 2, context_rows=1)
        with_ctx = model_mod.PatchDecoder(model, context, 0, None, 1)
        alone = model_mod.PatchDecoder(model, [], 0, None, 1)
        static = sampler.StaticDecoder(model, 2, model.config.trained_extents.cells * t)
        static.begin(context, 0, None, context_rows=1)
        token = None
        for s in range(t):
            logits = both.step(None if token is None else token.repeat(2))
            static.step()
            expected = torch.cat([with_ctx.step(token), alone.step(token)])
            assert not torch.allclose(expected[0], expected[1], atol=1e-3)
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(static.logits, expected, rtol=1e-5, atol=1e-5)
            token = expected[:1].argmax(-1)
            static.token_b.copy_(token.repeat(2))


def test_mix_adds_one_contrast_per_scale():
    logits = torch.tensor([[1.0, 2.0], [0.0, 4.0], [3.0, 1.0]])     # base, without text, without neighbours
    both = sampler.Guidance(text=2.0, neighbours=1.5)
    expected = logits[0] + 1.0 * (logits[0] - logits[1]) + 0.5 * (logits[0] - logits[2])
    assert torch.equal(both.mix(logits), expected[None])
    alone = sampler.Guidance(neighbours=3.0).mix(logits[[0, 2]])
    assert torch.equal(alone, (logits[2] + 3 * (logits[0] - logits[2]))[None])
    assert sampler.Guidance().groups == 1 and both.groups == 3


def _greedy_two_scale_reference(model, text_bld, empty_bld, g_text: float, g_near: float) -> torch.Tensor:
    """Both guidances: base + (g_text - 1) · (base - empty prompt) + (g_near - 1) · (base - alone)."""
    def next_logits(tokens, context, i):
        base = model(tokens, context, 0, text_bld)[0][:, i].float()
        no_text = model(tokens, context, 0, empty_bld)[0][:, i].float()
        alone = model(tokens, [], 0, text_bld)[0][:, i].float()
        return base + (g_text - 1.0) * (base - no_text) + (g_near - 1.0) * (base - alone)
    return _greedy_canvas(model, next_logits, text_bld)


@pytest.mark.parametrize("decoder,use_kv_cache", PATHS)
def test_text_and_neighbour_guidance_together_add_one_contrast_each(decoder, use_kv_cache):
    model = sharp_model(6, text_dim=8)
    with torch.no_grad():
        for block in model.blocks:
            block.cross.proj.weight.mul_(5.0)          # the prompt changes greedy choices too
    text_bld, empty_bld = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(2)), torch.zeros(1, 3, 8)
    state = sampler.generate_canvas(model, 2, 1, order="right", extents=config.Extents(1, 0, 0), temperature=0.0,
                                    text=text_bld, guidance=2.0, empty_text=empty_bld, neighbour_guidance=2.5,
                                    decoder=decoder, use_kv_cache=use_kv_cache)
    assert torch.equal(_row_major(state), _greedy_two_scale_reference(model, text_bld, empty_bld, 2.0, 2.5))
    for one_scale in ((2.0, 1.0), (1.0, 2.5)):           # each guidance changes this canvas
        assert not torch.equal(_row_major(state), _greedy_two_scale_reference(model, text_bld, empty_bld, *one_scale))


def test_guided_batches_and_bad_values():
    model = sharp_model(6, text_dim=8)
    text_bld, empty_bld = torch.randn(1, 3, 8), torch.zeros(1, 3, 8)
    state = sampler.generate_canvas(model, 2, 1, batch=2, order="right", extents=config.Extents(1, 0, 0),
                                    text=text_bld, guidance=2.0, empty_text=empty_bld, neighbour_guidance=1.5)
    assert state.tokens.shape == (2, 1, 2, 4) and bool(state.done.all())
    with pytest.raises(errors.BoundlessError, match="neighbour guidance must be >= 0"):
        sampler.generate_canvas(model, 2, 1, text=text_bld, neighbour_guidance=-0.5)
