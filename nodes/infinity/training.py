"""Render-and-optimize training of the token decoder over a chain of patches.

A training canvas is cut into patches and walked in one of the ADC scan orders. Each patch is
predicted from its NCP context (teacher forcing inside the patch), its loss is back-propagated at
once, and only its *detached* per-layer cache is kept for later patches — so the autograd graph
never spans more than one patch and training memory is bounded like inference memory.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import BoundlessError
from .adc import ORDERS, order_id, scan
from .config import Extents
from .geometry import Region, patch_grid_shape, read_patch, write_patch
from .ncp import NearbyContextPool, PatchCache
from .token_scan import flips, scan_index


def chain_loss(net: nn.Module, canvas_bfhw: torch.Tensor, order: str, extents: Extents, *,
               patch_h: int, patch_w: int, wrap: bool = False, text: Optional[torch.Tensor] = None,
               label_smoothing: float = 0.0, backward: bool = True, input_noise: float = 0.0,
               generator: Optional[torch.Generator] = None,
               no_sync: Optional[Callable[[], contextlib.AbstractContextManager]] = None) -> float:
    """Mean per-token cross-entropy of one canvas chain; gradients accumulate when ``backward``.

    input_noise: share of the tokens *fed* to the model (own prefix, and through the caches the
    context) replaced by random codes, while the loss still asks for the true tokens. Teacher
    forcing alone lets a model lean on copying the previous token; sampling then never recovers
    from its first wrong token and drifts into another picture (the outpainting failure measured in
    BENCHMARKS.md "Continuity"). With noisy inputs it must also read its other neighbours.

    net: the model, or its DistributedDataParallel wrapper (called as ``net(tokens, context,
    order, text)``). no_sync: the wrapper's ``no_sync``, used for every patch but the last so
    gradients are all-reduced once per chain.
    """
    if bool((canvas_bfhw < 0).any()):
        raise BoundlessError("training canvases must be fully known (no -1 tokens)")
    frames, rows, cols = patch_grid_shape(canvas_bfhw, patch_h, patch_w)
    region = Region.whole(frames, rows, cols)
    pool = NearbyContextPool(region, extents, wrap)
    sequence = scan(region, order)
    last_uses = pool.last_uses(sequence)
    oid = order_id(order)
    # the model reads each patch in its scan of this order (token_scan); inputs and targets alike
    reading = scan_index(patch_h, patch_w, *flips(oid, getattr(net, "module", net).config.mirrored_scan),
                         canvas_bfhw.device)
    total = 0.0
    for step, pos in enumerate(sequence):
        tokens_bt = read_patch(canvas_bfhw, pos, patch_h, patch_w)
        if reading is not None:
            tokens_bt = tokens_bt[:, reading]
        inputs_bt = tokens_bt
        if input_noise > 0:
            noisy_bt = torch.rand(tokens_bt.shape, generator=generator, device=tokens_bt.device) < input_noise
            random_bt = torch.randint(n_codes(net), tokens_bt.shape, generator=generator, device=tokens_bt.device)
            inputs_bt = torch.where(noisy_bt, random_bt, tokens_bt)
        final = step == len(sequence) - 1
        sync = no_sync() if (no_sync is not None and not final) else contextlib.nullcontext()
        with sync:
            logits_btv, cache = net(inputs_bt, pool.select(pos), oid, text)
            loss = F.cross_entropy(logits_btv.flatten(0, 1).float(), tokens_bt.flatten(),
                                   label_smoothing=label_smoothing)
            if backward:
                (loss / len(sequence)).backward()
        pool.add(pos, PatchCache(cache.hidden.detach()))
        pool.remove(step, last_uses)
        total += float(loss.detach())
    return total / len(sequence)


def n_codes(net: nn.Module) -> int:
    """Vocabulary size of the model or of its DistributedDataParallel wrapper."""
    return getattr(net, "module", net).config.n_embed


class CanvasSampler:
    """Random training canvases: crops of ``cols × rows`` patches from token maps, random order.

    grids: per item an int64 ``[F, h, w]`` token map (sizes may differ; each must hold the crop).
    texts: optional per-item text embeddings ``[L, C]`` (equal L), returned stacked with the batch.
    wrap: the maps are 360° panoramas trained with wrap-around. A crop must then span the whole
    width (only maps exactly ``cols`` patches wide are used), and each is rolled horizontally by a
    random number of tokens, since a panorama has no preferred seam.
    """

    def __init__(self, grids: Sequence[torch.Tensor], cols: int, rows: int, patch_h: int, patch_w: int,
                 orders: Sequence[str] = ORDERS, texts: Optional[torch.Tensor] = None, seed: int = 0,
                 wrap: bool = False):
        for order in orders:
            order_id(order)
        self.height, self.width = rows * patch_h, cols * patch_w
        self.patch_h, self.patch_w = patch_h, patch_w
        self.wrap = wrap
        self.items = [i for i, g in enumerate(grids) if g.shape[-2] >= self.height
                      and (g.shape[-1] == self.width if wrap else g.shape[-1] >= self.width)]
        if not self.items:
            if wrap:
                raise BoundlessError(f"with wrap-around every crop spans a whole panorama, but no token map is "
                                     f"exactly {cols} patches ({self.width} tokens) wide and {rows} patches high; "
                                     "set --canvas COLS to the panoramas' width in patches")
            raise BoundlessError(f"no training token map holds a {cols}×{rows}-patch canvas "
                                 f"({self.width}×{self.height} tokens); use a smaller --canvas or larger images")
        self.grids, self.texts, self.orders = grids, texts, list(orders)
        self.rng = random.Random(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, str, Optional[torch.Tensor]]:
        """(canvases [B, F, H, W], one order for the batch, text [B, L, C] or None)."""
        picks = [self.rng.choice(self.items) for _ in range(size)]
        crops = []
        for index in picks:
            grid = self.grids[index]
            # Crops start on the token grid; patch-aligned starts would only see one tiling.
            y = self.rng.randrange(grid.shape[-2] - self.height + 1)
            if self.wrap:
                crops.append(grid[..., y:y + self.height, :].roll(self.rng.randrange(self.width), dims=-1))
                continue
            x = self.rng.randrange(grid.shape[-1] - self.width + 1)
            crops.append(grid[..., y:y + self.height, x:x + self.width])
        text = None if self.texts is None else self.texts[picks]
        return torch.stack(crops), self.rng.choice(self.orders), text


def heldout_nll(model: nn.Module, canvases_nfhw: torch.Tensor, extents: Extents, order: str = "down",
                batch: int = 16, text: Optional[torch.Tensor] = None) -> float:
    """Mean per-token cross-entropy (nats) of whole canvases under ``model``, without training it.

    Comparing ``extents`` that differ in one axis (e.g. e_f = 1 vs 0 on video) measures how much
    the model actually uses that part of its Nearby Context Pool; comparing texts ``[1, L, C]``
    (one prompt for every canvas) measures how much a prompt explains the canvases.
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, canvases_nfhw.shape[0], batch):
            chunk = canvases_nfhw[start:start + batch]
            chunk_text = None if text is None else text.expand(chunk.shape[0], -1, -1)
            total += chain_loss(model, chunk, order, extents, patch_h=cfg.patch_h, patch_w=cfg.patch_w,
                                text=chunk_text, backward=False) * chunk.shape[0]
            count += chunk.shape[0]
    model.train(was_training)
    return total / count


