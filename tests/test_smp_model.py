"""Semantic Motion Predictor and its IP-Adapter-style conditioning weights (pure torch)."""
from __future__ import annotations

import pytest
import torch

from packpath import pack_module

smp = pack_module("nodes.story.smp")
tokens = pack_module("nodes.story.motion_tokens")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

SMALL = smp.SMPConfig(embed_dim=24, hidden_dim=64, depth=2, mlp_dim=96, time_features=8, context_dim=4, head_width=16)


def trained_like(config=SMALL, seed=0):
    """A predictor whose output layer is not zero (as after training)."""
    torch.manual_seed(seed)
    model = smp.SemanticMotionPredictor(config).eval()
    with torch.no_grad():
        model.head_out.weight.normal_(0, 0.5)
        model.head_out.bias.fill_(0.1)
        model.embed_scale.fill_(0.7)
    return model


def test_frame_times_and_interpolation_hit_the_endpoints_exactly():
    assert smp.frame_times(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    start, end = torch.randn(3, 24) * 10, torch.randn(3, 24) * 10
    path = smp.interpolate(start, end, 7)
    assert path.shape == (3, 7, 24)
    assert torch.equal(path[:, 0], start) and torch.equal(path[:, -1], end)
    torch.testing.assert_close(path[:, 3], (start + end) / 2)
    with pytest.raises(BoundlessError, match="at least 2 frames"):
        smp.frame_times(1)


def test_untrained_predictor_is_linear_interpolation():
    model = smp.SemanticMotionPredictor(SMALL)
    start, end = torch.randn(2, 24), torch.randn(2, 24)
    with torch.no_grad():
        assert torch.equal(model(start, end, 9), smp.interpolate(start, end, 9))


@pytest.mark.parametrize("frames", [2, 3, 16])
def test_trained_predictor_keeps_endpoints_and_changes_the_middle(frames):
    model = trained_like()
    start, end = torch.randn(4, 24), torch.randn(4, 24)
    with torch.no_grad():
        out = model(start, end, frames)
    assert out.shape == (4, frames, 24)
    assert torch.equal(out[:, 0], start) and torch.equal(out[:, -1], end)
    if frames > 2:
        assert (out[:, 1:-1] - smp.interpolate(start, end, frames)[:, 1:-1]).abs().max() > 1e-3


def test_predictor_frames_depend_on_both_endpoints():
    model = trained_like()
    start, end = torch.randn(1, 24), torch.randn(1, 24)
    with torch.no_grad():
        base = model(start, end, 5)
        moved = model(start, end + 1.0, 5)
    assert (moved[:, 1:-1] - base[:, 1:-1]).abs().min() > 0


def test_wrong_embedding_width_is_a_clear_error():
    with pytest.raises(BoundlessError, match=r"shape \[B, 24\].*image encoder"):
        smp.SemanticMotionPredictor(SMALL)(torch.randn(1, 32), torch.randn(1, 32), 4)


def test_config_is_inferred_from_keys_and_shapes_round_trip():
    model = trained_like()
    sd = smp.predictor_state_dict(model)
    assert all(k.startswith("smp.") for k in sd) and "smp.embed_scale" in sd
    config = smp.config_from_state_dict(smp.predictor_keys(sd))
    assert config == SMALL and config.heads == 1
    loaded = smp.load_predictor(sd)
    start, end = torch.randn(2, 24), torch.randn(2, 24)
    with torch.no_grad():
        assert torch.equal(loaded(start, end, 6), model(start, end, 6))
    assert smp.SMPConfig(embed_dim=8, hidden_dim=256, depth=1, mlp_dim=8).heads == 4


def test_broken_predictor_files_are_refused_with_a_reason():
    sd = smp.predictor_state_dict(trained_like())
    with pytest.raises(BoundlessError, match="smp.input_proj.weight' is missing"):
        smp.load_predictor({k: v for k, v in sd.items() if k != "smp.input_proj.weight"})
    truncated = dict(sd)
    truncated["smp.blocks.1.mlp.fc2.weight"] = truncated["smp.blocks.1.mlp.fc2.weight"][:, :5]
    with pytest.raises(BoundlessError, match=r"wrong shapes blocks\.1\.mlp\.fc2\.weight"):
        smp.load_predictor(truncated)


def test_story_motion_chains_transitions_and_keeps_every_keyframe():
    model = trained_like()
    keyframes = torch.randn(4, 24)
    with torch.no_grad():
        video = smp.story_motion(keyframes, 5, model)
        per_pair = model(keyframes[:-1], keyframes[1:], 5)
    assert video.shape == (3 * 4 + 1, 24)
    for i in range(4):
        assert torch.equal(video[4 * i], keyframes[i])
    torch.testing.assert_close(video[5:8], per_pair[1, 1:4])
    linear = smp.story_motion(keyframes, 5)
    torch.testing.assert_close(linear[2], (keyframes[0] + keyframes[1]) / 2)
    with pytest.raises(BoundlessError, match="at least two keyframe"):
        smp.story_motion(keyframes[:1], 5)


# ---------------------------------------------------------------------- conditioning (IP-Adapter layout)
def ip_adapter_sd(embed=24, n_tokens=4, cross=16, inner=(32, 32, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"image_proj.proj.weight": torch.randn(n_tokens * cross, embed, generator=g),
          "image_proj.proj.bias": torch.randn(n_tokens * cross, generator=g),
          "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    for i, width in enumerate(inner):
        sd[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = torch.randn(width, cross, generator=g)
        sd[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = torch.randn(width, cross, generator=g)
    return sd


def test_conditioner_config_from_ip_adapter_keys():
    config = tokens.conditioner_config(ip_adapter_sd())
    assert config == tokens.ConditionerConfig(embed_dim=24, tokens=4, cross_dim=16, inner_dims=(32, 32, 64))
    model = tokens.load_conditioner(ip_adapter_sd())
    assert model.layer(2).to_k_ip.weight.shape == (64, 16)
    assert tokens.conditioner_state_dict(model).keys() == ip_adapter_sd().keys()


def test_nested_bin_layout_is_flattened():
    flat = ip_adapter_sd()
    nested = {"image_proj": {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[len("ip_adapter."):]: v for k, v in flat.items() if k.startswith("ip_adapter.")}}
    assert tokens.flatten_ip_adapter(nested).keys() == flat.keys()


def test_tokens_are_projection_then_layer_norm():
    model = tokens.load_conditioner(ip_adapter_sd())
    embeds = torch.randn(5, 24)
    out = model.tokens(embeds)
    assert out.shape == (5, 4, 16)
    sd = ip_adapter_sd()
    raw = (embeds @ sd["image_proj.proj.weight"].T + sd["image_proj.proj.bias"]).view(5, 4, 16)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(raw, (16,)))
    with pytest.raises(BoundlessError, match="24-wide embeddings"):
        model.tokens(torch.randn(2, 1024))


def test_unsupported_ip_adapter_variants_are_named():
    plus = {"image_proj.latents": torch.zeros(1, 16, 768), "image_proj.proj_in.weight": torch.zeros(768, 1280),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)}
    with pytest.raises(BoundlessError, match="Plus / Full-face / FaceID"):
        tokens.conditioner_config(plus)
    gap = ip_adapter_sd()
    gap = {k.replace("ip_adapter.3.", "ip_adapter.7."): v for k, v in gap.items()}
    with pytest.raises(BoundlessError, match="expected 1, 3, 5"):
        tokens.conditioner_config(gap)
