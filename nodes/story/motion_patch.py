"""The ComfyUI ``attn2`` replace patch that injects per-frame motion tokens (pure torch, no comfy import).

Installed with ``ModelPatcher.set_model_attn2_replace`` on every cross-attention layer of an SD-style
UNet and called as ``patch(q, k, v, extra_options)`` with the layer's *projected* queries, text keys
and text values (ComfyUI applies ``to_out`` afterwards). It returns

    attention(q, k_text, v_text) + weight * attention(q, to_k_ip(tokens_i), to_v_ip(tokens_i))

for batch row ``i``: the decoupled image-prompt cross-attention of IP-Adapter, with a different
token set per frame. A video is sampled as a batch whose items are its frames (plain SD1.5, or
AnimateDiff-style video models), so row ``i`` of every cond/uncond chunk gets frame ``i``'s tokens.

The batch of one call is ``len(cond_or_uncond)`` chunks of ``n`` rows. Cond rows (0) get the
frame's tokens; uncond rows (1) get the tokens of a zero embedding (IP-Adapter's negative) or
nothing, as chosen. With context windows (ComfyUI's ``context_window.index_list`` or
AnimateDiff-Evolved's ``ad_params["sub_idxs"]``) the rows are the window's frames.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError
from .csa import Attend, sdpa_attention
from .motion_tokens import MotionConditioner

COND, UNCOND = 0, 1
BLOCK_ORDER = ("input", "output", "middle")       # IP-Adapter numbering: down, up, mid


@dataclasses.dataclass(frozen=True)
class CrossLayer:
    """One cross-attention layer, addressed like ComfyUI's patches: ``(block, number, block_index)``."""

    block: str
    number: int
    block_index: int
    inner_dim: int
    heads: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.number, self.block_index)


def _layers_of(module: torch.nn.Module, block: str, number: int) -> list[tuple[CrossLayer, torch.nn.Module]]:
    found = []
    for child in module.children():
        for index, transformer in enumerate(getattr(child, "transformer_blocks", None) or ()):
            attn2 = getattr(transformer, "attn2", None)
            if attn2 is None:
                continue
            inner = int(attn2.to_q.weight.shape[0])
            found.append((CrossLayer(block, number, index, inner, int(getattr(attn2, "heads", 1))), attn2))
    return found


def cross_attention_modules(unet: torch.nn.Module) -> list[tuple[CrossLayer, torch.nn.Module]]:
    """Every cross-attention layer of an SD-style UNet with its ``attn2`` module, in IP-Adapter order
    (input, output, middle).

    Found by duck typing (children with ``transformer_blocks`` whose blocks have ``attn2``), so SD1.5,
    SD2, SDXL and small test UNets work alike; works on the meta device."""
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise BoundlessError(
                f"Apply Motion Conditioning needs an SD-style UNet (input, middle and output blocks); this model's "
                f"diffusion network ({type(unet).__name__}) has no '{name}'. Use an SD1.5-type model.")
    found: list[tuple[CrossLayer, torch.nn.Module]] = []
    for number, block in enumerate(unet.input_blocks):
        found += _layers_of(block, "input", number)
    for number, block in enumerate(unet.output_blocks):
        found += _layers_of(block, "output", number)
    found += _layers_of(unet.middle_block, "middle", 0)
    return found


def cross_attention_layers(unet: torch.nn.Module) -> list[CrossLayer]:
    """The cross-attention layers of :func:`cross_attention_modules`, without the modules."""
    return [layer for layer, _ in cross_attention_modules(unet)]


def check_layers(layers: Sequence[CrossLayer], conditioner: MotionConditioner) -> None:
    """The conditioning must have one IP layer per cross-attention layer, with matching widths."""
    theirs = [layer.inner_dim for layer in layers]
    mine = list(conditioner.config.inner_dims)
    if theirs != mine:
        def show(dims):
            return ", ".join(f"{d}" for d in dims[:8]) + (", ..." if len(dims) > 8 else "")
        raise BoundlessError(
            f"the motion conditioning was made for a UNet with {len(mine)} cross-attention layers ({show(mine)}) but "
            f"this model has {len(theirs)} ({show(theirs)}). Use cross-attention weights (IP-Adapter file) made for "
            "this model family, e.g. an SD1.5 IP-Adapter for SD1.5 checkpoints.")


def context_frames(n: int, extra_options: dict) -> Optional[list[int]]:
    """Frame indices of the rows of a chunk when a context window is active, else None."""
    window = extra_options.get("context_window")
    if window is not None and getattr(window, "dim", 0) == 0 and getattr(window, "index_list", None) is not None:
        return [int(i) for i in window.index_list]
    ad_params = extra_options.get("ad_params")
    if isinstance(ad_params, dict) and ad_params.get("sub_idxs") is not None:
        return [int(i) for i in ad_params["sub_idxs"]]
    return None


