"""Paella networks and loader: configs from keys, strict loading, safe pickles, numerical properties."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

import paella_tiny
from conftest import SHARED
from packpath import pack_module

loader = pack_module("nodes.paella.loader")
layers = pack_module("nodes.paella.layers")
v3_model = pack_module("nodes.paella.v3_model")
errors = pack_module("nodes.common.errors")

SHAPES = SHARED / "fixtures" / "paella" / "shapes"


def released_shapes(name):
    path = SHAPES / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"released key layouts not found at {path}")
    return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}


def meta_params(kind, shapes):
    return sum(p.numel() for p in loader.build(kind, shapes, "meta").parameters())


@pytest.mark.parametrize("name, kind, params", [
    ("paella_v3", loader.V3, 1_008_350_592),
    ("paella_v1", loader.V1, 577_995_184),
    ("prior_v1", loader.V3_PRIOR, 899_770_624),
])
def test_released_layouts_build_with_the_published_parameter_counts(name, kind, params):
    shapes = released_shapes(name)
    assert loader.detect_kind(shapes) == kind
    assert loader.check_shapes(kind, shapes) is None
    assert meta_params(kind, shapes) == params


def test_released_v3_config_is_read_from_the_keys():
    cfg = v3_model.PaellaV3Config.from_shapes(released_shapes("paella_v3"))
    assert cfg.c_hidden == (640, 1280, 1280) and cfg.blocks == (6, 16, 6)
    assert cfg.level_config == ("CT", "CTA", "CTA")
    assert (cfg.num_labels, cfg.byt5_width, cfg.clip_width, cfg.clip_seq_len, cfg.c_r) == (8192, 2560, 1024, 4, 64)
    assert cfg.token_multiple == 8


def test_released_vqgans_match_their_layouts():
    f4 = released_shapes("vqgan_f4")
    assert loader.check_shapes(loader.V3_VQGAN, f4) is None
    model = loader.build(loader.V3_VQGAN, f4, "meta")
    assert model.config.factor == 4 and model.config.bottleneck_blocks == 12
    assert 18.3e6 < sum(p.numel() for p in model.parameters()) < 18.5e6
    f8 = released_shapes("paella_v1_vqgan")
    assert loader.check_shapes(loader.V1_VQGAN, f8) is None
    assert loader.build(loader.V1_VQGAN, f8, "meta").config.factor == 8


def test_check_shapes_names_the_difference():
    shapes = layers.shapes_of(paella_tiny.tiny_v3().state_dict())
    shapes["up_blocks.2.0.depthwise.weight"] = (32, 1, 3, 3)
    assert "wrong shapes up_blocks.2.0.depthwise.weight (32, 1, 3, 3) vs (32, 2, 3, 3)" in \
        loader.check_shapes(loader.V3, shapes)
    del shapes["up_blocks.2.0.depthwise.weight"]
    assert "missing up_blocks.2.0.depthwise.weight" in loader.check_shapes(loader.V3, shapes)
    del shapes["out_mapper.1.weight"]
    assert "out_mapper.1.weight" in loader.check_shapes(loader.V3, shapes)


@pytest.mark.parametrize("make, kind", [
    (paella_tiny.tiny_v3, loader.V3), (paella_tiny.tiny_f4, loader.V3_VQGAN),
    (paella_tiny.tiny_prior, loader.V3_PRIOR), (paella_tiny.tiny_v1, loader.V1), (paella_tiny.tiny_f8, loader.V1_VQGAN),
])
def test_safetensors_round_trip_gives_the_same_config_and_weights(tmp_path, make, kind):
    model = make()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = loader.load_model(str(path), kind)
    assert loaded.config == model.config
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pt_files_load_with_weights_only_and_state_dict_wrapper(tmp_path, monkeypatch):
    model = paella_tiny.tiny_f4()
    path = tmp_path / "vqgan_f4.pt"
    torch.save({"state_dict": model.state_dict()}, str(path))
    real_load = torch.load
    calls = []

    def guarded(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    loaded = loader.load_model(str(path), loader.V3_VQGAN)
    assert calls == [True]
    assert torch.equal(loaded.codebook, model.codebook)


def test_wrong_kind_and_damaged_files_raise_clear_errors(tmp_path):
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in paella_tiny.tiny_v1().state_dict().items()}, str(path))
    with pytest.raises(errors.BoundlessError, match="Paella v1 token model.*needs Paella v3 token model"):
        loader.load_model(str(path), loader.V3)
    state = {k: v.contiguous() for k, v in paella_tiny.tiny_v3().state_dict().items()}
    del state["up_blocks.2.0.depthwise.bias"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(errors.BoundlessError, match="missing up_blocks.2.0.depthwise.bias"):
        loader.load_model(str(tmp_path / "broken.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(errors.BoundlessError, match="not a Paella checkpoint"):
        loader.load_model(str(tmp_path / "other.safetensors"))


def test_sinusoid_embedding_layout():
    emb = layers.sinusoid_embedding(torch.tensor([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # the first frequency is 1: sin / cos of r * 10000
    assert emb[1, 0].item() == pytest.approx(torch.sin(torch.tensor(5000.0)).item(), abs=1e-6)
    assert layers.sinusoid_embedding(torch.tensor([0.3]), 7).shape == (1, 7)


def test_explicit_attention_with_unit_weights_matches_sdpa():
    model = paella_tiny.tiny_v3()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, paella_tiny.NUM_LABELS, (1, 8, 8), generator=g)
    byt5 = torch.randn(1, 5, paella_tiny.BYT5_WIDTH, generator=g)
    clip = torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g)
    r = torch.tensor([0.7])
    plain = model(tokens, r, byt5, clip)
    ones = model(tokens, r, byt5, clip, attn_weights=torch.ones(5))
    torch.testing.assert_close(ones, plain, atol=1e-5, rtol=1e-5)
    reweighted = model(tokens, r, byt5, clip, attn_weights=torch.full((5,), 0.4))
    assert (reweighted - plain).abs().max() > 1e-3


def test_v3_logits_are_spatially_global():
    """GRN normalises over the whole grid: one changed token moves logits everywhere."""
    model = paella_tiny.tiny_v3()
    tokens = torch.zeros(1, 16, 16, dtype=torch.long)
    changed = tokens.clone()
    changed[0, 0, 0] = 5
    byt5 = torch.ones(1, 2, paella_tiny.BYT5_WIDTH)
    a = model(tokens, torch.tensor([0.5]), byt5)
    b = model(changed, torch.tensor([0.5]), byt5)
    assert (a[..., 12:, 12:] - b[..., 12:, 12:]).abs().max() > 1e-6


def test_v1_spatial_condition_of_constant_map_equals_vector():
    model = paella_tiny.tiny_v1()
    tokens = torch.randint(0, paella_tiny.NUM_LABELS, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    c = torch.randn(2, paella_tiny.CLIP_WIDTH)
    r = torch.tensor([0.0, 0.5])
    vector = model(tokens, c, r)
    spatial = model(tokens, c[:, :, None, None].expand(-1, -1, 4, 4), r)
    torch.testing.assert_close(spatial, vector, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [paella_tiny.tiny_v3, paella_tiny.tiny_f4, paella_tiny.tiny_prior,
                                  paella_tiny.tiny_v1, paella_tiny.tiny_f8])
def test_models_move_and_cast_like_any_module(make):
    """ComfyUI's memory manager moves models with .to(); nothing may shadow nn.Module internals."""
    model = make().to(torch.device("cpu")).to(torch.float64).float()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_v1_down_and_up_block_counts_are_read_separately():
    """The authors' DenoiseUNet takes down_levels and up_levels apart; a file whose up path is not the
    mirror of its down path loads with the counts it holds."""
    v1_model = pack_module("nodes.paella.v1_model")
    config = v1_model.PaellaV1Config(num_labels=32, c_levels=(16, 32, 32), blocks=(1, 2, 1), c_clip=8,
                                     up_blocks=(2, 1, 3))
    model = v1_model.PaellaV1(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert v1_model.PaellaV1Config.from_shapes(shapes) == config
    mirrored = v1_model.PaellaV1(dataclasses.replace(config, up_blocks=None))
    assert v1_model.PaellaV1Config.from_shapes({k: tuple(v.shape) for k, v in mirrored.state_dict().items()}
                                               ).up_blocks is None
    logits = model(torch.zeros(1, 8, 8, dtype=torch.int64), torch.zeros(1, 8), torch.full((1,), 0.5))
    assert logits.shape == (1, 32, 8, 8)
