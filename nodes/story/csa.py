"""StoryDiffusion Consistent Self-Attention (CSA) on projected q/k/v (pure torch).

CSA makes a set of images share appearance by letting each image's self-attention also attend to a
random subset of the *other* images' tokens. Everything here works at the level of a ComfyUI
``attn1`` replace patch: the inputs are the layer's projected ``q``, ``k``, ``v`` ``[B, N, C]``
(heads merged, ``C = heads * dim_head``) and the result is the attention output before ``to_out``.

The batch of one call is made of chunks (``extra_options["cond_or_uncond"]``): rows
``c*n ... c*n+n-1`` are the ``n`` images of chunk ``c``. Chunks never see each other; a cond row
only ever reads cond tokens, an uncond row uncond tokens.

Two operations, after the StoryDiffusion paper (arXiv 2405.01434):
* identity (the reference's "write" mode): the identity images of one character attend to their
  own tokens plus the selected tokens of the other identity images of the same chunk;
* panel (the reference's "read" mode): a later panel attends to a stored bank of identity tokens
  of the characters it names, plus its own tokens.

The randomness (which tokens are shared, and which layer calls skip CSA) is reproduced from a seed
with the same recipe as the reference demo, so a given seed selects the same tokens:
:class:`TokenDraws` and :func:`skip_draws`.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

# attend(q [B,N,C], k [B,M,C], v [B,M,C], heads) -> [B,N,C]; ComfyUI's optimized_attention fits.
Attend = Callable[..., torch.Tensor]
# Which tokens of each image are shared: a ``[n, N]`` bool mask, or n index vectors (``token_picks``).
Selection = Union[torch.Tensor, Sequence[torch.Tensor]]


def token_picks(select_nn: torch.Tensor, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per image, the indices of its selected tokens in increasing order (int64, on ``device``).

    The masks are drawn on the CPU, so finding the indices there costs the GPU nothing; gathering
    with index vectors instead of boolean masks keeps the attention calls free of host waits.
    """
    return [row.nonzero()[:, 0].to(device or row.device, non_blocking=True) for row in select_nn.cpu()]


def sdpa_attention(q_bnc: torch.Tensor, k_bmc: torch.Tensor, v_bmc: torch.Tensor, heads: int,
                   **_ignored) -> torch.Tensor:
    """Multi-head softmax attention with the default scale, no mask (PyTorch SDPA)."""
    b, n, c = q_bnc.shape
    m = k_bmc.shape[1]
    d = c // heads
    q = q_bnc.reshape(b, n, heads, d).transpose(1, 2)           # [B, h, N, d]
    k = k_bmc.reshape(b, m, heads, d).transpose(1, 2)           # [B, h, M, d]
    v = v_bmc.reshape(b, m, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)               # [B, h, N, d]
    return out.transpose(1, 2).reshape(b, n, c)


def rows_per_chunk(batch: int, n_chunks: int) -> int:
    """Images per chunk; the batch must split evenly into the call's chunks."""
    if n_chunks < 1 or batch % n_chunks:
        raise ValueError(f"batch of {batch} rows does not split into {n_chunks} cond/uncond chunks")
    return batch // n_chunks


def plain_attention(q_bnc, k_bnc, v_bnc, heads: int, attend: Attend = sdpa_attention) -> torch.Tensor:
    """What the layer computes without CSA: every row attends to its own tokens."""
    return attend(q_bnc, k_bnc, v_bnc, heads)


def _picks(select: Selection, device) -> list[torch.Tensor]:
    return token_picks(select, device) if isinstance(select, torch.Tensor) else list(select)


def shared_tokens(x_bnc: torch.Tensor, select: Selection, n_chunks: int) -> torch.Tensor:
    """The selected tokens of every image, per chunk: ``[chunks, M, C]``, M = tokens selected in all.

    Order inside a chunk: image 0's selected tokens in increasing index, then image 1's, ...
    This is what an identity pass stores in the character bank (with ``x`` = the call's k or v).
    """
    picks = _picks(select, x_bnc.device)
    n = len(picks)
    x_cnNc = x_bnc.reshape(n_chunks, n, x_bnc.shape[1], x_bnc.shape[2])
    return torch.cat([x_cnNc[:, i].index_select(1, picks[i]) for i in range(n)], dim=1)


