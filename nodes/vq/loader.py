"""Load taming / latent-diffusion VQGAN checkpoints with the configuration read from the keys.

Nothing about the architecture is stored in the released files except the tensors themselves, so
every setting is inferred from key names and shapes (see shared/fixtures/vqgan/OPS.md §2.2).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import torch

from ..common.errors import BoundlessError
from ..common.weights import load_state_dict, strict_load
from .vqgan import VQGAN, VQGANConfig

KIND = "taming.vqgan"
REQUIRED_KEYS = ("encoder.conv_in.weight", "decoder.conv_in.weight", "quantize.embedding.weight",
                 "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.weight")
TRAINING_ONLY_PREFIXES = ("loss.", "model_ema.")

Shape = Sequence[int]


def looks_like_vqgan(shapes: Mapping[str, Shape]) -> bool:
    """Taming keys present, and none of the look-alikes (Gumbel VQGAN, VAR's multi-scale VQVAE)."""
    return (all(k in shapes for k in REQUIRED_KEYS)
            and not any(k.startswith(("quantize.proj", "quantize.quant_resi")) for k in shapes))


def _describe(shapes: Mapping[str, Shape]) -> str:
    """A guess at what a non-VQGAN file is, for the error message."""
    keys = list(shapes)
    hints = [("quantize.proj", "a Gumbel VQGAN (Paella v1 / ruDALL-E f8): load it with the Paella nodes"),
             ("vquantizer.codebook", "a Paella v3 / Stable Cascade stage-A VQGAN: load it with the Paella nodes"),
             ("quantize.quant_resi", "a VAR multi-scale VQVAE: load it with VAR Loader"),
             ("model.diffusion_model", "a Stable Diffusion checkpoint: load it with Load Checkpoint"),
             ("blocks.0.attn", "a transformer, not a VQGAN tokenizer")]
    for prefix, what in hints:
        if any(k.startswith(prefix) for k in keys):
            return what
    return f"a file with keys like {', '.join(keys[:3])}"


def infer_config(shapes: Mapping[str, Shape]) -> VQGANConfig:
    """Read the VQGAN architecture from a {key: shape} map (works for tensors or plain shapes)."""
    try:
        return _infer_config(shapes)
    except (KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, BoundlessError):
            raise
        raise BoundlessError(f"VQGAN checkpoint is incomplete or damaged ({type(exc).__name__}: {exc}); "
                             "re-download it") from exc


def _infer_config(shapes: Mapping[str, Shape]) -> VQGANConfig:
    if not looks_like_vqgan(shapes):
        raise BoundlessError(f"not a taming VQGAN checkpoint: it looks like {_describe(shapes)}")
    ch, in_channels = shapes["encoder.conv_in.weight"][:2]
    levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if levels != list(range(len(levels))) or not levels:
        raise BoundlessError("VQGAN checkpoint has no or non-contiguous encoder.down.* levels; the file is damaged")
    blocks0 = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    num_res_blocks = len(blocks0)
    last = num_res_blocks - 1
    ch_mult = tuple(shapes[f"encoder.down.{i}.block.{last}.conv2.weight"][0] // ch for i in levels)
    attn_levels = tuple(i for i in levels if any(k.startswith(f"encoder.down.{i}.attn.") for k in shapes))
    return VQGANConfig(
        ch=int(ch), ch_mult=tuple(int(m) for m in ch_mult), num_res_blocks=num_res_blocks,
        attn_levels=attn_levels, mid_attn="encoder.mid.attn_1.q.weight" in shapes,
        in_channels=int(in_channels), out_ch=int(shapes["decoder.conv_out.weight"][0]),
        z_channels=int(shapes["decoder.conv_in.weight"][1]), embed_dim=int(shapes["quant_conv.weight"][0]),
        n_embed=int(shapes["quantize.embedding.weight"][0]))


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def build_meta(shapes: Mapping[str, Shape]) -> VQGAN:
    """The model for these shapes on the meta device (no memory), e.g. to check a layout."""
    with torch.device("meta"):
        return VQGAN(infer_config(shapes))


def vqgan_from_state_dict(state_dict: Mapping[str, torch.Tensor], name: str = "VQGAN") -> VQGAN:
    model = VQGAN(infer_config(shapes_of(state_dict)))
    strict_load(model, state_dict, name)
    return model.eval().requires_grad_(False)


def load_vqgan(path: str) -> VQGAN:
    """Load a taming/latent-diffusion VQGAN from .safetensors or a Lightning .ckpt (loss.* dropped)."""
    state_dict = load_state_dict(path, prefixes_to_drop=TRAINING_ONLY_PREFIXES)
    return vqgan_from_state_dict(state_dict, os.path.basename(path))
