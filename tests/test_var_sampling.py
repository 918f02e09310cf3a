"""VAR next-scale sampling and zero-shot editing: RNG contract, KV cache, filters, guidance, edits."""
from __future__ import annotations

import pytest
import torch

from packpath import pack_module
from var_tiny import random_transformer, random_vqvae, tiny_transformer_config, tiny_vqvae_config

sampling = pack_module("nodes.var.sampling")
editing = pack_module("nodes.var.editing")
classes = pack_module("nodes.var.classes")
BoundlessError = pack_module("nodes.common.errors").BoundlessError
Draws = pack_module("nodes.common.draws").Draws

SMALL = (1, 2, 3, 4, 6)   # 96-px images: quick, yet five scales with a real CFG ramp


@pytest.fixture(scope="module")
def models():
    return random_vqvae(), random_transformer(tiny_transformer_config(patch_nums=SMALL), seed=7)


def _sample(models, seed=0, batch=2, labels=(3, 9), **kwargs):
    vae, var = models
    settings = sampling.SamplingSettings(**{k: kwargs.pop(k) for k in ("cfg", "top_k", "top_p", "more_smooth")
                                            if k in kwargs})
    with torch.no_grad():
        return sampling.sample(var, vae, batch, Draws(seed, "cpu"), labels=labels,
                               settings=settings, **kwargs)


@pytest.mark.parametrize("settings", [
    {"cfg": 4.0, "top_k": 50, "top_p": 0.95},
    {"cfg": 1.5, "top_k": 0, "top_p": 0.0, "more_smooth": True},
    {"cfg": 0.0, "top_k": 0, "top_p": 0.0, "labels": None},
])
@pytest.mark.parametrize("variant", [{}, {"shared_adaln": True}, {"l2_attention": False}])
def test_kv_cache_on_and_off_draw_identical_tokens(settings, variant):
    models = random_vqvae(), random_transformer(tiny_transformer_config(patch_nums=SMALL, **variant), seed=8)
    cached = _sample(models, **settings)
    recomputed = _sample(models, use_cache=False, **settings)
    assert all(torch.equal(a, b) for a, b in zip(cached.tokens, recomputed.tokens))
    assert torch.equal(cached.labels, recomputed.labels)
    # more_smooth's Gumbel softmax (temperature down to 0.0135) amplifies last-bit differences
    assert torch.allclose(cached.f_hat, recomputed.f_hat, atol=2e-2 if settings.get("more_smooth") else 1e-5)


def test_same_seed_same_tokens_other_seed_other_tokens(models):
    first, again, other = _sample(models, seed=11), _sample(models, seed=11), _sample(models, seed=12)
    assert all(torch.equal(a, b) for a, b in zip(first.tokens, again.tokens))
    assert not all(torch.equal(a, b) for a, b in zip(first.tokens, other.tokens))
    assert [tuple(t.shape) for t in first.tokens] == [(2, pn, pn) for pn in SMALL]
    assert first.f_hat.shape == (2, 16, 6, 6) and first.f_hat.dtype == torch.float32


def test_the_generator_is_consumed_as_the_contract_says(models):
    """Labels first, then one multinomial per scale (B*pn^2 rows); nothing else."""
    vae, var = models
    draws = Draws(5, "cpu")
    gen = draws.generator
    with torch.no_grad():
        result = sampling.sample(var, vae, 2, draws, labels=None,
                                 settings=sampling.SamplingSettings(cfg=0.0, top_k=0, top_p=0.0))
    replay = torch.Generator().manual_seed(5)
    labels = torch.multinomial(torch.full((1, 1000), 1e-3), 2, replacement=True, generator=replay).reshape(2)
    assert torch.equal(result.labels, labels)
    for pn in SMALL:
        torch.multinomial(torch.full((2 * pn * pn, 256), 1 / 256), 1, replacement=True, generator=replay)
    assert torch.equal(gen.get_state(), replay.get_state())


