"""The static-shape token step (StaticDecoder): the same function as PatchDecoder, fewer host values,
no host syncs, and a fixed op sequence per token that a CUDA graph can replay."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from infinity_tiny import one_thread, strong_text_model, tiny_model  # noqa: F401  (one_thread: autouse fixture)
from packpath import pack_module
from standin_device import STANDIN, StandInDevice

sampler = pack_module("nodes.infinity.sampler")
static_mod = pack_module("nodes.infinity.static_decoder")
model_mod = pack_module("nodes.infinity.model")
ncp = pack_module("nodes.infinity.ncp")


@pytest.mark.parametrize("options", [
    {"temperature": 0.0}, {"top_k": 8}, {"wrap": True, "temperature": 0.7}])
def test_static_and_dynamic_decoders_draw_the_same_canvas(options):
    model = tiny_model(3, patch_h=4, patch_w=4)
    dynamic = sampler.generate_canvas(model, 4, 2, order="right", seed=2, decoder="dynamic", **options)
    static = sampler.generate_canvas(model, 4, 2, order="right", seed=2, decoder="static", **options)
    assert torch.equal(dynamic.tokens, static.tokens)


def test_text_and_video_models_take_the_static_path_too():
    text_model = strong_text_model(2)
    text = torch.randn(1, 7, 384, generator=torch.Generator().manual_seed(0))
    runs = [sampler.generate_canvas(text_model, 3, 1, seed=4, text=text, decoder=d).tokens for d in ("dynamic", "static")]
    assert torch.equal(*runs)
    video = tiny_model(5, frame_align=True)
    torch.nn.init.normal_(video.frame_align.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    runs = [sampler.generate_canvas(video, 2, 1, frames=3, order="down", seed=1, decoder=d).tokens
            for d in ("dynamic", "static")]
    assert torch.equal(*runs)


def test_static_logits_equal_patch_decoder_logits_step_by_step():
    model = tiny_model(7, patch_h=2, patch_w=4)
    state = sampler.generate_canvas(model, 3, 2, order="right", seed=1)
    t = model.config.tokens_per_patch

    def patch(row, col):
        return state.tokens[0, 0, 2 * row:2 * row + 2, 4 * col:4 * col + 4].reshape(1, t)

    # patch (row 1, column 1) with its left, upper-left, upper and upper-right neighbours as context
    context = [ncp.ContextItem((0, 1 + dr, 1 + dc), (dc, dr, 0), model(patch(1 + dr, 1 + dc))[1])
               for dr, dc in ((0, -1), (-1, -1), (-1, 0), (-1, 1))]
    tokens = patch(1, 1)
    reference = model_mod.PatchDecoder(model, context, 0)
    decoder = static_mod.StaticDecoder(model, 1, 6 * t)
    decoder.begin(context, 0, None)
    decoder.step()
    expected = reference.step(None)
    for i in range(t):
        torch.testing.assert_close(decoder.logits, expected, atol=1e-5, rtol=1e-5)
        decoder.token_b.copy_(tokens[:, i])
        decoder.step()
        expected = reference.step(tokens[:, i])
    torch.testing.assert_close(decoder.cache().hidden, reference.cache().hidden, atol=1e-5, rtol=1e-5)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_the_static_step_has_no_host_values_and_a_fixed_op_sequence():
    """On the stand-in device the static run waits for the device once per patch (its commit), and
    every token step dispatches the same ops: what a CUDA graph records once and replays."""
    model = tiny_model(3, patch_h=4, patch_w=4)
    reference = sampler.generate_canvas(model, 3, 2, order="right", seed=2, top_k=8).tokens
    with torch.no_grad(), StandInDevice() as dev:
        model.to(STANDIN)
        model.fingerprint()
        dev.reset()
        state = sampler.generate_canvas(model, 3, 2, order="right", seed=2, top_k=8, decoder="static")
        assert dev.syncs == 6, dev.report()
    assert torch.equal(state.tokens, reference)
    model = tiny_model(3, patch_h=4, patch_w=4)
    decoder = static_mod.StaticDecoder(model, 1, 16)
    decoder.begin([], 0, None)
    counts = []
    for _ in range(4):
        with OpCounter() as counter:
            decoder.step()
        counts.append(counter.ops)
    assert len(set(counts)) == 1, counts
