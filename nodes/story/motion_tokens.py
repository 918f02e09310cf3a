"""Decoupled image-prompt cross-attention weights (IP-Adapter layout): how SMP embeddings reach a UNet.

StoryDiffusion conditions its video model on the predicted per-frame embeddings through
image-prompt cross-attention in the style of IP-Adapter (Ye et al., arXiv 2308.06721):
* a token projection turns one embedding ``[D]`` into ``n`` cross-attention tokens ``[n, C]``
  (a linear layer, then LayerNorm over ``C``);
* every cross-attention layer of the UNet has its own key and value projections for those tokens
  (``to_k_ip``, ``to_v_ip``: ``C -> inner``, no bias); the layer's own queries attend to them, and the
  result, times a scale, is added to the text cross-attention output (see ``motion_patch``).

The tensor names are IP-Adapter's (``image_proj.proj``, ``image_proj.norm``,
``ip_adapter.<2i+1>.to_k_ip`` / ``.to_v_ip``, with ``i`` counting cross-attention layers in the order
down blocks, up blocks, middle block), so a basic IP-Adapter file (such as ``ip-adapter_sd15``) can
serve as the conditioning of a predictor trained in the same CLIP embedding space.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import torch
from torch import nn

from ..common.errors import BoundlessError
from ..common.weights import strict_load

GROUPS = ("image_proj", "ip_adapter")
_IP = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")


@dataclasses.dataclass(frozen=True)
class ConditionerConfig:
    embed_dim: int                  # input embedding width D
    tokens: int                     # tokens per embedding n
    cross_dim: int                  # token width C
    inner_dims: tuple[int, ...]     # query width of each cross-attention layer, in IP-Adapter order


class TokenProjection(nn.Module):
    """IP-Adapter's image projection: ``[B, D] -> [B, n, C]``."""

    def __init__(self, embed_dim: int, tokens: int, cross_dim: int):
        super().__init__()
        self.tokens, self.cross_dim = tokens, cross_dim
        self.proj = nn.Linear(embed_dim, tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, embeds_bd: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embeds_bd).view(-1, self.tokens, self.cross_dim))


class IPLayer(nn.Module):
    """Keys and values of the image tokens for one cross-attention layer."""

    def __init__(self, cross_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(cross_dim, inner_dim, bias=False)


class MotionConditioner(nn.Module):
    """Token projection plus one :class:`IPLayer` per cross-attention layer."""

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.config = config
        self.image_proj = TokenProjection(config.embed_dim, config.tokens, config.cross_dim)
        self.ip_adapter = nn.ModuleDict({str(2 * i + 1): IPLayer(config.cross_dim, inner)
                                         for i, inner in enumerate(config.inner_dims)})

    def layer(self, index: int) -> IPLayer:
        """The weights of cross-attention layer ``index`` (0-based, IP-Adapter order)."""
        return self.ip_adapter[str(2 * index + 1)]

    @torch.no_grad()
    def tokens(self, embeds_td: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings ``[T, D]`` -> cross-attention tokens ``[T, n, C]`` (float32, CPU)."""
        d = self.config.embed_dim
        if embeds_td.ndim != 2 or embeds_td.shape[1] != d:
            raise BoundlessError(f"the motion conditioning expects {d}-wide embeddings but got shape "
                                 f"{tuple(embeds_td.shape)}: the predictor and the cross-attention weights must "
                                 "come from the same image encoder")
        weight = self.image_proj.proj.weight
        return self.image_proj(embeds_td.to(weight.device, weight.dtype)).float().cpu()


def flatten_ip_adapter(obj: Mapping) -> dict[str, torch.Tensor]:
    """IP-Adapter ``.bin`` files nest ``{"image_proj": {...}, "ip_adapter": {...}}``; flatten them to
    the ``image_proj.*`` / ``ip_adapter.*`` keys of the safetensors release. Flat dicts pass through."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            flat[key] = value
    return flat


def conditioning_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.split(".", 1)[0] in GROUPS}


def has_conditioning(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.split(".", 1)[0] in GROUPS for k in sd)


def conditioner_config(sd: Mapping[str, torch.Tensor]) -> ConditionerConfig:
    """Infer sizes from keys and shapes; refuse projection types other than IP-Adapter's basic one."""
    if "image_proj.proj.weight" not in sd or "image_proj.norm.weight" not in sd:
        found = sorted({".".join(k.split(".")[:2]) for k in sd if k.startswith("image_proj.")})[:4]
        raise BoundlessError(
            "motion conditioning needs IP-Adapter's basic image projection (image_proj.proj + image_proj.norm, as in "
            f"ip-adapter_sd15); this file has {found or 'no image_proj'}: IP-Adapter Plus / Full-face / FaceID "
            "projections are not supported")
    cross = int(sd["image_proj.norm.weight"].shape[0])
    out, embed = (int(s) for s in sd["image_proj.proj.weight"].shape)
    if out % cross:
        raise BoundlessError(f"image_proj.proj outputs {out} values, not a whole number of {cross}-wide tokens")
    indices = sorted(int(m.group(1)) for k in sd if (m := _IP.match(k)))
    if not indices:
        raise BoundlessError("motion conditioning file has no cross-attention weights (ip_adapter.1.to_k_ip.weight)")
    expected = [2 * i + 1 for i in range(len(indices))]
    if indices != expected:
        raise BoundlessError(f"cross-attention weights are numbered {indices[:6]}...; expected 1, 3, 5, ... "
                             f"(one per cross-attention layer, IP-Adapter numbering)")
    inner = tuple(int(sd[f"ip_adapter.{i}.to_k_ip.weight"].shape[0]) for i in indices)
    return ConditionerConfig(embed_dim=embed, tokens=out // cross, cross_dim=cross, inner_dims=inner)


def load_conditioner(sd: Mapping[str, torch.Tensor], what: str = "motion conditioning") -> MotionConditioner:
    own = conditioning_keys(sd)
    model = MotionConditioner(conditioner_config(own))
    strict_load(model, {k: v.float() for k, v in own.items()}, what)
    return model.eval()


def conditioner_state_dict(model: MotionConditioner, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
