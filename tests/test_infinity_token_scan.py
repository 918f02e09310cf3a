"""Mirrored scan (``token_scan``): patches grown leftward or upward are read from their finished side."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread  # noqa: F401 (autouse fixture)
from packpath import ROOT, pack_module

adc = pack_module("nodes.infinity.adc")
checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
sampler = pack_module("nodes.infinity.sampler")
static_decoder = pack_module("nodes.infinity.static_decoder")
synthetic = pack_module("nodes.infinity.synthetic")
token_scan = pack_module("nodes.infinity.token_scan")
training = pack_module("nodes.infinity.training")
errors = pack_module("nodes.common.errors")

EXTENTS = config.Extents(1, 1, 0)


def mirrored_model(seed: int = 0, **overrides) -> model_mod.InfinityTransformer:
    values = dict(n_embed=32, dim=32, depth=2, heads=4, mlp_dim=64, patch_h=3, patch_w=4, trained_extents=EXTENTS,
                  rope_base=100, mirrored_scan=True)
    values.update(overrides)
    torch.manual_seed(seed)
    return model_mod.InfinityTransformer(config.InfinityConfig(**values)).eval()


def test_left_and_up_are_read_from_the_finished_side_and_old_models_read_raster():
    # a 3×4 patch: raster index r * 4 + c
    assert token_scan.scan_index(3, 4, True, False).tolist() == [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8]
    assert token_scan.scan_index(3, 4, False, True).tolist() == [8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3]
    assert [token_scan.flips(adc.order_id(o), True) for o in adc.ORDERS] == \
        [(False, False), (True, False), (False, False), (False, True)]
    assert all(token_scan.flips(i, False) == (False, False) for i in range(4))
    model = mirrored_model()
    assert model.scan(adc.order_id("right")) is None and model.scan(adc.order_id("down")) is None
    left = model.scan(adc.order_id("left"))
    assert left.positions.tolist() == left.index.tolist() + [12]         # the last place keeps row T
    tokens_bt = torch.arange(12)[None]
    assert torch.equal(model.rastered(model.scanned(tokens_bt, 1), 1), tokens_bt)
    # the first place of a left-read patch predicts the top-right token; its key carries the start
    queries, keys = pack_module("nodes.infinity.rope").own_coords(12, 4, None, 3, True, False)
    assert queries[0].tolist() == [3, 0, 0] and queries[1].tolist() == [2, 0, 0] and keys[1].tolist() == [3, 0, 0]
    raster = checkpoint.load_infinity(str(ROOT / "models" / "infinity" / "boundless_world_video_text.safetensors"))
    assert not raster.config.mirrored_scan and all(raster.scan(i) is None for i in range(4))
    assert "mirrored_scan" not in raster.config.to_json()


@pytest.mark.parametrize("order", adc.ORDERS)
def test_one_pass_token_by_token_and_the_static_decoder_agree_in_every_scan(order):
    model, oid = mirrored_model(1), adc.order_id(order)
    tokens_bt = torch.randint(32, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, cache = model(tokens_bt, (), oid)
        decoder = model_mod.PatchDecoder(model, (), oid, None, 2)
        stepped = [decoder.step(None)] + [decoder.step(tokens_bt[:, i]) for i in range(11)]
        decoder.step(tokens_bt[:, 11])
        static = static_decoder.StaticDecoder(model, 2, 0)
        static.begin((), oid, None)
        static.step()
        graph_steps = [static.logits.clone()]
        for i in range(12):
            static.token_b.copy_(tokens_bt[:, i])
            static.step()
            graph_steps.append(static.logits.clone())
    assert torch.allclose(torch.stack(stepped, 1), logits, atol=1e-5)
    assert torch.allclose(torch.stack(graph_steps[:12], 1), logits, atol=1e-5)
    for other in (decoder.cache(), static.cache()):
        assert torch.allclose(other.hidden, cache.hidden, atol=1e-5)
    # the cache is in raster order: entry i belongs to raster token i whatever the scan
    scan = model.scan(oid)
    if scan is not None:
        assert not torch.allclose(cache.hidden[:, :, scan.index], cache.hidden)


@pytest.mark.parametrize("order", ("left", "up"))
def test_the_three_decoders_draw_the_same_canvas_in_mirrored_scan(order):
    model = mirrored_model(3)
    canvases = [sampler.generate_canvas(model, 3, 2, order=order, extents=EXTENTS, seed=4, top_k=8, **options).tokens
                for options in ({"use_kv_cache": True}, {"use_kv_cache": False}, {"decoder": "static"})]
    assert torch.equal(canvases[0], canvases[1]) and torch.equal(canvases[0], canvases[2])
    assert bool((canvases[0] >= 0).all())


def test_switching_a_raster_model_keeps_right_and_down_and_the_flag_survives_a_file(tmp_path):
    raster = mirrored_model(5, mirrored_scan=False)
    switched = checkpoint.add_mirrored_scan(raster)
    tokens_bt = torch.randint(32, (1, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for order, same in (("right", True), ("down", True), ("left", False), ("up", False)):
            oid = adc.order_id(order)
            a = raster(tokens_bt, (), oid)[0]
            b = switched(switched.scanned(tokens_bt, oid), (), oid)[0]
            assert torch.equal(a, b) == same, order
    assert switched.fingerprint() != raster.fingerprint()      # canvas states of one are refused by the other
    with pytest.raises(errors.BoundlessError, match="already"):
        checkpoint.add_mirrored_scan(switched)
    path = tmp_path / "m.safetensors"
    checkpoint.save_infinity(switched, str(path))
    loaded = checkpoint.load_infinity(str(path))
    assert loaded.config.mirrored_scan and loaded.fingerprint() == switched.fingerprint()


def learn_walks(mirrored: bool, steps: int) -> dict:
    """Train a tiny decoder on the ``walk`` task (orders right and left), then draw canvases leftward
    and count the token pairs that break the walk across patch columns and inside patches."""
    torch.manual_seed(0)
    cfg = config.InfinityConfig(n_embed=16, dim=32, depth=2, heads=2, mlp_dim=64, patch_h=2, patch_w=8,
                                trained_extents=EXTENTS, rope_base=100, mirrored_scan=mirrored)
    model = model_mod.InfinityTransformer(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    data = torch.Generator().manual_seed(0)
    for step in range(steps):
        canvas = synthetic.canvases("walk", 4, 2, 32, 16, data)
        optimizer.zero_grad(set_to_none=True)
        training.chain_loss(model, canvas, ("right", "left")[step % 2], EXTENTS, patch_h=2, patch_w=8)
        optimizer.step()
    model.eval()
    drawn = torch.cat([sampler.generate_canvas(model, 4, 1, order="left", extents=EXTENTS, seed=seed, top_k=4).tokens
                       for seed in range(12)])
    return synthetic.steps_over(drawn, 16, 8)


def test_a_mirrored_scan_ends_leftward_rows_where_the_neighbour_starts_and_raster_cannot():
    """Same data, steps and seed; only the scan differs. A row read from its far end must guess where
    the walk will be 8 tokens on, and breaks the walk at the patch column. Measured: across 0.04 mirrored,
    0.42 raster (0.18 / 0.49 after 300 steps); inside 0.01 for both."""
    mirrored, raster = learn_walks(True, 600), learn_walks(False, 600)
    assert mirrored["inside"] < 0.05 and raster["inside"] < 0.05, (mirrored, raster)   # both learn the walk
    assert mirrored["across"] < 0.12, mirrored
    assert raster["across"] > 0.3, raster


@pytest.mark.parametrize("order", ("left", "up"))
@pytest.mark.parametrize("radius", (0, 1))
def test_video_models_with_frame_alignment_read_mirrored_patches_alike_in_every_decoder(order, radius):
    """Frame alignment hands each token position the previous frame's state of its place; in a mirrored
    scan that place moves with the scan, in one pass, token by token and in the static decoder alike."""
    video = config.Extents(1, 1, 1)
    model = mirrored_model(7, trained_extents=video, frame_align=True, align_radius=radius)
    canvases = [sampler.generate_canvas(model, 3, 2, frames=2, order=order, extents=video, seed=2, top_k=8,
                                        **options).tokens
                for options in ({"use_kv_cache": True}, {"use_kv_cache": False}, {"decoder": "static"})]
    assert torch.equal(canvases[0], canvases[1]) and torch.equal(canvases[0], canvases[2])
    raster = mirrored_model(7, trained_extents=video, frame_align=True, align_radius=radius, mirrored_scan=False)
    assert not torch.equal(sampler.generate_canvas(raster, 3, 2, frames=2, order=order, extents=video, seed=2,
                                                   top_k=8).tokens, canvases[0])