def identity_attention(q_bnc, k_bnc, v_bnc, select: Optional[Selection], n_chunks: int, heads: int,
                       attend: Attend = sdpa_attention) -> torch.Tensor:
    """CSA among the ``n`` identity images of every chunk.

    Image ``i`` attends to the selected tokens of every other image ``j != i`` of its chunk (in
    increasing ``j``), followed by all ``N`` of its own tokens. The shared tokens come from the
    call's inputs, so the result does not depend on the order images are processed in.
    ``select``: a ``[n, N]`` bool mask or n index vectors; ``None`` shares every token (rate 1).
    """
    b, tokens, c = q_bnc.shape
    n = rows_per_chunk(b, n_chunks)
    if isinstance(select, torch.Tensor) and tuple(select.shape) != (n, tokens):
        raise ValueError(f"token selection {tuple(select.shape)} does not fit {n} images of {tokens} tokens")
    if select is not None and not isinstance(select, torch.Tensor) and len(select) != n:
        raise ValueError(f"token selection for {len(select)} images does not fit {n} images")
    if n == 1:
        return plain_attention(q_bnc, k_bnc, v_bnc, heads, attend)
    q_cnNc = q_bnc.reshape(n_chunks, n, tokens, c)
    k_cnNc = k_bnc.reshape(n_chunks, n, tokens, c)
    v_cnNc = v_bnc.reshape(n_chunks, n, tokens, c)
    if select is None:
        shared_k = [k_cnNc[:, j] for j in range(n)]
        shared_v = [v_cnNc[:, j] for j in range(n)]
    else:
        picks = _picks(select, q_bnc.device)
        shared_k = [k_cnNc[:, j].index_select(1, picks[j]) for j in range(n)]   # each [chunks, m_j, C]
        shared_v = [v_cnNc[:, j].index_select(1, picks[j]) for j in range(n)]
    out_cnNc = torch.empty_like(q_cnNc)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        keys = torch.cat([shared_k[j] for j in others] + [k_cnNc[:, i]], dim=1)      # [chunks, M_i+N, C]
        values = torch.cat([shared_v[j] for j in others] + [v_cnNc[:, i]], dim=1)
        out_cnNc[:, i] = attend(q_cnNc[:, i], keys, values, heads)
    return out_cnNc.reshape(b, tokens, c)


def panel_attention(q_bnc, k_bnc, v_bnc, banks: Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]],
                    heads: int, attend: Attend = sdpa_attention) -> torch.Tensor:
    """Panels reading a character bank.

    ``banks[c]`` is ``(bank_k [M, C], bank_v [M, C])`` for chunk ``c`` (already of that chunk's
    cond/uncond kind) or ``None``. Every panel row of chunk ``c`` attends to the bank tokens
    followed by its own ``N`` tokens; a chunk without bank tokens gets plain attention.
    """
    b, tokens, c = q_bnc.shape
    n_chunks = len(banks)
    n = rows_per_chunk(b, n_chunks)
    q_cnNc = q_bnc.reshape(n_chunks, n, tokens, c)
    k_cnNc = k_bnc.reshape(n_chunks, n, tokens, c)
    v_cnNc = v_bnc.reshape(n_chunks, n, tokens, c)
    out_cnNc = torch.empty_like(q_cnNc)
    for ci, bank in enumerate(banks):
        if bank is None or bank[0].shape[0] == 0:
            out_cnNc[ci] = attend(q_cnNc[ci], k_cnNc[ci], v_cnNc[ci], heads)
            continue
        bank_k = bank[0].to(device=q_bnc.device, dtype=k_bnc.dtype, non_blocking=True)
        bank_v = bank[1].to(device=q_bnc.device, dtype=v_bnc.dtype, non_blocking=True)
        m = bank_k.shape[0]
        keys = torch.cat([bank_k.unsqueeze(0).expand(n, m, c), k_cnNc[ci]], dim=1)     # [n, M+N, C]
        values = torch.cat([bank_v.unsqueeze(0).expand(n, m, c), v_cnNc[ci]], dim=1)
        out_cnNc[ci] = attend(q_cnNc[ci], keys, values, heads)
    return out_cnNc.reshape(b, tokens, c)


