"""VAR checkpoint loading: config inference from keys and shapes, strictness, safe formats, clear errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from packpath import pack_module
from var_tiny import tiny_transformer_config, tiny_vqvae_config, transformer_state_dict, vqvae_state_dict

checkpoint = pack_module("nodes.var.checkpoint")
schedule = pack_module("nodes.var.schedule")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

SMALL = (1, 2, 3, 4)


def _save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("variant", [
    {},                                               # per-block AdaLN, l2 attention (var_d16..d30 today)
    {"depth": 3, "width": 128},
    {"l2_attention": False},                          # the pre-2024-04-15 files
    {"shared_adaln": True},                           # var_d36 layout
    {"num_classes": 10, "vocab_size": 64, "latent_channels": 8},
])
def test_transformer_config_is_inferred_from_keys_and_shapes(tmp_path, variant):
    config = tiny_transformer_config(**variant)
    path = _save(transformer_state_dict(config), tmp_path / "t.safetensors")
    model = checkpoint.load_transformer(path)
    assert model.config == config
    assert not any(p.requires_grad for p in model.parameters())
    want = transformer_state_dict(config, with_buffers=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())


def test_schedule_comes_from_the_level_buffer_or_the_length(tmp_path):
    config = tiny_transformer_config(patch_nums=SMALL)          # not a released schedule
    path = _save(transformer_state_dict(config), tmp_path / "small.safetensors")
    assert checkpoint.load_transformer(path).config.patch_nums == SMALL
    config512 = tiny_transformer_config(patch_nums=schedule.SCHEDULE_512)
    state = transformer_state_dict(config512, with_buffers=False)   # no lvl_1L: length 2240 decides
    path512 = _save(state, tmp_path / "t512.safetensors")
    assert checkpoint.load_transformer(path512).config.patch_nums == schedule.SCHEDULE_512
    with pytest.raises(BoundlessError, match="trained for 512-px images .* cannot sample the 256-px"):
        checkpoint.load_transformer(path512, patch_nums=schedule.SCHEDULE_256)


def test_buffers_are_accepted_optional_and_shape_checked(tmp_path):
    config = tiny_transformer_config()
    state = transformer_state_dict(config)
    del state["attn_bias_for_masking"]                          # as in some fixture files: must not be required
    assert checkpoint.load_transformer(_save(state, tmp_path / "a.safetensors")).config == config
    state["attn_bias_for_masking"] = torch.zeros(1, 1, 30, 30)  # a mask of another schedule
    with pytest.raises(BoundlessError, match="attn_bias_for_masking has shape"):
        checkpoint.load_transformer(_save(state, tmp_path / "b.safetensors"))
    vae_state = vqvae_state_dict(num_scales=14)                 # any number of scales is fine here
    assert checkpoint.load_vqvae(_save(vae_state, tmp_path / "v.safetensors")).config == tiny_vqvae_config()
    del vae_state["quantize.ema_vocab_hit_SV"]
    assert checkpoint.load_vqvae(_save(vae_state, tmp_path / "w.safetensors")).config == tiny_vqvae_config()


def test_missing_or_unexpected_keys_are_refused(tmp_path):
    state = transformer_state_dict()
    del state["blocks.1.ffn.fc2.bias"]
    with pytest.raises(BoundlessError, match=r"missing blocks\.1\.ffn\.fc2\.bias"):
        checkpoint.load_transformer(_save(state, tmp_path / "a.safetensors"))
    state = transformer_state_dict()
    state["blocks.0.attn.k_bias"] = torch.zeros(64)
    with pytest.raises(BoundlessError, match=r"unexpected blocks\.0\.attn\.k_bias"):
        checkpoint.load_transformer(_save(state, tmp_path / "b.safetensors"))
    vae_state = vqvae_state_dict()
    vae_state["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)
    with pytest.raises(BoundlessError, match="wrong shapes decoder.conv_out.weight"):
        checkpoint.load_vqvae(_save(vae_state, tmp_path / "v.safetensors"))


def test_pth_files_load_weights_only_and_training_wrappers_are_unwrapped(tmp_path, monkeypatch):
    real_load = torch.load
    calls = []

    def checked_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", checked_load)
    config = tiny_transformer_config(shared_adaln=True)
    state = transformer_state_dict(config)
    torch.save(state, tmp_path / "var.pth")
    assert checkpoint.load_transformer(str(tmp_path / "var.pth")).config == config
    wrapped = {"epoch": 3, "iter": 10, "trainer": {
        "var_wo_ddp": {f"_orig_mod.{k}": v for k, v in state.items()},
        "vae_local": {f"module.{k}": v for k, v in vqvae_state_dict().items()}}}
    torch.save(wrapped, tmp_path / "ar-ckpt-last.pth")
    assert checkpoint.load_transformer(str(tmp_path / "ar-ckpt-last.pth")).config == config
    assert checkpoint.load_vqvae(str(tmp_path / "ar-ckpt-last.pth")).config == tiny_vqvae_config()
    assert calls and all(flag is True for flag in calls)


def test_a_transformer_given_as_vqvae_and_vice_versa_is_named(tmp_path):
    transformer_path = _save(transformer_state_dict(), tmp_path / "var_d2.safetensors")
    vae_path = _save(vqvae_state_dict(), tmp_path / "vae.safetensors")
    with pytest.raises(BoundlessError, match="var_d2.safetensors is a VAR transformer .*not the VQVAE"):
        checkpoint.load_vqvae(transformer_path)
    with pytest.raises(BoundlessError, match="vae.safetensors is the VAR VQVAE .*not a transformer"):
        checkpoint.load_transformer(vae_path)
    other = _save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(BoundlessError, match="is not the VQVAE"):
        checkpoint.load_vqvae(other)


def test_truncated_files_give_a_clear_error(tmp_path):
    path = tmp_path / "var.safetensors"
    _save(transformer_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BoundlessError, match="not a readable .safetensors file"):
        checkpoint.load_transformer(str(path))
    pth = tmp_path / "vae.pth"
    torch.save(vqvae_state_dict(), pth)
    data = pth.read_bytes()
    pth.write_bytes(data[: len(data) // 3])
    with pytest.raises(BoundlessError, match="truncated or corrupt"):
        checkpoint.load_vqvae(str(pth))


def test_shape_checks_build_on_meta_and_report_differences():
    shapes = {k: tuple(v.shape) for k, v in transformer_state_dict(tiny_transformer_config(depth=3)).items()}
    assert checkpoint.check_transformer_shapes(shapes) is None
    shapes["blocks.2.ffn.fc2.weight"] = (64, 255)
    assert "shape ['blocks.2.ffn.fc2.weight (64, 255) vs (64, 256)']" == checkpoint.check_transformer_shapes(shapes)
    vae_shapes = {k: tuple(v.shape) for k, v in vqvae_state_dict().items()}
    assert checkpoint.check_vqvae_shapes(vae_shapes) is None
    del vae_shapes["encoder.mid.attn_1.qkv.bias"]
    assert "model-only" in checkpoint.check_vqvae_shapes(vae_shapes)


def test_loading_leaves_the_global_rng_and_torch_defaults_alone(tmp_path):
    path = _save(transformer_state_dict(), tmp_path / "t.safetensors")
    vae_path = _save(vqvae_state_dict(), tmp_path / "v.safetensors")
    before = torch.get_rng_state()
    reset = torch.nn.Linear.reset_parameters
    checkpoint.load_transformer(path)
    checkpoint.load_vqvae(vae_path)
    assert torch.equal(before, torch.get_rng_state())
    assert torch.nn.Linear.reset_parameters is reset
    assert torch.nn.Linear(4, 4).weight.abs().sum() > 0       # default init still works


def test_half_precision_load_keeps_the_config(tmp_path):
    path = _save(transformer_state_dict(), tmp_path / "t.safetensors")
    model = checkpoint.load_transformer(path, dtype=torch.bfloat16)
    assert model.weight_dtype == torch.bfloat16 and model.config == tiny_transformer_config()
