"""Loading VAR checkpoints strictly, with the configuration inferred from keys and shapes (pure torch).

Both released files are plain state dicts (``vae_ch160v4096z32.pth``, ``var_d{16,20,24,30,36}.pth``);
``.pth`` files are read with ``torch.load(weights_only=True)`` only, ``.safetensors`` directly.
Training checkpoints (``{'trainer': {'var_wo_ddp': ..., 'vae_local': ...}}``) and ``module.`` /
``_orig_mod.`` prefixes are unwrapped. Every parameter key and shape must match the model built
from the inferred configuration. The recomputable buffers the releases also carry are accepted
(their shapes are checked against the configuration) but never required and never loaded.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch

from ..common.errors import BoundlessError
from ..common.weights import extract_state_dict, read_checkpoint, strict_load
from ..vq.vqgan import NORM_GROUPS
from .schedule import PIXELS_PER_TOKEN, schedule_for_length, schedule_from_levels, sequence_length
from .transformer import HEAD_DIM, VARConfig, VARTransformer
from .vqvae import VQVAE, VQVAEConfig

Shapes = Mapping[str, tuple]

VAE_BUFFER = "quantize.ema_vocab_hit_SV"
VAR_LEVELS_BUFFER = "lvl_1L"
VAR_MASK_BUFFER = "attn_bias_for_masking"
ZERO_K_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.zero_k_bias$")
BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
PHI_INDEX = re.compile(r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
TRAINER_KEYS = {"vqvae": "vae_local", "transformer": "var_wo_ddp"}


def looks_like_vqvae(keys) -> bool:
    keys = set(keys)
    return "encoder.conv_in.weight" in keys and "quantize.embedding.weight" in keys


def looks_like_transformer(keys) -> bool:
    keys = set(keys)
    return "word_embed.weight" in keys and "pos_1LC" in keys


def _shape(shapes: Shapes, key: str, what: str) -> tuple:
    if key not in shapes:
        raise BoundlessError(f"{what}: key {key} is missing; the file is not a complete VAR checkpoint")
    return tuple(shapes[key])


def _not_this_kind(what: str, keys, wanted: str) -> BoundlessError:
    if wanted == "vqvae" and looks_like_transformer(keys):
        return BoundlessError(f"{what} is a VAR transformer (var_d*), not the VQVAE; select it as the transformer "
                              "and pick the VQVAE file (vae_ch160v4096z32) as the VQVAE")
    if wanted == "transformer" and looks_like_vqvae(keys):
        return BoundlessError(f"{what} is the VAR VQVAE (vae_ch160v4096z32), not a transformer; select it as the "
                              "VQVAE and pick a var_d16/d20/d24/d30/d36 file as the transformer")
    sample = ", ".join(sorted(keys)[:3])
    expected = "the VQVAE vae_ch160v4096z32" if wanted == "vqvae" else "a VAR transformer (var_d16 ... var_d36)"
    return BoundlessError(f"{what} is not {expected} (its keys start {sample}); use the FoundationVision/VAR release")


def vqvae_config(shapes: Shapes, what: str = "VQVAE") -> VQVAEConfig:
    """Infer the VQVAE configuration: base width, latent channels, codebook size, number of Phi convs."""
    if not looks_like_vqvae(shapes):
        raise _not_this_kind(what, shapes, "vqvae")
    phis = {int(m.group(1)) for k in shapes if (m := PHI_INDEX.match(k))}
    if not phis:
        raise BoundlessError(f"{what} has no multi-scale residual convolutions (quantize.quant_resi.qresi_ls.*): it "
                             "looks like a single-scale VQGAN, not VAR's VQVAE")
    if phis != set(range(len(phis))):
        raise BoundlessError(f"{what}: Phi convolutions {sorted(phis)} are not numbered 0..{len(phis) - 1}")
    ch = _shape(shapes, "encoder.conv_in.weight", what)[0]
    vocab, latent = _shape(shapes, "quantize.embedding.weight", what)
    if ch % NORM_GROUPS:
        raise BoundlessError(f"{what}: base width {ch} is not a multiple of {NORM_GROUPS} (GroupNorm groups)")
    return VQVAEConfig(ch=ch, latent_channels=latent, vocab_size=vocab, num_phis=len(phis))


def _schedule(shapes: Shapes, levels_l: torch.Tensor | None, what: str) -> tuple[int, ...]:
    length = _shape(shapes, "pos_1LC", what)[1]
    schedule = schedule_from_levels(levels_l) if levels_l is not None else None
    if levels_l is not None and (schedule is None or sequence_length(schedule) != length):
        raise BoundlessError(f"{what}: its lvl_1L buffer is not a level map of {length} positions; the file is "
                             "corrupt, re-download it")
    return schedule or schedule_for_length(length)


def transformer_config(shapes: Shapes, what: str = "VAR transformer", levels_l: torch.Tensor | None = None,
                       patch_nums=None) -> VARConfig:
    """Infer depth, width, schedule, attention and AdaLN variants from keys and shapes.

    ``levels_l`` (the values of ``lvl_1L``, when the file has them) fixes the schedule exactly;
    otherwise the sequence length picks a known schedule. ``patch_nums``, when given, must agree:
    a model trained for one resolution cannot run another's schedule.
    """
    if not looks_like_transformer(shapes):
        raise _not_this_kind(what, shapes, "transformer")
    blocks = {int(m.group(1)) for k in shapes if (m := BLOCK_INDEX.match(k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise BoundlessError(f"{what}: transformer blocks {sorted(blocks)[:8]} are not numbered 0..depth-1; the file "
                             "is incomplete")
    width, latent = _shape(shapes, "word_embed.weight", what)
    if width % HEAD_DIM:
        raise BoundlessError(f"{what}: width {width} is not a multiple of the head size {HEAD_DIM}")
    schedule = _schedule(shapes, levels_l, what)
    if patch_nums is not None and tuple(patch_nums) != schedule:
        raise BoundlessError(
            f"{what} was trained for {schedule[-1] * PIXELS_PER_TOKEN}-px images (patch schedule {schedule}) and "
            f"cannot sample the {patch_nums[-1] * PIXELS_PER_TOKEN}-px schedule {tuple(patch_nums)}; use "
            f"{schedule[-1] * PIXELS_PER_TOKEN}x{schedule[-1] * PIXELS_PER_TOKEN} images with this model")
    return VARConfig(
        depth=len(blocks), width=width, ffn_hidden=_shape(shapes, "blocks.0.ffn.fc1.weight", what)[0],
        latent_channels=latent, vocab_size=_shape(shapes, "head.weight", what)[0],
        num_classes=_shape(shapes, "class_emb.weight", what)[0] - 1, patch_nums=schedule,
        l2_attention="blocks.0.attn.scale_mul_1H11" in shapes, shared_adaln="shared_ada_lin.1.weight" in shapes)


def vqvae_buffers(shapes: Shapes, config: VQVAEConfig, what: str) -> set[str]:
    """The recomputable buffer keys present; ``ema_vocab_hit_SV`` may have any number of scales."""
    if VAE_BUFFER not in shapes:
        return set()
    shape = tuple(shapes[VAE_BUFFER])
    if len(shape) != 2 or shape[1] != config.vocab_size:
        raise BoundlessError(f"{what}: {VAE_BUFFER} has shape {shape}, expected (scales, {config.vocab_size})")
    return {VAE_BUFFER}


def transformer_buffers(shapes: Shapes, config: VARConfig, what: str) -> set[str]:
    """The recomputable buffer keys present, each checked against the inferred configuration."""
    length = config.length
    expected = {VAR_LEVELS_BUFFER: (1, length), VAR_MASK_BUFFER: (1, 1, length, length)}
    expected.update({f"blocks.{i}.attn.zero_k_bias": (config.width,) for i in range(config.depth)})
    found = set()
    for key, shape in shapes.items():
        if key in expected:
            if tuple(shape) != expected[key]:
                raise BoundlessError(f"{what}: buffer {key} has shape {tuple(shape)} but the model has {length} "
                                     f"positions (schedule {config.patch_nums}), expected {expected[key]}")
            found.add(key)
    return found


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


def _compare(module: torch.nn.Module, shapes: Shapes, ignored: set[str]) -> str | None:
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v) for k, v in shapes.items() if k not in ignored}
    missing = sorted(set(own) - set(theirs))
    extra = sorted(set(theirs) - set(own))
    wrong = sorted(f"{k} {theirs[k]} vs {own[k]}" for k in set(own) & set(theirs) if own[k] != theirs[k])
    if not (missing or extra or wrong):
        return None
    parts = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}"
             for label, items in (("model-only", missing), ("file-only", extra), ("shape", wrong)) if items]
    return "; ".join(parts)


def check_vqvae_shapes(shapes: Shapes) -> str | None:
    """None when the VQVAE built (on meta) from these shapes has exactly these keys and shapes."""
    config = vqvae_config(shapes)
    return _compare(_on_meta(lambda: VQVAE(config)), shapes, vqvae_buffers(shapes, config, "VQVAE"))


def check_transformer_shapes(shapes: Shapes) -> str | None:
    """None when the transformer built (on meta) from these shapes has exactly these keys and shapes."""
    config = transformer_config(shapes)
    return _compare(_on_meta(lambda: VARTransformer(config)), shapes,
                    transformer_buffers(shapes, config, "VAR transformer"))


def read_state_dict(path: str, kind: str) -> dict[str, torch.Tensor]:
    """Tensors of a VAR file of ``kind`` ("vqvae" or "transformer"), unwrapped and unprefixed."""
    obj = read_checkpoint(path)
    trainer = obj.get("trainer") if isinstance(obj, Mapping) else None
    if isinstance(trainer, Mapping):
        inner = trainer.get(TRAINER_KEYS[kind])
        if not isinstance(inner, Mapping):
            raise BoundlessError(f"{os.path.basename(path)} is a VAR training checkpoint without "
                                 f"'{TRAINER_KEYS[kind]}'; it holds {sorted(trainer)}")
        obj = inner
    tensors = extract_state_dict(obj)
    cleaned = {}
    for key, value in tensors.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def _materialize(factory, dtype: torch.dtype | None) -> torch.nn.Module:
    """Build on the meta device (no random init), then allocate uninitialised CPU storage."""
    module = _on_meta(factory)
    if dtype is not None:
        module = module.to(dtype)
    return module.to_empty(device="cpu").eval().requires_grad_(False)


def vqvae_from_state_dict(state_dict: Mapping[str, torch.Tensor], what: str = "VQVAE") -> VQVAE:
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    config = vqvae_config(shapes, what)
    buffers = vqvae_buffers(shapes, config, what)
    module = _materialize(lambda: VQVAE(config), None)
    strict_load(module, {k: v for k, v in state_dict.items() if k not in buffers}, what)
    return module


def transformer_from_state_dict(state_dict: Mapping[str, torch.Tensor], what: str = "VAR transformer",
                                dtype: torch.dtype | None = None, patch_nums=None) -> VARTransformer:
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    levels_l = state_dict.get(VAR_LEVELS_BUFFER)
    config = transformer_config(shapes, what, levels_l=levels_l, patch_nums=patch_nums)
    buffers = transformer_buffers(shapes, config, what)
    module = _materialize(lambda: VARTransformer(config), dtype)
    strict_load(module, {k: v for k, v in state_dict.items() if k not in buffers}, what)
    return module


def load_vqvae(path: str) -> VQVAE:
    """VAR's VQVAE from a ``.pth``/``.safetensors`` file (float32)."""
    return vqvae_from_state_dict(read_state_dict(path, "vqvae"), os.path.basename(path))


def load_transformer(path: str, dtype: torch.dtype | None = None, patch_nums=None) -> VARTransformer:
    """A VAR transformer from a ``.pth``/``.safetensors`` file, optionally cast to ``dtype``."""
    return transformer_from_state_dict(read_state_dict(path, "transformer"), os.path.basename(path), dtype,
                                       patch_nums)
