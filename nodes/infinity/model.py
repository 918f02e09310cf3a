"""The local token decoder of NUWA-Infinity: causal within a patch, attending to the NCP in every layer.

A patch of ``T = patch_h * patch_w`` tokens is one sequence of ``T + 1`` positions: a learned
start vector followed by the patch's tokens in scan order; position ``s`` predicts token ``s``. The
scan is raster, or for a model with ``mirrored_scan`` raster mirrored toward the finished side for
orders ``left`` / ``up`` (``token_scan``, ``InfinityTransformer.scan``); caches are always raster.
In every layer the self-attention keys/values are ``[context patches ‖ own causal prefix]``:

* the context part is projected by this layer's key/value weights from the cached hidden states
  of the same layer of the selected NCP patches (``ncp.PatchCache``), each shifted by a learned
  relative-position vector of its offset (``rel_k``/``rel_v``, one row per window cell, see
  ``adc.relative_index``);
* the own part gets the table's centre row, so the current patch is position (0, 0, 0);
* with token geometry (``config.rope_base``, see ``rope.py``) every query and key, own or context,
  is also rotated by its token's canvas coordinates, so attention scores depend on the offset
  between two tokens and a patch finds the neighbour tokens it continues (the old design could not,
  BENCHMARKS.md "Continuity").

Guided sampling (``sampler.Guidance``) runs a patch in row groups of one batch. Context caches then
hold fewer rows than the batch (one group's worth) and their keys/values are repeated per group, and
``context_rows`` says how many leading rows see the context at all: the rest are the same patch
without its neighbours (neighbour guidance), whose attention covers only their own tokens.

A finished patch's cache is each layer's normalised input at positions 1..T, i.e. one entry per
token, so every token, the last included, is visible to later patches. Projecting context states
with the current weights (rather than caching projected keys/values) is what lets training teach
the key/value projections what a patch should expose to its neighbours: the states are detached,
the projections are not. Optional text
cross-attention follows the self-attention in each block. Attention is PyTorch SDPA.

Frame alignment (optional, ``config.frame_align``; not in the paper): in a video most tokens equal
the token at the same place in the previous frame, but finding that one token among the NCP's
hundreds or thousands of context entries by attention alone is something a small model trained on
little data does not learn: it memorises its training clips instead (the walk demo trained without
it kept 79 % of the unchanged tokens of characters it never saw; the one trained with it, 95 %, see
BENCHMARKS.md). With frame alignment,
position ``s`` also receives a learned projection of the previous frame's layer-0 state of token
``s`` of the same patch (offset (0, 0, -1) in the NCP), so "keep unless something moves" is one
linear map away. The projection starts at zero, so adding it to a trained model changes nothing.
With ``config.align_radius`` r > 0 the projection is a (2r+1)×(2r+1) convolution over the previous
frame's layer-0 states around the position (taken from the previous frame's patch and its
neighbours in the NCP), so "the token one to the right in the previous frame" — what a camera pan
brings here — is as near as the token at the same place. Attention alone does not find it: a small
model trained on clips whose rows pan one token a frame learns to keep still rows but predicts the
panned tokens at chance (BENCHMARKS.md, "Why the video model stands still").
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import BoundlessError
from . import rope, token_scan
from .adc import center_index, relative_index
from .config import Extents, InfinityConfig
from .ncp import ContextItem, PatchCache

PREVIOUS_FRAME = (0, 0, -1)  # NCP offset of the same patch in the previous frame

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, heads, N, head_dim]


def split_heads(x_bnd: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x_bnd.shape
    return x_bnd.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x_bhnd: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x_bhnd.shape
    return x_bhnd.transpose(1, 2).reshape(b, n, h * d)


def repeat_rows(x_b: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its batch repeated (as whole groups) to ``rows`` rows; the same tensor when it has them."""
    b = x_b.shape[0]
    if b == rows:
        return x_b
    if rows % b:
        raise BoundlessError(f"cannot spread {b} rows of context over a batch of {rows}")
    return x_b.repeat(rows // b, *[1] * (x_b.ndim - 1))


class SelfAttention(nn.Module):
    """Causal self-attention over the patch, with context keys/values of NCP patches in front."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        cells = cfg.trained_extents.cells
        self.rel_k = nn.Parameter(torch.zeros(cells, cfg.dim))   # [cells, dim] added to keys
        self.rel_v = nn.Parameter(torch.zeros(cells, cfg.dim))   # [cells, dim] added to values

    def project(self, x_bsd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (split), raw keys and raw values ``[B, S, dim]``."""
        q, k, v = self.qkv(x_bsd).chunk(3, dim=-1)
        return split_heads(q, self.heads), k, v

    def context(self, hidden_bnd: torch.Tensor, rel_n: torch.Tensor, rot: Optional[rope.Rotation]) -> LayerKV:
        """Keys/values of cached context states, shifted by their relative-position rows (and rotated
        by their canvas coordinates with token geometry), split into heads."""
        dim = hidden_bnd.shape[-1]
        keys, values = F.linear(hidden_bnd, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        keys = split_heads(keys + self.rel_k[rel_n], self.heads)
        if rot is not None:
            keys = rope.rotate(keys, rot)
        return keys, split_heads(values + self.rel_v[rel_n], self.heads)

    def forward(self, x_bsd: torch.Tensor, context: Optional[LayerKV], center: int,
                rot: Optional[tuple[rope.Rotation, rope.Rotation]],
                context_rows: Optional[int] = None) -> torch.Tensor:
        """Teacher-forced pass over a whole (normalised) prefix; ``rot``: own query/key rotations or None;
        ``context_rows``: how many leading rows see the context (None: all)."""
        q, k, v = self.project(x_bsd)
        k_own = split_heads(k + self.rel_k[center], self.heads)
        v_own = split_heads(v + self.rel_v[center], self.heads)
        if rot is not None:
            s = x_bsd.shape[1]
            (q_cos, q_sin), (k_cos, k_sin) = rot
            q, k_own = rope.rotate(q, (q_cos[:s], q_sin[:s])), rope.rotate(k_own, (k_cos[:s], k_sin[:s]))
        if context is None:
            out = F.scaled_dot_product_attention(q, k_own, v_own, is_causal=True)
        else:
            ctx_k, ctx_v = (repeat_rows(kv, x_bsd.shape[0]) for kv in context)
            b, s, n = x_bsd.shape[0], x_bsd.shape[1], ctx_k.shape[2]
            mask = torch.ones(s, n + s, dtype=torch.bool, device=x_bsd.device)
            mask[:, n:] = torch.ones(s, s, dtype=torch.bool, device=x_bsd.device).tril()
            if context_rows is not None and context_rows < b:                         # [B, 1, s, n + s]
                mask = mask.expand(b, 1, s, n + s).clone()
                mask[context_rows:, :, :, :n] = False
            out = F.scaled_dot_product_attention(q, torch.cat([ctx_k, k_own], 2), torch.cat([ctx_v, v_own], 2),
                                                 attn_mask=mask)
        return self.proj(merge_heads(out))


class CrossAttention(nn.Module):
    """Attention from patch tokens to a text context ``[B, L, text_dim]``."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.text_dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def text_kv(self, text_bld: torch.Tensor) -> LayerKV:
        k, v = self.kv(text_bld).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x_bsd: torch.Tensor, text: LayerKV) -> torch.Tensor:
        q = split_heads(self.q(x_bsd), self.heads)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, *text)))


class MLP(nn.Module):
    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN: self-attention (with NCP context) → text cross-attention (optional) → MLP."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg)
        if cfg.text_dim:
            self.norm_text = nn.LayerNorm(cfg.dim)
            self.cross = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x_bsd, context: Optional[LayerKV], center: int, text: Optional[LayerKV], rot=None,
                context_rows: Optional[int] = None):
        """Returns the block output and the attention's normalised input (the NCP cache entry)."""
        h_bsd = self.norm1(x_bsd)
        x_bsd = x_bsd + self.attn(h_bsd, context, center, rot, context_rows)
        if text is not None:
            x_bsd = x_bsd + self.cross(self.norm_text(x_bsd), text)
        return x_bsd + self.mlp(self.norm2(x_bsd)), h_bsd


class Scan:
    """The reading order of a patch that is not raster (``token_scan``): ``index`` ``[T]`` is the raster
    place of the j-th token read, ``inverse`` the reverse map, ``positions`` ``[T + 1]`` the row of
    the position table each sequence place gets (that of the token it predicts; the last place, which
    predicts nothing, keeps row T), also as plain ints (``position_list``) for the token-by-token
    decoder, which then indexes without reading the device."""

    def __init__(self, index_t: torch.Tensor, device: torch.device):
        positions = torch.cat([index_t, index_t.new_tensor([index_t.numel()])])
        self.position_list = positions.tolist()
        self.index, self.inverse, self.positions = (x.to(device) for x in (index_t, index_t.argsort(), positions))


class InfinityTransformer(nn.Module):
    """Token decoder for one patch given its NCP context, order and optional text."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.n_embed, cfg.dim)
        self.bos = nn.Parameter(torch.zeros(cfg.dim))
        self.pos_emb = nn.Parameter(torch.zeros(cfg.tokens_per_patch + 1, cfg.dim))  # [T+1, dim]
        self.order_emb = nn.Parameter(torch.zeros(cfg.n_orders, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.n_embed)
        if cfg.frame_align:
            reach = 2 * cfg.align_radius + 1
            self.frame_align = nn.Conv2d(cfg.dim, cfg.dim, reach) if cfg.align_radius else nn.Linear(cfg.dim, cfg.dim)
        if cfg.rope_base:
            self.register_buffer("rope_base", torch.tensor(cfg.rope_base, dtype=torch.int64))
        if cfg.mirrored_scan:
            self.register_buffer("mirrored_scan", torch.tensor(1, dtype=torch.int64))
        self._own_rotation: dict[tuple, tuple[rope.Rotation, rope.Rotation]] = {}
        self._scans: dict[tuple, Scan] = {}
        # Integers the shapes cannot tell; saved with the weights so a checkpoint is self-describing.
        self.register_buffer("patch_shape", torch.tensor([cfg.patch_h, cfg.patch_w], dtype=torch.int64))
        self.register_buffer("trained_extents", torch.tensor(cfg.trained_extents.as_tuple(), dtype=torch.int64))
        self.register_buffer("num_heads", torch.tensor(cfg.heads, dtype=torch.int64))
        # The VQGAN the tokens belong to (fingerprint, pixels per token) and, for text models, the
        # identity of the text encoder whose states it was trained on; from checkpoint metadata.
        self.tokenizer = ""
        self.factor = 0
        self.text_encoder = ""
        self._fingerprint = ""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for param in (self.bos, self.pos_emb, self.order_emb):
            nn.init.normal_(param, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.rel_k, std=0.02)
            nn.init.normal_(block.attn.rel_v, std=0.02)
        if self.config.frame_align:
            nn.init.zeros_(self.frame_align.weight)
            nn.init.zeros_(self.frame_align.bias)

    # -- identity ---------------------------------------------------------------------------------
    @property
    def extents(self) -> Extents:
        return self.config.trained_extents

    def fingerprint(self) -> str:
        """Stable id of these weights (config plus position tables), stored in canvas states.

        Computed once — at load time for checkpoints — and kept, so moving or casting the model
        (ComfyUI may run it in half precision) does not change its identity.
        """
        if not self._fingerprint:
            digest = hashlib.sha1(self.config.to_json().encode())
            for tensor in (self.pos_emb, self.order_emb, self.blocks[0].attn.rel_k, self.head.bias):
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = f"infinity:{digest.hexdigest()[:16]}"
        return self._fingerprint

    # -- token geometry and scan -------------------------------------------------------------------
    def own_rotation(self, order: int = 0) -> Optional[tuple[rope.Rotation, rope.Rotation]]:
        """Rotations (cos, sin ``[T + 1, head_dim / 2]``) of the current patch's queries and keys in the
        scan of ``order``, made once per device and dtype, or None for a model without token geometry."""
        cfg = self.config
        if not cfg.rope_base:
            return None
        flip = token_scan.flips(order, cfg.mirrored_scan)
        key = (self.pos_emb.device, self.pos_emb.dtype, flip)
        if key not in self._own_rotation:
            q_coords, k_coords = rope.own_coords(cfg.tokens_per_patch, cfg.patch_w, key[0], cfg.patch_h, *flip)
            self._own_rotation[key] = tuple(
                rope.rotation(rope.angles(c, cfg.head_dim, cfg.rope_axes, cfg.rope_base), key[1])
                for c in (q_coords, k_coords))
        return self._own_rotation[key]

    def scan(self, order: int) -> Optional[Scan]:
        """How patches of ``order`` are read when not in raster order (``token_scan``), else None."""
        cfg = self.config
        flip = token_scan.flips(order, cfg.mirrored_scan)
        if not any(flip):
            return None
        key = (self.pos_emb.device, flip)
        if key not in self._scans:
            self._scans[key] = Scan(token_scan.scan_index(cfg.patch_h, cfg.patch_w, *flip), key[0])
        return self._scans[key]

    def scanned(self, tokens_bt: torch.Tensor, order: int) -> torch.Tensor:
        """A whole patch's raster tokens (or values per token) ``[B, T, ...]`` in the scan of ``order``."""
        scan = self.scan(order)
        return tokens_bt if scan is None else tokens_bt[:, scan.index.to(tokens_bt.device)]

    def rastered(self, scanned_bt: torch.Tensor, order: int) -> torch.Tensor:
        """The inverse of ``scanned``: ``[B, T, ...]`` in the scan of ``order`` back in raster order."""
        scan = self.scan(order)
        return scanned_bt if scan is None else scanned_bt[:, scan.inverse.to(scanned_bt.device)]

    # -- conditioning -----------------------------------------------------------------------------
    def prepare_context(self, context: Sequence[ContextItem]) -> list[Optional[LayerKV]]:
        """Per-layer context keys/values (relative rows added, rotated by canvas coordinates with
        token geometry) of the selected NCP patches."""
        if not context:
            return [None] * len(self.blocks)
        cfg = self.config
        t = cfg.tokens_per_patch
        device = self.pos_emb.device
        hidden = torch.cat([item.cache.hidden for item in context], dim=2).to(device, self.pos_emb.dtype)
        rel_n = torch.tensor([relative_index(item.offset, cfg.trained_extents) for item in context],
                             device=device).repeat_interleave(t)                     # [N*T]
        rot = None
        if cfg.rope_base:
            coords = rope.context_coords([item.offset for item in context], cfg.patch_h, cfg.patch_w, device)
            rot = rope.rotation(rope.angles(coords, cfg.head_dim, cfg.rope_axes, cfg.rope_base), hidden.dtype)
        return [block.attn.context(hidden[layer], rel_n, rot) for layer, block in enumerate(self.blocks)]

    def aligned_input(self, context: Sequence[ContextItem], batch: Optional[int] = None,
                      context_rows: Optional[int] = None) -> Optional[torch.Tensor]:
        """Input shift ``[B, T, dim]`` of each token position from the previous frame (frame alignment).

        None when the model has no frame alignment or the context holds no previous frame (a first
        frame, an image, or e_f = 0). With ``batch`` the shift is repeated to that many rows, and rows
        from ``context_rows`` on get none: the previous frame is context too.
        """
        if not self.config.frame_align:
            return None
        previous = next((item for item in context if item.offset == PREVIOUS_FRAME), None)
        if previous is None:
            return None
        if self.config.align_radius:
            window_bdhw = self.previous_frame_window(context)
            shift_btd = self.frame_align(window_bdhw).flatten(2).transpose(1, 2)
        else:
            layer0_btd = previous.cache.hidden[0].to(self.pos_emb.device, self.pos_emb.dtype)
            shift_btd = self.frame_align(layer0_btd)
        if batch is not None:
            shift_btd = repeat_rows(shift_btd, batch)
        if context_rows is not None and context_rows < shift_btd.shape[0]:
            shift_btd = shift_btd.clone()
            shift_btd[context_rows:] = 0
        return shift_btd

    def previous_frame_window(self, context: Sequence[ContextItem]) -> torch.Tensor:
        """The previous frame's layer-0 states around the current patch, ``[B, dim, ph + 2r, pw + 2r]``
        (r = ``align_radius``), read from the previous frame's patch and its neighbours in the NCP;
        zeros where the canvas ends or the NCP holds no such patch."""
        cfg = self.config
        ph, pw, r = cfg.patch_h, cfg.patch_w, cfg.align_radius
        neighbours = {item.offset[:2]: item.cache.hidden[0] for item in context
                      if item.offset[2] == -1 and abs(item.offset[0]) <= 1 and abs(item.offset[1]) <= 1}
        batch = neighbours[(0, 0)].shape[0]
        mosaic_bdhw = torch.zeros(batch, cfg.dim, 3 * ph, 3 * pw, device=self.pos_emb.device, dtype=self.pos_emb.dtype)
        for (dw, dh), layer0_btd in neighbours.items():
            states_bdhw = layer0_btd.to(mosaic_bdhw).transpose(1, 2).reshape(batch, cfg.dim, ph, pw)
            mosaic_bdhw[:, :, (dh + 1) * ph:(dh + 2) * ph, (dw + 1) * pw:(dw + 2) * pw] = states_bdhw
        return mosaic_bdhw[:, :, ph - r:2 * ph + r, pw - r:2 * pw + r]

    def prepare_text(self, text_bld: Optional[torch.Tensor], batch: int) -> list[Optional[LayerKV]]:
        """Per-layer text keys/values, or Nones for a model without a text branch."""
        if not self.config.text_dim:
            if text_bld is not None:
                raise BoundlessError("this NUWA-Infinity model has no text branch; generate without text "
                                     "or load a text-conditioned checkpoint")
            return [None] * len(self.blocks)
        if text_bld is None:
            raise BoundlessError("this NUWA-Infinity model is text-conditioned; give a text embedding "
                                 f"[B, L, {self.config.text_dim}]")
        if text_bld.ndim != 3 or text_bld.shape[-1] != self.config.text_dim or text_bld.shape[0] not in (1, batch):
            raise BoundlessError(f"text embedding must be [B, L, {self.config.text_dim}] with B = 1 or {batch}, "
                                 f"got {tuple(text_bld.shape)}; use the text encoder the model was trained with")
        text_bld = text_bld.to(self.pos_emb.device, self.pos_emb.dtype).expand(batch, -1, -1)
        return [block.cross.text_kv(text_bld) for block in self.blocks]

    def embed(self, tokens_bs: torch.Tensor, order: int) -> torch.Tensor:
        """Inputs ``[B, s+1, dim]``: start vector then the given tokens (scan order), plus the position
        of the token each place predicts and the order."""
        b, s = tokens_bs.shape
        x = torch.cat([self.bos.expand(b, 1, -1), self.tok_emb(tokens_bs)], dim=1)
        scan = self.scan(order)
        positions = self.pos_emb[:s + 1] if scan is None else self.pos_emb[scan.positions[:s + 1]]
        return x + positions + self.order_emb[order]

    # -- teacher-forced pass ----------------------------------------------------------------------
    def forward(self, tokens_bs: torch.Tensor, context: Sequence[ContextItem] = (), order: int = 0,
                text: Optional[torch.Tensor] = None,
                context_rows: Optional[int] = None) -> tuple[torch.Tensor, PatchCache]:
        """Run a patch (or its first ``s`` tokens) with known tokens in one pass.

        ``tokens_bs`` are in the scan of ``order`` (``scanned``; raster unless the model has
        ``mirrored_scan``). Returns logits ``[B, min(s+1, T), n_embed]`` (position j predicts the
        j-th token read) and the patch's per-layer cache over its ``s`` given tokens, in raster
        order for a whole patch. Used for training, for pre-caching known
        patches, and as the no-KV-cache reference of the incremental decoder. Guided rows: see the
        module docstring (``context_rows``: how many leading rows see the context; None = all).
        """
        t = self.config.tokens_per_patch
        if tokens_bs.ndim != 2 or tokens_bs.shape[1] > t:
            raise BoundlessError(f"expected patch tokens [B, <= {t}], got {tuple(tokens_bs.shape)}")
        contexts = self.prepare_context(context)
        texts = self.prepare_text(text, tokens_bs.shape[0])
        center = center_index(self.config.trained_extents)
        x = self.embed(tokens_bs, order)
        aligned_btd = self.aligned_input(context, tokens_bs.shape[0], context_rows)
        if aligned_btd is not None:
            n = min(x.shape[1], t)            # position j predicts token j: it gets token j's shift
            x = torch.cat([x[:, :n] + self.scanned(aligned_btd, order)[:, :n], x[:, n:]], dim=1)
        hidden = []
        rot = self.own_rotation(order)
        for block, ctx, txt in zip(self.blocks, contexts, texts):
            x, h = block(x, ctx, center, txt, rot, context_rows)
            hidden.append(h[:, 1:])
        logits = self.head(self.norm(x[:, :t]))
        hidden_lbsd = torch.stack(hidden)
        scan = self.scan(order)
        if scan is not None and tokens_bs.shape[1] == t:                # a whole patch: cache in raster order
            hidden_lbsd = hidden_lbsd[:, :, scan.inverse]
        return logits, PatchCache(hidden_lbsd)


class PatchDecoder:
    """Decodes one patch token by token with a KV cache over its own tokens.

    Feed the start (``step(None)``), then each sampled token; every call returns the logits of the
    next token, and after the last token has been fed ``cache()`` gives the patch's NCP entry.
    Context and text keys/values are computed once per patch and written at the front of
    preallocated per-layer buffers, so a step costs one token's worth of work.
    """

    @torch.no_grad()
    def __init__(self, model: InfinityTransformer, context: Sequence[ContextItem] = (), order: int = 0,
                 text: Optional[torch.Tensor] = None, batch: int = 1, context_rows: Optional[int] = None):
        cfg = model.config
        self.model = model
        self.order = order
        self.t = cfg.tokens_per_patch
        self.center = center_index(cfg.trained_extents)
        self.texts = model.prepare_text(text, batch)
        contexts = model.prepare_context(context)
        self.scan = model.scan(order)
        self.positions = list(range(self.t + 1)) if self.scan is None else self.scan.position_list
        aligned = model.aligned_input(context, batch, context_rows)                   # [B, T, dim] or None
        self.aligned = None if aligned is None else model.scanned(aligned, order)
        self.n_ctx = 0 if contexts[0] is None else contexts[0][0].shape[2]
        # Rows from context_rows on (neighbour guidance) never read the context: their attention
        # covers only their own slots, so they cost no context work.
        self.context_rows = batch if context_rows is None or not self.n_ctx else context_rows
        dtype, device = model.pos_emb.dtype, model.pos_emb.device
        length = self.n_ctx + self.t + 1
        self.k_buf, self.v_buf = [], []
        for ctx in contexts:
            k_buf = torch.empty(batch, cfg.heads, length, cfg.head_dim, dtype=dtype, device=device)
            v_buf = torch.empty_like(k_buf)
            if ctx is not None:
                k_buf[:self.context_rows, :, :self.n_ctx] = repeat_rows(ctx[0], self.context_rows)
                v_buf[:self.context_rows, :, :self.n_ctx] = repeat_rows(ctx[1], self.context_rows)
            self.k_buf.append(k_buf)
            self.v_buf.append(v_buf)
        self.hidden = torch.empty(cfg.depth, batch, self.t + 1, cfg.dim, dtype=dtype, device=device)
        # The current patch's own keys/values get the centre row of the relative table.
        self.shift_k = [block.attn.rel_k[self.center].detach() for block in model.blocks]
        self.shift_v = [block.attn.rel_v[self.center].detach() for block in model.blocks]
        # Token geometry: per-position (cos, sin) rows sliced once here, not at every step and layer.
        rot = model.own_rotation(order)
        self.q_rot = None if rot is None else [(c[None], sn[None]) for c, sn in zip(*rot[0])]
        self.k_rot = None if rot is None else [(c[None], sn[None]) for c, sn in zip(*rot[1])]
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.batch = batch
        self.fed = 0

    @torch.no_grad()
    def step(self, token_b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Feed the start vector (``None``) or the previous token ``[B]``; return next logits ``[B, V]``.

        Returns ``None`` after the patch's last token, when there is nothing left to predict.
        """
        model, s = self.model, self.fed
        if (token_b is None) != (s == 0) or s > self.t:
            raise BoundlessError("PatchDecoder: feed None first, then exactly one token per step")
        if s == 0:
            x = model.bos.expand(self.batch, 1, -1)
        else:
            x = model.tok_emb(token_b.view(self.batch, 1))
        x = x + model.pos_emb[self.positions[s]] + model.order_emb[self.order]       # [B, 1, dim]
        if self.aligned is not None and s < self.t:
            x = x + self.aligned[:, s:s + 1]
        end = self.n_ctx + s + 1
        last_layer = len(model.blocks) - 1
        for layer, (block, txt) in enumerate(zip(model.blocks, self.texts)):
            attn = block.attn
            h = block.norm1(x)
            self.hidden[layer, :, s] = h[:, 0]
            q, k, v = attn.project(h)                                              # k, v [B, 1, dim]
            k_bh1d = split_heads(k + self.shift_k[layer], self.heads)
            if self.q_rot is not None:
                q = rope.rotate(q, self.q_rot[s])
                k_bh1d = rope.rotate(k_bh1d, self.k_rot[s])
            self.k_buf[layer][:, :, end - 1:end] = k_bh1d
            self.v_buf[layer][:, :, end - 1:end] = split_heads(v + self.shift_v[layer], self.heads)
            if s == self.t and layer == last_layer:
                break                      # the last token is fed only for its keys/values
            out = self._attend(q, self.k_buf[layer], self.v_buf[layer], end)
            x = x + attn.proj(merge_heads(out))
            if txt is not None:
                x = x + block.cross(block.norm_text(x), txt)
            x = x + block.mlp(block.norm2(x))
        self.fed += 1
        if s == self.t:
            return None
        return model.head(model.norm(x[:, 0]))

    def _attend(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, end: int) -> torch.Tensor:
        """Attention of this step's queries: the first ``context_rows`` rows over context and own
        slots, the others over their own slots only."""
        rows = self.context_rows
        out = F.scaled_dot_product_attention(q[:rows], k_buf[:rows, :, :end], v_buf[:rows, :, :end])
        if rows == self.batch:
            return out
        alone = F.scaled_dot_product_attention(q[rows:], k_buf[rows:, :, self.n_ctx:end],
                                               v_buf[rows:, :, self.n_ctx:end])
        return torch.cat([out, alone])

    def cache(self) -> PatchCache:
        if self.fed != self.t + 1:
            raise BoundlessError("PatchDecoder.cache(): the patch is not finished yet")
        hidden = self.hidden[:, :, 1:]
        return PatchCache(hidden.clone() if self.scan is None else hidden[:, :, self.scan.inverse])
