"""Which self-attention layers of a UNet get Consistent Self-Attention (pure torch, no comfy import).

ComfyUI addresses a transformer block's self-attention by ``(block, number, block_index)``, e.g.
``("output", 3, 0)``: the block list (``input``, ``middle`` or ``output``), the block's position in
it, and the BasicTransformerBlock's position inside that block's SpatialTransformer. The UNet is
walked by duck typing (modules with ``transformer_blocks`` hold attention; ``Downsample`` /
``Upsample`` change the resolution), so SD1.5, SDXL and small test UNets with the same layout work
without a table per model.

The reference patches every self-attention of the up (output) blocks; SDXL: ``output 0-2``
(10 layers each, H/32) and ``output 3-5`` (2 each, H/16), 36 layers; SD1.5: ``output 3-11``.
"""
from __future__ import annotations

import dataclasses

import torch

from ..common.errors import BoundlessError

BLOCK_CHOICES = ("up blocks (reference)", "up + middle blocks", "all blocks")
BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One patched self-attention layer.

    ``factor`` is the layer's downsampling relative to the latent (1, 2, 4, ...): its token grid
    is the latent grid halved ``log2(factor)`` times, i.e. the image side / ``8 * factor``
    ("h32" = factor 4, "h16" = factor 2, "h8" = factor 1).
    """

    block: str
    number: int
    block_index: int
    factor: int
    heads: int = 0
    dim_head: int = 0

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.number, self.block_index)

    @property
    def level(self) -> str:
        return f"h{8 * self.factor}"


def level_tokens(latent_h: int, latent_w: int, factor: int) -> int:
    """Tokens of a level: the latent grid halved (rounding up, like a stride-2 conv) per factor of 2."""
    h, w = latent_h, latent_w
    while factor > 1:
        h, w, factor = (h + 1) // 2, (w + 1) // 2, factor // 2
    return h * w


def _transformer_layers(module: torch.nn.Module, block: str, number: int, factor: int) -> list[LayerSpec]:
    found = []
    for child in module.children():
        blocks = getattr(child, "transformer_blocks", None)
        if blocks is None:
            continue
        for index, transformer in enumerate(blocks):
            attn1 = getattr(transformer, "attn1", None)
            if attn1 is None:
                continue
            found.append(LayerSpec(block, number, index, factor, int(getattr(attn1, "heads", 0)),
                                   int(getattr(attn1, "dim_head", 0))))
    return found


def unet_attention_layers(unet: torch.nn.Module) -> list[LayerSpec]:
    """Every self-attention layer of an SD-style UNet, in the order a forward pass calls them."""
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise BoundlessError(
                f"Consistent Self-Attention needs an SD1.5/SDXL-style UNet (input, middle and output blocks); "
                f"this model's diffusion network ({type(unet).__name__}) has no '{name}'. "
                "Use an SD1.5 or SDXL checkpoint (DiT/Flux-style models are not supported).")
    layers: list[LayerSpec] = []
    factor = 1
    for number, block in enumerate(unet.input_blocks):
        layers += _transformer_layers(block, "input", number, factor)
        if any(type(m).__name__ == "Downsample" for m in block.children()):
            factor *= 2
    layers += _transformer_layers(unet.middle_block, "middle", 0, factor)
    for number, block in enumerate(unet.output_blocks):
        layers += _transformer_layers(block, "output", number, factor)
        if any(type(m).__name__ == "Upsample" for m in block.children()):
            factor //= 2
    return layers


def choose_layers(layers: list[LayerSpec], blocks: str) -> list[LayerSpec]:
    """The layers CSA is installed on, for one of :data:`BLOCK_CHOICES`, in call order."""
    if blocks not in BLOCK_CHOICES:
        raise BoundlessError(f"unknown block choice {blocks!r}; use one of {', '.join(BLOCK_CHOICES)}")
    wanted = {"up blocks (reference)": {"output"}, "up + middle blocks": {"output", "middle"},
              "all blocks": {"input", "middle", "output"}}[blocks]
    chosen = [layer for layer in layers if layer.block in wanted]
    if not any(layer.block == "output" for layer in chosen):
        raise BoundlessError(
            "Consistent Self-Attention found no self-attention layers in this UNet's up (output) blocks, "
            "so it has nothing to patch. Use an SD1.5 or SDXL model.")
    return sorted(chosen, key=lambda layer: (BLOCK_ORDER[layer.block], layer.number, layer.block_index))