@torch.no_grad()
def teacher_forced_log_probs(model: nn.Module, canvases_bfhw: torch.Tensor, order: str,
                             text: Optional[torch.Tensor] = None, wrap: bool = False) -> torch.Tensor:
    """Each token's predicted distribution given the true tokens before it (its own NCP, scanned in
    ``order``, extents as trained, ``wrap`` for 360° canvases; ``text`` ``[B, L, C]`` for a text
    model): log-probabilities ``[B, F, H, W, V]`` (float32). Scoring a model's *own* canvases this
    way shows how sure it was where it sampled each token."""
    cfg = model.config
    frames, rows, cols = patch_grid_shape(canvases_bfhw, cfg.patch_h, cfg.patch_w)
    region = Region.whole(frames, rows, cols)
    pool = NearbyContextPool(region, cfg.trained_extents, wrap)
    sequence = scan(region, order)
    last_uses = pool.last_uses(sequence)
    log_probs = None
    for step, pos in enumerate(sequence):
        oid = order_id(order)
        logits, cache = model(model.scanned(read_patch(canvases_bfhw, pos, cfg.patch_h, cfg.patch_w), oid),
                              pool.select(pos), oid, text)
        logits = model.rastered(logits, oid)
        if log_probs is None:
            log_probs = logits.new_zeros(*canvases_bfhw.shape, logits.shape[-1], dtype=torch.float32)
        write_patch(log_probs, pos, logits.float().log_softmax(-1), cfg.patch_h, cfg.patch_w)
        pool.add(pos, cache)
        pool.remove(step, last_uses)
    return log_probs


def teacher_forced_argmax(model: nn.Module, canvases_bfhw: torch.Tensor, order: str,
                          text: Optional[torch.Tensor] = None, wrap: bool = False) -> torch.Tensor:
    """Each token's argmax prediction given the true tokens before it (``teacher_forced_log_probs``):
    a canvas ``[B, F, H, W]`` of predictions."""
    return teacher_forced_log_probs(model, canvases_bfhw, order, text, wrap).argmax(-1)


@torch.no_grad()
def next_frame_accuracy(model: nn.Module, pairs_n2hw: torch.Tensor) -> dict:
    """Teacher-forced accuracy on frame 1 of two-frame clips ``[N, 2, h, w]`` given the true frame 0.

    Each token is the argmax given the true tokens before it (its own NCP, order ``down``). Split into
    the tokens that stay as in frame 0 and those that change (the motion), it tells a model that holds
    the picture from one that also predicts the motion; ``copy_previous_frame`` is the accuracy of
    repeating frame 0.
    """
    predicted = teacher_forced_argmax(model, pairs_n2hw, "down")
    truth, previous = pairs_n2hw[:, 1], pairs_n2hw[:, 0]
    hit, moving = predicted[:, 1] == truth, truth != previous
    return {"accuracy": round(float(hit.float().mean()), 4),
            "copy_previous_frame": round(float((~moving).float().mean()), 4),
            "accuracy_on_kept_tokens": round(float(hit[~moving].float().mean()), 4),
            "accuracy_on_changed_tokens": round(float(hit[moving].float().mean()), 4)}
