"""Unit tests of VAR's schedule, VQVAE and transformer modules (no ComfyUI, tiny random weights)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from packpath import pack_module
from var_tiny import random_transformer, random_vqvae, tiny_transformer_config

schedule = pack_module("nodes.var.schedule")
transformer_mod = pack_module("nodes.var.transformer")
sampling = pack_module("nodes.var.sampling")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

SMALL = (1, 2, 3, 4)   # 64-px images, 30 positions


def test_phi_tables_follow_the_release():
    assert schedule.phi_index_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert schedule.phi_index_table(14, 4) == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3)
    assert schedule.phi_index_table(10, 1) == (0,) * 10
    assert schedule.phi_index_table(5, 5) == (0, 1, 2, 3, 4)


def test_schedules_are_recovered_from_length_and_levels():
    assert schedule.sequence_length(schedule.SCHEDULE_256) == 680
    assert schedule.schedule_for_length(680) == schedule.SCHEDULE_256
    assert schedule.schedule_for_length(2240) == schedule.SCHEDULE_512
    for known in schedule.KNOWN_SCHEDULES + (SMALL,):
        assert schedule.schedule_from_levels(schedule.levels(known)) == known
    assert schedule.schedule_from_levels(torch.tensor([0, 1, 1])) is None          # 2 cells is not square
    assert schedule.schedule_from_levels(torch.tensor([0, 1, 1, 1, 1, 0])) is None  # not sorted
    with pytest.raises(BoundlessError, match="matches no VAR patch schedule"):
        schedule.schedule_for_length(679)


def test_block_causal_mask_lets_a_scale_see_itself_and_coarser_scales():
    mask = schedule.block_causal_mask(SMALL)               # positions: 0 | 1..4 | 5..13 | 14..29
    assert mask.shape == (30, 30)
    assert mask[0, 0] and not mask[0, 1]
    assert mask[1, 4] and mask[4, 1] and not mask[4, 5]
    assert mask[29].all() and mask[14, 29] and not mask[13, 14]


def test_vqvae_multiscale_encoding_is_residual_and_decodes_to_the_image_range():
    vae = random_vqvae()
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent, maps = vae.image_to_indices(image, SMALL)
        assert latent.shape == (2, 16, 4, 4)
        assert [tuple(m.shape) for m in maps] == [(2, pn, pn) for pn in SMALL]
        sums = vae.fhat_from_indices(maps, SMALL)
        # the last scale quantises, cell by cell, what the coarser scales left: brute-force one cell
        rest = latent - sums[-2]
        codes = vae.quantize.codebook
        cell = rest[1, :, 2, 3]
        assert int(maps[-1][1, 2, 3]) == int(((codes - cell) ** 2).sum(1).argmin())
        # the 1x1 scale quantises the latent's mean
        mean = latent[0].mean((1, 2))
        assert int(maps[0][0, 0, 0]) == int(((codes - mean) ** 2).sum(1).argmin())
        out = vae.indices_to_image(maps, SMALL)
    assert out.shape == (2, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, vae.decode_fhat(sums[-1]))


def test_vqvae_rejects_wrong_image_size_and_foreign_tokens():
    vae = random_vqvae()
    with pytest.raises(BoundlessError, match="needs RGB images of 64x64"):
        vae.image_to_indices(torch.zeros(1, 3, 48, 48), SMALL)
    bad = [torch.zeros(1, pn, pn, dtype=torch.int64) for pn in SMALL]
    bad[2][0, 0, 0] = 4096
    with pytest.raises(BoundlessError, match=r"token ids must lie in \[0, 256\)"):
        vae.indices_to_image(bad, SMALL)
    with pytest.raises(BoundlessError, match="do not follow the patch schedule"):
        vae.indices_to_image(bad[:3], SMALL)


def _explicit_attention(attn, x_blc, scale, l2):
    """Textbook multi-head attention with the VAR bias/normalisation rules, written independently."""
    b, l, c = x_blc.shape
    heads = c // 64
    qkv = x_blc @ attn.mat_qkv.weight.T
    q, k, v = qkv.split(c, dim=-1)
    q, v = q + attn.q_bias, v + attn.v_bias
    q, k, v = (t.reshape(b, l, heads, 64).transpose(1, 2) for t in (q, k, v))
    if l2:
        gain = torch.exp(torch.minimum(attn.scale_mul_1H11, torch.tensor(math.log(100))))
        q = q / q.norm(dim=-1, keepdim=True) * gain
        k = k / k.norm(dim=-1, keepdim=True)
    weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, l, c))


@pytest.mark.parametrize("l2", [True, False])
def test_attention_variants_match_an_explicit_computation(l2):
    config = tiny_transformer_config(width=128, patch_nums=SMALL, l2_attention=l2)
    model = random_transformer(config, seed=5)
    attn = model.blocks[0].attn
    if l2:
        with torch.no_grad():
            attn.scale_mul_1H11[0, 1] = 7.0          # above ln 100: the clamp must apply
    x = torch.randn(2, 6, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = attn(x, None, None, 0)
        want = _explicit_attention(attn, x, 1.0 if l2 else 1 / 32, l2)
    assert torch.allclose(got, want, atol=1e-5)
    assert hasattr(attn, "scale_mul_1H11") == l2


def test_shared_adaln_adds_the_block_gains_to_the_shared_projection():
    config = tiny_transformer_config(patch_nums=SMALL, shared_adaln=True)
    model = random_transformer(config, seed=2)
    block = model.blocks[1]
    cond = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        shared = model.block_condition(cond)
        pieces = block.modulation(shared)
        lin = model.shared_ada_lin[1]
        want = (F.silu(cond) @ lin.weight.T + lin.bias).view(3, 6, 64) + block.ada_gss[0, 0]
    assert shared.shape == (3, 1, 6, 64)
    assert not hasattr(block, "ada_lin") and not hasattr(model.blocks[0], "ada_lin")
    for i in range(6):   # gamma1, gamma2, scale1, scale2, shift1, shift2
        assert torch.allclose(pieces[i][:, 0], want[:, i], atol=1e-6)


@pytest.mark.parametrize("variant", [{}, {"shared_adaln": True}, {"l2_attention": False}])
def test_cached_scale_by_scale_logits_equal_teacher_forced_logits(variant):
    config = tiny_transformer_config(patch_nums=SMALL, **variant)
    model = random_transformer(config, seed=4)
    vae = random_vqvae()
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randint(0, 256, (2, pn, pn), generator=gen) for pn in SMALL]
    labels = torch.tensor([3, 1000])
    with torch.no_grad():
        inputs = sampling.teacher_forcing_inputs(vae, maps[:-1], SMALL)
        full = model.teacher_forced_logits(labels, inputs)
        cond = model.condition(labels)
        lvl_pos = model.level_positions()
        cache = transformer_mod.KVCache()
        starts = schedule.scale_starts(SMALL)
        tokens = model.start_tokens(cond, lvl_pos)
        pieces = []
        for k in range(len(SMALL)):
            if k:
                tokens = model.scale_tokens(inputs[:, starts[k] - 1:starts[k + 1] - 1], k, lvl_pos)
            pieces.append(model.logits(model.run_blocks(tokens, model.block_condition(cond), None, cache), cond))
    assert inputs.shape == (2, 29, 16)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_teacher_forcing_inputs_are_area_resized_running_sums():
    vae = random_vqvae()
    gen = torch.Generator().manual_seed(1)
    maps = [torch.randint(0, 256, (1, pn, pn), generator=gen) for pn in SMALL]
    with torch.no_grad():
        inputs = sampling.teacher_forcing_inputs(vae, maps[:-1], SMALL)
        sums = vae.fhat_from_indices(maps, SMALL)
    # scale 1's four inputs are the 2x2 averages of f_hat after scale 0, row-major
    assert torch.allclose(inputs[0, 0], sums[0][0, :, :2, :2].mean((1, 2)), atol=1e-6)
    assert torch.allclose(inputs[0, 2], sums[0][0, :, 2:, :2].mean((1, 2)), atol=1e-6)
    # the last 16 inputs (scale 3 = full resolution) are f_hat after scale 2 itself
    assert torch.allclose(inputs[0, -16:], sums[2][0].flatten(1).T, atol=1e-6)
