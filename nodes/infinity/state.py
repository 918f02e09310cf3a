"""Resumable canvas state: the token canvas, which patches are done, the plan and the live NCP.

A ``CanvasState`` is everything needed to continue a generation after an interrupt or in a later
session: it is saved to and loaded from one safetensors file. It is bound to the model that made
its caches (by fingerprint); running it with another model is refused.

Planning functions (``plan_fill``, ``plan_outpaint``, ``crop_state``) return new states and never
modify their input; ``sampler.run`` advances a state in place, one committed patch at a time.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import torch

from ..common.errors import BoundlessError
from .adc import ORDERS, Phase, Plan, Step, extension, order_id, plan_phase
from .config import Extents
from .geometry import UNKNOWN, PatchPos, Region, patch_grid_shape
from .model import InfinityTransformer
from .ncp import NearbyContextPool, PatchCache

STATE_KIND = "boundless.infinity.state"
STATE_VERSION = 2   # 2: the NCP caches hidden states (1 cached projected keys/values)
# Largest canvas (tokens per batch item, all frames) a state may hold: 2^24 tokens is e.g.
# 65,536 × 4,096 px with a 16-pixel-per-token VQGAN (128 MiB of int64 indices per image).
MAX_CANVAS_TOKENS = 1 << 24


@dataclasses.dataclass
class CanvasState:
    """A (partially) generated canvas and how to go on.

    tokens: int64 ``[B, F, H_tokens, W_tokens]``, ``UNKNOWN`` (-1) where nothing is known yet.
    done: bool ``[F, rows, cols]`` per patch: known or generated.
    plan / step: the phases still to run and the global index of the next step.
    ncp: pool of the phase that ``step`` is in (None before a phase starts or when finished).
    """

    tokens: torch.Tensor
    done: torch.Tensor
    patch_h: int
    patch_w: int
    extents: Extents
    wrap: bool
    model_fingerprint: str
    tokenizer: str = ""
    factor: int = 0
    plan: Plan = Plan(())
    step: int = 0
    ncp: Optional[NearbyContextPool] = None

    # -- shape ------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def grid(self) -> tuple[int, int, int]:
        """(frames, rows, cols) in patches."""
        return tuple(self.done.shape)

    @property
    def finished(self) -> bool:
        return self.step >= self.plan.n_steps

    @property
    def complete(self) -> bool:
        """Every patch of the canvas is known."""
        return bool(self.done.all())

    def frame_tokens(self, frame: int = 0, fill: Optional[int] = None) -> torch.Tensor:
        """Token map ``[B, H_tokens, W_tokens]`` of one frame.

        Cells not generated yet hold ``UNKNOWN`` (-1), or ``fill`` when given (a code to show there,
        e.g. for decoding a preview of an unfinished canvas).
        """
        if not 0 <= frame < self.tokens.shape[1]:
            raise BoundlessError(f"frame {frame} does not exist; the canvas has {self.tokens.shape[1]} frame(s)")
        tokens = self.tokens[:, frame].clone()
        if fill is not None:
            tokens[tokens == UNKNOWN] = fill
        return tokens

    def clone(self) -> "CanvasState":
        pool = None
        if self.ncp is not None:
            pool = NearbyContextPool(self.ncp.region, self.ncp.extents, self.ncp.wrap)
            for pos, cache in self.ncp.items():
                pool.add(pos, cache)
        return dataclasses.replace(self, tokens=self.tokens.clone(), done=self.done.clone(), ncp=pool)

    # -- checks -----------------------------------------------------------------------------------
    def require_model(self, model: InfinityTransformer) -> None:
        cfg = model.config
        if model.fingerprint() != self.model_fingerprint:
            raise BoundlessError(
                "this canvas state was made with another NUWA-Infinity model (its NCP caches and tokens "
                "belong to that model); load the same checkpoint, or start a new state from the canvas "
                "tokens with this model")
        if (cfg.patch_h, cfg.patch_w) != (self.patch_h, self.patch_w):
            raise BoundlessError(f"state patches are {self.patch_w}×{self.patch_h} tokens but the model's are "
                                 f"{cfg.patch_w}×{cfg.patch_h}; use the model the state was made with")
        self.extents.require_within(cfg.trained_extents)

    # -- serialisation ----------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the state as one safetensors file (tensors + a JSON header entry)."""
        from safetensors.torch import save_file
        flat = self.plan.flat
        steps = torch.tensor([[phase, *step.pos, int(step.generate)] for phase, step in flat],
                             dtype=torch.int64).reshape(len(flat), 5)
        phases = torch.tensor([[*ph.region.as_tuple(), order_id(ph.order)] for ph in self.plan.phases],
                              dtype=torch.int64).reshape(len(self.plan.phases), 7)
        tensors = {"tokens": self.tokens.cpu().contiguous(), "done": self.done.to(torch.uint8).cpu().contiguous(),
                   "plan.steps": steps, "plan.phases": phases}
        positions = []
        if self.ncp is not None:
            for index, (pos, cache) in enumerate(self.ncp.items()):
                positions.append(pos)
                tensors[f"ncp.{index}.hidden"] = cache.hidden.cpu().contiguous()
        tensors["ncp.positions"] = torch.tensor(positions, dtype=torch.int64).reshape(len(positions), 3)
        header = {"version": STATE_VERSION, "patch": [self.patch_h, self.patch_w],
                  "extents": list(self.extents.as_tuple()), "wrap": self.wrap, "model": self.model_fingerprint,
                  "tokenizer": self.tokenizer, "factor": self.factor, "step": self.step,
                  "has_ncp": self.ncp is not None}
        save_file(tensors, path, metadata={"kind": STATE_KIND, "state": json.dumps(header)})

    @classmethod
    def load(cls, path: str) -> "CanvasState":
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(path, framework="pt") as handle:
                meta = dict(handle.metadata() or {})
            tensors = load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError
            raise BoundlessError(f"{path} is not a readable canvas state file ({exc})") from exc
        if meta.get("kind") != STATE_KIND:
            raise BoundlessError(f"{path} is not a NUWA-Infinity canvas state (kind {meta.get('kind')!r}); "
                                 "pick a file written by the Save NCP State node (or by an interrupted generation)")
        header = json.loads(meta["state"])
        if header["version"] != STATE_VERSION:
            raise BoundlessError(f"{path} has state format version {header['version']}, this pack reads "
                                 f"{STATE_VERSION}; re-create the state from its tokens")
        phase_rows = tensors["plan.phases"].tolist()
        step_rows = tensors["plan.steps"].tolist()
        phases = []
        for index, row in enumerate(phase_rows):
            steps = tuple(Step((f, r, c), bool(g)) for p, f, r, c, g in step_rows if p == index)
            phases.append(Phase(Region(*row[:6]), ORDERS[row[6]], steps))
        state = cls(tokens=tensors["tokens"], done=tensors["done"].bool(), patch_h=header["patch"][0],
                    patch_w=header["patch"][1], extents=Extents(*header["extents"]), wrap=header["wrap"],
                    model_fingerprint=header["model"], tokenizer=header["tokenizer"], factor=header["factor"],
                    plan=Plan(tuple(phases)), step=header["step"])
        if header["has_ncp"]:
            phase = state.current_phase()
            state.ncp = NearbyContextPool(phase.region, state.extents, state.wrap)
            for index, pos in enumerate(tensors["ncp.positions"].tolist()):
                state.ncp.add(tuple(pos), PatchCache(tensors[f"ncp.{index}.hidden"]))
        return state

    def current_phase(self) -> Phase:
        """The phase that the next step belongs to."""
        index, _ = self.plan.flat[self.step]
        return self.plan.phases[index]


