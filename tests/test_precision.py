"""Every system in bf16 and fp16 on CPU: runs, stays finite, keeps its float32 parts, follows ComfyUI's choice."""
from __future__ import annotations

import pytest
import torch

import paella_tiny
import vq_tiny
from conftest import import_comfy_in_process
from infinity_tiny import one_thread, tiny_model  # noqa: F401  (one_thread: autouse fixture)
from packpath import pack_module
from var_tiny import random_transformer, random_vqvae, tiny_transformer_config

precision = pack_module("nodes.common.precision")
draws = pack_module("nodes.common.draws")
infinity_sampler = pack_module("nodes.infinity.sampler")
var_sampling = pack_module("nodes.var.sampling")
sampling_v3 = pack_module("nodes.paella.sampling_v3")
sampling_v1 = pack_module("nodes.paella.sampling_v1")
prior_mod = pack_module("nodes.paella.prior")
pipeline = pack_module("nodes.paella.pipeline")
text_encoder = pack_module("nodes.text.minilm")

HALVES = [torch.bfloat16, torch.float16]


def kept_float32(module) -> list[torch.Tensor]:
    return [p for sub in module.modules() if getattr(sub, "keeps_float32", False) for p in sub.parameters()]


@pytest.mark.parametrize("dtype", HALVES)
def test_tokenizers_keep_their_codebooks_float32_and_return_float32(dtype):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for make, encode, decode in [
        (vq_tiny.tiny_vqgan, lambda m, x: m.encode_indices(x * 2 - 1), lambda m, i: m.decode_indices(i)),
        (paella_tiny.tiny_f4, pipeline.encode, pipeline.decode),
        (paella_tiny.tiny_f8, pipeline.encode, pipeline.decode),
    ]:
        reference, model = make(), precision.cast_module(make(), dtype)
        assert kept_float32(model) and all(p.dtype == torch.float32 for p in kept_float32(model))
        # bit for bit: a codebook rounded through half precision would change the tokenizer's identity
        assert all(torch.equal(a, b) for a, b in zip(kept_float32(model), kept_float32(reference)))
        kept = {id(p) for p in kept_float32(model)}
        assert all(p.dtype == dtype for p in model.parameters() if id(p) not in kept)
        with torch.no_grad():
            indices = encode(model, image)
            pixels = decode(model, indices)
            reference_indices = encode(reference, image)
        assert pixels.dtype == torch.float32 and bool(torch.isfinite(pixels).all())
        assert float((indices == reference_indices).float().mean()) >= 0.9
    vae = precision.cast_module(random_vqvae(), dtype)
    assert all(p.dtype == torch.float32 for p in vae.quantize.parameters())
    assert vae.weight_dtype == dtype


@pytest.mark.parametrize("dtype", HALVES)
def test_video_decoding_with_a_pixel_guide_and_stable_encoding_in_half_precision(dtype):
    guided = pack_module("nodes.vq.guided")
    temporal = pack_module("nodes.vq.temporal")
    vqgan = precision.cast_module(vq_tiny.tiny_vqgan(), dtype)
    guide = precision.cast_module(guided.PixelGuide.for_vqgan(vq_tiny.tiny_vqgan()), dtype)
    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        tokens = temporal.encode_frames_stable(vqgan, frames)
        pixels = guided.decode_frames(vqgan, tokens[:, None], guide, first_bchw=frames[:1])
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 1, 3, 32, 32)
    assert bool(torch.isfinite(pixels).all())


@pytest.mark.parametrize("dtype", HALVES)
def test_infinity_runs_in_half_precision_with_float32_sampling(dtype):
    model = precision.cast_module(tiny_model(), dtype)
    with torch.no_grad():
        half = infinity_sampler.generate_canvas(model, 3, 2, order="right", seed=2, temperature=0.0)
        full = infinity_sampler.generate_canvas(tiny_model(), 3, 2, order="right", seed=2, temperature=0.0)
    assert half.tokens.min() >= 0 and half.tokens.max() < model.config.n_embed
    assert float((half.tokens == full.tokens).float().mean()) >= 0.5


