"""Running a network in half precision while the parts whose math needs float32 keep it.

ComfyUI picks a compute dtype per kind of model and device (bf16 or fp16 on most GPUs, fp32 on a
CPU, or what the user's ``--fp16-…``/``--bf16-…``/``--fp32-…`` flags say). ``cast_module`` applies it
to a pure-torch network, except for submodules that declare ``keeps_float32 = True``: the codebooks
of the tokenizers, whose nearest-code searches compare squared distances that half precision
cannot tell apart (a bf16 codebook picks other codes for the same image). Those modules take
float32 inputs and their callers cast at the boundary, so logits, softmax, codebook distances and
the noise-level embeddings stay float32 whatever the network runs in.
"""
from __future__ import annotations

import torch

HALF_AND_FULL = (torch.bfloat16, torch.float16, torch.float32)


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` in place, except every ``keeps_float32`` submodule, which keeps its exact
    float32 values (casting it down and back up would round the codebook, and with it the
    tokenizer's identity that canvases and token maps are checked against)."""
    kept = [sub for sub in module.modules() if getattr(sub, "keeps_float32", False)]
    saved = [{k: v.detach().float().clone() for k, v in sub.state_dict().items()} for sub in kept]
    module.to(dtype)
    for sub, state in zip(kept, saved):
        sub.float()
        sub.load_state_dict(state)
    return module
