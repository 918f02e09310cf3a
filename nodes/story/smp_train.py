"""Training and evaluating the Semantic Motion Predictor offline (pure torch; used by scripts/train_smp.py).

Objective (what is reachable without a video diffusion model): from the frozen image-encoder
embeddings of the first and last frame of a clip, predict the embeddings of every frame in between.
The paper trains the SMP end to end through a frozen video denoiser on WebVid-10M; neither a
denoiser nor that data set is available offline (WebVid was also withdrawn by its owner), so the
predictor is trained on its own output space: cosine distance plus normalised squared error to the
true in-between embeddings, on the frames strictly between the endpoints.

Data: the CC0 Kenney animated characters shipped in the ``arcade`` wheel (6 characters x 8-frame walk
cycles, 96x128 RGBA), located on disk without importing arcade (importing it needs pyglet/OpenGL).
Each character is rendered in several *variants* (background colour, mirror, offset, scale: one
variant is applied to a whole cycle, so motion is consistent) and encoded once; a training clip is a
run of ``L`` consecutive frames of a cycle, forwards or backwards, wrapping around.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..common.errors import BoundlessError
from .smp import SemanticMotionPredictor, interpolate

KENNEY_CHARACTERS = ("female_adventurer", "female_person", "male_adventurer", "male_person", "robot", "zombie")
WALK_FRAMES = 8
CANVAS = 128
DATA_SOURCE = ("Kenney 'animated characters' walk cycles from the arcade 3.3.3 wheel "
               "(arcade/resources/assets/images/animated_characters), CC0 1.0 (images/License.txt)")


def kenney_characters_dir() -> pathlib.Path:
    """``.../arcade/resources/assets/images/animated_characters`` of the installed arcade package."""
    spec = importlib.util.find_spec("arcade")
    if spec is None or spec.origin is None:
        raise BoundlessError("the training frames come from the arcade package: pip install --no-deps arcade==3.3.3 "
                             "(scripts/setup does this)")
    root = pathlib.Path(spec.origin).parent / "resources" / "assets" / "images" / "animated_characters"
    if not root.is_dir():
        raise BoundlessError(f"arcade is installed but has no animated characters at {root}; install arcade==3.3.3")
    return root


def walk_cycle(character: str, root: pathlib.Path) -> list[Image.Image]:
    """The 8 walk frames of one character, in order, as RGBA images."""
    files = {int(m.group(1)): p for p in (root / character).glob("*_walk*.png")
             if (m := re.search(r"_walk(\d+)\.png$", p.name))}
    if sorted(files) != list(range(WALK_FRAMES)):
        raise BoundlessError(f"{root / character} should hold walk0..walk{WALK_FRAMES - 1} frames, found {sorted(files)}")
    return [Image.open(files[i]).convert("RGBA") for i in range(WALK_FRAMES)]


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a whole cycle is rendered on the square canvas."""

    background: tuple[int, int, int]
    mirror: bool
    scale: float            # sprite height / canvas height
    dx: int                 # offset of the sprite's left edge from centred
    dy: int
    hue: float = 0.0        # recolouring of the sprite: hue rotation (turns) ...
    saturation: float = 1.0  # ... and saturation factor; (0, 1) keeps the original colours


def random_variants(count: int, generator: torch.Generator, recolour: bool = False) -> list[Variant]:
    """Random renderings; ``recolour`` also rotates hue and scales saturation, which makes "new
    characters" with the same rig and motion (augmentation of the few training characters)."""
    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))
    out = []
    for _ in range(count):
        background = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
        variant = Variant(background, bool(torch.rand((), generator=generator) < 0.5), uniform(0.75, 1.0),
                          int(uniform(-12, 12)), int(uniform(-6, 6)))
        if recolour:
            variant = dataclasses.replace(variant, hue=uniform(0.0, 1.0), saturation=uniform(0.6, 1.4))
        out.append(variant)
    return out


