"""The progress protocol between pure-torch loops and ComfyUI (no comfy import here).

Every autoregressive or denoising loop in the pack takes an optional ``progress`` callable and calls
``progress(done, total, preview)`` once per step. ``preview`` is ``None`` or a zero-argument callable
returning an IMAGE-like ``[1,H,W,3]`` tensor in [0,1]; it is called only when a preview is wanted,
so loops never decode for nothing. The ComfyUI side (``comfy_glue.progress_reporter``) updates the
progress bar and raises ComfyUI's interrupt exception from inside this call, which is how a loop is
interrupted between steps.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

Preview = Optional[Callable[[], Optional[torch.Tensor]]]


class Progress(Protocol):
    def __call__(self, done: int, total: int, preview: Preview = None) -> None: ...


def no_progress(done: int, total: int, preview: Preview = None) -> None:
    """Default for callers outside ComfyUI (scripts, tests, benchmarks)."""