# --------------------------------------------------------------------------- gating and draws
@dataclasses.dataclass(frozen=True)
class Gating:
    """When a layer call applies CSA: from ``start_step`` on, iff its skip draw ``u`` exceeds the
    skip probability of its step (``skip_prob_early`` before ``late_from_step``, else
    ``skip_prob_late``). The reference demo's values are the defaults."""

    start_step: int = 1
    skip_prob_early: float = 0.3
    skip_prob_late: float = 0.1
    late_from_step: int = 20

    def applies(self, step: int, u: Optional[float]) -> bool:
        if step < self.start_step or u is None:
            return False
        return u > (self.skip_prob_early if step < self.late_from_step else self.skip_prob_late)


def skip_draws(seed: int, steps: int, n_layers: int) -> torch.Tensor:
    """The per-(step, layer) uniform draws ``u``: ``[steps-1, n_layers]`` float64, row ``s-1`` = step ``s``.

    Python's Mersenne Twister seeded with ``seed``, one ``random()`` per patched layer in call order
    for steps 1, 2, ... (step 0 draws none), as the reference demo does. A layer call is identified
    by (step, layer), so cond and uncond rows arriving in separate calls use the same value.
    """
    rng = random.Random(seed)
    values = [[rng.random() for _ in range(n_layers)] for _ in range(max(steps - 1, 0))]
    return torch.tensor(values, dtype=torch.float64).reshape(max(steps - 1, 0), n_layers)


def gating_table(seed: int, steps: int, n_layers: int, gating: Gating) -> torch.Tensor:
    """``[steps, n_layers]`` bool: whether CSA applies at each (step, layer)."""
    u = skip_draws(seed, steps, n_layers)
    table = torch.zeros(steps, n_layers, dtype=torch.bool)
    for s in range(1, steps):
        for layer in range(n_layers):
            table[s, layer] = gating.applies(s, float(u[s - 1, layer]))
    return table


class TokenDraws:
    """The shared-token selections of a sampling run, one draw per step, reproduced from a seed.

    Draw ``d`` (used at step ``d``) is, for each level in ``levels`` order (coarsest first: the
    reference draws the H/32 level, then H/16), ``rand(rows, tokens)`` in float16 from a CPU
    generator seeded with ``seed``, and a token is selected when its number is below the level's
    rate rounded to float16. ``rows`` is the number of identity images plus one, as in the
    reference (the extra row is drawn and never used). Draws are made lazily, in order, and kept.
    """

    def __init__(self, seed: int, rows: int, levels: Sequence[tuple[int, float]]):
        """``levels``: ``(tokens, rate)`` per level in draw order."""
        self.rows = rows
        self.levels = tuple((int(t), float(r)) for t, r in levels)
        self._generator = torch.Generator("cpu").manual_seed(seed)
        self._draws: list[tuple[torch.Tensor, ...]] = []

    def draw(self, index: int) -> tuple[torch.Tensor, ...]:
        """Selections ``[rows, tokens]`` bool of draw ``index``, one per level."""
        while len(self._draws) <= index:
            selections = []
            for tokens, rate in self.levels:
                numbers = torch.rand((self.rows, tokens), generator=self._generator, dtype=torch.float16)
                selections.append(numbers < torch.tensor(rate, dtype=torch.float16))
            self._draws.append(tuple(selections))
        return self._draws[index]


def step_index(sigma: float, schedule: Sequence[float]) -> int:
    """Position of ``sigma`` in the sampling schedule (nearest match).

    Identifying the step by sigma, not by counting calls, keeps the step right for samplers that
    call the model several times per step (Heun, DPM2, SDE samplers) and for cond/uncond rows that
    arrive in separate calls. Sub-step sigmas map to the nearest scheduled one.
    """
    return min(range(len(schedule)), key=lambda i: abs(schedule[i] - sigma))