def recoloured(sprite: Image.Image, hue: float, saturation: float) -> Image.Image:
    """Rotate the hue and scale the saturation of an RGBA sprite (alpha kept)."""
    if hue == 0.0 and saturation == 1.0:
        return sprite
    h, s, v = sprite.convert("RGB").convert("HSV").split()
    shift = int(round(hue * 256))
    h = h.point(lambda x: (x + shift) % 256)
    s = s.point(lambda x: min(255, int(x * saturation)))
    rgb = Image.merge("HSV", (h, s, v)).convert("RGB")
    return Image.merge("RGBA", (*rgb.split(), sprite.getchannel("A")))


def render(sprite: Image.Image, variant: Variant) -> Image.Image:
    """One RGBA sprite composited on a CANVAS x CANVAS background, per ``variant``."""
    sprite = recoloured(sprite, variant.hue, variant.saturation)
    height = max(8, round(CANVAS * variant.scale))
    width = max(4, round(sprite.width * height / sprite.height))
    image = sprite.resize((width, height), Image.BICUBIC)
    if variant.mirror:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = Image.new("RGBA", (CANVAS, CANVAS), variant.background + (255,))
    left = (CANVAS - width) // 2 + variant.dx
    top = min(max(0, (CANVAS - height) // 2 + variant.dy), CANVAS - height)
    canvas.alpha_composite(image, (left, top))
    return canvas.convert("RGB")


def render_cycles(characters: Sequence[str], variants: Sequence[Variant],
                  root: Optional[pathlib.Path] = None) -> torch.Tensor:
    """IMAGE-like frames ``[C, K, F, CANVAS, CANVAS, 3]`` in 0..1 for characters x variants x walk frames."""
    root = root or kenney_characters_dir()
    out = torch.empty(len(characters), len(variants), WALK_FRAMES, CANVAS, CANVAS, 3)
    for c, character in enumerate(characters):
        cycle = walk_cycle(character, root)
        for k, variant in enumerate(variants):
            for f, sprite in enumerate(cycle):
                out[c, k, f] = torch.from_numpy(np.array(render(sprite, variant))).float() / 255.0
    return out


def encode_cycles(encode: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, batch: int = 32,
                  progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """``[..., H, W, 3]`` frames -> ``[..., D]`` embeddings with a frozen ``encode(IMAGE) -> [B, D]``."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    chunks = []
    for start in range(0, flat.shape[0], batch):
        with torch.no_grad():
            chunks.append(encode(flat[start:start + batch]).float())
        if progress:
            progress(min(start + batch, flat.shape[0]), flat.shape[0])
    embeds = torch.cat(chunks)
    return embeds.view(*frames.shape[:-3], embeds.shape[-1])


# ---------------------------------------------------------------------- clips
def clip_indices(start: int, frames: int, direction: int) -> list[int]:
    """Frame indices of a clip along a cycle, wrapping around (``direction`` +1 or -1)."""
    return [(start + direction * j) % WALK_FRAMES for j in range(frames)]


def random_clip_index(characters: int, variants: int, batch: int, frames: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where ``batch`` random clips lie in cycles ``[C, K, F, ...]``: character ``[B, 1]``, variant
    ``[B, 1]`` and frame ``[B, L]`` indices (any start, either direction, wrapping around)."""
    c = torch.randint(0, characters, (batch,), generator=generator)
    k = torch.randint(0, variants, (batch,), generator=generator)
    start = torch.randint(0, WALK_FRAMES, (batch,), generator=generator)
    direction = torch.randint(0, 2, (batch,), generator=generator) * 2 - 1
    index = (start.unsqueeze(1) + direction.unsqueeze(1) * torch.arange(frames)) % WALK_FRAMES     # [B, L]
    return c.unsqueeze(1), k.unsqueeze(1), index


def sample_clips(cycles: torch.Tensor, batch: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """Random clips ``[B, L, D]`` from embedded cycles ``[C, K, F, D]``."""
    return cycles[random_clip_index(cycles.shape[0], cycles.shape[1], batch, frames, generator)]


def all_clip_index(characters: int, variants: int,
                   frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where every clip of ``frames`` frames lies (all characters, variants, starts, both directions),
    as :func:`random_clip_index`: ``[N, 1]``, ``[N, 1]``, ``[N, L]``, N = C * K * 2F."""
    index_sl = torch.tensor([clip_indices(s, frames, d) for s in range(WALK_FRAMES) for d in (1, -1)])
    starts = index_sl.shape[0]
    c = torch.arange(characters).repeat_interleave(variants * starts)
    k = torch.arange(variants).repeat_interleave(starts).repeat(characters)
    return c.unsqueeze(1), k.unsqueeze(1), index_sl.repeat(characters * variants, 1)


def all_clips(cycles: torch.Tensor, frames: int) -> torch.Tensor:
    """Every clip of length ``frames`` (all characters, variants, starts, both directions) ``[N, L, D]``."""
    return cycles[all_clip_index(cycles.shape[0], cycles.shape[1], frames)]


def inner(x_bld: torch.Tensor) -> torch.Tensor:
    """The frames strictly between the endpoints (what is predicted)."""
    return x_bld[:, 1:-1]


def motion_loss(pred_bld: torch.Tensor, target_bld: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine distance plus squared error / ``scale`` (the data's per-dimension variance) on inner frames."""
    p, t = inner(pred_bld), inner(target_bld)
    return (1 - F.cosine_similarity(p, t, dim=-1)).mean() + F.mse_loss(p, t) / scale


def embedding_scale(cycles: torch.Tensor) -> float:
    """Mean per-dimension variance of the embeddings: makes the squared error scale-free."""
    return float(cycles.reshape(-1, cycles.shape[-1]).var(dim=0).mean())


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    min_frames: int = 3
    max_frames: int = WALK_FRAMES + 1
    seed: int = 0


def train_predictor(model: SemanticMotionPredictor, cycles: torch.Tensor, settings: TrainSettings,
                    log: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """AdamW with a cosine schedule on random clips of random length; returns the loss per step."""
    generator = torch.Generator().manual_seed(settings.seed)
    scale = embedding_scale(cycles)
    with torch.no_grad():
        model.embed_scale.fill_(float(cycles.reshape(-1, cycles.shape[-1]).std(dim=0).mean()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps,
                                                   pct_start=0.05)   # short warm-up, cosine decay
    model.train()
    losses = []
    for step in range(settings.steps):
        frames = int(torch.randint(settings.min_frames, settings.max_frames + 1, (), generator=generator))
        clips = sample_clips(cycles, settings.batch, frames, generator)
        loss = motion_loss(model(clips[:, 0], clips[:, -1], frames), clips, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log:
            log(step, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: SemanticMotionPredictor, cycles: torch.Tensor,
             lengths: Sequence[int] = tuple(range(3, WALK_FRAMES + 2))) -> dict:
    """Cosine similarity and MSE of predicted vs true inner-frame embeddings, SMP and linear interpolation,
    over every clip of every length (each inner frame counts once per clip)."""
    sums = {"smp_cos": 0.0, "linear_cos": 0.0, "smp_mse": 0.0, "linear_mse": 0.0}
    count = 0
    for frames in lengths:
        clips = all_clips(cycles, frames)
        predicted = inner(model(clips[:, 0], clips[:, -1], frames))
        linear = inner(interpolate(clips[:, 0], clips[:, -1], frames))
        truth = inner(clips)
        for name, guess in (("smp", predicted), ("linear", linear)):
            sums[f"{name}_cos"] += float(F.cosine_similarity(guess, truth, dim=-1).sum())
            sums[f"{name}_mse"] += float(((guess - truth) ** 2).mean(dim=-1).sum())
        count += truth.shape[0] * truth.shape[1]
    result = {k: v / count for k, v in sums.items()}
    result["frames_scored"] = count
    return result
