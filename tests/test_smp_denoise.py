"""SMP stage 2: training the predictor and the cross-attention weights through a frozen ComfyUI UNet
(nodes/story/smp_denoise.py and scripts/train_smp.py's glue), on the tiny SD1.5-shaped test UNet."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import smp_tiny
from conftest import import_comfy_in_process
from packpath import pack_module

smp = pack_module("nodes.story.smp")
smp_train = pack_module("nodes.story.smp_train")
denoise_mod = pack_module("nodes.story.smp_denoise")
tokens_mod = pack_module("nodes.story.motion_tokens")

CHARACTERS, VARIANTS, FRAMES = 2, 1, smp_train.WALK_FRAMES


@pytest.fixture(scope="module")
def unet():
    import_comfy_in_process()
    import train_smp
    testing = pack_module("nodes.story.testing")
    patcher, clip = testing.tiny_model(0), testing.tiny_clip(0)
    denoise, sigmas, found = train_smp.comfy_denoiser(patcher, clip, "a robot walking")
    return {"denoise": denoise, "sigmas": sigmas, "layers": [layer for layer, _ in found],
            "modules": [module for _, module in found], "patcher": patcher, "clip": clip,
            "vae": testing.tiny_vae(0), "train_smp": train_smp}


def data(seed: int = 0):
    """Embeddings ``[2, 1, 8, 1280]`` and latents ``[2, 1, 8, 4, 8, 8]`` of two made-up walk cycles."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(CHARACTERS, VARIANTS, FRAMES, smp_tiny.EMBED_DIM, generator=g),
            torch.randn(CHARACTERS, VARIANTS, FRAMES, 4, 8, 8, generator=g))


def test_fresh_weights_start_from_the_unets_text_keys_and_values(unet):
    conditioner = denoise_mod.fresh_conditioner(unet["modules"], smp_tiny.EMBED_DIM, tokens=4)
    assert conditioner.config.inner_dims == smp_tiny.TINY_INNER and conditioner.config.cross_dim == 32
    for index, attn2 in enumerate(unet["modules"]):
        assert torch.equal(conditioner.layer(index).to_k_ip.weight, attn2.to_k.weight.float())
        assert torch.equal(conditioner.layer(index).to_v_ip.weight, attn2.to_v.weight.float())


def test_loss_is_the_plain_unets_at_weight_zero_and_gradients_reach_only_the_trained_parts(unet):
    embeds, latents = data()
    conditioner = denoise_mod.fresh_conditioner(unet["modules"], smp_tiny.EMBED_DIM)
    args = (unet["sigmas"], conditioner, unet["layers"], embeds[:, 0], latents[:, 0], torch.Generator().manual_seed(1))
    off = denoise_mod.denoising_loss(unet["denoise"], *args[:-1], torch.Generator().manual_seed(1), weight=0.0)

    def unpatched(x_r, sigma_r, patches):                     # the plain UNet: no attn2 patch at all
        return unet["denoise"](x_r, sigma_r, {})
    plain = denoise_mod.denoising_loss(unpatched, *args)
    assert off.shape == (CHARACTERS, FRAMES)
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=0)   # only the text attention kernel differs

    predictor = smp_tiny.tiny_predictor()
    predicted = predictor(embeds[:, 0, 0], embeds[:, 0, -1], FRAMES)
    loss = denoise_mod.denoising_loss(unet["denoise"], unet["sigmas"], conditioner, unet["layers"], predicted,
                                      latents[:, 0], torch.Generator().manual_seed(1))
    assert not torch.allclose(loss, off)                      # the image tokens change the prediction
    loss.mean().backward()
    for name, param in [("predictor head", predictor.head_out.weight),
                        ("token projection", conditioner.image_proj.proj.weight),
                        ("first to_k_ip", conditioner.layer(0).to_k_ip.weight),
                        ("last to_v_ip", conditioner.layer(len(unet["layers"]) - 1).to_v_ip.weight)]:
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in unet["patcher"].model.parameters())


