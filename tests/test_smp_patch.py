"""The attn2 replace patch of Apply Motion Conditioning, on fake projected q/k/v (pure torch)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from packpath import pack_module
from test_smp_model import ip_adapter_sd

patch_mod = pack_module("nodes.story.motion_patch")
tokens = pack_module("nodes.story.motion_tokens")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

HEADS, DIM = 2, 32
LAYERS = [patch_mod.CrossLayer("input", 1, 0, 32, HEADS), patch_mod.CrossLayer("output", 0, 0, 32, HEADS),
          patch_mod.CrossLayer("middle", 0, 0, 64, HEADS)]


def attention(q, k, v, heads=HEADS):
    b, n, c = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, c)


@pytest.fixture(scope="module")
def conditioner():
    return tokens.load_conditioner(ip_adapter_sd(embed=24, n_tokens=4, cross=16, inner=(32, 32, 64)))


def options(kinds, layer=("output", 0), block_index=0, **extra):
    return {"n_heads": HEADS, "dim_head": DIM // HEADS, "cond_or_uncond": kinds, "block": layer,
            "block_index": block_index, **extra}


def qkv(rows, seed=0, n=6, width=DIM):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, n, width, generator=g), torch.randn(rows, 7, width, generator=g),
            torch.randn(rows, 7, width, generator=g))


def expected(q, k, v, row_tokens, ip_layer, weight):
    """Text attention plus weight * attention to to_k_ip/to_v_ip of the row's tokens (None = text only)."""
    out = attention(q, k, v)
    for r, toks in enumerate(row_tokens):
        if toks is not None:
            image = attention(q[r:r + 1], (toks @ ip_layer.to_k_ip.weight.T)[None], (toks @ ip_layer.to_v_ip.weight.T)[None])
            out[r] += weight * image[0]
    return out


def test_each_batch_item_gets_its_own_frame_tokens_in_each_chunk(conditioner):
    frames = 3
    cond = conditioner.tokens(torch.randn(frames, 24))
    uncond = conditioner.tokens(torch.zeros(1, 24))
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, uncond, weight=0.8)
    q, k, v = qkv(2 * frames)
    out = patch(q, k, v, options([1, 0]))                         # ComfyUI's order: uncond chunk first
    rows = [uncond[0]] * frames + [cond[i] for i in range(frames)]
    torch.testing.assert_close(out, expected(q, k, v, rows, conditioner.layer(1), 0.8))
    # swapping the frames swaps exactly the cond rows' contributions
    swapped = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond.flip(0), uncond, weight=0.8)(q, k, v, options([1, 0]))
    rows_swapped = [uncond[0]] * frames + [cond[2 - i] for i in range(frames)]
    torch.testing.assert_close(swapped, expected(q, k, v, rows_swapped, conditioner.layer(1), 0.8))


def test_text_only_uncond_and_separate_calls(conditioner):
    cond = conditioner.tokens(torch.randn(2, 24))
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, None, weight=1.0)
    q, k, v = qkv(4, seed=1)
    out = patch(q, k, v, options([0, 1]))                         # cond first, uncond rows untouched
    torch.testing.assert_close(out, expected(q, k, v, [cond[0], cond[1], None, None], conditioner.layer(1), 1.0))
    only_uncond = patch(q[:2], k[:2], v[:2], options([1]))
    torch.testing.assert_close(only_uncond, attention(q[:2], k[:2], v[:2]))
    only_cond = patch(q[2:], k[2:], v[2:], options([0]))
    torch.testing.assert_close(only_cond, expected(q[2:], k[2:], v[2:], [cond[0], cond[1]], conditioner.layer(1), 1.0))


def test_layers_use_their_own_weights_and_unknown_layers_are_untouched(conditioner):
    cond = conditioner.tokens(torch.randn(1, 24))
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, None, weight=1.0)
    q, k, v = qkv(1, width=64)
    torch.testing.assert_close(patch(q, k, v, options([0], layer=("middle", 0))),
                               expected(q, k, v, [cond[0]], conditioner.layer(2), 1.0))
    q, k, v = qkv(1)
    torch.testing.assert_close(patch(q, k, v, options([0], layer=("input", 4))), attention(q, k, v))
    zero = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, None, weight=0.0)
    torch.testing.assert_close(zero(q, k, v, options([0], layer=("input", 1))), attention(q, k, v))


class Window:
    dim = 0

    def __init__(self, index_list):
        self.index_list = index_list


def test_context_windows_pick_their_frames(conditioner):
    cond = conditioner.tokens(torch.randn(6, 24))
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, None, weight=1.0)
    q, k, v = qkv(3, seed=2)
    for extra in ({"context_window": Window([4, 5, 0])}, {"ad_params": {"sub_idxs": [4, 5, 0]}}):
        out = patch(q, k, v, options([0], **extra))
        torch.testing.assert_close(out, expected(q, k, v, [cond[4], cond[5], cond[0]], conditioner.layer(1), 1.0))


def test_one_frame_motion_conditions_every_item(conditioner):
    cond = conditioner.tokens(torch.randn(1, 24))
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, cond, None, weight=1.0)
    q, k, v = qkv(3)
    torch.testing.assert_close(patch(q, k, v, options([0])), expected(q, k, v, [cond[0]] * 3, conditioner.layer(1), 1.0))


def test_batch_and_frame_count_mismatch_says_what_to_set(conditioner):
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, conditioner.tokens(torch.randn(5, 24)), None, 1.0)
    q, k, v = qkv(4)
    with pytest.raises(BoundlessError, match="motion has 5 frames but the latent batch has 2.*batch_size to 5"):
        patch(q, k, v, options([1, 0]))
    with pytest.raises(BoundlessError, match="frame 7 but the motion only 5"):
        patch(q[:2], k[:2], v[:2], options([0], context_window=Window([6, 7])))


def test_layer_widths_must_match_the_unet(conditioner):
    wrong = LAYERS[:2] + [patch_mod.CrossLayer("middle", 0, 0, 128, HEADS)]
    with pytest.raises(BoundlessError, match="3 cross-attention layers \\(32, 32, 64\\).*\\(32, 32, 128\\)"):
        patch_mod.MotionCrossAttention(wrong, conditioner, conditioner.tokens(torch.randn(1, 24)), None, 1.0)


def test_patch_is_shared_by_model_clones(conditioner):
    import copy
    patch = patch_mod.MotionCrossAttention(LAYERS, conditioner, conditioner.tokens(torch.randn(1, 24)), None, 1.0)
    assert copy.deepcopy({"p": patch})["p"] is patch
