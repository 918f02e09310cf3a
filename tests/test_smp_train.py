"""SMP training pieces: Kenney walk-cycle data, clips, loss, a few training steps, the shipped weights."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from packpath import ROOT, pack_module

smp = pack_module("nodes.story.smp")
smp_train = pack_module("nodes.story.smp_train")
DEMO = ROOT / "models" / "story" / "boundless_demo_smp.safetensors"

needs_arcade = pytest.mark.skipif(importlib.util.find_spec("arcade") is None,
                                  reason="arcade not installed (scripts/setup installs it with --no-deps)")


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@needs_arcade
def test_kenney_walk_cycles_are_found_without_importing_arcade():
    import sys
    root = smp_train.kenney_characters_dir()
    assert "arcade" not in sys.modules
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(smp_train.KENNEY_CHARACTERS)
    cycle = smp_train.walk_cycle("robot", root)
    assert len(cycle) == 8 and {im.size for im in cycle} == {(96, 128)} and {im.mode for im in cycle} == {"RGBA"}


@needs_arcade
def test_rendering_applies_background_mirror_and_recolouring():
    sprite = smp_train.walk_cycle("zombie", smp_train.kenney_characters_dir())[3]
    plain = smp_train.Variant((10, 20, 30), False, 1.0, 0, 0)
    image = smp_train.render(sprite, plain)
    assert image.size == (128, 128) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (10, 20, 30)
    mirrored = smp_train.render(sprite, smp_train.Variant((10, 20, 30), True, 1.0, 0, 0))
    assert mirrored.transpose(0).tobytes() == image.tobytes()          # 0 = FLIP_LEFT_RIGHT
    recoloured = smp_train.recoloured(sprite, 0.5, 1.0)
    assert recoloured.getchannel("A").tobytes() == sprite.getchannel("A").tobytes()
    assert recoloured.convert("RGB").tobytes() != sprite.convert("RGB").tobytes()
    frames = smp_train.render_cycles(["robot"], [plain, smp_train.Variant((200, 0, 0), False, 0.8, 5, -3, 0.3, 1.2)])
    assert frames.shape == (1, 2, 8, 128, 128, 3) and 0 <= float(frames.min()) and float(frames.max()) <= 1


def coded_cycles(characters=2, variants=3, dim=6):
    """Embeddings whose first three channels say (character, variant, frame)."""
    cycles = torch.zeros(characters, variants, 8, dim)
    for c in range(characters):
        for k in range(variants):
            for f in range(8):
                cycles[c, k, f, :3] = torch.tensor([c, k, f])
    return cycles


def test_clips_walk_the_cycle_both_ways_and_wrap():
    assert smp_train.clip_indices(6, 4, 1) == [6, 7, 0, 1]
    assert smp_train.clip_indices(1, 4, -1) == [1, 0, 7, 6]
    cycles = coded_cycles()
    clips = smp_train.sample_clips(cycles, 64, 5, torch.Generator().manual_seed(0))
    assert clips.shape == (64, 5, 6)
    for clip in clips:
        c, k = int(clip[0, 0]), int(clip[0, 1])
        assert (clip[:, 0] == c).all() and (clip[:, 1] == k).all()
        frames = [int(f) for f in clip[:, 2]]
        step = (frames[1] - frames[0]) % 8
        assert step in (1, 7) and frames == [(frames[0] + j * (1 if step == 1 else -1)) % 8 for j in range(5)]
    assert smp_train.all_clips(cycles, 4).shape == (2 * 3 * 16, 4, 6)


def arc_cycles(characters=3, variants=4, dim=16, seed=0):
    """Each cycle runs around a circle through the origin's plane (a random plane per cycle): linear
    interpolation cuts the chords, and the true in-between embedding lies further out, along the sum
    of the endpoints, by an amount that depends on the angle between them: learnable per channel."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.arange(8) * (2 * math.pi / 8)
    cycles = torch.empty(characters, variants, 8, dim)
    for c in range(characters):
        for k in range(variants):
            u, v = torch.linalg.qr(torch.randn(dim, 2, generator=g))[0].T
            cycles[c, k] = 1.5 * (angle.cos()[:, None] * u + angle.sin()[:, None] * v)
    return cycles


def test_a_few_training_steps_reduce_the_loss_and_beat_linear_interpolation():
    torch.manual_seed(0)
    data = arc_cycles()
    model = smp.SemanticMotionPredictor(smp.SMPConfig(embed_dim=16, hidden_dim=32, depth=1, mlp_dim=64,
                                                      time_features=8, context_dim=4, head_width=16))
    lengths = (3, 4)                       # up to 135 degrees; antipodal endpoints would be ambiguous
    before = smp_train.evaluate(model, data, lengths)
    assert before["smp_mse"] == pytest.approx(before["linear_mse"])       # untrained = linear interpolation
    losses = smp_train.train_predictor(model, data, smp_train.TrainSettings(steps=60, batch=16, lr=3e-3, max_frames=4))
    assert len(losses) == 60
    after = smp_train.evaluate(model, data, lengths)
    assert after["smp_mse"] < 0.5 * before["smp_mse"] and after["smp_cos"] > after["linear_cos"] + 0.01
    assert float(model.embed_scale) == pytest.approx(float(data.reshape(-1, 16).std(0).mean()), rel=1e-5)


def test_motion_loss_only_scores_inner_frames():
    target = torch.randn(2, 5, 8)
    pred = target.clone()
    pred[:, 0] += 10
    pred[:, -1] -= 10
    assert float(smp_train.motion_loss(pred, target, 1.0)) == pytest.approx(0.0, abs=1e-6)
    pred[:, 2] += 1
    assert float(smp_train.motion_loss(pred, target, 1.0)) > 0.1


# ---------------------------------------------------------------------- the shipped demo weights
def test_demo_weights_are_small_documented_and_load():
    from safetensors import safe_open
    assert DEMO.is_file(), "run scripts/train_smp.py to make the demo weights"
    assert DEMO.stat().st_size < 5 * 2 ** 20
    with safe_open(str(DEMO), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "boundless-smp" and "CC0" in meta["data"] and "efficientnet-lite0" in meta["encoder"]
    metrics = json.loads(meta["metrics"])
    assert set(metrics["heldout_characters"]) and not set(metrics["heldout_characters"]) - set(smp_train.KENNEY_CHARACTERS)
    model = smp.load_predictor(sd)
    assert model.config.embed_dim == 1280 and float(model.embed_scale) > 0
