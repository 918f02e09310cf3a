"""The ComfyUI ``attn1`` replace patch for Consistent Self-Attention (pure torch, no comfy import).

One :class:`StoryAttention` object is installed on every chosen layer with
``ModelPatcher.set_model_attn1_replace`` and called as ``patch(q, k, v, extra_options)``. It reads
from ``extra_options`` everything it needs: the layer (``block``, ``block_index``), the chunk
layout (``cond_or_uncond``), the latent size (``original_shape``) and the step, found from the
current ``sigmas`` in ``sample_sigmas`` (never by counting calls), so it works with any sampler and
scheduler, with cond and uncond batched or in separate calls.

Two modes share a :class:`~.bank.CharacterBank`:
* ``write`` (the identity pass): batch rows are identity images, grouped by character; images of
  one character share tokens, and the shared tokens are stored in the bank;
* ``read`` (the panels): each batch row reads the bank entries of the characters it names, written
  at the same step and layer.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from ..common.errors import BoundlessError
from .bank import CharacterBank
from .csa import (Attend, Gating, TokenDraws, gating_table, identity_attention, panel_attention,
                  plain_attention, rows_per_chunk, sdpa_attention, shared_tokens, step_index, token_picks)
from .layers import LayerSpec, level_tokens

WHOLE_BATCH = "character"   # the character name used when no story says who is who


@dataclasses.dataclass(frozen=True)
class CSASettings:
    """Strength settings. Rates are the fraction of each identity image's tokens that is shared,
    per resolution level (the reference's ``sa32``/``sa64`` are ``rate_h32``/``rate_h16``)."""

    seed: int = 0
    rate_h32: float = 0.5
    rate_h16: float = 0.5
    rate_h8: float = 0.5
    gating: Gating = Gating()

    def rate(self, factor: int) -> float:
        """Rate of a layer with this latent downsampling factor (H/64 and coarser use ``rate_h32``)."""
        return {1: self.rate_h8, 2: self.rate_h16}.get(factor, self.rate_h32)


def _groups(rows: Sequence[tuple[str, ...]]) -> list[tuple[tuple[str, ...], list[int]]]:
    """Row indices grouped by identical character tuples, in first-appearance order."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, names in enumerate(rows):
        groups.setdefault(tuple(names), []).append(index)
    return list(groups.items())


class StoryAttention:
    """The patch callable (see module docstring).

    ``rows``: one entry per image of a chunk. In ``write`` mode ``(character,)`` per identity
    image; in ``read`` mode the characters each panel names (empty = reads nothing). ``None`` means
    "whole batch": in write mode every row is an identity image of one character, in read mode
    every row reads every character in the bank.
    """

    def __init__(self, layers: Sequence[LayerSpec], settings: CSASettings, bank: CharacterBank, mode: str,
                 rows: Optional[Sequence[tuple[str, ...]]] = None, attend: Attend = sdpa_attention):
        if mode not in ("write", "read"):
            raise ValueError(f"mode must be 'write' or 'read', not {mode!r}")
        self.layers = list(layers)
        self.layer_of = {layer.key: index for index, layer in enumerate(self.layers)}
        self.factors = sorted({layer.factor for layer in self.layers}, reverse=True)   # draw order: coarse first
        self.settings = settings
        self.bank = bank
        self.mode = mode
        self.rows = None if rows is None else [tuple(r) for r in rows]
        self.attend = attend
        self._gates: dict[int, list[list[bool]]] = {}
        self._draws: dict[tuple, TokenDraws] = {}
        # Found once per sampling run / model call, not per layer call (each read waits for the GPU):
        self._schedule_of: Optional[torch.Tensor] = None      # the sample_sigmas tensor last seen
        self._schedule: list[float] = []
        self._sigmas_of: Optional[torch.Tensor] = None        # the sigmas tensor of the current call
        self._step = 0
        self._picks: dict[tuple, list[torch.Tensor]] = {}     # this step's token indices on the device

    def __deepcopy__(self, memo):
        """Model clones share the patch (and so the bank); it holds no per-model state."""
        return self

    # ------------------------------------------------------------------ helpers
    def gates(self, steps: int) -> list[list[bool]]:
        """``[steps][layers]``: where CSA applies, reproduced from the seed (cached per step count)."""
        if steps not in self._gates:
            table = gating_table(self.settings.seed, steps, len(self.layers), self.settings.gating)
            self._gates[steps] = table.tolist()
        return self._gates[steps]

    def schedule_and_step(self, extra_options: dict) -> tuple[list[float], int]:
        """The run's sigmas and the current step. ComfyUI passes one ``sample_sigmas`` tensor per run
        and one ``sigmas`` tensor per model call to every layer, so each is read once."""
        sample_sigmas, sigmas = extra_options["sample_sigmas"], extra_options["sigmas"]
        if sample_sigmas is not self._schedule_of:
            self._schedule = sample_sigmas.detach().float().cpu().tolist()
            self._schedule_of = sample_sigmas
            self._sigmas_of = None
        if sigmas is not self._sigmas_of:
            self._step = step_index(float(sigmas.detach().float().max()), self._schedule)
            self._sigmas_of = sigmas
        return self._schedule, self._step

    def picks(self, rows: int, latent_hw: tuple[int, int], step: int, level: int, device) -> list[torch.Tensor]:
        """Token indices of every identity row at one level for this step, uploaded once per step."""
        key = (rows, latent_hw, step, level, str(device))
        if key not in self._picks:
            if any(k[2] != step for k in self._picks):
                self._picks.clear()
            self._picks[key] = token_picks(self.draws(rows, latent_hw).draw(step)[level], device)
        return self._picks[key]

    def draws(self, rows: int, latent_hw: tuple[int, int]) -> TokenDraws:
        key = (rows, latent_hw)
        if key not in self._draws:
            levels = [(level_tokens(*latent_hw, f), self.settings.rate(f)) for f in self.factors]
            self._draws[key] = TokenDraws(self.settings.seed, rows, levels)
        return self._draws[key]

    def _check_rows(self, n: int) -> None:
        if self.rows is None or n == len(self.rows):
            return
        if self.mode == "write":
            per = {}
            for (name,) in self.rows:
                per[name] = per.get(name, 0) + 1
            detail = " + ".join(f"{count} of {name}" for name, count in per.items())
            problem = "more identity images than the batch" if len(self.rows) > n else "a bigger batch than the identity images"
            raise BoundlessError(
                f"Consistent Self-Attention: the story has {len(self.rows)} identity images ({detail}) but the "
                f"latent batch has {n} ({problem}). Set the identity sampler's latent batch_size to "
                f"{len(self.rows)} (Story Prompt's identity_count output).")
        raise BoundlessError(
            f"Consistent Self-Attention: the story has {len(self.rows)} panels but the latent batch has {n}. "
            f"Set the panel sampler's latent batch_size to {len(self.rows)} (Story Prompt's panel_count output).")

    # ------------------------------------------------------------------ the patch
    def __call__(self, q_bnc: torch.Tensor, k_bnc: torch.Tensor, v_bnc: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = int(extra_options["n_heads"])
        block = extra_options.get("block")
        key = (block[0], int(block[1]), int(extra_options.get("block_index", 0))) if block else None
        layer = self.layer_of.get(key)
        kinds = [int(kind) for kind in extra_options["cond_or_uncond"]]
        attend_opts = {"attn_precision": extra_options.get("attn_precision")}
        plain = lambda: plain_attention(q_bnc, k_bnc, v_bnc, heads, self._attend(attend_opts))  # noqa: E731
        if layer is None:
            return plain()
        n = rows_per_chunk(q_bnc.shape[0], len(kinds))
        self._check_rows(n)
        if "sample_sigmas" not in extra_options or "sigmas" not in extra_options:
            raise BoundlessError("Consistent Self-Attention needs ComfyUI's sampler (sigmas and sample_sigmas in "
                                 "transformer_options); sample the model with a ComfyUI sampler node.")
        schedule, step = self.schedule_and_step(extra_options)
        steps = len(schedule) - 1
        latent_hw = (int(extra_options["original_shape"][-2]), int(extra_options["original_shape"][-1]))
        spec = self.layers[layer]
        if q_bnc.shape[1] != level_tokens(*latent_hw, spec.factor):
            return plain()   # a cropped area condition: the tokens are not the image's grid
        applied = step < steps and self.gates(steps)[step][layer]
        if self.mode == "write":
            return self._write(q_bnc, k_bnc, v_bnc, kinds, n, heads, layer, step, applied, schedule, latent_hw,
                               attend_opts)
        return self._read(q_bnc, k_bnc, v_bnc, kinds, n, heads, layer, step, applied, schedule, attend_opts)

    def _attend(self, opts: dict) -> Attend:
        return lambda q, k, v, heads: self.attend(q, k, v, heads, **opts)

    def _write(self, q, k, v, kinds, n, heads, layer, step, applied, schedule, latent_hw, attend_opts):
        rows = self.rows if self.rows is not None else [(WHOLE_BATCH,)] * n
        groups = [(names[0], index) for names, index in _groups(rows)]
        images = {name: len(index) for name, index in groups}
        for name, count in images.items():
            self.bank.begin_write(name, (tuple(schedule), latent_hw, count), schedule, count)
        attend = self._attend(attend_opts)
        if not applied:
            return plain_attention(q, k, v, heads, attend)
        chunks = len(kinds)
        per_character = max(images.values())
        level = self.factors.index(self.layers[layer].factor)
        picks = self.picks(per_character + 1, latent_hw, step, level, q.device)   # one per row
        out = torch.empty_like(q)
        for name, index in groups:
            select = picks[:len(index)]
            batch_rows = self._batch_rows(index, n, chunks, q.device)
            q_g, k_g, v_g = (t if batch_rows is None else t.index_select(0, batch_rows) for t in (q, k, v))
            out_g = identity_attention(q_g, k_g, v_g, select, chunks, heads, attend)
            if batch_rows is None:
                out = out_g
            else:
                out.index_copy_(0, batch_rows, out_g)
            shared_k, shared_v = shared_tokens(k_g, select, chunks), shared_tokens(v_g, select, chunks)
            stored = set()
            for c, kind in enumerate(kinds):
                if kind not in stored:          # several chunks of one kind: the first one is banked
                    stored.add(kind)
                    self.bank.put(name, step, layer, kind, shared_k[c], shared_v[c])
        return out

    def _read(self, q, k, v, kinds, n, heads, layer, step, applied, schedule, attend_opts):
        if self.rows is None:
            rows = [tuple(self.bank.images)] * n
        else:
            rows = self.rows
        self.bank.check_readable(schedule, sorted({name for names in rows for name in names}))
        attend = self._attend(attend_opts)
        if not applied:
            return plain_attention(q, k, v, heads, attend)
        chunks = len(kinds)
        out = torch.empty_like(q)
        for names, index in _groups(rows):
            batch_rows = self._batch_rows(index, n, chunks, q.device)
            q_g, k_g, v_g = (t if batch_rows is None else t.index_select(0, batch_rows) for t in (q, k, v))
            banks = [self.bank.get(names, step, layer, kind, q.device) for kind in kinds]
            out_g = panel_attention(q_g, k_g, v_g, banks, heads, attend)
            if batch_rows is None:
                out = out_g
            else:
                out.index_copy_(0, batch_rows, out_g)
        return out

    @staticmethod
    def _batch_rows(index: list[int], n: int, chunks: int, device) -> Optional[torch.Tensor]:
        """Batch rows of images ``index`` in every chunk, or None when that is the whole batch."""
        if len(index) == n:
            return None
        return torch.tensor([c * n + i for c in range(chunks) for i in index], device=device)
