#!/usr/bin/env python3
"""Tiny random-weight VAR checkpoints in the official key layout, for tests and workflow runs.

``python tests/var_tiny.py OUT_DIR`` (or the test server's ``write_test_models`` hook) writes
``var_tiny_vae.safetensors`` (VQVAE, base width 32, 16 latent channels, 256 codes),
``var_tiny_d2.safetensors`` (transformer depth 2, width 64, 256-px schedule) and
``var_tiny_d2_512.safetensors`` (the same on the 512-px schedule, without buffers) into OUT_DIR,
e.g. a test server's ``models/var``. Like the released files they
carry the recomputable buffers (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``,
``ema_vocab_hit_SV``). Weights are drawn from a seeded private generator (no global RNG use),
scaled so that logits and images vary visibly (the authors' own init would make AdaLN near-identity).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from packpath import pack_module  # noqa: E402

schedule = pack_module("nodes.var.schedule")
transformer_mod = pack_module("nodes.var.transformer")
vqvae_mod = pack_module("nodes.var.vqvae")

VAE_FILE = "var_tiny_vae.safetensors"
TRANSFORMER_FILE = "var_tiny_d2.safetensors"
TRANSFORMER_512_FILE = "var_tiny_d2_512.safetensors"   # 512-px schedule, saved without buffers


def tiny_vqvae_config(latent_channels: int = 16, vocab_size: int = 256):
    return vqvae_mod.VQVAEConfig(ch=32, latent_channels=latent_channels, vocab_size=vocab_size, num_phis=4)


def tiny_transformer_config(depth: int = 2, width: int = 64, latent_channels: int = 16, vocab_size: int = 256,
                            num_classes: int = 1000, patch_nums=schedule.SCHEDULE_256, l2_attention: bool = True,
                            shared_adaln: bool = False):
    return transformer_mod.VARConfig(depth=depth, width=width, ffn_hidden=4 * width, latent_channels=latent_channels,
                                     vocab_size=vocab_size, num_classes=num_classes, patch_nums=tuple(patch_nums),
                                     l2_attention=l2_attention, shared_adaln=shared_adaln)


def _random_module(factory, seed: int) -> torch.nn.Module:
    """Build without torch's default init (it would consume the global RNG), then randomise."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    _randomize(module, seed)
    return module


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Seeded random values for every parameter: N(0, 1/fan_in) weights, N(0, 0.1) vectors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2 and not name.startswith(("pos_", "class_emb", "lvl_embed", "quantize.embedding")):
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith("scale_mul_1H11"):
                param.copy_(torch.rand(param.shape, generator=generator) * 2.0)   # gains e^0 .. e^2
            elif name.endswith(".weight") and param.ndim == 1:                    # GroupNorm gains
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if param.ndim >= 2 else 0.1))


def random_vqvae(config=None, seed: int = 0):
    return _random_module(lambda: vqvae_mod.VQVAE(config or tiny_vqvae_config()), seed).eval()


def random_transformer(config=None, seed: int = 1):
    return _random_module(lambda: transformer_mod.VARTransformer(config or tiny_transformer_config()), seed).eval()


def vqvae_state_dict(config=None, seed: int = 0, num_scales: int = 10) -> dict[str, torch.Tensor]:
    """Random VQVAE weights plus the ``ema_vocab_hit_SV`` statistics buffer of the release."""
    config = config or tiny_vqvae_config()
    model = random_vqvae(config, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state["quantize.ema_vocab_hit_SV"] = torch.zeros(num_scales, config.vocab_size)
    return state


def transformer_state_dict(config=None, seed: int = 1, with_buffers: bool = True) -> dict[str, torch.Tensor]:
    """Random transformer weights, plus the release's recomputable buffers when ``with_buffers``."""
    config = config or tiny_transformer_config()
    model = random_transformer(config, seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if with_buffers:
        level_l = schedule.levels(config.patch_nums)
        state["lvl_1L"] = level_l.unsqueeze(0)
        allowed_ll = schedule.block_causal_mask(config.patch_nums)
        state["attn_bias_for_masking"] = torch.zeros(allowed_ll.shape).masked_fill(~allowed_ll, -torch.inf)[None, None]
        for i in range(config.depth):
            state[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(config.width)
    return state


def write_files(out_dir: pathlib.Path) -> list[pathlib.Path]:
    from safetensors.torch import save_file
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / VAE_FILE, out_dir / TRANSFORMER_FILE, out_dir / TRANSFORMER_512_FILE]
    save_file(vqvae_state_dict(), str(paths[0]))
    save_file(transformer_state_dict(), str(paths[1]))
    config512 = tiny_transformer_config(patch_nums=schedule.SCHEDULE_512)
    save_file(transformer_state_dict(config512, with_buffers=False), str(paths[2]))
    return paths


def write_test_models(models_root: pathlib.Path) -> None:
    """The test server's hook (``tests/conftest.py``): the tiny pair under ``models_root/var``."""
    write_files(models_root / "var")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path, help="folder to write into, e.g. <ComfyUI>/models/var")
    for path in write_files(parser.parse_args(argv).out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
