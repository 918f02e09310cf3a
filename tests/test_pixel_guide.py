"""Pixel-guided VQGAN decoding (PG-VQGAN): exactness at init, frame chaining, files, training."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from infinity_tiny import one_thread  # noqa: F401 (autouse fixture)
from packpath import pack_module
from vq_tiny import tiny_vqgan

guided = pack_module("nodes.vq.guided")
guide_train = pack_module("nodes.vq.guide_train")
errors = pack_module("nodes.common.errors")


def test_level_scales_follow_the_decoder_resolutions():
    assert guided.level_scales(5) == [1, 1, 2, 4, 8]       # f16: latent at H/16, level 4 upsamples to H/8
    assert guided.level_scales(3) == [1, 1, 2]             # f4
    assert guided.level_scales(1) == [1]


def test_untrained_guide_decodes_exactly_like_the_plain_decoder():
    vqgan = tiny_vqgan(0)
    guide = guided.PixelGuide.for_vqgan(vqgan)
    idx_bhw = torch.randint(0, 64, (2, 2, 3))
    with torch.no_grad():
        plain = vqgan.decode_indices(idx_bhw)
        pyramid = guide.pyramid(torch.rand(2, 3, 32, 48) * 2 - 1)
        out = guide.decode(vqgan, idx_bhw, torch.rand(2, 3, 32, 48) * 2 - 1)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert torch.equal(out, plain)


def test_guide_of_wrong_size_is_refused():
    vqgan = tiny_vqgan(0)
    guide = guided.PixelGuide.for_vqgan(vqgan)
    with pytest.raises(errors.BoundlessError, match="same size"):
        guide.decode(vqgan, torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 16, 16))


def test_decode_frames_keeps_the_first_frame_and_chains_outputs():
    vqgan = tiny_vqgan(0)
    guide = guided.PixelGuide.for_vqgan(vqgan)
    torch.nn.init.normal_(guide.fuse[0].weight, std=0.05)        # make the guide matter
    idx_fbhw = torch.randint(0, 64, (3, 1, 2, 2))
    first = torch.rand(1, 3, 32, 32) * 2 - 1
    frames = guided.decode_frames(vqgan, idx_fbhw, guide, first)
    assert frames.shape == (3, 1, 3, 32, 32)
    assert torch.equal(frames[0], first)
    with torch.no_grad():
        expected_1 = guide.decode(vqgan, idx_fbhw[1], first)
        expected_2 = guide.decode(vqgan, idx_fbhw[2], expected_1.clamp(-1, 1))
    assert torch.allclose(frames[1], expected_1) and torch.allclose(frames[2], expected_2)
    plain = guided.decode_frames(vqgan, idx_fbhw)
    with torch.no_grad():
        assert torch.allclose(plain[2], vqgan.decode_indices(idx_fbhw[2]))
    assert not torch.allclose(plain[2], frames[2])


def test_guide_file_round_trip_and_errors(tmp_path):
    vqgan = tiny_vqgan(0)
    guide = guided.PixelGuide.for_vqgan(vqgan, width=8)
    torch.nn.init.normal_(guide.fuse[2].weight)
    path = tmp_path / "guide.safetensors"
    guided.save_guide(guide, str(path), extra={"report": {"psnr": 1.0}})
    back = guided.load_guide(str(path))
    assert back.width == 8 and back.tokenizer == guide.tokenizer
    assert all(torch.equal(a, b) for a, b in zip(guide.state_dict().values(), back.state_dict().values()))
    with pytest.raises(errors.BoundlessError, match="different VQGAN"):
        guided.decode_frames(tiny_vqgan(1), torch.zeros(2, 1, 2, 2, dtype=torch.long), back)
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "vq.safetensors"))
    with pytest.raises(errors.BoundlessError, match="not a Boundless pixel guide"):
        guided.load_guide(str(tmp_path / "vq.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(errors.BoundlessError, match="damaged"):
        guided.load_guide(str(tmp_path / "bad.safetensors"))


def test_training_teaches_the_guide_to_copy_what_the_tokens_cannot_hold():
    """Static clips of random texture: the tokens of a random tiny VQGAN lose the texture, the true
    previous frame has it, so a trained guide must beat plain decoding by a wide margin."""
    torch.manual_seed(0)
    vqgan = tiny_vqgan(0)
    texture = torch.rand(6, 1, 3, 32, 32) * 2 - 1
    clips = texture.expand(-1, 4, -1, -1, -1).contiguous()
    guide = guide_train.train_guide(vqgan, clips, minutes=2.0, steps=150, batch=4, lr=3e-3, width=8)
    plain = guide_train.evaluate(vqgan, None, clips)
    trained = guide_train.evaluate(vqgan, guide, clips)
    assert trained["psnr_db"] > plain["psnr_db"] + 3.0
    assert trained["temporal_error"] < plain["temporal_error"]
