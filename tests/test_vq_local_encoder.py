"""Local-code encoders: attention switched off in place, token-aligned crops, and a student that
learns its teacher's whole-picture codes from crops."""
from __future__ import annotations

import copy

import torch

from packpath import pack_module

vqgan_mod = pack_module("nodes.vq.vqgan")
local = pack_module("nodes.vq.local_encoder")


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    cfg = vqgan_mod.VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8,
                                embed_dim=4, n_embed=16)
    return vqgan_mod.VQGAN(cfg).eval()


def _pictures(count: int, side: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(count, 3, side, side, generator=generator) * 2 - 1, 3, 1, 1)
    return list(smooth)


def test_switched_off_attention_is_the_identity_and_stays_frozen():
    model = _tiny()
    reference = copy.deepcopy(model)
    for module in reference.encoder.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, vqgan_mod.AttnBlock):
                setattr(module, name, torch.nn.Identity())
    assert local.switch_off_encoder_attention(model) == 2                     # level 1 and the middle
    x = _pictures(1)[0][None]
    with torch.no_grad():
        assert torch.equal(model.encoder(x), reference.encoder(x))
    blocks = [m for m in model.encoder.modules() if isinstance(m, vqgan_mod.AttnBlock)]
    assert all(not p.requires_grad for block in blocks for p in block.parameters())
    assert set(model.state_dict()) == set(_tiny().state_dict())              # the taming key layout stays


def test_crops_are_token_aligned_and_carry_the_codes_of_their_place():
    factor, h, w = 4, 6, 10
    codes_hw = torch.arange(h * w).view(h, w)
    picture = torch.arange(h * factor * w * factor, dtype=torch.float32).view(1, h * factor, w * factor).repeat(3, 1, 1)
    sampler = local.AlignedCropSampler([(picture, codes_hw)], factor, seed=1, min_tokens=2, max_tokens=8, max_area=24)
    for _ in range(50):
        crop_3hw, crop_codes = sampler.one()
        ch, cw = crop_codes.shape
        assert crop_3hw.shape == (3, ch * factor, cw * factor) and ch * cw <= 24
        ty, tx = divmod(int(crop_codes[0, 0]), w)
        assert torch.equal(crop_codes, codes_hw[ty:ty + ch, tx:tx + cw])
        assert torch.equal(crop_3hw, picture[:, ty * factor:(ty + ch) * factor, tx * factor:(tx + cw) * factor])


def test_code_logits_pick_the_quantizers_codes():
    model = _tiny()
    with torch.no_grad():
        z = model.quant_conv(model.encoder(_pictures(1)[0][None]))
        assert torch.equal(local.code_logits(z, model.quantize.embedding.weight, 0.5).argmax(1),
                           model.quantize.indices(z))


def _agreement(model, items) -> float:
    with torch.no_grad():
        return float(torch.stack([(model.encode_indices(x[None])[0] == codes).float().mean()
                                  for x, codes in items]).mean())


def test_a_student_learns_its_teachers_whole_picture_codes_from_crops():
    """A teacher with strong global attention encodes a crop unlike the whole picture; its student
    (attention off) learns the whole-picture codes and gives them from crops better than the teacher."""
    teacher = _tiny(seed=3)
    with torch.no_grad():
        for module in teacher.encoder.modules():
            if isinstance(module, vqgan_mod.AttnBlock):
                module.proj_out.weight.mul_(30)
                module.v.weight.mul_(3)
    pictures = [(x, teacher.encode_indices(x[None])[0]) for x in _pictures(6, side=32)]
    probe = local.AlignedCropSampler(pictures, teacher.factor, seed=5, min_tokens=4, max_tokens=12)
    crops = [probe.one() for _ in range(30)]
    teacher_on_crops = _agreement(teacher, crops)
    student = copy.deepcopy(teacher)
    local.switch_off_encoder_attention(student)
    codebook = student.quantize.embedding.weight
    codebook.requires_grad_(False)
    assert _agreement(student, pictures) < 0.6                  # the attention mattered
    with torch.no_grad():
        temperature = local.nearest_distance_sq(teacher.quant_conv(teacher.encoder(pictures[0][0][None])), codebook)
    opt = torch.optim.Adam([p for p in student.encoder.parameters() if p.requires_grad]
                           + list(student.quant_conv.parameters()), lr=3e-3)
    sampler = local.AlignedCropSampler(pictures, teacher.factor, seed=0, min_tokens=4, max_tokens=16)
    torch.manual_seed(0)
    for _ in range(100):
        stats = local.distill_step(student, opt, [sampler.one() for _ in range(4)], temperature)
    assert set(stats) == {"ce", "pull", "agree"}
    assert _agreement(student, pictures) >= 0.9
    assert _agreement(student, crops) >= teacher_on_crops + 0.25, (teacher_on_crops, _agreement(student, crops))
    assert torch.equal(codebook, teacher.quantize.embedding.weight)       # the codes stay the teacher's


def test_token_caches_tell_apart_tokenizers_that_share_a_codebook():
    """A student keeps its teacher's codebook (its token maps stay compatible) but encodes
    differently, so the world token caches must not mix them up."""
    from train_infinity_world import cache_key
    teacher = _tiny()
    student = copy.deepcopy(teacher)
    assert cache_key(student) == cache_key(teacher)
    local.switch_off_encoder_attention(student)
    assert cache_key(student) != cache_key(teacher)
    assert cache_key(student).split("_")[0] == cache_key(teacher).split("_")[0]     # same codebook part


def test_the_consistency_term_of_tokenizer_training_makes_sub_crops_pick_the_crops_codes():
    train = pack_module("nodes.vq.train")
    import random
    model = _tiny(seed=3).train()
    with torch.no_grad():
        for module in model.encoder.modules():
            if isinstance(module, vqgan_mod.AttnBlock):
                module.proj_out.weight.mul_(30)
    batch = torch.stack(_pictures(2, side=32, seed=4))
    codebook = train.EMACodebook(model)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("quantize.")], lr=3e-3)
    stats = [train.train_step(model, codebook, opt, batch, consistency_weight=1.0, rng=random.Random(0))
             for _ in range(30)]
    assert "consistency" in stats[0]
    assert float(stats[-1]["consistency"]) < 0.5 * float(stats[0]["consistency"])
    with torch.no_grad():                       # the same sub-crop now encodes to the crop's codes
        whole_bhw = model.encode_indices(batch)
        sub_bhw = model.encode_indices(batch[..., 4:28, 6:30])
    assert float((sub_bhw == whole_bhw[:, 2:14, 3:15]).float().mean()) >= 0.5
