"""The demo tokenizer's trainer: the perceptual loss, codebook growth and one training step."""
from __future__ import annotations

import torch

from packpath import pack_module
from vq_tiny import tiny_vqgan

train = pack_module("nodes.vq.train")
perceptual = pack_module("nodes.vq.perceptual")


def _images(seed: int, n: int = 2, side: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=generator) * 2 - 1


def test_perceptual_loss_is_zero_on_equal_images_and_grows_with_blur():
    loss = perceptual.PerceptualLoss()
    x = _images(0)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert float(loss(x, x)) < 1e-10
    slightly, strongly = float(loss(0.8 * x + 0.2 * blurred, x)), float(loss(blurred, x))
    assert 0 < slightly < strongly


def test_perceptual_loss_trains_the_reconstruction_only():
    loss = perceptual.PerceptualLoss()
    recon = _images(1).requires_grad_(True)
    loss(recon, _images(2)).backward()
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert all(p.grad is None for p in loss.parameters())
    assert not loss.train().net.training            # the frozen net's batch norm stays in eval mode


def test_grow_codebook_keeps_every_old_code_and_adds_new_ones_at_encoder_outputs():
    model = tiny_vqgan(seed=1)
    old = model.quantize.embedding.weight.detach().clone()
    sampler = train.CropSampler([_images(3, n=1, side=96)[0]], crop=64, max_down=1.0, seed=0)
    train.grow_codebook(model, sampler, batch=2, n_embed=80)
    grown = model.quantize.embedding.weight
    assert grown.shape == (80, old.shape[1])
    assert torch.equal(grown[:64], old)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(sampler.batch(2)))
    latent_norm = float(z.pow(2).sum(1).sqrt().mean())
    assert float(grown[64:].detach().pow(2).sum(1).sqrt().mean()) > 0.2 * latent_norm      # not zeros: real latents


def test_grow_codebook_refuses_to_shrink():
    model = tiny_vqgan()
    sampler = train.CropSampler([_images(4, n=1, side=64)[0]], crop=64, max_down=1.0, seed=0)
    try:
        train.grow_codebook(model, sampler, batch=1, n_embed=32)
    except ValueError as err:
        assert "smaller" in str(err)
    else:
        raise AssertionError("shrinking the codebook was accepted")


def test_a_few_steps_with_the_perceptual_loss_lower_it_on_one_picture():
    torch.manual_seed(0)
    model = tiny_vqgan(seed=2).train()
    picture = torch.nn.functional.interpolate(_images(5, n=1, side=8), size=64, mode="bilinear")[0]
    sampler = train.CropSampler([picture], crop=64, max_down=1.0, seed=0)
    codebook = train.EMACodebook(model)
    seen = perceptual.PerceptualLoss()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("quantize.")], lr=2e-3)
    batch = sampler.batch(2)
    first = train.train_step(model, codebook, opt, batch, perceptual=seen, perceptual_weight=1.0)
    for _ in range(15):
        last = train.train_step(model, codebook, opt, batch, perceptual=seen, perceptual_weight=1.0)
    assert set(first) >= {"loss", "rec", "perceptual", "codes_used"}
    assert last["loss"] < 0.7 * first["loss"]


def test_colour_jitter_rotates_hue_and_scales_saturation_but_keeps_grey():
    grey = torch.full((1, 3, 8, 8), 0.2)
    assert torch.allclose(train.jitter_colour(grey, 0.3, 1.4), grey, atol=1e-3)      # grey has no hue
    red = torch.tensor([0.8, -0.8, -0.8]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    third = train.jitter_colour(red, 1 / 3, 1.0)[0, :, 0, 0]                       # red turned a third: green
    assert third.argmax() == 1 and float(third[1]) > 0.7
    assert torch.allclose(train.jitter_colour(red, 0.0, 1.0), red, atol=1e-3)
    paler = train.jitter_colour(red, 0.0, 0.5)[0, :, 0, 0]
    assert float(paler[0] - paler[1]) < 0.6 * 1.6                                  # less saturated


def test_crop_sampler_jitters_the_share_it_is_given():
    picture = torch.tensor([0.8, -0.8, -0.8]).view(3, 1, 1).expand(3, 64, 64).clone()
    plain = train.CropSampler([picture], crop=32, max_down=1.0, seed=0).batch(20)
    assert torch.allclose(plain, plain[:1].expand_as(plain))
    jittered = train.CropSampler([picture], crop=32, max_down=1.0, seed=0, colour_jitter=0.5).batch(40)
    changed = (jittered - plain[:1]).abs().amax(dim=(1, 2, 3)) > 0.05
    assert 8 <= int(changed.sum()) <= 32


def test_dead_codes_restart_at_batch_latents():
    model = tiny_vqgan(seed=3)
    codebook = train.EMACodebook(model, restart_after=2)
    z_nc = torch.randn(50, model.quantize.embedding.weight.shape[1])
    only_code0 = torch.zeros(50, dtype=torch.long)
    for _ in range(2):
        codebook.update(z_nc, only_code0)
    weight = model.quantize.embedding.weight
    restarted = [(weight[k] - z_nc).abs().sum(1).min() < 1e-6 for k in range(1, weight.shape[0])]
    assert all(restarted) and int(codebook.idle_steps.sum()) == 0


def test_main_trains_resumes_and_counts_steps(tmp_path):
    from PIL import Image
    import numpy as np
    for i in range(2):
        pixels = (np.random.default_rng(i).random((80, 96, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / f"p{i}.png")
    out = tmp_path / "vq.safetensors"
    common = [str(tmp_path), "--out", str(out), "--ch", "32", "--ch-mult", "1,1", "--z-channels", "4",
              "--embed-dim", "4", "--crop", "32", "--batch", "2", "--threads", "1", "--colour-jitter", "0.5"]
    train.main([*common, "--steps", "3", "--n-embed", "16"])
    assert train.load_metadata(out)["steps"] == "3"
    train.main([*common, "--steps", "2", "--resume", str(out), "--n-embed", "24"])
    model = pack_module("nodes.vq.loader").load_vqgan(str(out))
    assert train.load_metadata(out)["steps"] == "5" and model.quantize.embedding.weight.shape[0] == 24