class MotionCrossAttention:
    """The patch callable (see the module docstring).

    ``cond_tnc``: tokens of each frame ``[T, n, C]``; ``uncond_tnc``: tokens for uncond rows
    (``[T, n, C]`` or ``[1, n, C]``), or None to leave uncond rows as plain text cross-attention.
    """

    def __init__(self, layers: Sequence[CrossLayer], conditioner: MotionConditioner, cond_tnc: torch.Tensor,
                 uncond_tnc: Optional[torch.Tensor], weight: float, attend: Attend = sdpa_attention):
        check_layers(layers, conditioner)
        self.layer_of = {layer.key: index for index, layer in enumerate(layers)}
        self.conditioner = conditioner
        self.cond = cond_tnc.float()
        self.uncond = None if uncond_tnc is None else uncond_tnc.float()
        self.weight = float(weight)
        self.attend = attend
        self._on_device: dict[tuple, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    def __deepcopy__(self, memo):
        """Model clones share the patch (it holds no per-model state, only weights and tokens)."""
        return self

    @property
    def frames(self) -> int:
        return int(self.cond.shape[0])

    def _tokens(self, device: torch.device, dtype: torch.dtype):
        key = (str(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = (self.cond.to(device, dtype),
                                    None if self.uncond is None else self.uncond.to(device, dtype))
        return self._on_device[key]

    def rows_frames(self, n: int, extra_options: dict) -> list[int]:
        """Which frame each of the ``n`` rows of a chunk shows."""
        frames = context_frames(n, extra_options)
        if frames is None:
            if self.frames != 1 and n != self.frames:
                raise BoundlessError(
                    f"Apply Motion Conditioning: the motion has {self.frames} frames but the latent batch has {n} "
                    f"images. Set the latent batch_size to {self.frames} (Semantic Motion Predict's frame_count).")
            frames = list(range(n))
        if len(frames) != n:
            raise BoundlessError(f"context window lists {len(frames)} frames for a chunk of {n} rows")
        if self.frames == 1:
            return [0] * n
        if max(frames) >= self.frames:
            raise BoundlessError(
                f"Apply Motion Conditioning: the video has frame {max(frames)} but the motion only {self.frames} frames. "
                f"Set the latent batch_size to {self.frames} (Semantic Motion Predict's frame_count).")
        return frames

    def __call__(self, q_bnc: torch.Tensor, k_bmc: torch.Tensor, v_bmc: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = int(extra_options["n_heads"])
        opts = {"attn_precision": extra_options.get("attn_precision")}
        out = self.attend(q_bnc, k_bmc, v_bmc, heads, **opts)                    # text cross-attention
        block = extra_options.get("block")
        layer = None if block is None else self.layer_of.get(
            (block[0], int(block[1]), int(extra_options.get("block_index", 0))))
        if layer is None or self.weight == 0.0:
            return out
        kinds = [int(kind) for kind in extra_options["cond_or_uncond"]]
        if q_bnc.shape[0] % len(kinds):
            raise BoundlessError(f"batch of {q_bnc.shape[0]} rows does not split into {len(kinds)} cond/uncond chunks")
        n = q_bnc.shape[0] // len(kinds)
        frames = torch.tensor(self.rows_frames(n, extra_options), device=q_bnc.device)
        cond, uncond = self._tokens(q_bnc.device, q_bnc.dtype)
        rows, tokens = [], []
        for c, kind in enumerate(kinds):
            source = cond if kind == COND else uncond
            if source is None:
                continue
            rows.append(torch.arange(c * n, (c + 1) * n, device=q_bnc.device))
            tokens.append(source.index_select(0, frames) if source.shape[0] > 1 else source.expand(n, -1, -1))
        if not rows:
            return out
        rows_r, tokens_rnc = torch.cat(rows), torch.cat(tokens)                   # [R], [R, n_tok, C]
        ip = self.conditioner.layer(layer)
        k_ip = F.linear(tokens_rnc, ip.to_k_ip.weight.to(q_bnc.device, q_bnc.dtype))   # [R, n_tok, inner]
        v_ip = F.linear(tokens_rnc, ip.to_v_ip.weight.to(q_bnc.device, q_bnc.dtype))
        image_out = self.attend(q_bnc.index_select(0, rows_r), k_ip, v_ip, heads, **opts)
        return out.index_add(0, rows_r, image_out.to(out.dtype), alpha=self.weight)
