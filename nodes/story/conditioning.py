"""Batched CONDITIONING: one prompt per latent batch row (pure torch).

ComfyUI gives batch row ``i`` the conditioning row ``i`` when the conditioning batch equals the
latent batch, so a story's panels can be sampled in one batch with a prompt each. Text encodings
of different lengths (75-token chunks) are made equal by repeating each to the least common
multiple of the lengths, which leaves cross-attention unchanged (every key/value appears the same
number of times); ComfyUI's own cond concatenation does the same.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..common.errors import BoundlessError

CHUNK = 77        # CLIP's tokens per chunk: ComfyUI encodes long prompts as several chunks
MAX_REPEAT = 4    # ComfyUI's own bound when it batches conditionings of different lengths


def stack_encodings(encodings: Sequence[dict]) -> list:
    """``[{"cond": [1,T,D], "pooled_output": [1,P] or None, ...}, ...]`` -> CONDITIONING ``[[cond [B,T',D], opts]]``.

    Extra tensor entries with a batch dimension of 1 are concatenated too; anything else is taken
    from the first encoding.
    """
    if not encodings:
        raise BoundlessError("nothing to encode: the prompt list is empty")
    conds = [e["cond"] for e in encodings]
    if any(c.ndim != 3 or c.shape[0] != 1 for c in conds) or len({c.shape[2] for c in conds}) != 1:
        raise BoundlessError(f"text encodings of shapes {[tuple(c.shape) for c in conds]} cannot be batched")
    lengths = [c.shape[1] for c in conds]
    length = math.lcm(*lengths)
    if length > MAX_REPEAT * max(lengths):
        chunks = sorted({n // CHUNK if n % CHUNK == 0 else n for n in lengths})
        unit = "chunks of 77 tokens" if all(n % CHUNK == 0 for n in lengths) else "tokens"
        raise BoundlessError(
            f"the prompts encode to {', '.join(map(str, chunks))} {unit}; batching them repeats every prompt to "
            f"the least common multiple ({length} tokens, {length // max(lengths)}x the longest), which would take "
            "far too much memory. Shorten or lengthen the long prompts so their lengths share a small multiple "
            "(e.g. all within 75 words, or all 76-150)")
    cond = torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])
    options = {}
    for key, value in encodings[0].items():
        if key == "cond":
            continue
        values = [e.get(key) for e in encodings]
        if all(isinstance(v, torch.Tensor) and v.shape[:1] == (1,) and v.shape == value.shape for v in values):
            options[key] = torch.cat(values)
        else:
            options[key] = value
    return [[cond, options]]
