"""Paella manipulations and conditioning assembly (the functions the nodes call)."""
import math

import pytest
import torch

import paella_tiny
from packpath import pack_module

pipeline = pack_module("nodes.paella.pipeline")
conditioning = pack_module("nodes.paella.conditioning")
errors = pack_module("nodes.common.errors")

K = paella_tiny.NUM_LABELS
EMB = paella_tiny.tiny_embeddings()


@pytest.fixture(scope="module")
def models():
    return {"v3": paella_tiny.tiny_v3(), "f4": paella_tiny.tiny_f4(), "v1": paella_tiny.tiny_v1(),
            "f8": paella_tiny.tiny_f8()}


def v3_cond(name="v3_prompt_tiny.safetensors"):
    return conditioning.from_sources(EMB[name])


def v1_cond(name="v1_prompt_a_tiny.safetensors"):
    return conditioning.from_sources(EMB[name])


FAST_V3 = pipeline.V3Sampler(steps=2)
FAST_V1 = pipeline.V1Sampler(steps=2)


def test_from_sources_reads_files_conditioning_and_clip_vision():
    c = conditioning.from_sources(EMB["v3_prompt_tiny.safetensors"], image_embeds=torch.ones(1, 16))
    assert c.byt5.shape == (1, 6, 24) and c.clip_text.shape == (1, 16)
    assert c.clip_image.shape == (1, 2, 16) and torch.equal(c.clip_image[0, 1], torch.ones(16))
    comfy = [[torch.zeros(1, 77, 1024), {"pooled_output": torch.full((1, 1024), 2.0)}]]
    c = conditioning.from_sources(comfy_conditioning=comfy)
    assert c.byt5 is None and torch.equal(c.clip_text, torch.full((1, 1024), 2.0))
    byt5_states = [[torch.ones(1, 9, conditioning.BYT5_XL_WIDTH), {}]]
    assert conditioning.from_sources(comfy_conditioning=byt5_states).byt5.shape == (1, 9, 2560)
    unbatched = conditioning.from_sources({"byt5": torch.zeros(3, 24), "clip_image": torch.zeros(16)})
    assert unbatched.byt5.shape == (1, 3, 24) and unbatched.clip_image.shape == (1, 1, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "got no inputs"),
    ({"file_tensors": {"text": torch.zeros(3)}}, "unknown keys"),
    ({"comfy_conditioning": [[torch.zeros(1, 77, 768), {}]]}, "nothing in it fits Paella"),
    ({"file_tensors": {"clip_text": torch.zeros(1, 16)},
      "comfy_conditioning": [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]}, "both"),
])
def test_from_sources_errors(kwargs, message):
    with pytest.raises(errors.BoundlessError, match=message):
        conditioning.from_sources(**kwargs)


def test_variation_conditioning_takes_the_image_vector_from_a_file_or_clip_vision():
    image = v3_cond("image_a_tiny.safetensors")
    assert image.byt5 is None and image.clip_image.shape == (1, 1, 16)
    empty, prompt = v3_cond("v3_empty_tiny.safetensors"), v3_cond()
    v3 = conditioning.variation_conditioning("v3", image, positive=empty)
    assert torch.equal(v3.byt5, empty.byt5) and torch.equal(v3.clip_text, empty.clip_text)
    assert torch.equal(v3.clip_image, image.clip_image)
    both = conditioning.variation_conditioning("v3", image, torch.ones(1, 16), positive=prompt)
    assert both.clip_image.shape == (1, 3, 16)   # the prompt's own vector, the file's, then CLIP vision's
    assert torch.equal(both.clip_image[:, 0], prompt.clip_image[:, 0])
    assert torch.equal(both.clip_image[:, 1], image.clip_image[:, 0])
    assert torch.equal(both.clip_image[0, 2], torch.ones(16))
    v1 = conditioning.variation_conditioning("v1", image_embeds=torch.full((16,), 2.0))
    assert v1.tensors().keys() == {"clip_image"}
    assert torch.equal(conditioning.v1_vector(v1), torch.full((1, 16), 2.0))


@pytest.mark.parametrize("kwargs, message", [
    ({"version": "v3", "positive": "v3_empty_tiny.safetensors"}, "need the source image's CLIP vector"),
    ({"version": "v3", "embedding": "v1_prompt_a_tiny.safetensors", "positive": "v3_empty_tiny.safetensors"},
     "has no CLIP image vector"),
    ({"version": "v3", "embedding": "image_a_tiny.safetensors"}, "need ByT5 states"),
    ({"version": "v1", "embedding": "image_a_tiny.safetensors", "positive": "v1_prompt_a_tiny.safetensors"},
     "disconnect 'positive'"),
])
def test_variation_conditioning_errors(kwargs, message):
    loaded = {k: v3_cond(v) if k in ("embedding", "positive") else v for k, v in kwargs.items()}
    with pytest.raises(errors.BoundlessError, match=message):
        conditioning.variation_conditioning(**loaded)


