"""Unit tests of the pure Consistent Self-Attention maths (nodes/story/csa.py)."""
import random

import pytest
import torch

from packpath import pack_module

csa = pack_module("nodes.story.csa")

HEADS, DIM = 2, 8
C = HEADS * DIM


def reference_attention(q_nc, k_mc, v_mc, heads=HEADS):
    """Per-head softmax(q k^T / sqrt(d)) v written out, for one row."""
    d = q_nc.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q_nc[:, sl] @ k_mc[:, sl].T / d ** 0.5, dim=-1)
        outs.append(w @ v_mc[:, sl])
    return torch.cat(outs, dim=-1)


def qkv(batch, tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, C, generator=g) for _ in range(3)]


def test_sdpa_attention_matches_written_out_softmax():
    q, k, v = qkv(3, 5)
    k, v = torch.cat([k, k[:, :2]], 1), torch.cat([v, v[:, :2]], 1)   # more keys than queries
    out = csa.sdpa_attention(q, k, v, HEADS)
    for r in range(3):
        torch.testing.assert_close(out[r], reference_attention(q[r], k[r], v[r]), atol=1e-5, rtol=1e-5)


def test_identity_attention_reads_selected_tokens_of_the_other_images_only():
    q, k, v = qkv(6, 7, seed=1)          # 2 chunks x 3 images x 7 tokens
    select = torch.tensor([[1, 0, 1, 0, 0, 0, 1], [0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = csa.identity_attention(q, k, v, select, n_chunks=2, heads=HEADS)
    for c in range(2):
        for i in range(3):
            r = 3 * c + i
            others = [j for j in range(3) if j != i]
            keys = torch.cat([k[3 * c + j][select[j]] for j in others] + [k[r]])
            values = torch.cat([v[3 * c + j][select[j]] for j in others] + [v[r]])
            torch.testing.assert_close(out[r], reference_attention(q[r], keys, values), atol=1e-5, rtol=1e-5)


def test_identity_attention_keeps_chunks_apart():
    q, k, v = qkv(4, 6, seed=2)          # chunks [uncond, cond] of 2 images
    select = torch.ones(2, 6, dtype=torch.bool)
    out = csa.identity_attention(q, k, v, select, 2, HEADS)
    k2, v2 = k.clone(), v.clone()
    k2[:2] += 5.0                        # change only chunk 0
    v2[:2] -= 3.0
    out2 = csa.identity_attention(q, k2, v2, select, 2, HEADS)
    torch.testing.assert_close(out2[2:], out[2:])
    assert not torch.allclose(out2[:2], out[:2])


def test_identity_attention_without_sharing_is_plain_attention():
    q, k, v = qkv(6, 5, seed=3)
    plain = csa.plain_attention(q, k, v, HEADS)
    none = torch.zeros(3, 5, dtype=torch.bool)
    torch.testing.assert_close(csa.identity_attention(q, k, v, none, 2, HEADS), plain)
    one_image = csa.identity_attention(q[:2], k[:2], v[:2], torch.ones(1, 5, dtype=torch.bool), 2, HEADS)
    torch.testing.assert_close(one_image, plain[:2])


def test_identity_attention_is_equivariant_to_image_order():
    q, k, v = qkv(3, 6, seed=4)
    select = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    out = csa.identity_attention(q, k, v, select, 1, HEADS)
    perm = torch.tensor([2, 0, 1])
    out_p = csa.identity_attention(q[perm], k[perm], v[perm], select[perm], 1, HEADS)
    torch.testing.assert_close(out_p, out[perm], atol=1e-6, rtol=1e-5)


def test_identity_attention_rejects_a_selection_of_the_wrong_shape():
    q, k, v = qkv(4, 5)
    with pytest.raises(ValueError, match="does not fit"):
        csa.identity_attention(q, k, v, torch.ones(3, 5, dtype=torch.bool), 2, HEADS)
    with pytest.raises(ValueError, match="does not split"):
        csa.identity_attention(q[:3], k[:3], v[:3], None, 2, HEADS)


def test_shared_tokens_order_is_image_then_token():
    x = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(4, 3, 1).expand(4, 3, C)   # 2 chunks x 2 images
    select = torch.tensor([[True, False, True], [False, True, False]])
    shared = csa.shared_tokens(x, select, 2)
    assert shared.shape == (2, 3, C)
    assert shared[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert shared[1, :, 0].tolist() == [6.0, 8.0, 10.0]


def test_panel_attention_puts_the_bank_before_the_own_tokens_per_chunk_kind():
    q, k, v = qkv(4, 5, seed=5)          # 2 chunks x 2 panels
    g = torch.Generator().manual_seed(9)
    bank0 = (torch.randn(3, C, generator=g), torch.randn(3, C, generator=g))
    out = csa.panel_attention(q, k, v, [bank0, None], HEADS)
    for r in range(2):
        keys, values = torch.cat([bank0[0], k[r]]), torch.cat([bank0[1], v[r]])
        torch.testing.assert_close(out[r], reference_attention(q[r], keys, values), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2:], csa.plain_attention(q[2:], k[2:], v[2:], HEADS))


def test_panel_attention_with_an_empty_bank_is_plain_attention():
    q, k, v = qkv(2, 5, seed=6)
    empty = (torch.zeros(0, C), torch.zeros(0, C))
    torch.testing.assert_close(csa.panel_attention(q, k, v, [empty, None], HEADS),
                               csa.plain_attention(q, k, v, HEADS))


def test_attention_to_a_copy_of_the_own_tokens_equals_plain_attention():
    """A bank holding exactly the panel's own tokens doubles every key: softmax weights are unchanged."""
    q, k, v = qkv(1, 6, seed=7)
    out = csa.panel_attention(q, k, v, [(k[0], v[0])], HEADS)
    torch.testing.assert_close(out, csa.plain_attention(q, k, v, HEADS), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("step,u,applies", [
    (0, 0.99, False), (0, None, False), (1, 0.31, True), (19, 0.3, False), (19, 0.300001, True),
    (20, 0.2, True), (20, 0.1, False), (35, 0.11, True)])
def test_gating_rule(step, u, applies):
    assert csa.Gating().applies(step, u) is applies


def test_gating_start_step_and_probabilities_are_settings():
    gating = csa.Gating(start_step=5, skip_prob_early=0.0, skip_prob_late=1.0, late_from_step=10)
    assert not gating.applies(4, 0.9)
    assert gating.applies(5, 0.01)
    assert not gating.applies(10, 0.999)


def test_skip_draws_are_pythons_random_stream_from_step_one():
    u = csa.skip_draws(seed=77, steps=5, n_layers=3)
    rng = random.Random(77)
    assert u.dtype == torch.float64 and u.shape == (4, 3)
    assert u.flatten().tolist() == [rng.random() for _ in range(12)]
    table = csa.gating_table(77, 5, 3, csa.Gating())
    assert table.shape == (5, 3) and not table[0].any()
    assert table[1:].tolist() == (u > 0.3).tolist()


def test_token_draws_follow_the_seeded_float16_recipe():
    draws = csa.TokenDraws(seed=5, rows=3, levels=[(4, 0.4), (16, 0.5)])
    g = torch.Generator("cpu").manual_seed(5)
    for d in range(3):
        want = []
        for tokens, rate in [(4, 0.4), (16, 0.5)]:
            numbers = torch.rand((3, tokens), generator=g, dtype=torch.float16)
            want.append(numbers < torch.tensor(rate, dtype=torch.float16))
        got = draws.draw(d)
        assert [w.tolist() for w in want] == [x.tolist() for x in got]


def test_token_draws_are_lazy_and_repeatable():
    a = csa.TokenDraws(seed=11, rows=2, levels=[(64, 0.5)])
    b = csa.TokenDraws(seed=11, rows=2, levels=[(64, 0.5)])
    late = a.draw(4)[0].clone()
    assert torch.equal(b.draw(4)[0], late)
    assert torch.equal(a.draw(1)[0], b.draw(1)[0])
    assert not torch.equal(a.draw(1)[0], a.draw(2)[0])


@pytest.mark.parametrize("rate,expected", [(0.0, 0), (1.0, 2 * 50)])
def test_token_draw_extreme_rates(rate, expected):
    draws = csa.TokenDraws(seed=0, rows=2, levels=[(50, rate)])
    assert int(draws.draw(0)[0].sum()) == expected


def test_step_index_is_nearest_scheduled_sigma():
    schedule = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert csa.step_index(14.6, schedule) == 0
    assert csa.step_index(3.0, schedule) == 2
    assert csa.step_index(2.1, schedule) == 2    # a sub-step sigma maps to the nearest step
    assert csa.step_index(1.4, schedule) == 3
