"""Text conditioning of a NUWA-Infinity run from the pack's prompt maps (pure torch).

Turns a ``text.prompts.PromptMap`` (the ``BOUNDLESS_TEXT`` socket) into what ``sampler.run`` takes,
after checking that the model can use it: the same text encoder it was trained on, the same width.
"""
from __future__ import annotations

from typing import Optional

from ..common.errors import BoundlessError
from ..text.prompts import PromptMap
from .model import InfinityTransformer
from .sampler import TextCondition


def text_condition(model: InfinityTransformer, prompts: Optional[PromptMap]) -> TextCondition:
    """What the sampler takes as ``text`` for a prompt map: states ``[1, L, C]``, a per-patch function
    for regional prompts, or None; refuses text the model cannot use with a message that says why."""
    if not model.config.text_dim:
        if prompts is not None:
            raise BoundlessError("this NUWA-Infinity model has no text branch; disconnect 'text' or load a "
                                 "text-conditioned model (e.g. boundless_demo_panorama_text)")
        return None
    if prompts is None:
        raise BoundlessError("this NUWA-Infinity model is text-conditioned: connect Text Encoder Loader → Encode "
                             "Text to its 'text' input (an empty prompt asks for no particular content)")
    if model.text_encoder and prompts.encoder != model.text_encoder:
        raise BoundlessError(f"the prompt was encoded by another text encoder ({prompts.encoder}) than the one this "
                             f"model was trained with ({model.text_encoder}); load that encoder in Text Encoder Loader")
    if prompts.dim != model.config.text_dim:
        raise BoundlessError(f"the prompt has {prompts.dim}-wide states but the model takes {model.config.text_dim}; "
                             "use the text encoder the model was trained with")
    if not prompts.regions:
        return prompts.base.states
    return lambda pos: prompts.states_at(pos[2], pos[1])
