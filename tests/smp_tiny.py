"""Small motion-conditioning files for the server tests (written by conftest's ``write_test_models``).

* ``ipadapter/boundless_tiny_ip.safetensors``: IP-Adapter-layout cross-attention weights for the
  test-only tiny UNet (BoundlessTinyUNetLoader) and 1280-wide embeddings (the EfficientNet-lite0
  stand-in encoder the demo predictor was trained with). Random, deterministic.
* ``story/smp_tiny_combined.safetensors``: a small random predictor and such weights in one file
  (the "(from the SMP file)" path).
"""
from __future__ import annotations

import pathlib

import torch
from safetensors.torch import save_file

from packpath import pack_module

EMBED_DIM = 1280
# attn2 query widths of the tiny UNet in IP-Adapter order (input 1, 3; output 0-3; middle 0);
# tests/test_smp_comfy.py checks them against the real model.
TINY_INNER = (32, 64, 64, 64, 32, 32, 64)
IP_NAME = "boundless_tiny_ip.safetensors"
COMBINED_NAME = "smp_tiny_combined.safetensors"


def tiny_conditioner(seed: int = 0):
    tokens = pack_module("nodes.story.motion_tokens")
    torch.manual_seed(seed)
    model = tokens.MotionConditioner(tokens.ConditionerConfig(embed_dim=EMBED_DIM, tokens=4, cross_dim=32,
                                                              inner_dims=TINY_INNER))
    with torch.no_grad():
        model.image_proj.proj.weight.normal_(0, 0.05)
        model.image_proj.proj.bias.zero_()
    return model.eval()


def tiny_predictor(seed: int = 0):
    smp = pack_module("nodes.story.smp")
    torch.manual_seed(seed)
    model = smp.SemanticMotionPredictor(smp.SMPConfig(embed_dim=EMBED_DIM, hidden_dim=64, depth=1, mlp_dim=64,
                                                      time_features=8, context_dim=4, head_width=8))
    with torch.no_grad():
        model.head_out.weight.normal_(0, 0.1)
    return model.eval()


def write_test_models(models_root: pathlib.Path) -> None:
    smp = pack_module("nodes.story.smp")
    tokens = pack_module("nodes.story.motion_tokens")
    ip = tokens.conditioner_state_dict(tiny_conditioner())
    (models_root / "ipadapter").mkdir(parents=True, exist_ok=True)
    save_file(ip, str(models_root / "ipadapter" / IP_NAME))
    (models_root / "story").mkdir(parents=True, exist_ok=True)
    save_file({**smp.predictor_state_dict(tiny_predictor()), **ip}, str(models_root / "story" / COMBINED_NAME))
