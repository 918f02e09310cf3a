"""Noise that wraps around horizontally, so a panorama's last column meets its first (numpy).

Both kinds are sums of sinusoids with a whole number of periods across the panorama's width, so
they are seamless at any width by construction, and deterministic from a ``numpy`` generator.
"""
from __future__ import annotations

import numpy as np


def ridge(rng: np.random.Generator, width: int, octaves: int = 48, roughness: float = 1.15,
          lowest: int = 1) -> np.ndarray:
    """A periodic 1-D profile ``[width]`` in about [-1, 1]: frequencies ``lowest..lowest+octaves-1``
    with amplitudes ``k^-roughness`` (higher roughness: smoother ridges)."""
    x = np.arange(width) / width * 2 * np.pi
    k = np.arange(lowest, lowest + octaves)
    amplitude = k.astype(np.float64) ** -roughness * rng.uniform(0.5, 1.0, size=k.size)
    phase = rng.uniform(0, 2 * np.pi, size=k.size)
    profile = (amplitude[:, None] * np.sin(k[:, None] * x[None, :] + phase[:, None])).sum(axis=0)
    return profile / (np.abs(profile).max() + 1e-9)


def field(rng: np.random.Generator, height: int, width: int, slope: float = 2.0, stretch: float = 1.0) -> np.ndarray:
    """A 2-D random field ``[height, width]`` with a power-law spectrum (``|f|^-slope``), scaled to
    [0, 1]; periodic in both directions (an inverse FFT), so seamless across the panorama's seam.
    ``stretch`` > 1 elongates features horizontally (clouds)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :] * stretch
    radius = np.sqrt(fx ** 2 + fy ** 2)
    radius[0, 0] = np.inf
    spectrum = radius ** -slope * (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape))
    values = np.fft.irfft2(spectrum, s=(height, width))
    values -= values.min()
    return values / (values.max() + 1e-9)
