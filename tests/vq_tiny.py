"""Small VQGAN files for the server tests: a random-weight taming layout, two bad files, and a
pixel guide for the tiny VQGAN (random fusion weights, so guided and plain decoding differ)."""
from __future__ import annotations

import pathlib

import torch
from safetensors.torch import save_file

from packpath import pack_module

TINY_NAME = "vq_tiny.safetensors"
CORRUPT_NAME = "corrupt_vqgan.safetensors"
WRONG_KIND_NAME = "not_a_vqgan.safetensors"
GUIDE_TINY_NAME = "guide_tiny.safetensors"


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
    guided = pack_module("nodes.vq.guided")
    guide = guided.PixelGuide.for_vqgan(tiny_vqgan(), width=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for conv in guide.fuse:
            torch.nn.init.normal_(conv.weight, std=0.02)
    (models_root / "pixel_guide").mkdir(parents=True, exist_ok=True)
    guided.save_guide(guide, str(models_root / "pixel_guide" / GUIDE_TINY_NAME))
