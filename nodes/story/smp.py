"""StoryDiffusion's Semantic Motion Predictor (SMP), written from the paper (arXiv 2405.01434); pure torch.

The paper's second stage turns two story frames into a video: both are encoded by an image encoder
(CLIP in the paper), the two embeddings are linearly interpolated to ``L`` per-frame embeddings, and
a transformer predicts the semantic embedding of every frame, which then conditions a video
diffusion model through IP-Adapter-style cross-attention (``motion_tokens`` and ``motion_patch``).
No SMP code, weights or training recipe were released, so these choices are ours (where the paper
is silent):

* **Residual on the interpolation.** The network predicts a correction that is added to the
  interpolated embedding, and its last layer starts at zero: an untrained predictor is exactly
  linear interpolation, and training moves it away from that baseline only where data says so.
* **Two parts.** A transformer over the ``L`` interpolated frames (the paper's SMP body) gives each
  frame a small context vector; a *channel head*, one small MLP shared by every embedding channel,
  turns (that channel's start and end values, ``t``, the clip's endpoint distance and cosine, the
  frame's context) into the channel's correction. Sharing the head across channels is what made
  the predictor generalise to unseen characters in our experiments (BENCHMARKS.md); a transformer
  writing the whole correction through a linear layer overfitted to the training identities.
* **Known endpoints stay fixed.** Frames 0 and ``L-1`` are the given images; the correction is
  scaled by ``4 t (1 - t)``, which is exactly zero there, so their embeddings come back unchanged.
* **Frame position as a fraction.** Each frame gets sinusoidal features of ``t = i / (L-1)``
  through a linear layer, so one predictor serves any ``L``.
* **Heads from the width.** Attention heads are 64 wide (``heads = hidden // 64``, at least one);
  ``embed_scale`` (the data's typical channel spread, set by training) is stored as a tensor; so
  the whole configuration follows from a file's tensor shapes.

Files store the predictor under ``smp.`` (see :func:`predictor_state_dict`); the same file may also
hold the cross-attention conditioning (``image_proj.*``, ``ip_adapter.*``, see ``motion_tokens``).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import BoundlessError
from ..common.weights import strict_load

PREFIX = "smp."
HEAD_DIM = 64
CHANNEL_FEATURES = 6     # start, end, t, envelope, clip distance, clip cosine


@dataclasses.dataclass(frozen=True)
class SMPConfig:
    """Sizes of a predictor. ``embed_dim`` is the image encoder's embedding width (CLIP ViT-H image
    embeds: 1024; the EfficientNet-lite0 stand-in: 1280)."""

    embed_dim: int = 1024
    hidden_dim: int = 1024
    depth: int = 8
    mlp_dim: int = 4096
    time_features: int = 32
    context_dim: int = 8
    head_width: int = 32

    def __post_init__(self):
        if min(self.embed_dim, self.hidden_dim, self.depth, self.mlp_dim, self.time_features, self.context_dim,
               self.head_width) < 1:
            raise BoundlessError(f"SMP sizes must be positive: {self}")
        if self.hidden_dim % self.heads or self.time_features % 2:
            raise BoundlessError(f"SMP hidden_dim must split into {HEAD_DIM}-wide heads and time_features must "
                                 f"be even: {self}")

    @property
    def heads(self) -> int:
        return max(1, self.hidden_dim // HEAD_DIM)


def frame_times(frames: int, device=None) -> torch.Tensor:
    """``[L]`` fractions ``i / (L-1)``: exactly 0 at the first frame and exactly 1 at the last."""
    if frames < 2:
        raise BoundlessError(f"a transition needs at least 2 frames (start and end), got {frames}")
    return torch.arange(frames, device=device, dtype=torch.float32) / (frames - 1)


def interpolate(start_bd: torch.Tensor, end_bd: torch.Tensor, frames: int) -> torch.Tensor:
    """Linear interpolation of embeddings: ``[B, D]`` x 2 -> ``[B, L, D]``; the baseline the SMP refines.

    Written as ``(1-t)*start + t*end`` so both endpoints are reproduced bit-exactly."""
    t = frame_times(frames, start_bd.device).to(start_bd.dtype).view(1, frames, 1)     # [1, L, 1]
    return (1 - t) * start_bd.unsqueeze(1) + t * end_bd.unsqueeze(1)


def time_features(t_l: torch.Tensor, features: int) -> torch.Tensor:
    """Sinusoidal features ``[L, features]`` of fractions in [0, 1]; frequencies pi .. 256 pi."""
    half = features // 2
    freqs = math.pi * 2.0 ** (torch.arange(half, device=t_l.device, dtype=torch.float32) * (8.0 / half))
    angles = t_l.float().unsqueeze(1) * freqs                                          # [L, half]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FrameAttention(nn.Module):
    """Bidirectional multi-head self-attention across the frames of a transition (PyTorch SDPA)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x_blc: torch.Tensor) -> torch.Tensor:
        b, l, c = x_blc.shape
        q, k, v = self.qkv(x_blc).view(b, l, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, L, d]
        y = F.scaled_dot_product_attention(q, k, v)                                                 # [B, h, L, d]
        return self.out(y.transpose(1, 2).reshape(b, l, c))


class FrameMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class FrameBlock(nn.Module):
    """Pre-norm transformer layer over the frame axis."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FrameAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FrameMLP(dim, mlp_dim)

    def forward(self, x_blc: torch.Tensor) -> torch.Tensor:
        x_blc = x_blc + self.attn(self.norm1(x_blc))
        return x_blc + self.mlp(self.norm2(x_blc))


class SemanticMotionPredictor(nn.Module):
    """Start/end embeddings -> per-frame semantic embeddings (see the module docstring)."""

    def __init__(self, config: SMPConfig):
        super().__init__()
        self.config = config
        h, k, w = config.hidden_dim, config.context_dim, config.head_width
        self.register_buffer("embed_scale", torch.ones(1))   # typical spread of one embedding channel (set by training)
        self.input_proj = nn.Linear(config.embed_dim, h)
        self.time_proj = nn.Linear(config.time_features, h)
        self.blocks = nn.ModuleList(FrameBlock(h, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(h)
        self.context_proj = nn.Linear(h, k)
        self.head_in = nn.Linear(CHANNEL_FEATURES + k, w)
        self.head_hidden = nn.Linear(w, w)
        self.head_out = nn.Linear(w, 1)
        nn.init.zeros_(self.head_out.weight)           # untrained predictor == linear interpolation
        nn.init.zeros_(self.head_out.bias)

    def forward(self, start_bd: torch.Tensor, end_bd: torch.Tensor, frames: int) -> torch.Tensor:
        """``[B, D]`` start and end embeddings -> ``[B, L, D]``; frame 0 = start, frame L-1 = end exactly."""
        d = self.config.embed_dim
        if start_bd.shape != end_bd.shape or start_bd.ndim != 2 or start_bd.shape[1] != d:
            raise BoundlessError(f"the SMP expects start and end embeddings of shape [B, {d}], got "
                                 f"{tuple(start_bd.shape)} and {tuple(end_bd.shape)}; use the image encoder the "
                                 "predictor was trained with")
        base_bld = interpolate(start_bd, end_bd, frames)                                  # [B, L, D]
        dtype = self.input_proj.weight.dtype
        scale = self.embed_scale.to(dtype)
        a_bd, b_bd = start_bd.to(dtype) / scale, end_bd.to(dtype) / scale
        t_l = frame_times(frames, start_bd.device).to(dtype)
        envelope_l = 4 * t_l * (1 - t_l)                 # 0 at both endpoints, 1 half-way
        # Frame context: a transformer over the interpolated frames (the paper's SMP body).
        h_blc = self.input_proj(interpolate(a_bd, b_bd, frames)) + self.time_proj(
            time_features(t_l, self.config.time_features).to(dtype))
        for block in self.blocks:
            h_blc = block(h_blc)
        context_blk = self.context_proj(self.norm_out(h_blc))                            # [B, L, K]
        # Channel head: one small MLP shared by all channels maps (start, end, t, clip, context) to a
        # correction of that channel; its first layer is applied term by term (per channel, per clip,
        # per frame) and broadcast, so the [B, L, D, features] input is never materialised.
        w_in = self.head_in.weight                                                         # [W, F + K]
        mean_norm_b = (0.5 * (a_bd.norm(dim=1) + b_bd.norm(dim=1))).clamp_min(1e-6)
        distance_b = (b_bd - a_bd).norm(dim=1) / mean_norm_b
        cosine_b = F.cosine_similarity(a_bd, b_bd, dim=1)
        per_channel = a_bd.unsqueeze(-1) * w_in[:, 0] + b_bd.unsqueeze(-1) * w_in[:, 1]      # [B, D, W]
        per_clip = distance_b.unsqueeze(-1) * w_in[:, 2] + cosine_b.unsqueeze(-1) * w_in[:, 3]  # [B, W]
        per_frame = (t_l.view(1, -1, 1) * w_in[:, 4] + envelope_l.view(1, -1, 1) * w_in[:, 5]
                     + context_blk @ w_in[:, CHANNEL_FEATURES:].T
                     + per_clip.unsqueeze(1) + self.head_in.bias)                               # [B, L, W]
        x = F.gelu(per_channel.unsqueeze(1) + per_frame.unsqueeze(2))                    # [B, L, D, W]
        x = F.gelu(self.head_hidden(x))
        delta_bld = self.head_out(x).squeeze(-1) * envelope_l.view(1, -1, 1) * scale     # [B, L, D]
        return base_bld + delta_bld.to(base_bld.dtype)


def story_motion(keyframes_nd: torch.Tensor, frames: int,
                 predictor: Optional[SemanticMotionPredictor] = None) -> torch.Tensor:
    """Embeddings of a whole story video: ``N`` keyframes -> ``(N-1)*(L-1)+1`` frames ``[T, D]``.

    Consecutive keyframes make one transition of ``frames`` frames each; the keyframe shared by two
    transitions appears once. ``predictor=None`` gives plain linear interpolation (the baseline)."""
    if keyframes_nd.ndim != 2 or keyframes_nd.shape[0] < 2:
        raise BoundlessError(f"a motion needs at least two keyframe embeddings [N>=2, D], got shape "
                             f"{tuple(keyframes_nd.shape)}: give a start and an end image, or a batch of story frames")
    start, end = keyframes_nd[:-1], keyframes_nd[1:]
    if predictor is None:
        per_transition = interpolate(start, end, frames)                                  # [N-1, L, D]
    else:
        per_transition = predictor(start, end, frames)
    tail = per_transition[:, 1:].reshape(-1, keyframes_nd.shape[1])                      # drop repeated starts
    return torch.cat([keyframes_nd[:1].to(tail.dtype), tail], dim=0)


# ---------------------------------------------------------------------- files
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise BoundlessError(f"not a Semantic Motion Predictor file: '{PREFIX}{key}' is missing. Use a file made by "
                             "scripts/train_smp.py (or Boundless' demo boundless_demo_smp.safetensors)")
    return tuple(sd[key].shape)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> SMPConfig:
    """Infer the predictor's sizes from the (prefix-free) keys and shapes of its state dict."""
    hidden, embed = _shape(sd, "input_proj.weight")
    _, time = _shape(sd, "time_proj.weight")
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    if depth == 0:
        raise BoundlessError("Semantic Motion Predictor file has no transformer blocks ('smp.blocks.0.*')")
    mlp = _shape(sd, "blocks.0.mlp.fc1.weight")[0]
    context = _shape(sd, "context_proj.weight")[0]
    width = _shape(sd, "head_in.weight")[0]
    return SMPConfig(embed_dim=embed, hidden_dim=hidden, depth=depth, mlp_dim=mlp, time_features=time,
                     context_dim=context, head_width=width)


def predictor_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The predictor's tensors of a combined file, without the ``smp.`` prefix."""
    return {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}


def load_predictor(sd: Mapping[str, torch.Tensor], what: str = "Semantic Motion Predictor") -> SemanticMotionPredictor:
    """Build a predictor from a combined state dict (keys ``smp.*``), checking every key and shape."""
    own = predictor_keys(sd)
    model = SemanticMotionPredictor(config_from_state_dict(own))
    strict_load(model, {k: v.float() for k, v in own.items()}, what)
    return model.eval()


def predictor_state_dict(model: SemanticMotionPredictor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Tensors to save, under the ``smp.`` prefix."""
    return {PREFIX + k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
