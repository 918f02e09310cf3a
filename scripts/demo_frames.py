"""Frames of the animation demos: Kenney walk cycles (CC0, arcade wheel) rendered like the SMP's data.

``nodes/story/smp_train.py`` renders each 8-frame cycle at 128x128 px on a random background, size
and offset (optionally recoloured, which makes "new characters" with the same rig). The NUWA-Infinity
video demo and the pixel guide use those renders at ``SCALE`` times the size, so a 16-px VQGAN token
covers 8x8 sprite pixels (at 128 px a frame would be only 8x8 tokens: too coarse to hold a character).
"""
import dataclasses
import random

import torch
import torch.nn.functional as F

from packpath import pack_module

SCALE = 2
HELDOUT = ("male_person", "robot")     # never trained on by any demo model (as for the SMP)
# Flat backgrounds of the demo frames. A 512-code tokenizer cannot also spend codes on every
# possible background colour, so the demos stick to a small palette (the first is the SMP inputs').
BACKGROUNDS = ((200, 220, 240), (236, 240, 244), (120, 170, 220), (60, 60, 70), (214, 196, 160))


def walk_cycles(characters, variants: int, recolour: bool, seed: int) -> torch.Tensor:
    """Cycles ``[N, 8, 3, 128*SCALE, 128*SCALE]`` in [-1, 1], N = characters x variants."""
    smp_train = pack_module("nodes.story.smp_train")
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    renderings = [dataclasses.replace(v, background=rng.choice(BACKGROUNDS))
                  for v in smp_train.random_variants(variants, generator, recolour)]
    frames = smp_train.render_cycles(characters, renderings)
    pixels = frames.flatten(0, 2).permute(0, 3, 1, 2)
    pixels = F.interpolate(pixels, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1)
    return (pixels * 2 - 1).unflatten(0, (-1, smp_train.WALK_FRAMES)).contiguous()


def training_characters():
    return [c for c in pack_module("nodes.story.smp_train").KENNEY_CHARACTERS if c not in HELDOUT]