def _check_canvas_size(batch: int, frames: int, rows: int, cols: int, patch_h: int, patch_w: int) -> None:
    """One state holds at most MAX_CANVAS_TOKENS tokens over its whole batch (a state is copied by
    every node that extends it, so its size is what bounds memory, not the size of one image)."""
    tokens = batch * frames * rows * cols * patch_h * patch_w
    if tokens > MAX_CANVAS_TOKENS:
        raise BoundlessError(
            f"a canvas of {cols}×{rows} patches × {frames} frame(s) × batch {batch} holds {tokens:,} tokens, over the "
            f"{MAX_CANVAS_TOKENS:,}-token bound of one state; use a smaller batch or canvas, crop the state to the "
            "part you keep extending (crop_state) and outpaint from there, or decode and save finished parts "
            "separately")


def _new_state(model: InfinityTransformer, tokens_bfhw: torch.Tensor, extents: Optional[Extents], wrap: bool,
               tokenizer: str, factor: int) -> CanvasState:
    cfg = model.config
    extents = cfg.trained_extents if extents is None else extents
    extents.require_within(cfg.trained_extents)
    if tokenizer and model.tokenizer and tokenizer != model.tokenizer:
        raise BoundlessError(f"these tokens come from another VQGAN ({tokenizer}) than the one this NUWA-Infinity "
                             f"model was trained on ({model.tokenizer}); encode the image with that VQGAN")
    frames, rows, cols = patch_grid_shape(tokens_bfhw, cfg.patch_h, cfg.patch_w)
    _check_canvas_size(tokens_bfhw.shape[0], frames, rows, cols, cfg.patch_h, cfg.patch_w)
    if wrap and cols < 2 * extents.w + 1:
        raise BoundlessError(f"horizontal wrap-around needs at least {2 * extents.w + 1} patch columns "
                             f"(2·e_w+1); the canvas has {cols}. Widen it or lower e_w")
    known = tokens_bfhw >= 0
    blocks = known.view(tokens_bfhw.shape[0], frames, rows, cfg.patch_h, cols, cfg.patch_w)
    all_known = blocks.all(dim=5).all(dim=3).all(dim=0)
    any_known = blocks.any(dim=5).any(dim=3).any(dim=0)
    if bool((all_known != any_known).any()):
        raise BoundlessError("some patches are only partly known (mixed -1 and real tokens); every patch must be "
                             "fully known or fully unknown — align the unknown area to the patch grid")
    if bool((tokens_bfhw >= cfg.n_embed).any()):
        raise BoundlessError(f"token indices go up to {int(tokens_bfhw.max())} but the model has {cfg.n_embed} codes; "
                             "tokenize with the VQGAN this model was trained on")
    return CanvasState(tokens=tokens_bfhw.to(torch.int64).cpu().clone(), done=all_known.cpu(),
                       patch_h=cfg.patch_h, patch_w=cfg.patch_w, extents=extents, wrap=wrap,
                       model_fingerprint=model.fingerprint(), tokenizer=tokenizer or model.tokenizer,
                       factor=factor or model.factor)