def test_variations_follow_the_image_vector(models):
    """Same seed, same text: another source-image vector gives other tokens (v3 and v1)."""
    empty = v3_cond("v3_empty_tiny.safetensors")
    sides = [v3_cond(name) for name in ("image_a_tiny.safetensors", "image_b_tiny.safetensors")]
    v3 = [pipeline.generate(models["v3"], models["f4"], FAST_V3, conditioning.variation_conditioning(
        "v3", side, positive=empty), empty, seed=4, batch=2, grid=(8, 8)) for side in sides]
    v1 = [pipeline.generate(models["v1"], models["f8"], FAST_V1, conditioning.variation_conditioning("v1", side),
                            None, seed=4, batch=1, grid=(8, 8)) for side in sides]
    assert v3[0].shape == (2, 8, 8) and v1[0].shape == (1, 8, 8)
    assert not torch.equal(v3[0], v3[1]) and not torch.equal(v1[0], v1[1])


def test_interpolate_hits_both_ends_and_refuses_length_mismatch():
    a, b = v3_cond(), v3_cond("v3_other_tiny.safetensors")
    assert torch.equal(conditioning.interpolate(a, b, 0.0).byt5, a.byt5)
    assert torch.equal(conditioning.interpolate(a, b, 1.0).clip_text, b.clip_text)
    mid = conditioning.interpolate(a, b, 0.5)
    torch.testing.assert_close(mid.clip_image, (a.clip_image + b.clip_image) / 2)
    with pytest.raises(errors.BoundlessError,
                       match="same pad_to, at least 6, or encode both prompts together with padding='longest'"):
        conditioning.interpolate(a, conditioning.from_sources({"byt5": torch.zeros(1, 2, 24),
                                                               "clip_text": torch.zeros(1, 16),
                                                               "clip_image": torch.zeros(1, 16)}), 0.5)


def test_region_map_puts_each_vector_on_its_half():
    a, b = v1_cond(), v1_cond("v1_prompt_b_tiny.safetensors")
    left, right = conditioning.grid_masks(1, 2, 8, 8)
    regional = conditioning.with_region(a, b, right)
    assert regional.spatial.shape == (1, 16, 8, 8)
    torch.testing.assert_close(regional.spatial[0, :, 3, 0], a.clip_text[0])
    torch.testing.assert_close(regional.spatial[0, :, 3, 7], b.clip_text[0])
    assert torch.equal(conditioning.v1_vector(regional), regional.spatial)


def test_version_and_tokenizer_checks(models):
    with pytest.raises(errors.BoundlessError, match="Paella v1 checkpoint but the sampler settings are for Paella v3"):
        pipeline.check_sampler(models["v1"], FAST_V3)
    with pytest.raises(errors.BoundlessError, match="Paella v3 works on .*f4 VQGAN.*Gumbel f8"):
        pipeline.check_vqgan(models["v3"], models["f8"])
    other_f4 = pack_module("nodes.paella.vqgan_f4").VQGANF4(
        pack_module("nodes.paella.vqgan_f4").VQGANF4Config((16, 32), 1, 4, 32))
    with pytest.raises(errors.BoundlessError, match="32 codes but the Paella model predicts 64"):
        pipeline.check_vqgan(models["v3"], other_f4)


def test_token_grid_sizes(models):
    assert pipeline.token_grid(models["v3"], models["f4"], 96, 32) == (8, 24)
    assert pipeline.token_grid(models["v1"], models["f8"], 64, 96) == (12, 8)
    with pytest.raises(errors.BoundlessError, match="multiples of 32 px"):
        pipeline.token_grid(models["v3"], models["f4"], 100, 64)
    with pytest.raises(errors.BoundlessError, match="at least 64 px"):
        pipeline.token_grid(models["v1"], models["f8"], 32, 64)


