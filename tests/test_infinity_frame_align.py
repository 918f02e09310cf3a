"""Frame alignment of NUWA-Infinity video models: the previous frame's state of each token position."""
from __future__ import annotations

import copy

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
ncp_mod = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
training = pack_module("nodes.infinity.training")
errors = pack_module("nodes.common.errors")

VIDEO = config.Extents(1, 1, 1)


def aligned_model(seed: int, dtype=torch.float64):
    """A tiny video model with frame alignment whose projection is not zero (as after training)."""
    model = tiny_model(seed, dtype, frame_align=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.frame_align.weight, std=0.5, generator=torch.Generator().manual_seed(seed))
    return model


def previous_frame_context(model, batch: int = 2):
    cache = model(torch.randint(0, 64, (batch, 4)), (), 0)[1]
    left = model(torch.randint(0, 64, (batch, 4)), (), 0)[1]
    return [ncp_mod.ContextItem((0, 0, 0), (-1, 0, 0), left), ncp_mod.ContextItem((0, 0, 1), (0, 0, -1), cache)]


def test_adding_frame_alignment_changes_nothing_until_trained():
    plain = tiny_model(1, torch.float64)
    plain.tokenizer, plain.factor = "taming.vqgan:t", 16
    grown = checkpoint.add_frame_align(plain)
    assert grown.config.frame_align and (grown.tokenizer, grown.factor) == ("taming.vqgan:t", 16)
    clips = torch.randint(0, 64, (3, 3, 4, 4))
    assert training.heldout_nll(grown, clips, VIDEO) == pytest.approx(training.heldout_nll(plain, clips, VIDEO),
                                                                      abs=1e-12)
    with pytest.raises(errors.BoundlessError, match="already has frame alignment"):
        checkpoint.add_frame_align(grown)


def test_frame_alignment_reads_only_the_same_patch_of_the_previous_frame():
    model = aligned_model(2)
    tokens = torch.randint(0, 64, (2, 4))
    context = previous_frame_context(model)
    with torch.no_grad():
        with_previous = model(tokens, context, 0)[0]
        other_previous = model(tokens, [context[0], ncp_mod.ContextItem((0, 0, 1), (0, 0, -1),
                                                                         context[0].cache)], 0)[0]
        # The same cache as a spatial neighbour instead: no alignment input.
        as_neighbour = model(tokens, [context[0], ncp_mod.ContextItem((0, 0, 1), (0, -1, 0), context[1].cache)], 0)[0]
        unaligned = copy.deepcopy(model)
        unaligned.frame_align.weight.zero_()
        neighbour_plain = unaligned(tokens, [context[0], ncp_mod.ContextItem((0, 0, 1), (0, -1, 0), context[1].cache)], 0)[0]
    assert (with_previous - other_previous).abs().max() > 1e-3
    torch.testing.assert_close(as_neighbour, neighbour_plain, rtol=0, atol=1e-12)
    assert model.aligned_input(context[:1]) is None


def test_kv_cache_decoder_matches_teacher_forcing_with_alignment():
    model = aligned_model(3)
    tokens = torch.randint(0, 64, (2, 4))
    context = previous_frame_context(model)
    reference, ref_cache = model(tokens, context, 1)
    decoder = model_mod.PatchDecoder(model, context, 1, batch=2)
    logits = [decoder.step(None)] + [decoder.step(tokens[:, i]) for i in range(4)]
    assert logits[-1] is None
    torch.testing.assert_close(torch.stack(logits[:4], 1), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(decoder.cache().hidden, ref_cache.hidden, rtol=0, atol=1e-10)


def test_checkpoint_keeps_frame_alignment_and_old_fingerprints(tmp_path):
    model = aligned_model(4, torch.float32)
    path = str(tmp_path / "aligned.safetensors")
    checkpoint.save_infinity(model, path)
    loaded = checkpoint.load_infinity(path)
    assert loaded.config.frame_align and loaded.fingerprint() == model.fingerprint()
    assert torch.equal(loaded.frame_align.weight, model.frame_align.weight)
    # Configs without the option serialise as before it existed (fingerprints of shipped files stay).
    assert "frame_align" not in tiny_model(0).config.to_json()
    with pytest.raises(errors.BoundlessError, match="frame axis"):
        tiny_model(0, trained_extents=config.Extents(1, 1, 0), frame_align=True)


def test_frame_alignment_learns_to_hold_a_still_video_where_attention_alone_does_not_yet():
    """On still clips of random tokens (every frame repeats the first), 60 steps teach an aligned
    model to repeat the previous frame almost perfectly; the same model without alignment, trained
    identically, has to find each token among its context by attention and is far behind.
    ``training.next_frame_accuracy`` then sees the aligned model hold the kept tokens of a frame in
    which a quarter of the tokens changed, and miss the changed ones (it never saw motion)."""
    def train(frame_align: bool):
        torch.manual_seed(0)
        model = model_mod.InfinityTransformer(config.InfinityConfig(
            n_embed=64, dim=32, depth=2, heads=2, mlp_dim=64, patch_h=2, patch_w=2, trained_extents=VIDEO,
            frame_align=frame_align)).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            still = torch.randint(0, 64, (8, 1, 4, 4)).expand(-1, 2, -1, -1)
            optimizer.zero_grad()
            training.chain_loss(model, still, "down", VIDEO, patch_h=2, patch_w=2)
            optimizer.step()
        state = state_mod.state_from_tokens(model.eval(), test[:, 0], VIDEO)
        planned = state_mod.plan_outpaint(state, [("future", 1)])
        sampler.run(model, planned, seed=0, temperature=0.0)
        return model, float((planned.tokens[:, 1] == test[:, 1]).float().mean())

    generator = torch.Generator().manual_seed(1)
    test = torch.randint(0, 64, (16, 1, 4, 4), generator=generator).expand(-1, 2, -1, -1)
    (model, aligned), (_, plain) = train(True), train(False)
    assert aligned > 0.9 and plain < 0.5, (aligned, plain)

    moved = test.clone()
    changed = torch.rand(16, 4, 4, generator=generator) < 0.25
    moved[:, 1][changed] = (moved[:, 1][changed] + 1 + torch.randint(0, 63, (int(changed.sum()),),
                                                                      generator=generator)) % 64
    report = training.next_frame_accuracy(model, moved)
    assert report["copy_previous_frame"] == round(1 - float(changed.float().mean()), 4)
    assert report["accuracy_on_kept_tokens"] > 0.9 and report["accuracy_on_changed_tokens"] < 0.2, report
