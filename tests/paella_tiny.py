"""Tiny random-weight Paella checkpoints with the official key layouts, plus tiny conditioning files.

``write_test_models(models_root)`` writes, for the server tests:

* ``models/paella/``: ``paella_v3_tiny.safetensors``, ``vqgan_f4_tiny.pt`` (a ``{"state_dict": ...}``
  pickle, read with ``weights_only=True``), ``prior_tiny.safetensors``, ``paella_v1_tiny.safetensors``,
  ``vqgan_f8_tiny.safetensors``;
* ``models/paella_embeddings/``: ``v3_prompt_tiny`` (ByT5 + CLIP text + CLIP image), ``v3_empty_tiny``
  (the unconditional ByT5("") / CLIP("") stand-in), ``v3_other_tiny``, ``v1_prompt_a_tiny``, ``v1_prompt_b_tiny``,
  ``image_a_tiny`` / ``image_b_tiny`` (a lone ``clip_image`` vector each: the source image of a variation, for
  v3 and v1 alike since both tiny models take 16-wide CLIP vectors);
* ``models/clip_vision/``: ``OPEN_CLIP_TINY_NAME``, a whole tiny OpenCLIP model (vision and text towers) in
  LAION's ``open_clip_pytorch_model.bin`` layout, with 16-wide vectors: the ViT-g-14 stand-in of the v1
  variations workflow.

The models are small enough that a 64x64 image with 2 steps samples in well under a second on CPU.
"""
from __future__ import annotations

import math
import pathlib

import torch
from safetensors.torch import save_file

from packpath import pack_module

v3_model = pack_module("nodes.paella.v3_model")
v1_model = pack_module("nodes.paella.v1_model")
vqgan_f4 = pack_module("nodes.paella.vqgan_f4")
vqgan_f8 = pack_module("nodes.paella.vqgan_f8")
prior = pack_module("nodes.paella.prior")
vqgan = pack_module("nodes.vq.vqgan")

NUM_LABELS = 64
BYT5_WIDTH = 24
CLIP_WIDTH = 16
OPEN_CLIP_TINY_NAME = "open_clip_tiny.bin"

V3_CONFIG = v3_model.PaellaV3Config(
    num_labels=NUM_LABELS, c_in=16, c_out=16, patch_size=2, c_hidden=(32, 32, 32),
    level_config=("CT", "CTA", "CTA"), blocks=(1, 1, 1), c_cond=32, c_r=16, byt5_width=BYT5_WIDTH,
    clip_width=CLIP_WIDTH, clip_seq_len=4)
F4_CONFIG = vqgan_f4.VQGANF4Config(c_levels=(16, 32), bottleneck_blocks=1, c_latent=4, codebook_size=NUM_LABELS)
PRIOR_CONFIG = prior.PriorConfig(clip_width=CLIP_WIDTH, c_hidden=32, c_r=16, num_blocks=2, expansion=4)
V1_CONFIG = v1_model.PaellaV1Config(num_labels=NUM_LABELS, c_levels=(16, 32, 32), blocks=(1, 1, 1),
                                    c_clip=CLIP_WIDTH)
F8_CONFIG = vqgan_f8.VQGANF8Config(
    taming=vqgan.VQGANConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, attn_levels=(), mid_attn=True,
                             z_channels=8, embed_dim=8, n_embed=NUM_LABELS),
    quant_width=8, embed_dim=8, n_embed=NUM_LABELS)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights that make every block matter (zero-initialised scales become non-zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):      # norm affine weights
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:                              # biases, layer scales, modulation scalars, GRN
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(1 + torch.rand(b.shape, generator=generator))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=generator))
    return module.eval().requires_grad_(False)


def tiny_v3(seed: int = 0):
    model = randomize(v3_model.PaellaV3(V3_CONFIG), seed)
    with torch.no_grad():
        model.out_mapper[1].weight.mul_(4.0)   # peaked token distributions, like a trained model
    return model


def tiny_f4(seed: int = 1):
    return randomize(vqgan_f4.VQGANF4(F4_CONFIG), seed)


def tiny_prior(seed: int = 2):
    return randomize(prior.PriorModel(PRIOR_CONFIG), seed)


def tiny_v1(seed: int = 3):
    model = randomize(v1_model.PaellaV1(V1_CONFIG), seed)
    with torch.no_grad():
        model.clf.weight.mul_(4.0)
    return model


