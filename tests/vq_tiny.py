"""Small VQGAN files for the server tests: a random-weight taming layout, and two bad files."""
from __future__ import annotations

import pathlib

import torch
from safetensors.torch import save_file

from packpath import pack_module

TINY_NAME = "vq_tiny.safetensors"
CORRUPT_NAME = "corrupt_vqgan.safetensors"
WRONG_KIND_NAME = "not_a_vqgan.safetensors"


def tiny_vqgan(seed: int = 0):
    vqgan = pack_module("nodes.vq.vqgan")
    torch.manual_seed(seed)
    cfg = vqgan.VQGANConfig(ch=32, ch_mult=(1, 1, 1, 1, 2), num_res_blocks=1, attn_levels=(4,), z_channels=32,
                            embed_dim=8, n_embed=64)
    return vqgan.VQGAN(cfg).eval()


def write_test_models(models_root: pathlib.Path) -> None:
    folder = models_root / "vqgan"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_vqgan().state_dict().items()}, str(folder / TINY_NAME))
    (folder / CORRUPT_NAME).write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    save_file({"blocks.0.attn.mat_qkv.weight": torch.zeros(8, 4), "word_embed.weight": torch.zeros(4, 4)},
              str(folder / WRONG_KIND_NAME))