def test_text_to_image_v3_and_v1(models):
    tokens = pipeline.generate(models["v3"], models["f4"], FAST_V3, v3_cond(), v3_cond("v3_empty_tiny.safetensors"),
                               seed=0, batch=2, grid=(8, 16))
    assert tokens.shape == (2, 8, 16)
    assert pipeline.decode(models["f4"], tokens).shape == (2, 3, 32, 64)
    tokens = pipeline.generate(models["v1"], models["f8"], FAST_V1, v1_cond(), None, seed=0, batch=1, grid=(8, 8))
    image = pipeline.decode(models["f8"], tokens)
    assert image.shape == (1, 3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1


def test_v3_guidance_needs_a_negative_unless_cfg_is_one(models):
    with pytest.raises(errors.BoundlessError, match="needs a negative conditioning"):
        pipeline.generate(models["v3"], models["f4"], FAST_V3, v3_cond(), None, seed=0, batch=1, grid=(8, 8))
    no_cfg = pipeline.V3Sampler(steps=2, cfg=(1.0, 1.0))
    assert pipeline.generate(models["v3"], models["f4"], no_cfg, v3_cond(), None, seed=0, batch=1,
                             grid=(8, 8)).shape == (1, 8, 8)


def test_v3_refuses_regional_and_byt5_less_conditioning(models):
    regional = conditioning.with_region(v1_cond(), v1_cond("v1_prompt_b_tiny.safetensors"), torch.ones(1, 8, 8))
    no_cfg = pipeline.V3Sampler(steps=1, cfg=(1.0, 1.0))
    with pytest.raises(errors.BoundlessError, match="regional .* only with Paella v1"):
        pipeline.generate(models["v3"], models["f4"], no_cfg, regional, None, seed=0, batch=1, grid=(8, 8))
    with pytest.raises(errors.BoundlessError, match="needs ByT5-XL hidden states"):
        pipeline.generate(models["v3"], models["f4"], no_cfg, v1_cond(), None, seed=0, batch=1, grid=(8, 8))


def test_inpaint_any_size_keeps_unmasked_tokens(models):
    image = torch.rand(1, 3, 40, 50)
    mask = torch.zeros(1, 40, 50)
    mask[:, :, :20] = 1.0
    padded, padded_mask = pipeline.pad_image_and_mask(image, mask, 32, 32)
    assert padded.shape == (1, 3, 64, 64) and torch.equal(padded[..., :40, :50], image)
    assert float(padded_mask[0, 50, 10]) == 1.0 and float(padded_mask[0, 10, 40]) == 0.0
    keep = pipeline.token_mask(padded_mask, 4)
    assert keep.shape == (1, 16, 16) and bool(keep[0, 0, 4]) and not bool(keep[0, 0, 6])
    known = pipeline.encode(models["f4"], padded)
    out = pipeline.generate(models["v3"], models["f4"], FAST_V3, v3_cond(), v3_cond("v3_empty_tiny.safetensors"),
                            seed=3, batch=1, grid=(16, 16), start=known, keep_mask=keep)
    assert torch.equal(out[~keep], known[~keep])


def test_structural_edit_noise_and_start_step(models):
    tokens = torch.zeros(1, 64, 64, dtype=torch.long)
    noised = pipeline.noise_tokens(tokens, 0.25, K, seed=0)
    assert 0.2 < (noised != tokens).float().mean() < 0.3
    assert pipeline.v1_start_step(1.0, 12) == 0
    assert pipeline.v1_start_step(math.cos(math.pi / 6), 24) == 8     # the Replicate demo: T 24, start 8
    start = pipeline.encode(models["f8"], torch.rand(1, 3, 64, 64))
    edited = pipeline.generate(models["v1"], models["f8"], FAST_V1, v1_cond(), None, seed=1, batch=1,
                               grid=(8, 8), start=start, strength=0.5)
    assert edited.shape == (1, 8, 8)
    with pytest.raises(errors.BoundlessError, match="strength must lie in"):
        pipeline.generate(models["v1"], models["f8"], FAST_V1, v1_cond(), None, seed=1, batch=1, grid=(8, 8),
                          start=start, strength=0.0)


def test_tokens_are_tied_to_their_vqgan(models):
    indices = pipeline.encode(models["f4"], torch.rand(1, 3, 32, 32))
    tokens = pipeline.to_tokens(models["f4"], indices)
    assert tokens.factor == 4 and torch.equal(pipeline.from_tokens(models["f4"], tokens, "decode"), indices)
    with pytest.raises(errors.BoundlessError, match="another tokenizer"):
        pipeline.from_tokens(paella_tiny.tiny_f4(seed=7), tokens, "decode")


def test_preview_decodes_the_first_image_and_bounds_its_size(models):
    small = torch.zeros(2, 8, 12, dtype=torch.long)
    assert pipeline.previewer(models["f4"])(small).shape == (1, 32, 48, 3)
    large = torch.zeros(1, 160, 96, dtype=torch.long)
    assert pipeline.previewer(models["f4"])(large).shape == (1, 4 * 54, 4 * 32, 3)
