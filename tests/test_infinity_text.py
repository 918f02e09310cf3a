"""Text-conditioned NUWA-Infinity: prompt maps into the sampler, regional prompts, captioned training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from infinity_tiny import one_thread, strong_text_model, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module
from vq_tiny import tiny_vqgan

checkpoint = pack_module("nodes.infinity.checkpoint")
conditioning = pack_module("nodes.infinity.conditioning")
sampler = pack_module("nodes.infinity.sampler")
train = pack_module("nodes.infinity.train")
minilm = pack_module("nodes.text.minilm")
prompts_mod = pack_module("nodes.text.prompts")
errors = pack_module("nodes.common.errors")


@pytest.fixture(scope="module")
def encoder():
    return minilm.load_text_encoder(minilm.default_path())


def text_model(seed: int, encoder):
    model = strong_text_model(seed)
    model.text_encoder = encoder.name
    return model


def test_text_branch_added_to_an_unconditional_model_starts_as_a_no_op():
    plain = tiny_model(3)
    plain.tokenizer, plain.factor = "taming.vqgan:t", 16
    grown = checkpoint.add_text_branch(plain, 384)
    assert grown.config.text_dim == 384 and (grown.tokenizer, grown.factor) == ("taming.vqgan:t", 16)
    tokens_bs = torch.randint(0, 64, (2, 4))
    with torch.no_grad():
        expected, _ = plain(tokens_bs)
        got, _ = grown(tokens_bs, text=torch.randn(2, 5, 384))
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(errors.BoundlessError, match="already has a text branch"):
        checkpoint.add_text_branch(grown, 384)


def test_text_condition_checks_what_the_model_can_use(encoder):
    day = prompts_mod.PromptMap(encoder.encode(["a day sky"]))
    with pytest.raises(errors.BoundlessError, match="no text branch"):
        conditioning.text_condition(tiny_model(0), day)
    assert conditioning.text_condition(tiny_model(0), None) is None
    model = text_model(1, encoder)
    with pytest.raises(errors.BoundlessError, match="connect Text Encoder Loader"):
        conditioning.text_condition(model, None)
    assert conditioning.text_condition(model, day) is day.base.states
    model.text_encoder = "bert.text_encoder:other"
    with pytest.raises(errors.BoundlessError, match="another text encoder"):
        conditioning.text_condition(model, day)
    narrow = tiny_model(2, text_dim=8)
    with pytest.raises(errors.BoundlessError, match="384-wide states but the model takes 8"):
        conditioning.text_condition(narrow, day)


def test_regional_prompts_reach_the_right_patches(encoder):
    model = text_model(4, encoder)
    day = prompts_mod.PromptMap(encoder.encode(["a blue day sky"]))
    dusk = prompts_mod.PromptMap(encoder.encode(["an orange sunset"]))
    regional = day.with_region(2, 0, 2, 1, dusk.base)          # columns 2-3 of the top row
    condition = conditioning.text_condition(model, regional)
    assert condition((0, 0, 1)) is day.base.states and condition((0, 0, 2)) is dusk.base.states
    assert condition((0, 1, 2)) is day.base.states

    def canvas(text):
        return sampler.generate_canvas(model, 4, 1, text=conditioning.text_condition(model, text), seed=5).tokens
    all_day, mixed, all_dusk = canvas(day), canvas(regional), canvas(dusk)
    # Left of the region (generated first, left to right) nothing changes; inside it the text does.
    assert torch.equal(mixed[..., :4], all_day[..., :4])
    assert not torch.equal(mixed[..., 4:], all_day[..., 4:])
    assert not torch.equal(all_dusk, all_day)


def _captioned_folder(folder, captions):
    rng = np.random.default_rng(0)
    for name, caption in captions.items():
        pixels = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        if caption is not None:
            (folder / f"{name}.txt").write_text(caption)


def test_trainer_adds_text_to_an_unconditional_model_from_captions(tmp_path, encoder):
    vq_file = tmp_path / "vq.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vqgan().state_dict().items()}, str(vq_file))
    images = tmp_path / "images"
    images.mkdir()
    _captioned_folder(images, {"sky": "a blue sky", "sea": "a calm sea"})
    start = tmp_path / "plain.safetensors"
    checkpoint.save_infinity(tiny_model(0), str(start))
    out = tmp_path / "text.safetensors"
    args = ["--images", str(images), "--vqgan", str(vq_file), "--out", str(out), "--resume", str(start),
            "--text-encoder", "minilm", "--canvas", "2", "2", "--batch", "2", "--steps", "2", "--threads", "1"]
    trained = train.main(args)
    loaded = checkpoint.load_infinity(str(out))
    assert loaded.config.text_dim == 384 and loaded.config == trained.config
    assert loaded.text_encoder == encoder.name
    prompts = prompts_mod.PromptMap(encoder.encode(["a blue sky"]))
    assert conditioning.text_condition(loaded, prompts) is prompts.base.states

    states, empty, name = train.caption_states(sorted(images.glob("*.png")), "minilm")
    assert states.shape == (2, minilm.CONTEXT_TOKENS, 384) and empty.shape == (minilm.CONTEXT_TOKENS, 384)
    assert torch.allclose(states[1], encoder.encode(["a blue sky"]).states[0])       # sea.png, sky.png
    assert torch.allclose(empty, encoder.encode([""]).states[0]) and name == encoder.name

    (images / "sea.txt").unlink()
    with pytest.raises(errors.BoundlessError, match="caption next to every image; missing .*sea.txt"):
        train.main(args)


def _greedy_guided_reference(model, text_bld, empty_bld, guidance: float) -> torch.Tensor:
    """One patch sampled greedily from uncond + guidance · (cond - uncond), full forward passes."""
    t = model.config.tokens_per_patch
    tokens = torch.empty(1, 0, dtype=torch.int64)
    with torch.no_grad():
        for i in range(t):
            cond, _ = model(tokens, [], 0, text_bld)
            uncond, _ = model(tokens, [], 0, empty_bld)
            mixed = uncond[:, i] + guidance * (cond[:, i] - uncond[:, i])
            tokens = torch.cat([tokens, mixed.argmax(-1, keepdim=True)], dim=1)
    return tokens[0]


@pytest.mark.parametrize("decoder,use_kv_cache", [("dynamic", True), ("static", True), ("dynamic", False)])
def test_text_guidance_mixes_prompt_and_empty_prompt_logits(encoder, decoder, use_kv_cache):
    """Every decoder path draws each token from uncond + g · (cond - uncond), feeding it to both halves."""
    model = text_model(4, encoder)
    day, empty = encoder.encode(["a bright day sky"]).states, encoder.encode([""]).states
    for guidance in (0.0, 3.0):
        state = sampler.generate_canvas(model, 1, 1, extents=model.extents, text=day, temperature=0.0,
                                        guidance=guidance, empty_text=empty, decoder=decoder,
                                        use_kv_cache=use_kv_cache)
        expected = _greedy_guided_reference(model, day, empty, guidance)
        assert torch.equal(state.tokens.flatten(), expected)
    plain = sampler.generate_canvas(model, 1, 1, extents=model.extents, text=day, temperature=0.0)
    assert not torch.equal(plain.tokens.flatten(), _greedy_guided_reference(model, day, empty, 3.0))


def test_text_guidance_zero_samples_the_empty_prompt_and_keeps_the_prompts_caches(encoder):
    """Guidance 0 on one patch is the empty prompt's sample with the same draws; on a canvas the
    neighbours' caches stay the prompt's, so it is not simply the unconditional canvas."""
    model = text_model(5, encoder)
    day, empty = encoder.encode(["a bright day sky"]).states, encoder.encode([""]).states
    common = dict(extents=model.extents, temperature=1.0, top_k=0, seed=11)
    zero = sampler.generate_canvas(model, 1, 1, text=day, guidance=0.0, empty_text=empty, **common)
    unconditional = sampler.generate_canvas(model, 1, 1, text=empty, **common)
    assert torch.equal(zero.tokens, unconditional.tokens)
    batch = sampler.generate_canvas(model, 2, 1, batch=2, text=day, guidance=2.0, empty_text=empty, **common)
    assert batch.tokens.shape == (2, 1, 2, 4)


def test_text_guidance_is_refused_where_it_cannot_apply(encoder):
    model = text_model(6, encoder)
    day = prompts_mod.PromptMap(encoder.encode(["a day sky"]), empty=encoder.encode([""]))
    assert conditioning.guidance_text(model, day, 1.0) is None
    assert torch.equal(conditioning.guidance_text(model, day, 2.5), day.empty.states)
    with pytest.raises(errors.BoundlessError, match="set text_guidance to 1"):
        conditioning.guidance_text(tiny_model(0), None, 2.5)
    with pytest.raises(errors.BoundlessError, match="Encode Text"):
        conditioning.guidance_text(model, prompts_mod.PromptMap(day.base), 2.5)
    with pytest.raises(errors.BoundlessError, match=">= 0"):
        conditioning.guidance_text(model, day, -1.0)
    with pytest.raises(errors.BoundlessError, match="needs a prompt"):
        sampler.generate_canvas(tiny_model(0), 1, 1, guidance=2.0)
    with pytest.raises(errors.BoundlessError, match="empty prompt's states"):
        sampler.generate_canvas(model, 1, 1, extents=model.extents, text=day.base.states, guidance=2.0)