def test_batch_of_labels_and_class_id_range(models):
    assert torch.equal(_sample(models, labels=[5, -1]).labels, torch.tensor([5, 1000]))
    assert torch.equal(_sample(models, labels=7).labels, torch.tensor([7, 7]))
    with pytest.raises(BoundlessError, match="class id 1001 is out of range"):
        _sample(models, labels=[1, 1001])
    with pytest.raises(BoundlessError, match="got 3 class labels for a batch of 2"):
        _sample(models, labels=[1, 2, 3])


def test_top_k_keeps_ties_and_top_p_always_keeps_the_best():
    logits = torch.tensor([[[1.0, 3.0, 2.0, 2.0, 0.0]]])
    assert torch.isinf(sampling.filter_logits(logits, 2, 0.0)).tolist() == [[[True, False, False, False, True]]]
    # softmax ascending cumsum: top_p 0.01 removes everything but the largest entry
    kept = ~torch.isinf(sampling.filter_logits(logits, 0, 0.01))
    assert kept.tolist() == [[[False, True, False, False, False]]]
    # top-p runs after top-k: with k=3 the ties survive and p=0.99 keeps the three
    kept = ~torch.isinf(sampling.filter_logits(logits, 3, 0.99))
    assert kept.tolist() == [[[False, True, True, True, False]]]
    assert torch.equal(sampling.filter_logits(logits, 0, 0.0), logits)


def test_guidance_ramps_from_zero_at_the_first_scale():
    cond, uncond = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    both = torch.cat((cond, uncond))
    assert torch.equal(sampling.guided_logits(both, 5.0, 0.0), cond)
    assert torch.allclose(sampling.guided_logits(both, 4.0, 0.5), 3 * cond - 2 * uncond, atol=1e-6)


def test_keep_maps_threshold_bilinear_resizes_and_always_keep_1x1():
    keep = torch.zeros(6, 6)
    keep[:, :3] = 1                              # keep the left half
    maps = sampling.keep_maps_from_mask(keep, SMALL)
    assert maps[0].all() and maps[0].shape == (1, 1, 1)
    assert maps[1][0].tolist() == [[True, False], [True, False]]
    assert maps[-1][0].equal(keep.bool())
    assert maps[2][0, :, 1].tolist() == [False] * 3   # the middle column sits on the 0.5 edge: not > 0.5


def test_edits_keep_source_tokens_where_asked_and_draw_the_same_stream(models):
    vae, var = models
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    keep = torch.zeros(6, 6)
    keep[:, :3] = 1
    with torch.no_grad():
        guide = sampling.edit_guide(vae, image, keep, SMALL)
        plain = sampling.sample(var, vae, 1, Draws(4, "cpu"), labels=1000)
        edited = sampling.sample(var, vae, 1, Draws(4, "cpu"), labels=1000, guide=guide)
        everything = sampling.edit_guide(vae, image, torch.ones(6, 6), SMALL)
        kept_all = sampling.sample(var, vae, 1, Draws(4, "cpu"), labels=1000, guide=everything)
    for k in range(len(SMALL)):
        where = guide.keep[k]
        assert torch.equal(edited.tokens[k][where], guide.source[k][where])
        assert torch.equal(edited.tokens[k][~where], edited.drawn[k][~where])
        assert torch.equal(kept_all.tokens[k], everything.source[k])
    assert torch.equal(edited.tokens[0], guide.source[0])        # the 1x1 scale is always the source's
    assert torch.equal(plain.drawn[0], edited.drawn[0])          # same stream until the inputs differ
    with torch.no_grad():
        source_fhat = vae.fhat_from_indices(list(everything.source), SMALL)[-1]
    assert torch.allclose(kept_all.f_hat, source_fhat, atol=1e-5)