def empty_state(model: InfinityTransformer, cols: int, rows: int, frames: int = 1, batch: int = 1,
                extents: Optional[Extents] = None, wrap: bool = False) -> CanvasState:
    """A canvas of ``cols × rows`` patches (× frames) with nothing known; extents default to trained."""
    cfg = model.config
    for name, value in (("cols", cols), ("rows", rows), ("frames", frames), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise BoundlessError(f"canvas {name} must be a whole number of at least 1, got {value!r}")
    _check_canvas_size(batch, frames, rows, cols, cfg.patch_h, cfg.patch_w)
    tokens = torch.full((batch, frames, rows * cfg.patch_h, cols * cfg.patch_w), UNKNOWN, dtype=torch.int64)
    return _new_state(model, tokens, extents, wrap, "", 0)


def state_from_tokens(model: InfinityTransformer, tokens: torch.Tensor, extents: Optional[Extents] = None,
                      wrap: bool = False, tokenizer: str = "", factor: int = 0) -> CanvasState:
    """A state whose known patches are the given token map ``[B, h, w]`` (or ``[B, F, h, w]``).

    Patches whose tokens are all ``UNKNOWN`` (-1) count as still to generate, so a token map with
    holes on the patch grid is a valid start as well.
    """
    if tokens.ndim == 3:
        tokens = tokens.unsqueeze(1)
    if tokens.ndim != 4 or tokens.dtype not in (torch.int64, torch.int32):
        raise BoundlessError(f"expected integer tokens [B, h, w] or [B, F, h, w], got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
    return _new_state(model, tokens, extents, wrap, tokenizer, factor)


def plan_fill(state: CanvasState, order: str = "down", precache_rings: int = 1) -> CanvasState:
    """A copy of ``state`` planned to generate every unknown patch in one scan ``order``.

    Known patches next to unknown ones are pre-cached first (image-condition pre-caching).
    Any unfinished plan of the input is replaced.
    """
    order_id(order)
    frames, rows, cols = state.grid
    done = state.done
    phase = plan_phase(Region.whole(frames, rows, cols), order, lambda pos: bool(done[pos]), state.extents,
                       state.wrap, precache_rings)
    return dataclasses.replace(state.clone(), plan=Plan((phase,)), step=0, ncp=None)


def plan_outpaint(state: CanvasState, moves: Sequence[tuple[str, int]], frame_order: str = "down",
                  precache_rings: int = 1) -> CanvasState:
    """A larger copy of ``state`` planned to outpaint by ``moves`` = [(direction, patches), ...].

    Directions: "right", "left", "down", "up" (and "future" for more frames). Each move is one
    phase that scans away from what is known, so the given patches at its border are pre-cached
    before the new ones are generated; any unknown patch left in the old canvas is filled too.
    Any unfinished plan of the input is replaced.
    """
    layout = extension(state.grid, moves, frame_order)
    frames, rows, cols = layout.final
    _check_canvas_size(state.batch, frames, rows, cols, state.patch_h, state.patch_w)
    sf, sr, sc = layout.shift
    old_f, old_r, old_c = state.grid
    tokens = torch.full((state.batch, frames, rows * state.patch_h, cols * state.patch_w), UNKNOWN, dtype=torch.int64)
    tokens[:, sf:sf + old_f, sr * state.patch_h:(sr + old_r) * state.patch_h,
           sc * state.patch_w:(sc + old_c) * state.patch_w] = state.tokens
    done = torch.zeros(frames, rows, cols, dtype=torch.bool)
    done[sf:sf + old_f, sr:sr + old_r, sc:sc + old_c] = state.done
    phases = []
    previous: Optional[Region] = None   # everything in the previous phase's region is done by then
    for region, order in zip(layout.regions, layout.orders):
        def known(pos: PatchPos, before: Optional[Region] = previous) -> bool:
            return bool(done[pos]) or (before is not None and pos in before)
        phases.append(plan_phase(region, order, known, state.extents, state.wrap, precache_rings))
        previous = region
    return dataclasses.replace(state, tokens=tokens, done=done, plan=Plan(tuple(phases)), step=0, ncp=None)


def crop_state(state: CanvasState, col: int, row: int, cols: int, rows: int) -> CanvasState:
    """The patches ``[row, row+rows) × [col, col+cols)`` of every frame as a new state (no plan, no NCP).

    Use it to keep extending a very long canvas: continue from the part next to where you go.
    Horizontal wrap-around survives only a crop that keeps every column.
    """
    frames, all_rows, all_cols = state.grid
    if cols < 1 or rows < 1 or col < 0 or row < 0 or col + cols > all_cols or row + rows > all_rows:
        raise BoundlessError(f"crop {cols}×{rows} at ({col}, {row}) does not fit the {all_cols}×{all_rows}-patch "
                             "canvas; choose a box inside it")
    tokens = state.tokens[:, :, row * state.patch_h:(row + rows) * state.patch_h,
                          col * state.patch_w:(col + cols) * state.patch_w].clone()
    return dataclasses.replace(state, tokens=tokens, done=state.done[:, row:row + rows, col:col + cols].clone(),
                               wrap=state.wrap and cols == all_cols, plan=Plan(()), step=0, ncp=None)
