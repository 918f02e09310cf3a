"""Recognise, build and strictly load every Paella checkpoint from its keys and shapes (pure torch).

Kinds: ``paella.v3`` (``paella_v3.pt``), ``paella.v3.vqgan`` (``vqgan_f4.pt``, also Würstchen /
Stable Cascade Stage A files), ``paella.v3.prior`` (``prior_v1.pt``), ``paella.v1``
(``model_600000.pt``) and ``paella.v1.vqgan`` (ruDALL-E's Gumbel f8 VQGAN). Pickles are read only
through ``torch.load(weights_only=True)`` (``common.weights``).
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from ..common.errors import BoundlessError
from ..common.weights import load_state_dict
from .layers import shape_mismatch, shapes_of
from .prior import PriorConfig, PriorModel
from .v1_model import PaellaV1, PaellaV1Config
from .v3_model import PaellaV3, PaellaV3Config
from .vqgan_f4 import VQGANF4, VQGANF4Config
from .vqgan_f8 import VQGANF8, VQGANF8Config

V3 = "paella.v3"
V3_VQGAN = "paella.v3.vqgan"
V3_PRIOR = "paella.v3.prior"
V1 = "paella.v1"
V1_VQGAN = "paella.v1.vqgan"

DESCRIPTIONS = {
    V3: "Paella v3 token model (paella_v3.pt)",
    V3_VQGAN: "Paella v3 f4 VQGAN (vqgan_f4.pt)",
    V3_PRIOR: "Paella v3 CLIP prior (prior_v1.pt)",
    V1: "Paella v1 token model (model_600000.pt)",
    V1_VQGAN: "Paella v1 Gumbel f8 VQGAN (ruDALL-E vqgan.gumbelf8-sber)",
}

# kind -> (config class, model class)
_BUILDERS: dict[str, tuple[type, Callable[..., nn.Module]]] = {
    V3: (PaellaV3Config, PaellaV3),
    V3_VQGAN: (VQGANF4Config, VQGANF4),
    V3_PRIOR: (PriorConfig, PriorModel),
    V1: (PaellaV1Config, PaellaV1),
    V1_VQGAN: (VQGANF8Config, VQGANF8),
}

# Training-only entries some releases carry next to the model (taming / ruDALL-E: the GAN loss).
_DROP_PREFIXES = ("loss.",)


def detect_kind(shapes: dict) -> str | None:
    """The Paella kind these keys belong to, or None."""
    if "byt5_mapper.weight" in shapes and "in_mapper.0.weight" in shapes:
        return V3
    if "vquantizer.codebook.weight" in shapes and "in_block.1.weight" in shapes:
        return V3_VQGAN
    if "quantize.embed.weight" in shapes and "quantize.proj.weight" in shapes:
        return V1_VQGAN
    if "embedding.weight" in shapes and "clf.weight" in shapes and "down_blocks.0.0.cond_mapper.weight" in shapes:
        return V1
    if "blocks.0.weight" in shapes and "blocks.1.0.weight" in shapes and "blocks.1.4.weight" in shapes:
        return V3_PRIOR
    return None


def build(kind: str, shapes: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The network for ``kind`` with the configuration read from ``shapes`` (uninitialised on ``device``)."""
    config_cls, model_cls = _BUILDERS[kind]
    try:
        config = config_cls.from_shapes(shapes_of(shapes))
    except BoundlessError:
        raise
    except (KeyError, IndexError, ValueError, StopIteration, ZeroDivisionError) as exc:
        raise BoundlessError(f"{DESCRIPTIONS[kind]}: the checkpoint is incomplete or damaged "
                             f"({type(exc).__name__}: {exc}); re-download it") from exc
    with torch.device(device):
        return model_cls(config)


def check_shapes(kind: str, shapes: dict) -> str | None:
    """None when the model built (on meta) from these shapes has exactly these keys and shapes."""
    try:
        model = build(kind, shapes, "meta")
    except BoundlessError as exc:
        return str(exc)
    return shape_mismatch(model, shapes_of(shapes))


def load_model(path: str, expect: str | tuple[str, ...] | None = None) -> nn.Module:
    """Read a weight file, recognise its kind, build the network and load it strictly; eval mode.

    ``expect`` restricts the accepted kinds, so a wrong file gives an error that names both sides.
    """
    state_dict = load_state_dict(path, _DROP_PREFIXES)
    kind = detect_kind(state_dict)
    name = os.path.basename(path)
    wanted = (expect,) if isinstance(expect, str) else expect
    if kind is None:
        raise BoundlessError(f"{name} is not a Paella checkpoint (no known key layout); expected "
                             + (" or ".join(DESCRIPTIONS[k] for k in wanted) if wanted else "a Paella model or VQGAN"))
    if wanted and kind not in wanted:
        raise BoundlessError(f"{name} is a {DESCRIPTIONS[kind]}, but this input needs "
                             f"{' or '.join(DESCRIPTIONS[k] for k in wanted)}; pick the matching file")
    model = build(kind, state_dict, "meta")
    problem = shape_mismatch(model, shapes_of(state_dict))
    if problem:
        raise BoundlessError(f"{name}: checkpoint does not match the {DESCRIPTIONS[kind]} layout: {problem}; "
                             "the file is incomplete or from another model")
    # assign=True adopts the loaded tensors instead of copying them: one copy of the weights in memory.
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                          strict=True, assign=True)
    return model.eval().requires_grad_(False)