def test_training_lowers_the_denoising_error_and_an_untrained_predictor_is_interpolation(unet):
    embeds, latents = data(2)
    predictor = smp_tiny.tiny_predictor()
    with torch.no_grad():
        predictor.head_out.weight.zero_()                     # untrained: exactly linear interpolation
    conditioner = denoise_mod.fresh_conditioner(unet["modules"], smp_tiny.EMBED_DIM)
    common = (conditioner, unet["layers"], unet["denoise"], unet["sigmas"], embeds, latents)
    before = denoise_mod.evaluate_denoising(predictor, *common, frames=4, batch=8)
    assert before["smp"] == before["linear"] and before["true_frames"] != before["linear"]
    assert before["frames_scored"] == CHARACTERS * VARIANTS * 2 * FRAMES * (4 - 2)
    settings = denoise_mod.DenoiserSettings(steps=20, batch=2, frames=4, lr=3e-3, projection_lr=3e-3)
    losses = denoise_mod.train_through_denoiser(predictor, *common, settings)
    after = denoise_mod.evaluate_denoising(predictor, *common, frames=4, batch=8)
    assert len(losses) == 20 and after["smp"] < 0.95 * before["smp"], (before, after)
    assert not conditioner.training and not any(p.requires_grad for p in conditioner.parameters())


def test_frozen_projection_stays_as_given(unet):
    embeds, latents = data(3)
    predictor = smp_tiny.tiny_predictor()
    conditioner = smp_tiny.tiny_conditioner()
    given = tokens_mod.conditioner_state_dict(conditioner)
    head_before = predictor.head_out.weight.detach().clone()
    denoise_mod.train_through_denoiser(predictor, conditioner, unet["layers"], unet["denoise"], unet["sigmas"], embeds,
                                       latents, denoise_mod.DenoiserSettings(steps=3, lr=1e-3, projection_lr=0.0))
    assert all(torch.equal(v, given[k]) for k, v in tokens_mod.conditioner_state_dict(conditioner).items())
    assert not torch.equal(predictor.head_out.weight, head_before)


needs_arcade = pytest.mark.skipif(importlib.util.find_spec("arcade") is None,
                                  reason="arcade not installed (scripts/setup does it)")


def script_stage(unet, argv):
    """scripts/train_smp.py's stage 2 on real walk-cycle frames of one training and one held-out
    character (VAE-encoded by the tiny VAE at 64 px), with random 1280-d embeddings."""
    train_smp = unet["train_smp"]
    args = train_smp.parse(["--size", "64", "--denoiser-batch", "1", *argv])
    variants = smp_train.random_variants(1, torch.Generator().manual_seed(0))
    renders = {"train": smp_train.render_cycles(["zombie"], variants),
               "eval": smp_train.render_cycles(["zombie", "robot"], variants)}
    g = torch.Generator().manual_seed(4)
    embeds = {split: torch.randn(*frames.shape[:3], smp_tiny.EMBED_DIM, generator=g) for split, frames in renders.items()}
    predictor = smp_tiny.tiny_predictor()
    conditioner, metrics = train_smp.denoiser_stage(args, predictor, embeds, renders, [1], unet["patcher"],
                                                    unet["clip"], unet["vae"])
    return predictor, conditioner, metrics


@needs_arcade
def test_script_stage_gives_weights_smp_loader_reads_and_held_out_numbers(unet):
    """The written predictor + fresh cross-attention weights load as one SMP file and fit the UNet."""
    predictor, conditioner, metrics = script_stage(unet, ["--denoiser-steps", "4", "--image-tokens", "2"])
    assert metrics["steps"] == 4 and len(metrics["heldout"]) == 4
    assert metrics["heldout"]["frames_scored"] == 1 * 1 * 16 * 6
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics["heldout"].values())
    assert metrics["heldout"]["smp"] != metrics["heldout_before"]["smp"]
    written = {**tokens_mod.conditioner_state_dict(conditioner, torch.float16),
               **smp.predictor_state_dict(predictor, torch.float16)}
    loaded = tokens_mod.load_conditioner(written)
    pack_module("nodes.story.motion_patch").check_layers(unet["layers"], loaded)
    assert loaded.config.tokens == 2 and smp.load_predictor(written).config == predictor.config


@needs_arcade
def test_script_stage_starts_from_an_ip_adapter_file_and_can_keep_it_frozen(unet, tmp_path):
    from safetensors.torch import save_file
    given = tokens_mod.conditioner_state_dict(smp_tiny.tiny_conditioner(1))
    save_file(given, str(tmp_path / "ip.safetensors"))
    _, conditioner, _ = script_stage(unet, ["--denoiser-steps", "2", "--ip-adapter", str(tmp_path / "ip.safetensors"),
                                            "--freeze-projection"])
    assert all(torch.equal(v, given[k]) for k, v in tokens_mod.conditioner_state_dict(conditioner).items())
