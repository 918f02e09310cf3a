"""What the Paella nodes do, as pure-torch functions: sampler settings, version and tokenizer checks,
image <-> token conversion at any size, and one ``generate`` entry point for every manipulation
(text-to-image, in/out-painting, variations, interpolation frames, structural editing, regional
prompts). The node glue only fetches models and wires ComfyUI values into these functions.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from ..common.draws import MODEL_DEVICE, Draws
from ..common.errors import BoundlessError
from ..common.progress import Progress, no_progress
from ..common.tokens import Tokens, fingerprint
from . import loader
from .conditioning import PaellaConditioning, expand_batch, v1_vector
from .sampling_v1 import sample_v1
from .sampling_v3 import V3Condition, notebook_attention_weights, sample_v3
from .v1_model import PaellaV1
from .v3_model import PaellaV3
from .vqgan_f4 import VQGANF4
from .vqgan_f8 import VQGANF8

PaellaModel = Union[PaellaV3, PaellaV1]
PaellaVQGAN = Union[VQGANF4, VQGANF8]


@dataclasses.dataclass(frozen=True)
class V3Sampler:
    """Settings of the official v3 sampler (defaults: README / ``src/utils.py``)."""

    steps: int = 12
    renoise_steps: Optional[int] = None          # None: steps - 1
    temperature: tuple[float, float] = (1.0, 0.2)
    cfg: tuple[float, float] = (8.0, 8.0)
    conditional_steps: Optional[int] = None      # None: CFG on every step
    mode: str = "multinomial"
    quant_steps: Optional[int] = None            # None: never switch to 'quant'
    attention_reweighting: bool = False          # the notebook's x1.2 / x0.4 key weights
    draws: str = MODEL_DEVICE                    # where random numbers are drawn (common.draws)
    version = "v3"

    def uses_cfg(self) -> bool:
        active = self.steps if self.conditional_steps is None else min(self.conditional_steps, self.steps)
        return active > 0 and self.cfg != (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class V1Sampler:
    """Settings of the 2022 v1 sampler (defaults: the Replicate demo's text-to-image)."""

    steps: int = 12
    renoise_steps: Optional[int] = None          # None: steps - 1
    temperature: tuple[float, float] = (1.0, 1.0)
    cfg: float = 5.0                             # 1 = no guidance (the unconditional pass is skipped)
    typical_filtering: bool = True
    typical_mass: float = 0.2
    typical_min_tokens: int = 1
    renoise_mode: str = "start"
    draws: str = MODEL_DEVICE                    # where random numbers are drawn (common.draws)
    version = "v1"


Sampler = Union[V3Sampler, V1Sampler]


def version_of(model) -> str:
    if isinstance(model, PaellaV3):
        return "v3"
    if isinstance(model, PaellaV1):
        return "v1"
    raise BoundlessError(f"expected a Paella token model, got {type(model).__name__}; load one with Paella Loader")


def check_sampler(model, sampler: Sampler) -> str:
    version = version_of(model)
    if sampler.version != version:
        raise BoundlessError(f"this is a Paella {version} checkpoint but the sampler settings are for Paella "
                             f"{sampler.version}; use the Paella {version} Sampler node")
    return version


def tokenizer_kind(vqgan) -> str:
    if isinstance(vqgan, VQGANF4):
        return loader.V3_VQGAN
    if isinstance(vqgan, VQGANF8):
        return loader.V1_VQGAN
    raise BoundlessError(f"expected a Paella VQGAN, got {type(vqgan).__name__}; load one with Paella VQGAN Loader")


def check_vqgan(model, vqgan) -> None:
    """The token model and the VQGAN must share one codebook (v3 <-> f4 VQGAN, v1 <-> Gumbel f8)."""
    version = version_of(model)
    kind = tokenizer_kind(vqgan)
    wanted = loader.V3_VQGAN if version == "v3" else loader.V1_VQGAN
    if kind != wanted:
        raise BoundlessError(f"Paella {version} works on {loader.DESCRIPTIONS[wanted]} tokens, but the connected "
                             f"VQGAN is a {loader.DESCRIPTIONS[kind]}; connect the matching VQGAN")
    if vqgan.codebook.shape[0] != model.config.num_labels:
        raise BoundlessError(f"the VQGAN has {vqgan.codebook.shape[0]} codes but the Paella model predicts "
                             f"{model.config.num_labels}; use the VQGAN released with this model")


def factor_of(vqgan) -> int:
    return vqgan.config.factor


def pixel_limits(model, vqgan) -> tuple[int, int]:
    """(multiple, smallest side) in pixels that the token grid of this model / VQGAN pair allows."""
    multiple = model.config.token_multiple * factor_of(vqgan)
    return multiple, multiple * (2 if version_of(model) == "v1" else 1)


def token_grid(model, vqgan, width: int, height: int) -> tuple[int, int]:
    """(h, w) tokens for an image size in pixels; refuses sizes the model cannot take."""
    multiple, smallest = pixel_limits(model, vqgan)
    if width % multiple or height % multiple or width < smallest or height < smallest:
        fit_w = max(smallest, width // multiple * multiple)
        fit_h = max(smallest, height // multiple * multiple)
        raise BoundlessError(f"Paella {version_of(model)} needs image sides that are multiples of {multiple} px "
                             f"(at least {smallest} px), got {width}x{height}; use e.g. {fit_w}x{fit_h}")
    f = factor_of(vqgan)
    return height // f, width // f


def device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def encode(vqgan, image_b3hw: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> indices (v1: the deterministic argmax code, not Paella's Gumbel sample)."""
    image_b3hw = image_b3hw.to(device_of(vqgan))
    if isinstance(vqgan, VQGANF4):
        return vqgan.encode(image_b3hw)[0]
    return vqgan.encode(image_b3hw)


def decode(vqgan, indices_bhw: torch.Tensor) -> torch.Tensor:
    """Indices -> image ``[B, 3, H, W]`` in [0, 1]."""
    image = vqgan.decode_indices(indices_bhw.to(device_of(vqgan)))
    return image.clamp(0, 1) if isinstance(vqgan, VQGANF4) else image


def to_tokens(vqgan, indices_bhw: torch.Tensor) -> Tokens:
    return Tokens(scales=(indices_bhw,), tokenizer=fingerprint(tokenizer_kind(vqgan), vqgan.codebook),
                  factor=factor_of(vqgan))


def from_tokens(vqgan, tokens: Tokens, what: str) -> torch.Tensor:
    tokens.require(fingerprint(tokenizer_kind(vqgan), vqgan.codebook), what)
    return tokens.indices


# Previews decode at most this many tokens per side (larger grids are subsampled), so a preview
# costs at most about one 256-px VQGAN decode per step whatever the image size.
PREVIEW_TOKENS = 64


def previewer(vqgan) -> Callable[[torch.Tensor], torch.Tensor]:
    """Decode the first image of a token batch to an IMAGE ``[1, H, W, 3]`` for the progress bar."""
    def preview(indices_bhw: torch.Tensor) -> torch.Tensor:
        stride = math.ceil(max(indices_bhw.shape[-2:]) / PREVIEW_TOKENS)
        with torch.inference_mode():
            return decode(vqgan, indices_bhw[:1, ::stride, ::stride]).movedim(1, -1).cpu()
    return preview


def pad_image_and_mask(image_b3hw: torch.Tensor, mask_bhw: Optional[torch.Tensor], multiple: int,
                       smallest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad right/bottom (edge replication) to a valid size; the padding is marked 'generate' (1)."""
    batch, _, height, width = image_b3hw.shape
    new_h = max(smallest, math.ceil(height / multiple) * multiple)
    new_w = max(smallest, math.ceil(width / multiple) * multiple)
    mask = torch.zeros(batch, height, width) if mask_bhw is None else mask_bhw.float().to(image_b3hw.device)
    mask = expand_batch(mask, batch, "mask")
    pad = (0, new_w - width, 0, new_h - height)
    if new_h == height and new_w == width:
        return image_b3hw, mask
    padded_image = F.pad(image_b3hw, pad, mode="replicate")
    padded_mask = F.pad(mask, pad, value=1.0)
    return padded_image, padded_mask


def token_mask(mask_bhw: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask -> bool token mask: a token is regenerated when any of its pixels is >= 0.5."""
    return F.max_pool2d(mask_bhw[:, None].float(), factor)[:, 0] >= 0.5


def noise_tokens(indices_bhw: torch.Tensor, level: float, num_labels: int, seed: int,
                 draws: str = MODEL_DEVICE) -> torch.Tensor:
    """Replace each token with a random one with probability ``level`` (structural editing)."""
    rng = Draws(seed, indices_bhw.device, draws)
    shape = tuple(indices_bhw.shape)
    replace = rng.rand(shape) < level
    return torch.where(replace, rng.randint(num_labels, shape), indices_bhw)


def v1_start_step(strength: float, steps: int) -> int:
    """The v1 step whose masking probability cos(r*pi/2) is closest to ``strength``."""
    return min(steps - 1, max(0, round(steps * 2 / math.pi * math.acos(min(1.0, max(0.0, strength))))))


def generate(model: PaellaModel, vqgan: PaellaVQGAN, sampler: Sampler, positive: PaellaConditioning,
             negative: Optional[PaellaConditioning], *, seed: int, batch: int, grid: tuple[int, int],
             start: Optional[torch.Tensor] = None, strength: float = 1.0,
             keep_mask: Optional[torch.Tensor] = None, progress: Progress = no_progress,
             with_preview: bool = True) -> torch.Tensor:
    """Token grids ``[batch, h, w]`` for one manipulation.

    start: tokens to start from: with ``keep_mask`` (bool, True = generate) the known tokens of
    in/out-painting; otherwise the encoded image of a structural edit, noised to ``strength``.
    """
    version = check_sampler(model, sampler)
    check_vqgan(model, vqgan)
    height, width = grid
    if start is not None:
        start = expand_batch(start, batch, "start tokens").to(device_of(model))
        if tuple(start.shape[-2:]) != (height, width):
            raise BoundlessError(f"start tokens are {start.shape[-1]}x{start.shape[-2]}, expected {width}x{height}")
    if keep_mask is not None:
        if start is None:
            raise BoundlessError("in/out-painting needs the encoded image to keep")
        keep_mask = expand_batch(keep_mask, batch, "mask").to(device_of(model))
    edit = start is not None and keep_mask is None
    if edit and not 0.0 < strength <= 1.0:
        raise BoundlessError(f"edit strength must lie in (0, 1], got {strength}")
    preview = previewer(vqgan) if with_preview else None
    num_labels = model.config.num_labels
    if version == "v3":
        return _generate_v3(model, vqgan, sampler, positive, negative, seed, batch, height, width,
                            start, strength, keep_mask, edit, progress, preview)
    c = expand_batch(v1_vector(positive), batch, "positive conditioning")
    uncond = None
    if negative is not None and sampler.cfg != 1.0:
        uncond = expand_batch(v1_vector(negative), batch, "negative conditioning")
    starting_t = v1_start_step(strength, sampler.steps) if edit else 0
    x = noise_tokens(start, math.cos(starting_t / sampler.steps * math.pi / 2), num_labels, seed + 1,
                     sampler.draws) if edit else start
    return sample_v1(model, c, uncond=uncond, seed=seed, size=(height, width), T=sampler.steps, x=x,
                     mask=None if keep_mask is None else keep_mask.long(), starting_t=starting_t,
                     temp_range=sampler.temperature, typical_filtering=sampler.typical_filtering,
                     typical_mass=sampler.typical_mass, typical_min_tokens=sampler.typical_min_tokens,
                     classifier_free_scale=-1.0 if sampler.cfg == 1.0 else sampler.cfg,
                     renoise_steps=sampler.steps - 1 if sampler.renoise_steps is None else sampler.renoise_steps,
                     renoise_mode=sampler.renoise_mode,
                     progress=progress, preview=preview, draws=sampler.draws)


def _v3_condition(cond: PaellaConditioning, what: str) -> V3Condition:
    if cond.spatial is not None:
        raise BoundlessError(f"{what}: regional (spatial) conditioning works only with Paella v1; Paella v3 "
                             "conditions through attention and has no spatial input")
    if cond.byt5 is None:
        raise BoundlessError(f"{what}: Paella v3 needs ByT5-XL hidden states ('byt5' in the conditioning file, "
                             "or a CONDITIONING with 2560-wide states); this conditioning has " + cond.describe())
    return V3Condition(cond.byt5, cond.clip_text, cond.clip_image)


def _generate_v3(model, vqgan, sampler: V3Sampler, positive, negative, seed, batch, height, width,
                 start, strength, keep_mask, edit, progress, preview) -> torch.Tensor:
    cond = _v3_condition(positive, "positive conditioning")
    uncond = None
    if sampler.uses_cfg():
        if negative is None:
            raise BoundlessError("Paella v3 guidance needs a negative conditioning: the ByT5 and CLIP embeddings "
                                 "of the empty prompt \"\" (or of a negative prompt). Connect one, or set both "
                                 "CFG values to 1 to sample without guidance")
        uncond = _v3_condition(negative, "negative conditioning")
    attn_weights = notebook_attention_weights(cond.byt5.shape[1]) if sampler.attention_reweighting else None
    init_x = noise_tokens(start, strength, model.config.num_labels, seed + 1, sampler.draws) if edit else None
    return sample_v3(model, cond, uncond, seed=seed, shape=(batch, height, width), steps=sampler.steps,
                     renoise_steps=sampler.renoise_steps, temperature=sampler.temperature, cfg=sampler.cfg,
                     t_start=strength if edit else 1.0, mode=sampler.mode,
                     conditional_steps=sampler.conditional_steps, quant_steps=sampler.quant_steps,
                     attn_weights=attn_weights, init_x=init_x, keep_mask=keep_mask,
                     known=start if keep_mask is not None else None, codebook=vqgan.codebook,
                     quantize=vqgan.vquantizer.nearest, progress=progress, preview=preview, draws=sampler.draws)


# Image sides that suit both released models (v3: 8 tokens x 4 px, v1: 4 tokens x 8 px).
ENCODE_MULTIPLE = 32
SIZE_POLICIES = ("pad", "crop")


def fit_image(image_b3hw: torch.Tensor, multiple: int, policy: str) -> torch.Tensor:
    """Pad (edge replication, right/bottom) or crop an image to sides that are multiples of ``multiple``."""
    if policy not in SIZE_POLICIES:
        raise BoundlessError(f"unknown size policy {policy!r}; use {' or '.join(SIZE_POLICIES)}")
    height, width = image_b3hw.shape[-2:]
    if policy == "crop":
        new_h, new_w = height // multiple * multiple, width // multiple * multiple
        if new_h == 0 or new_w == 0:
            raise BoundlessError(f"a {width}x{height} image is smaller than {multiple} px; use 'pad'")
        return image_b3hw[..., :new_h, :new_w]
    return pad_image_and_mask(image_b3hw, None, multiple, multiple)[0]
