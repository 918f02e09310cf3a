"""Tiny random-weight NUWA-Infinity decoders for unit tests and the server tests.

``write_test_models(models_root)`` (called by tests/conftest.py for the ComfyUI test server) writes
``models_root/infinity/infinity_tiny.safetensors`` — 64 codes like ``vq_tiny.safetensors``, 2×2-token
patches, extents (1, 1, 1), token geometry — and ``infinity_tiny_text.safetensors``, the same with a 384-wide text
branch (MiniLM token states) that is strong enough to change the samples.
"""
from __future__ import annotations

import pathlib

import pytest
import torch

from packpath import pack_module

config_mod = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
checkpoint_mod = pack_module("nodes.infinity.checkpoint")

TINY_NAME = "infinity_tiny.safetensors"
TINY_TEXT_NAME = "infinity_tiny_text.safetensors"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread on a shared CPU; restore the setting afterwards.

    Test modules activate it with ``from infinity_tiny import one_thread``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides):
    values = dict(n_embed=64, dim=32, depth=2, heads=4, mlp_dim=64, patch_h=2, patch_w=2,
                  trained_extents=config_mod.Extents(1, 1, 1), text_dim=0)
    values.update(overrides)
    return config_mod.InfinityConfig(**values)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A random model drawn inside a forked RNG (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_mod.InfinityTransformer(tiny_config(**overrides))
    return model.to(dtype).eval()


def write_test_models(models_root: pathlib.Path) -> None:
    folder = models_root / "infinity"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint_mod.save_infinity(tiny_model(0, rope_base=100), str(folder / TINY_NAME))   # the current design
    checkpoint_mod.save_infinity(strong_text_model(1), str(folder / TINY_TEXT_NAME))


def strong_text_model(seed: int):
    """A tiny 384-wide text model whose text changes what it samples. A random model's logits are
    nearly flat and its cross-attention output is small, so seeded sampling would draw the same
    tokens whatever the text; both are scaled up."""
    model = tiny_model(seed, text_dim=384)
    with torch.no_grad():
        for block in model.blocks:
            block.cross.proj.weight.mul_(100.0)
        model.head.weight.mul_(10.0)
    return model