def test_edit_input_errors_are_clear(models):
    vae, _ = models
    with pytest.raises(BoundlessError, match="keep map must be 6x6"):
        sampling.edit_guide(vae, torch.zeros(1, 3, 96, 96), torch.ones(8, 8), SMALL)
    image = torch.zeros(1, 256, 256, 3)
    with pytest.raises(BoundlessError, match="edit mask is 128x128 but the image is 256x256"):
        editing.check_edit_inputs(image, torch.zeros(1, 128, 128), 256)
    with pytest.raises(BoundlessError, match="edits 256x256 images, got 512x512"):
        editing.check_edit_inputs(torch.zeros(1, 512, 512, 3), torch.zeros(1, 512, 512), 256)
    with pytest.raises(BoundlessError, match="class-edit needs a class id"):
        editing.edit_label(editing.EditMode.CLASS_EDIT, 1000, 1000)
    assert editing.edit_label(editing.EditMode.OUTPAINT, 5, 1000) == 1000


def test_pixel_masks_become_token_keep_grids_and_composite_back():
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:40, 0:16] = 1.0                   # touches tokens (1,0) and (2,0) only
    grid = editing.keep_grid(mask)
    assert grid.shape == (1, 4, 4)
    assert grid[0, :, 0].tolist() == [1.0, 0.0, 0.0, 1.0] and grid[0, :, 1:].eq(1).all()
    source, generated = torch.zeros(1, 64, 64, 3), torch.ones(1, 64, 64, 3)
    out = editing.composite(source, generated, mask)
    assert out[0, 25, 5].eq(1).all() and out[0, 5, 5].eq(0).all()


def test_vqvae_transformer_mismatch_is_refused():
    vae = random_vqvae(tiny_vqvae_config(latent_channels=8))
    var = random_transformer(tiny_transformer_config(patch_nums=SMALL))
    with pytest.raises(BoundlessError, match="expects a VQVAE with 16 latent channels"):
        sampling.sample(var, vae, 1, Draws(0, "cpu"), labels=1)


def test_class_names_and_ids():
    assert len(classes.class_names()) == 1000
    assert classes.class_names()[207] == "golden retriever"
    assert classes.parse_class("207") == classes.parse_class("207: golden retriever") == 207
    assert classes.parse_class("Golden Retriever") == 207
    assert classes.parse_class("random") is None and classes.parse_class("unconditional") == 1000
    assert classes.parse_class_list("tench, 88; volcano") == [0, 88, 980]
    assert classes.class_choices()[2] == "0: tench" and len(classes.class_choices()) == 1002
    with pytest.raises(BoundlessError, match="class id 1000 is out of range"):
        classes.parse_class("1000")
    with pytest.raises(BoundlessError, match="did you mean: .*golden retriever"):
        classes.parse_class("retriever")


def test_class_names_that_differ_only_in_case_need_the_exact_case():
    assert classes.class_names()[264] == "Cardigan" and classes.class_names()[474] == "cardigan"
    assert classes.parse_class("Cardigan") == 264                       # the corgi
    assert classes.parse_class("cardigan") == 474                       # the sweater
    assert classes.parse_class_list("Cardigan, cardigan") == [264, 474]
    assert classes.parse_class("GOLDEN retriever") == 207               # unambiguous: any case
    with pytest.raises(BoundlessError, match=r"CARDIGAN.*264 \('Cardigan'\), 474 \('cardigan'\)"):
        classes.parse_class("CARDIGAN")


def test_half_precision_transformer_keeps_logits_and_f_hat_in_float32(models):
    vae, var = models
    half = random_transformer(tiny_transformer_config(patch_nums=SMALL), seed=7).to(torch.float16)
    cond = half.condition(torch.tensor([3, 1000]))
    with torch.no_grad():
        logits = half.logits(half.start_tokens(cond, half.level_positions()), cond)
        result = sampling.sample(half, vae, 2, Draws(0, "cpu"), labels=[3, 9])
        reference = _sample(models, seed=0)
    assert logits.dtype == torch.float32 and result.f_hat.dtype == torch.float32
    assert torch.equal(result.tokens[0], reference.tokens[0])     # the unguided 1x1 scale agrees
    agree = sum(int((a == b).sum()) for a, b in zip(result.tokens, reference.tokens))
    assert agree > 0.5 * sum(t.numel() for t in reference.tokens)