@pytest.mark.parametrize("dtype", HALVES)
def test_paella_runs_in_half_precision(dtype):
    """The noise-level embedding is float32 math but must meet the model's dtype (it used to raise
    'mat1 and mat2 must have the same dtype')."""
    g = torch.Generator().manual_seed(0)
    cond = sampling_v3.V3Condition(torch.randn(1, 5, paella_tiny.BYT5_WIDTH, generator=g),
                                   torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g))
    uncond = sampling_v3.V3Condition(torch.zeros(1, 5, paella_tiny.BYT5_WIDTH), torch.zeros(1, paella_tiny.CLIP_WIDTH))
    clip = torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g)
    with torch.no_grad():
        v3 = sampling_v3.sample_v3(precision.cast_module(paella_tiny.tiny_v3(), dtype), cond, uncond, seed=1,
                                   shape=(1, 8, 8), steps=3)
        v3_argmax = sampling_v3.sample_v3(precision.cast_module(paella_tiny.tiny_v3(), dtype), cond, uncond, seed=1,
                                          shape=(1, 8, 8), steps=3, mode="argmax")
        v3_argmax_full = sampling_v3.sample_v3(paella_tiny.tiny_v3(), cond, uncond, seed=1, shape=(1, 8, 8),
                                               steps=3, mode="argmax")
        v1 = sampling_v1.sample_v1(precision.cast_module(paella_tiny.tiny_v1(), dtype), clip, seed=1, size=(8, 8), T=3,
                                   renoise_steps=2)
        prior = precision.cast_module(paella_tiny.tiny_prior(), dtype)
        vector = prior_mod.sample_prior(prior, torch.randn(1, prior.config.clip_width), 1, steps=3)
    for tokens in (v3, v1):
        assert tokens.dtype == torch.int64 and tokens.min() >= 0 and tokens.max() < paella_tiny.NUM_LABELS
    assert float((v3_argmax == v3_argmax_full).float().mean()) >= 0.5
    assert vector.dtype == torch.float32 and bool(torch.isfinite(vector).all())


@pytest.mark.parametrize("dtype", HALVES)
def test_var_runs_in_half_precision_with_a_float32_quantizer(dtype):
    config = tiny_transformer_config(patch_nums=(1, 2, 3))
    vae = precision.cast_module(random_vqvae(), dtype)
    transformer = precision.cast_module(random_transformer(config, seed=7), dtype)
    with torch.no_grad():
        result = var_sampling.sample(transformer, vae, 2, draws.Draws(0, "cpu"), labels=[3, 9])
        image = vae.decode_fhat(result.f_hat)
    assert result.f_hat.dtype == torch.float32 and image.dtype == torch.float32
    assert bool(torch.isfinite(image).all())


@pytest.mark.parametrize("dtype", HALVES)
def test_text_encoder_runs_in_half_precision(dtype):
    import transformers
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    full = text_encoder.make_bert(config)
    half = precision.cast_module(text_encoder.make_bert(config), dtype)
    half.load_state_dict(full.state_dict())
    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        states = text_encoder.token_states(half, ids, mask)
        reference = text_encoder.token_states(full, ids, mask)
    assert bool(torch.isfinite(states.float()).all())
    torch.testing.assert_close(states.float(), reference, atol=0.1, rtol=0.05)


# --------------------------------------------------------------------------- ComfyUI's choice
@pytest.fixture()
def comfy_args(monkeypatch):
    import_comfy_in_process()
    from comfy.cli_args import args
    glue = pack_module("nodes.common.comfy_glue")
    return args, glue, monkeypatch


def test_the_dtype_is_comfyuis_choice_for_the_role_and_the_users_flags(comfy_args):
    args, glue, monkeypatch = comfy_args
    net = torch.nn.Linear(4, 4)
    assert glue.chosen_dtype(net) == torch.float32                                  # a CPU, no flags
    assert glue.chosen_dtype(net, glue.TOKENIZER) == torch.float32
    assert glue.chosen_dtype(net, glue.TEXT_ENCODER) == torch.float32
    monkeypatch.setattr(args, "bf16_unet", True)
    assert glue.chosen_dtype(net) == torch.bfloat16
    assert glue.chosen_dtype(net, glue.TOKENIZER) == torch.float32                 # a unet flag only
    monkeypatch.setattr(args, "fp16_vae", True)
    assert glue.chosen_dtype(net, glue.TOKENIZER) == torch.float16
    monkeypatch.setattr(args, "bf16_unet", False)
    monkeypatch.setattr(args, "fp8_e4m3fn_unet", True)                             # cannot compute in fp8
    assert glue.chosen_dtype(net) in precision.HALF_AND_FULL
    monkeypatch.setattr(args, "fp8_e4m3fn_unet", False)
    monkeypatch.setattr(args, "fp16_unet", True)
    assert glue.chosen_dtype(net, supported=(torch.float32,)) == torch.float32     # a float32-only network


def test_managed_casts_to_the_choice_and_keeps_codebooks_float32(comfy_args):
    args, glue, monkeypatch = comfy_args
    monkeypatch.setattr(args, "bf16_vae", True)
    patcher = glue.managed(vq_tiny.tiny_vqgan(), glue.TOKENIZER)
    model = patcher.model
    assert model.weight_dtype == torch.bfloat16
    assert model.quantize.embedding.weight.dtype == torch.float32
