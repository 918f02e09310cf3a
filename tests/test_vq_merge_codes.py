"""Merging near-duplicate codes: clusters, representatives, and a merged tokenizer that only ever
returns representatives while decoding them as before."""
from __future__ import annotations

import torch

from packpath import pack_module

merge = pack_module("nodes.vq.merge_codes")
vqgan_mod = pack_module("nodes.vq.vqgan")


def test_near_duplicates_merge_and_distinct_codes_stay_apart():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 3, generator=generator) * 10
    codebook = centres.repeat_interleave(3, 0) + 0.01 * torch.randn(12, 3, generator=generator)   # 4 x 3 twins
    assign, merged = merge.merge_codebook(codebook, torch.ones(12), 4)
    assert torch.equal(assign.view(4, 3), assign.view(4, 3)[:, :1].expand(4, 3))   # twins together
    assert len(set(assign.tolist())) == 4
    assert torch.allclose(merged.view(4, 3, 3)[:, 0], centres, atol=0.05)
    assert torch.equal(merge.representatives(assign), torch.arange(0, 12, 3).repeat_interleave(3))


def test_usage_pulls_a_centroid_to_the_used_code():
    codebook = torch.tensor([[0.0], [1.0]])
    _, merged = merge.merge_codebook(codebook, torch.tensor([99.0, 1.0]), 1)
    assert float(merged[0]) == float(merged[1]) and abs(float(merged[0]) - 0.01) < 1e-3


def test_a_merged_tokenizer_returns_only_representatives():
    torch.manual_seed(0)
    cfg = vqgan_mod.VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8,
                                embed_dim=4, n_embed=32)
    model = vqgan_mod.VQGAN(cfg).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = model.encode_indices(x)
        usage = torch.bincount(before.flatten(), minlength=32)
        assign, merged = merge.merge_codebook(model.quantize.embedding.weight, usage, 8)
        model.quantize.embedding.weight.copy_(merged)
        after = model.encode_indices(x)
    remap = merge.representatives(assign)
    assert set(after.unique().tolist()) <= set(remap.unique().tolist())
    assert len(remap.unique()) == 8
    with torch.no_grad():                                # a code and its representative decode alike
        assert torch.equal(model.decode_indices(before), model.decode_indices(remap[before]))
