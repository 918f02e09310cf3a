"""Temporally stable quantization of video frames (nodes/vq/temporal.py)."""
from __future__ import annotations

import pytest
import torch

from packpath import pack_module
from vq_tiny import tiny_vqgan

temporal = pack_module("nodes.vq.temporal")


def distances(codes_ke, z_fehw):
    z_fne = z_fehw.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cdist(z_fne, codes_ke[None].expand(z_fne.shape[0], -1, -1)).pow(2)   # [F, N, K]


def test_zero_tolerance_is_plain_quantization_and_hysteresis_stays_within_tolerance():
    vqgan = tiny_vqgan()
    frames = (torch.rand(1, 3, 64, 64) * 2 - 1).repeat(6, 1, 1, 1) + 0.05 * torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        plain = vqgan.encode_indices(frames)
        z = vqgan.quant_conv(vqgan.encoder(frames))
    assert torch.equal(temporal.encode_frames_stable(vqgan, frames, tolerance=0.0), plain)
    codes = vqgan.quantize.embedding.weight.detach()
    dist = distances(codes, z)
    tolerance = float(dist.min(-1).values.median())
    stable = temporal.encode_frames_stable(vqgan, frames, tolerance=tolerance, batch=4)
    assert torch.equal(stable[0], plain[0])                                  # nothing to stick to yet
    chosen = dist.gather(-1, stable.flatten(1)[..., None])[..., 0]
    best = dist.min(-1).values
    assert bool((chosen <= best + tolerance + 1e-5).all())
    changed = lambda t: float((t[1:] != t[:-1]).float().mean())              # noqa: E731
    assert changed(stable) < changed(plain)
    # A kept code is the previous frame's wherever it differs from the nearest code.
    moved = stable[1:] != plain[1:]
    assert bool((stable[1:][moved] == stable[:-1][moved]).all())


def test_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        temporal.encode_frames_stable(tiny_vqgan(), torch.zeros(2, 3, 32, 32), tolerance=-1)


def test_tiled_encode_with_stability_is_hysteresis_per_position():
    """VQGAN Encode's temporal_stability: tiles quantize their own token columns over time, so a tiled
    encode whose margin covers the canvas equals the one-pass stable encode, which equals
    encode_frames_stable; 0 is the plain per-image encode."""
    tiling = pack_module("nodes.vq.tiling")
    vqgan = tiny_vqgan()
    frames = (torch.rand(1, 3, 64, 96) * 2 - 1).repeat(5, 1, 1, 1) + 0.05 * torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        z = vqgan.quant_conv(vqgan.encoder(frames))
        tolerance = float(distances(vqgan.quantize.embedding.weight, z).min(-1).values.median())
        stable = tiling.encode_tiled(vqgan, frames, stability=tolerance)
        assert torch.equal(stable, temporal.encode_frames_stable(vqgan, frames, tolerance=tolerance))
        assert not torch.equal(stable, vqgan.encode_indices(frames))
        assert torch.equal(tiling.encode_tiled(vqgan, frames, tile_px=32, margin_px=96, stability=tolerance), stable)
        assert torch.equal(tiling.encode_tiled(vqgan, frames, stability=0.0), vqgan.encode_indices(frames))
        with pytest.raises(pack_module("nodes.common.errors").BoundlessError, match="temporal stability"):
            tiling.encode_tiled(vqgan, frames, stability=-0.1)


def test_vqgan_encode_node_quantizes_a_batch_as_frames_with_temporal_stability():
    from conftest import import_comfy_in_process
    import_comfy_in_process()
    nodes = pack_module("nodes.vq.nodes")
    glue = pack_module("nodes.common.comfy_glue")
    model = tiny_vqgan()
    torch.manual_seed(5)
    video_bchw = ((torch.rand(1, 3, 64, 64) * 2 - 1).repeat(6, 1, 1, 1) + 0.1 * torch.randn(6, 3, 64, 64)).clamp(-1, 1)
    video_bhwc = ((video_bchw + 1) / 2).permute(0, 2, 3, 1)                   # ComfyUI IMAGE
    with torch.no_grad():
        z = model.quant_conv(model.encoder(video_bchw))
    tolerance = float(distances(model.quantize.embedding.weight.detach(), z).min(-1).values.median())
    vqgan, encode = glue.managed(model), nodes.VQGANEncode.execute
    plain = encode(vqgan, video_bhwc, "pad", 0, 64).result[0].indices
    assert torch.equal(encode(vqgan, video_bhwc, "pad", 0, 64, temporal_stability=0.0).result[0].indices, plain)
    stable = encode(vqgan, video_bhwc, "pad", 0, 64, temporal_stability=tolerance).result[0].indices
    assert torch.equal(stable, temporal.encode_frames_stable(model, video_bchw, tolerance=tolerance))
    flicker = lambda t: int((t[1:] != t[:-1]).sum())                         # noqa: E731
    assert flicker(stable) < flicker(plain)
