"""The token step of ``PatchDecoder`` with static shapes and addresses, so a GPU can replay it as one graph.

``PatchDecoder`` slices its key/value buffers to the current length and indexes its tables with
Python integers: every token launches each kernel again (about a hundred per layer and token), which
on a GPU costs more than the arithmetic of a small batch. ``StaticDecoder`` computes exactly the same
function on buffers allocated once per run:

* context keys/values of a patch are copied into fixed slots ``[0, max_context)``, unused slots are
  masked (and so is the whole context for rows from ``context_rows`` on: neighbour guidance); the
  patch's own keys/values go to slots ``max_context + s``;
* the position ``s`` and the previous token live in device tensors, and every table is read with
  ``index_select`` on them, so no host value enters the step;
* the step writes its logits into one output buffer.

``GraphStep`` captures ``StaticDecoder.step`` once as a CUDA graph and replays it per token; on any
other device (or when capture fails) it runs the step eagerly. Sampling stays outside the graph
(``common.draws`` needs its generator's state between draws). The step attends over the whole buffer
with a mask instead of a slice, so its logits equal ``PatchDecoder``'s to float rounding, not bit for
bit (tests/test_infinity_static_decoder.py).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..common.errors import BoundlessError
from . import rope
from .adc import center_index
from .model import InfinityTransformer, merge_heads, repeat_rows, split_heads
from .ncp import ContextItem, PatchCache


class StaticDecoder:
    """One run's decoder: ``begin`` a patch, then ``step`` once for the start and once per token."""

    @torch.no_grad()
    def __init__(self, model: InfinityTransformer, batch: int, max_context_tokens: int, text_tokens: int = 0):
        cfg = model.config
        self.model, self.batch, self.t = model, batch, cfg.tokens_per_patch
        self.max_context = max_context_tokens
        dtype, device = model.pos_emb.dtype, model.pos_emb.device
        length = self.max_context + self.t + 1
        # zeros, not empty: masked slots still enter the weighted sum (with weight 0), and 0 * NaN is NaN
        self.k_buf = [torch.zeros(batch, cfg.heads, length, cfg.head_dim, dtype=dtype, device=device)
                      for _ in model.blocks]
        self.v_buf = [torch.zeros_like(k) for k in self.k_buf]
        self.context_index = torch.arange(self.max_context, device=device)
        self.row_index = torch.arange(batch, device=device)
        # which context slots each row attends to, set per patch: [B, max_context]
        self.context_visible_bl = torch.zeros(batch, self.max_context, dtype=torch.bool, device=device)
        self.own_index = torch.arange(self.t + 1, device=device)
        # The patch's scan (``token_scan``), set per patch: position-table row of each place, and the
        # raster place of each token read (to store the cache in raster order).
        self.positions = torch.arange(self.t + 1, device=device)
        self.inverse = torch.arange(self.t, device=device)
        self.position = torch.zeros((), dtype=torch.int64, device=device)        # s
        self.token_b = torch.zeros(batch, dtype=torch.int64, device=device)     # the token fed at s >= 1
        self.order_row = torch.zeros(cfg.dim, dtype=dtype, device=device)
        self.hidden = torch.zeros(cfg.depth, batch, self.t + 1, cfg.dim, dtype=dtype, device=device)
        self.logits = torch.zeros(batch, cfg.n_embed, dtype=dtype, device=device)
        self.aligned = torch.zeros(batch, self.t, cfg.dim, dtype=dtype, device=device) if cfg.frame_align else None
        self.aligned_on = torch.zeros((), dtype=dtype, device=device)
        self.text_kv = None
        if cfg.text_dim:
            shape = (batch, cfg.heads, text_tokens, cfg.head_dim)
            self.text_kv = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype,
                                                                                          device=device))
                            for _ in model.blocks]
        center = center_index(cfg.trained_extents)
        self.shift_k = [block.attn.rel_k[center].detach() for block in model.blocks]
        self.shift_v = [block.attn.rel_v[center].detach() for block in model.blocks]
        rot = model.own_rotation()
        # (cos, sin) [T+1, head_dim/2], refilled per patch with its order's scan
        self.q_rot = None if rot is None else tuple(x.clone() for x in rot[0])
        self.k_rot = None if rot is None else tuple(x.clone() for x in rot[1])

    @torch.no_grad()
    def begin(self, context: Sequence[ContextItem], order: int, text: Optional[torch.Tensor],
              context_rows: Optional[int] = None) -> None:
        """Load one patch's context, order and text into the fixed buffers; reset the position.
        ``context_rows``: how many leading rows see the context (None: all; see ``model``)."""
        model = self.model
        contexts = model.prepare_context(context)
        n_ctx = 0 if contexts[0] is None else contexts[0][0].shape[2]
        if n_ctx > self.max_context:
            raise BoundlessError(f"a patch has {n_ctx} context tokens, more than the {self.max_context} the decoder "
                                 "was built for")
        rows = self.batch if context_rows is None else context_rows
        for layer, ctx in enumerate(contexts):
            if ctx is not None:
                self.k_buf[layer][:rows, :, :n_ctx].copy_(repeat_rows(ctx[0], rows))
                self.v_buf[layer][:rows, :, :n_ctx].copy_(repeat_rows(ctx[1], rows))
        self.context_visible_bl.copy_((self.row_index < rows)[:, None] & (self.context_index < n_ctx)[None])
        self.order_row.copy_(model.order_emb[order])
        scan = model.scan(order)
        self.positions.copy_(self.own_index if scan is None else scan.positions)
        self.inverse.copy_(self.own_index[:self.t] if scan is None else scan.inverse)
        rot = model.own_rotation(order)
        if rot is not None:
            for buffers, rows in zip((self.q_rot, self.k_rot), rot):
                for buffer, values in zip(buffers, rows):
                    buffer.copy_(values)
        aligned = model.aligned_input(context, self.batch, context_rows)
        if self.aligned is not None:
            self.aligned_on.fill_(0.0 if aligned is None else 1.0)
            if aligned is not None:
                self.aligned.copy_(model.scanned(aligned.expand_as(self.aligned), order))
        if self.text_kv is not None:
            for (k_buf, v_buf), (k, v) in zip(self.text_kv, model.prepare_text(text, self.batch)):
                k_buf.copy_(k)
                v_buf.copy_(v)
        self.position.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Feed position ``s`` (the start vector at s = 0, else ``token_b``); next logits into ``logits``."""
        model, s = self.model, self.position
        s1 = s.view(1)
        token_x = model.tok_emb(self.token_b)                                           # [B, dim]
        x = torch.where(s == 0, model.bos.expand_as(token_x), token_x)
        x = x + model.pos_emb.index_select(0, self.positions.index_select(0, s1)) + self.order_row  # [B, dim]
        if self.aligned is not None:
            inside = (s < self.t).to(x.dtype) * self.aligned_on
            x = x + self.aligned.index_select(1, s1.clamp(max=self.t - 1))[:, 0] * inside
        x = x[:, None]                                                                   # [B, 1, dim]
        own_bl = (self.own_index <= s).expand(self.batch, -1)
        mask = torch.cat([self.context_visible_bl, own_bl], dim=1)[:, None, None]        # [B, 1, 1, L]
        slot = s1 + self.max_context
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            h = block.norm1(x)
            self.hidden[layer].index_copy_(1, s1, h)
            q, k, v = attn.project(h)
            k_bh1d = split_heads(k + self.shift_k[layer], attn.heads)
            if self.q_rot is not None:
                q = rope.rotate(q, tuple(t.index_select(0, s1) for t in self.q_rot))
                k_bh1d = rope.rotate(k_bh1d, tuple(t.index_select(0, s1) for t in self.k_rot))
            self.k_buf[layer].index_copy_(2, slot, k_bh1d)
            self.v_buf[layer].index_copy_(2, slot, split_heads(v + self.shift_v[layer], attn.heads))
            out = F.scaled_dot_product_attention(q, self.k_buf[layer], self.v_buf[layer], attn_mask=mask)
            x = x + attn.proj(merge_heads(out))
            if self.text_kv is not None:
                x = x + block.cross(block.norm_text(x), self.text_kv[layer])
            x = x + block.mlp(block.norm2(x))
        self.logits.copy_(model.head(model.norm(x[:, 0])))
        self.position.add_(1)

    def cache(self) -> PatchCache:
        """The finished patch's cache, in raster order."""
        return PatchCache(self.hidden[:, :, 1:].index_select(2, self.inverse))


class GraphStep:
    """``decoder.step`` replayed as a CUDA graph when the model is on a CUDA device, eager elsewhere."""

    WARMUP = 3

    def __init__(self, decoder: StaticDecoder):
        self.decoder = decoder
        self.graph = None
        device = decoder.position.device
        if device.type != "cuda":
            return
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(self.WARMUP):       # allocator and kernel selection settle before capture
                    decoder.step()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                decoder.step()
            self.graph = graph
        except RuntimeError as exc:                # e.g. an attention kernel that cannot be captured
            logging.warning("[Boundless] NUWA-Infinity runs without a CUDA graph (%s)", exc)
            self.graph = None
        decoder.position.zero_()

    def __call__(self) -> None:
        if self.graph is None:
            self.decoder.step()
        else:
            self.graph.replay()