def tiny_f8(seed: int = 4):
    return randomize(vqgan_f8.VQGANF8(F8_CONFIG), seed)


def tiny_embeddings(seed: int = 5) -> dict[str, dict[str, torch.Tensor]]:
    """Stand-ins for precomputed encoder outputs, file name -> tensors."""
    g = torch.Generator().manual_seed(seed)
    return {
        "v3_prompt_tiny.safetensors": {"byt5": torch.randn(1, 6, BYT5_WIDTH, generator=g),
                                       "clip_text": torch.randn(1, CLIP_WIDTH, generator=g),
                                       "clip_image": torch.randn(1, CLIP_WIDTH, generator=g)},
        "v3_other_tiny.safetensors": {"byt5": torch.randn(1, 6, BYT5_WIDTH, generator=g),
                                      "clip_text": torch.randn(1, CLIP_WIDTH, generator=g),
                                      "clip_image": torch.randn(1, CLIP_WIDTH, generator=g)},
        "v3_empty_tiny.safetensors": {"byt5": torch.randn(1, 1, BYT5_WIDTH, generator=g),
                                      "clip_text": torch.randn(1, CLIP_WIDTH, generator=g)},
        "v1_prompt_a_tiny.safetensors": {"clip_text": torch.randn(1, CLIP_WIDTH, generator=g)},
        "v1_prompt_b_tiny.safetensors": {"clip_text": torch.randn(1, CLIP_WIDTH, generator=g)},
        # Source-image vectors for variations (last, so the files above keep their values).
        "image_a_tiny.safetensors": {"clip_image": torch.randn(1, CLIP_WIDTH, generator=g)},
        "image_b_tiny.safetensors": {"clip_image": torch.randn(1, CLIP_WIDTH, generator=g)},
    }


BYT5_TINY_NAME = "byt5_tiny.safetensors"


def tiny_byt5(seed: int = 6):
    """A ByT5-layout T5 (byte vocabulary of 384, gated GELU) whose states are BYT5_WIDTH wide, saved as
    google/byt5-xl is released: a whole encoder-decoder model, of which the loader keeps the encoder."""
    import transformers
    config = transformers.T5Config(vocab_size=384, d_model=BYT5_WIDTH, d_kv=12, d_ff=32, num_layers=2,
                                   num_decoder_layers=1, num_heads=2, feed_forward_proj="gated-gelu")
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():     # T5 starts with tiny relative biases; make them matter
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def tiny_open_clip(seed: int = 0, embed_dim: int = CLIP_WIDTH):
    """An OpenCLIP CLIP with a tiny LAION-style vision tower (exact GELU, class-token pooling, 224-px
    input, 3 layers of 128 in 2 heads, MLP 384) and a one-layer text tower; random weights with
    non-trivial norms and biases."""
    import open_clip
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg={"layers": 3, "width": 128, "head_width": 64,
                                                            "patch_size": 32, "image_size": 224, "mlp_ratio": 3.0},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 1})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("visual.") and param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def write_test_models(models_root: pathlib.Path) -> None:
    models = pathlib.Path(models_root) / "paella"
    models.mkdir(parents=True, exist_ok=True)
    save_file(_state(tiny_v3()), str(models / "paella_v3_tiny.safetensors"))
    torch.save({"state_dict": _state(tiny_f4())}, str(models / "vqgan_f4_tiny.pt"))
    save_file(_state(tiny_prior()), str(models / "prior_tiny.safetensors"))
    save_file(_state(tiny_v1()), str(models / "paella_v1_tiny.safetensors"))
    save_file(_state(tiny_f8()), str(models / "vqgan_f8_tiny.safetensors"))
    text_encoders = pathlib.Path(models_root) / "text_encoders"
    text_encoders.mkdir(parents=True, exist_ok=True)
    byt5 = {k: v for k, v in _state(tiny_byt5()).items() if k != "encoder.embed_tokens.weight"}   # tied to shared
    save_file({k: v.clone() for k, v in byt5.items()}, str(text_encoders / BYT5_TINY_NAME))
    clip_vision = pathlib.Path(models_root) / "clip_vision"
    clip_vision.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone().contiguous() for k, v in tiny_open_clip().state_dict().items()},
               str(clip_vision / OPEN_CLIP_TINY_NAME))
    embeddings = pathlib.Path(models_root) / "paella_embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    for name, tensors in tiny_embeddings().items():
        save_file(tensors, str(embeddings / name))
