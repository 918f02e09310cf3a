"""NUWA-Infinity token decoder: KV cache, NCP context equivalence, checkpoint loading."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

adc = pack_module("nodes.infinity.adc")
checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
geometry = pack_module("nodes.infinity.geometry")
model_mod = pack_module("nodes.infinity.model")
ncp_mod = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
errors = pack_module("nodes.common.errors")


def context_for(model, canvas, order, pos, extents):
    """Caches of every earlier patch in the window, recomputed from tokens with no pool at all:
    each earlier patch is re-run in order against freshly recomputed caches of its own context."""
    _, rows, cols = geometry.patch_grid_shape(canvas, model.config.patch_h, model.config.patch_w)
    region = geometry.Region.whole(canvas.shape[1], rows, cols)
    sequence = adc.scan(region, order)
    caches = {}
    window = ncp_mod.NearbyContextPool(region, extents)
    with torch.no_grad():
        for earlier in sequence[:sequence.index(pos)]:
            ctx = [ncp_mod.ContextItem(p, off, caches[p]) for p, off in window.window(earlier) if p in caches]
            tokens = geometry.read_patch(canvas, earlier, model.config.patch_h, model.config.patch_w)
            caches[earlier] = model(tokens, ctx, adc.order_id(order))[1]
    return [ncp_mod.ContextItem(p, off, caches[p]) for p, off in window.window(pos) if p in caches]


GEOMETRIES = pytest.mark.parametrize("rope_base", [0, 100], ids=["absolute", "rope"])


@GEOMETRIES
def test_kv_cache_matches_teacher_forcing(rope_base):
    model = tiny_model(0, torch.float64, rope_base=rope_base)
    tokens = torch.randint(0, 64, (2, 4))
    other = model(torch.randint(0, 64, (2, 4)), (), 1)[1]
    context = [ncp_mod.ContextItem((0, 0, 0), (-1, 0, 0), other), ncp_mod.ContextItem((0, 0, 1), (0, -1, 0), other)]
    reference, ref_cache = model(tokens, context, 2)
    decoder = model_mod.PatchDecoder(model, context, 2, batch=2)
    logits = [decoder.step(None)]
    for i in range(4):
        logits.append(decoder.step(tokens[:, i]))
    assert logits[-1] is None
    torch.testing.assert_close(torch.stack(logits[:4], 1), reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(decoder.cache().hidden, ref_cache.hidden, rtol=0, atol=1e-10)
    # A prefix pass gives the same logits as the full pass for the positions it covers.
    prefix, _ = model(tokens[:, :2], context, 2)
    torch.testing.assert_close(prefix, reference[:, :3], rtol=0, atol=1e-10)


def test_context_and_order_change_the_prediction():
    model = tiny_model(0, torch.float64)
    tokens = torch.randint(0, 64, (1, 4))
    cache = model(torch.randint(0, 64, (1, 4)), (), 0)[1]
    alone = model(tokens, (), 0)[0]
    left = model(tokens, [ncp_mod.ContextItem((0, 0, 0), (-1, 0, 0), cache)], 0)[0]
    above = model(tokens, [ncp_mod.ContextItem((0, 0, 0), (0, -1, 0), cache)], 0)[0]
    other_order = model(tokens, (), 1)[0]
    for changed in (left, above, other_order):
        assert (changed - alone).abs().max() > 1e-4
    assert (left - above).abs().max() > 1e-4          # the relative position matters


@GEOMETRIES
@pytest.mark.parametrize("order", ["down", "right"])
def test_sampling_with_ncp_equals_recomputation_from_tokens(order, rope_base):
    """Greedy generation with the pool (caches reused, expired ones removed) picks at every token the
    argmax of a from-scratch recomputation in which every context cache is rebuilt from the tokens."""
    model = tiny_model(3, torch.float64, rope_base=rope_base)
    extents = config.Extents(1, 1, 0)
    state = sampler.generate_canvas(model, 3, 3, order=order, extents=extents, temperature=0)
    canvas = state.tokens
    for pos in adc.scan(geometry.Region.whole(1, 3, 3), order):
        tokens = geometry.read_patch(canvas, pos, 2, 2)
        with torch.no_grad():
            logits, _ = model(tokens, context_for(model, canvas, order, pos, extents), adc.order_id(order))
        assert torch.equal(logits.argmax(-1), tokens)


@GEOMETRIES
def test_full_extents_pool_equals_attending_to_all_previous_patches(rope_base):
    """With extents covering the canvas the NCP selects every previous patch: same tokens as a
    pool that never drops anything (removal only drops caches nobody can select)."""
    model = tiny_model(4, torch.float64, trained_extents=config.Extents(3, 2, 0), rope_base=rope_base)
    ext = config.Extents(3, 2, 0)
    kept = state_mod.plan_fill(state_mod.empty_state(model, 4, 3, extents=ext), "down")
    original = ncp_mod.NearbyContextPool.remove
    try:
        ncp_mod.NearbyContextPool.remove = lambda self, step, last: []
        stats_kept = sampler.run(model, kept, seed=5)
    finally:
        ncp_mod.NearbyContextPool.remove = original
    pruned = state_mod.plan_fill(state_mod.empty_state(model, 4, 3, extents=ext), "down")
    stats = sampler.run(model, pruned, seed=5)
    assert torch.equal(kept.tokens, pruned.tokens)
    assert stats_kept.max_context == stats.max_context == 11     # the last patch sees all 11 others


def test_text_branch_conditions_tokens():
    model = tiny_model(2, torch.float64, text_dim=8)
    text_a, text_b = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    tokens = torch.randint(0, 64, (1, 4))
    assert (model(tokens, (), 0, text_a)[0] - model(tokens, (), 0, text_b)[0]).abs().max() > 1e-4
    with pytest.raises(errors.BoundlessError, match="text-conditioned"):
        model(tokens, (), 0, None)
    with pytest.raises(errors.BoundlessError, match="384|8"):
        model(tokens, (), 0, torch.randn(1, 3, 384))
    with pytest.raises(errors.BoundlessError, match="no text branch"):
        tiny_model(0)(tokens, (), 0, text_a)


@GEOMETRIES
def test_checkpoint_round_trip(tmp_path, rope_base):
    model = tiny_model(5, text_dim=12, trained_extents=config.Extents(2, 1, 1), patch_h=2, patch_w=3, heads=2,
                       rope_base=rope_base)
    model.tokenizer, model.factor = "taming.vqgan:(64, 8):abc", 16
    path = str(tmp_path / "inf.safetensors")
    checkpoint.save_infinity(model, path)
    loaded = checkpoint.load_infinity(path)
    assert loaded.config == model.config
    assert (loaded.tokenizer, loaded.factor) == (model.tokenizer, 16)
    assert loaded.fingerprint() == model.fingerprint()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded.blocks[0].attn.rel_k.shape == (5 * 3 * 2, 32)
    assert ("rope_base" in loaded.state_dict()) == bool(rope_base)
    tokens = torch.randint(0, 64, (1, 6))
    text = torch.randn(1, 3, 12)
    torch.testing.assert_close(loaded(tokens, (), 1, text)[0], model(tokens, (), 1, text)[0], rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    model = tiny_model(0)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    broken = dict(tensors)
    broken["trained_extents"] = torch.tensor([2, 2, 1])
    save_file(broken, str(tmp_path / "extents.safetensors"))
    with pytest.raises(errors.BoundlessError, match="relative positions"):
        checkpoint.load_infinity(str(tmp_path / "extents.safetensors"))
    broken = dict(tensors)
    broken["patch_shape"] = torch.tensor([3, 2])
    save_file(broken, str(tmp_path / "patch.safetensors"))
    with pytest.raises(errors.BoundlessError, match="position table"):
        checkpoint.load_infinity(str(tmp_path / "patch.safetensors"))
    broken = {k: v for k, v in tensors.items() if not k.startswith("blocks.1.mlp")}
    save_file(broken, str(tmp_path / "missing.safetensors"))
    with pytest.raises(errors.BoundlessError, match="missing"):
        checkpoint.load_infinity(str(tmp_path / "missing.safetensors"))
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "vq.safetensors"))
    with pytest.raises(errors.BoundlessError, match="not a NUWA-Infinity checkpoint"):
        checkpoint.load_infinity(str(tmp_path / "vq.safetensors"))
    other = tiny_model(0, dim=64, mlp_dim=128)
    save_file(tensors, str(tmp_path / "meta.safetensors"), metadata={"config": other.config.to_json()})
    with pytest.raises(errors.BoundlessError, match="disagrees"):
        checkpoint.load_infinity(str(tmp_path / "meta.safetensors"))
