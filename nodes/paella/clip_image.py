"""Paella's CLIP image vectors: the authors' preprocessing, and OpenCLIP vision towers of any width.

Paella is conditioned on OpenCLIP's ``encode_image`` (unnormalised, projected, pooled at the class
token): v3 on ViT-H-14, v1's image-variation finetune (``model_50000_img.pt``) on ViT-g-14. ComfyUI's
CLIP Vision Encode runs the same network but prepares the picture its own way (shorter side to 224,
centre crop, rounded to 8-bit levels), and its loader has no configuration for ViT-g-14's 1408-wide
tower (40 layers are taken for ViT-H-14's 32 and the load fails). This module gives the two missing
pieces without importing ComfyUI:

* ``authors_pixels``: the picture exactly as the authors' code hands it to ``encode_image``
  (shared/specs/paella.md §4, ``src_distributed/utils.py``; v1: the image-variation ``predict.py``);
* ``vision_config``: a ComfyUI CLIP-vision configuration inferred from a tower's keys and shapes, so
  ViT-g-14 (or any LAION ViT) loads into ComfyUI's own CLIP vision classes.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torchvision.transforms.functional as TF

from ..common.errors import BoundlessError

# OpenAI's CLIP statistics, which OpenCLIP's LAION models and both Paella versions use.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224
V3_CROP = 256          # v3 trains and samples on 256-px crops; the CLIP vector is taken from that crop

PREPROCESSING = {
    "v3": "Paella v3: shorter side to 256 (bilinear), centre 256x256 crop, then 224 (bicubic)",
    "v1": "Paella v1: the whole picture stretched to 224x224 (bicubic)",
}

# Attention heads are not visible in the weights. LAION's ViT-H/g/bigG towers use 16 heads of 80, 88
# and 104 channels; the other OpenCLIP ViTs use heads of 64.
HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16}
TOWER = "vision_model.encoder.layers."


def authors_pixels(pixels_b3hw: torch.Tensor, version: str, size: int = CLIP_SIZE) -> torch.Tensor:
    """The normalised ``[B, 3, size, size]`` input of ``encode_image`` for a picture ``[B, 3, H, W]`` in
    [0, 1]; ``size`` is the tower's input size (224 for every tower Paella uses).

    v3 (``src_distributed``): ``Resize(256)`` + centre ``256`` crop (the training crop) then
    ``Resize(size, BICUBIC)`` and ``Normalize``, on float tensors, so nothing is rounded to 8 bits.
    v1 (``predict.py`` of the image finetune): ``Resize((size, size), BICUBIC)``, aspect not kept.
    Both use torchvision's resize with antialiasing, as the authors' transforms do on tensors.
    """
    pixels_b3hw = pixels_b3hw.float()
    if version == "v3":
        pixels_b3hw = TF.resize(pixels_b3hw, V3_CROP, antialias=True)
        pixels_b3hw = TF.center_crop(pixels_b3hw, V3_CROP)
        pixels_b3hw = TF.resize(pixels_b3hw, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    elif version == "v1":
        pixels_b3hw = TF.resize(pixels_b3hw, [size, size], interpolation=TF.InterpolationMode.BICUBIC,
                                antialias=True)
    else:
        raise BoundlessError(f"unknown Paella version {version!r}; use one of {sorted(PREPROCESSING)}")
    return TF.normalize(pixels_b3hw, CLIP_MEAN, CLIP_STD)


def vision_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """ComfyUI's CLIP-vision configuration of a vision tower in ``CLIPVisionModelWithProjection``
    keys (``vision_model.*``, ``visual_projection.weight``; ComfyUI converts OpenCLIP's ``visual.*``).

    Width, depth, MLP width, patch and image size and projection come from the shapes; heads from
    ``HEADS_BY_WIDTH``. The activation is exact GELU, as in every LAION tower (OpenAI's own CLIP
    towers use quick-GELU and are loaded by ComfyUI's CLIP Vision loader instead).
    """
    needed = ("vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
              TOWER + "0.mlp.fc1.weight", "visual_projection.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise BoundlessError(f"not a CLIP vision tower with a projection: missing {missing}; pick an OpenCLIP "
                             "checkpoint (open_clip_pytorch_model.bin or model.safetensors of a LAION ViT)")
    width, channels, patch, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    side = round((positions - 1) ** 0.5)
    if side * side != positions - 1:
        raise BoundlessError(f"position embedding of {positions} entries is not a square grid plus a class token")
    heads = HEADS_BY_WIDTH.get(width, max(1, width // 64))
    return {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": width,
            "image_size": side * patch, "intermediate_size": sd[TOWER + "0.mlp.fc1.weight"].shape[0],
            "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": heads,
            "num_channels": channels, "num_hidden_layers": 1 + max(int(k[len(TOWER):].split(".")[0]) for k in sd
                                                                    if k.startswith(TOWER)),
            "patch_size": patch, "projection_dim": sd["visual_projection.weight"].shape[0],
            "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}


def vision_tower(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the vision tower's tensors of a whole-CLIP state dict (text tower and logit scale dropped)."""
    return {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
