"""Paella conditioning as precomputed encoder outputs (pure torch).

No text or image encoder weights ship with the pack, so a conditioning is assembled from tensors
the user already has: a tensor file (ByT5-XL states, OpenCLIP text / image vectors), ComfyUI's
CONDITIONING (its ``pooled_output``; its token states when they are ByT5-XL wide) and CLIP vision
outputs (``image_embeds``). One value serves both versions:

* v3 reads ``byt5`` (required), ``clip_text`` and ``clip_image`` (N vectors, mixed in order);
* v1 reads one vector per image (``clip_text``, or ``clip_image`` for the image-variation
  finetune) or a regional ``spatial`` map ``[B, C, h, w]`` built by ``with_region``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError

BYT5_XL_WIDTH = 2560
FILE_KEYS = ("byt5", "clip_text", "clip_image")
# Regional maps are stored at most this many cells on the long side; every v1 block resizes them.
REGION_MAP_SIZE = 64


@dataclasses.dataclass(frozen=True)
class PaellaConditioning:
    byt5: Optional[torch.Tensor] = None        # [B, L, W]  ByT5-XL last_hidden_state (v3)
    clip_text: Optional[torch.Tensor] = None   # [B, C]     OpenCLIP text vector (v3: ViT-H-14, v1: ViT-g-14)
    clip_image: Optional[torch.Tensor] = None  # [B, N, C]  OpenCLIP image vectors
    spatial: Optional[torch.Tensor] = None     # [B, C, h, w] regional v1 condition

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        parts = [f"{k} {list(v.shape)}" for k, v in self.tensors().items()]
        return ", ".join(parts) if parts else "nothing"


def _as_batch(t: torch.Tensor, dims: int, name: str) -> torch.Tensor:
    """Add a leading batch axis to an unbatched tensor; check the rank."""
    t = t.float()
    if t.ndim == dims - 1:
        t = t.unsqueeze(0)
    if t.ndim != dims:
        raise BoundlessError(f"'{name}' must have {dims - 1} or {dims} dimensions (batch first), got {list(t.shape)}")
    return t


def from_sources(file_tensors: Optional[Mapping[str, torch.Tensor]] = None,
                 comfy_conditioning: Optional[list] = None,
                 image_embeds: Optional[torch.Tensor] = None) -> PaellaConditioning:
    """Merge a tensor file, a ComfyUI CONDITIONING and CLIP vision ``image_embeds`` into one value.

    File keys: ``byt5`` [B, L, W] or [L, W]; ``clip_text`` [B, C] or [C]; ``clip_image`` [B, N, C],
    [B, C] or [C]. CONDITIONING contributes its ``pooled_output`` as ``clip_text`` and its token
    states as ``byt5`` when they are ByT5-XL wide (2560). Image vectors from several sources are
    appended (the notebook's image mixing).
    """
    byt5 = clip_text = None
    images: list[torch.Tensor] = []
    if file_tensors:
        unknown = sorted(set(file_tensors) - set(FILE_KEYS))
        if unknown:
            raise BoundlessError(f"conditioning file has unknown keys {unknown}; use {', '.join(FILE_KEYS)}")
        if "byt5" in file_tensors:
            byt5 = _as_batch(file_tensors["byt5"], 3, "byt5")
        if "clip_text" in file_tensors:
            clip_text = _as_batch(file_tensors["clip_text"], 2, "clip_text")
        if "clip_image" in file_tensors:
            vectors = file_tensors["clip_image"].float()
            images.append(vectors.reshape(1, 1, -1) if vectors.ndim == 1 else
                          vectors[:, None] if vectors.ndim == 2 else _as_batch(vectors, 3, "clip_image"))
    if comfy_conditioning:
        states, options = comfy_conditioning[0][0], comfy_conditioning[0][1]
        pooled = options.get("pooled_output")
        if pooled is not None:
            if clip_text is not None:
                raise BoundlessError("both the tensor file and the CONDITIONING give a CLIP text vector; "
                                     "remove 'clip_text' from the file or disconnect the CONDITIONING")
            clip_text = pooled.float()
        if states is not None and states.shape[-1] == BYT5_XL_WIDTH:
            if byt5 is not None:
                raise BoundlessError("both the tensor file and the CONDITIONING give ByT5 states; keep one")
            byt5 = states.float()
        elif pooled is None:
            raise BoundlessError(f"this CONDITIONING has no pooled_output and its states are {states.shape[-1]} "
                                 f"wide (ByT5-XL is {BYT5_XL_WIDTH}); nothing in it fits Paella")
    if image_embeds is not None:
        images.append(_as_batch(image_embeds, 2, "image_embeds")[:, None])
    clip_image = None
    if images:
        _check_image_widths(images)
        batch = max(t.shape[0] for t in images)
        clip_image = torch.cat([expand_batch(t, batch, "clip_image") for t in images], dim=1)
    result = PaellaConditioning(byt5=byt5, clip_text=clip_text, clip_image=clip_image)
    if not result.tensors():
        raise BoundlessError("Paella Conditioning got no inputs: give a tensor file, a CONDITIONING or a "
                             "CLIP vision output")
    for name, tensor in result.tensors().items():
        if not bool(torch.isfinite(tensor).all()):
            raise BoundlessError(f"Paella Conditioning: '{name}' holds NaN or inf values (a float16 export of ByT5 "
                                 "or CLIP states that overflowed?); recompute the embeddings in float32 or bfloat16")
    return result


def _check_image_widths(images: list[torch.Tensor]) -> None:
    """CLIP image vectors mixed into one conditioning must come from the same image encoder."""
    widths = sorted({int(t.shape[-1]) for t in images})
    if len(widths) > 1:
        raise BoundlessError(f"CLIP image vectors of different widths {widths} cannot be mixed: they come from "
                             "different image encoders. Give only vectors of the encoder your model was trained "
                             "with (Paella v3: OpenCLIP ViT-H-14; v1: OpenCLIP ViT-g-14)")


def add_images(cond: PaellaConditioning, images_bnc: torch.Tensor) -> PaellaConditioning:
    """Append CLIP image vectors ``[B, N, C]`` after the ones ``cond`` already has (image mixing)."""
    if cond.clip_image is None:
        return dataclasses.replace(cond, clip_image=images_bnc.float())
    _check_image_widths([cond.clip_image, images_bnc])
    batch = max(cond.clip_image.shape[0], images_bnc.shape[0])
    merged = torch.cat([expand_batch(cond.clip_image, batch, "clip_image"),
                        expand_batch(images_bnc, batch, "image vectors").to(cond.clip_image)], dim=1)
    return dataclasses.replace(cond, clip_image=merged)


def variation_conditioning(version: str, embedding: Optional[PaellaConditioning] = None,
                           image_embeds: Optional[torch.Tensor] = None,
                           positive: Optional[PaellaConditioning] = None) -> PaellaConditioning:
    """The conditioning of an image variation: the source image's CLIP vectors (+ v3's text part).

    The vectors come from ``embedding.clip_image`` (e.g. an embeddings file with a ``clip_image``
    key, so no CLIP vision weights are needed) and/or CLIP Vision Encode ``image_embeds``, appended
    in that order. v1's image finetune is conditioned on that one vector alone; v3 needs ByT5
    states, so the vectors go after ``positive``'s own (its text vector and image vectors stay).
    """
    images = PaellaConditioning()
    if embedding is not None:
        if embedding.clip_image is None:
            raise BoundlessError("the image embedding has no CLIP image vector: build it from an embeddings "
                                 "file with a 'clip_image' key or from a CLIP vision output (it has "
                                 f"{embedding.describe()})")
        images = add_images(images, embedding.clip_image)
    if image_embeds is not None:
        images = add_images(images, _as_batch(image_embeds, 2, "image_embeds")[:, None])
    if images.clip_image is None:
        raise BoundlessError("image variations need the source image's CLIP vector: connect 'image_embedding' (a "
                             "Paella Conditioning whose file has a 'clip_image' key) or a CLIP Vision Encode output")
    if version == "v1":
        if positive is not None:
            raise BoundlessError("Paella v1 variations are conditioned on the image vector alone; disconnect "
                                 "'positive'")
        return images
    if positive is None:
        raise BoundlessError("Paella v3 variations need ByT5 states: connect a 'positive' conditioning "
                             "(e.g. the embeddings of the empty prompt \"\")")
    return add_images(positive, images.clip_image)


def expand_batch(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] != 1:
        raise BoundlessError(f"{what} has batch {t.shape[0]} but {batch} images are made; use one prompt or "
                             "one per image")
    return t.expand(batch, *t.shape[1:])


def interpolate(a: PaellaConditioning, b: PaellaConditioning, weight: float) -> PaellaConditioning:
    """Linear interpolation of every tensor (same fields and shapes on both sides)."""
    fields_a, fields_b = a.tensors(), b.tensors()
    if set(fields_a) != set(fields_b):
        raise BoundlessError(f"cannot interpolate conditionings with different parts ({a.describe()} vs "
                             f"{b.describe()}); build both from the same kind of inputs")
    mixed = {}
    for name, ta in fields_a.items():
        tb = fields_b[name]
        if ta.shape[1:] != tb.shape[1:]:
            hint = (f" (ByT5 lengths differ: give both Paella v3 Text Encode nodes the same pad_to, at least "
                    f"{max(ta.shape[1], tb.shape[1])}, or encode both prompts together with padding='longest')"
                    if name == "byt5" else "")
            raise BoundlessError(f"cannot interpolate '{name}' of shapes {list(ta.shape)} and {list(tb.shape)}{hint}")
        batch = max(ta.shape[0], tb.shape[0])
        mixed[name] = torch.lerp(expand_batch(ta, batch, name), expand_batch(tb, batch, name).to(ta), weight)
    return PaellaConditioning(**mixed)


def v1_vector(cond: PaellaConditioning) -> torch.Tensor:
    """The v1 condition: the regional map, else the text vector, else the single image vector."""
    if cond.spatial is not None:
        return cond.spatial
    if cond.clip_text is not None and cond.clip_image is not None:
        raise BoundlessError("Paella v1 takes one CLIP vector per image, but this conditioning has a text and "
                             "an image vector; use a text-only or image-only conditioning")
    if cond.clip_text is not None:
        return cond.clip_text
    if cond.clip_image is not None:
        if cond.clip_image.shape[1] != 1:
            raise BoundlessError(f"Paella v1 takes one CLIP image vector, got {cond.clip_image.shape[1]}")
        return cond.clip_image[:, 0]
    raise BoundlessError("Paella v1 needs an OpenCLIP ViT-g-14 vector (text, or image for the variation "
                         f"finetune); this conditioning has {cond.describe()}")


def with_region(base: PaellaConditioning, region: PaellaConditioning, mask_bhw: torch.Tensor) -> PaellaConditioning:
    """A v1 regional map: ``region``'s vector where the mask is 1, ``base`` elsewhere (soft blend)."""
    base_c, region_c = v1_vector(base), v1_vector(region)
    if region_c.ndim != 2:
        raise BoundlessError("the region's conditioning must be one vector, not a regional map")
    if base_c.shape[1] != region_c.shape[1]:
        raise BoundlessError(f"base and region vectors differ in width ({base_c.shape[1]} vs {region_c.shape[1]})")
    if mask_bhw.ndim == 2:
        mask_bhw = mask_bhw[None]
    height, width = mask_bhw.shape[-2:]
    if base_c.ndim == 4:
        height, width = base_c.shape[-2:]
    else:
        scale = min(1.0, REGION_MAP_SIZE / max(height, width))
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    weight_b1hw = F.interpolate(mask_bhw[:, None].float(), size=(height, width), mode="area").clamp(0, 1)
    base_map = base_c if base_c.ndim == 4 else base_c[:, :, None, None].expand(-1, -1, height, width)
    batch = max(base_map.shape[0], region_c.shape[0], weight_b1hw.shape[0])
    base_map = expand_batch(base_map, batch, "base conditioning")
    region_map = expand_batch(region_c, batch, "region conditioning")[:, :, None, None].to(base_map)
    weight_b1hw = expand_batch(weight_b1hw, batch, "mask").to(base_map)
    return PaellaConditioning(spatial=base_map * (1 - weight_b1hw) + region_map * weight_b1hw)


def grid_masks(rows: int, cols: int, height: int = REGION_MAP_SIZE, width: int = REGION_MAP_SIZE) -> list[torch.Tensor]:
    """Row-major cell masks ``[1, H, W]`` of a rows x cols grid (for grid-layout regional prompts)."""
    masks = []
    for r in range(rows):
        for c in range(cols):
            m = torch.zeros(1, height, width)
            m[:, r * height // rows:(r + 1) * height // rows, c * width // cols:(c + 1) * width // cols] = 1
            masks.append(m)
    return masks
