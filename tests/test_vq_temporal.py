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
