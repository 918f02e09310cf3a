"""Text conditioning of a NUWA-Infinity run from the pack's prompt maps (pure torch).

Turns a ``text.prompts.PromptMap`` (the ``BOUNDLESS_TEXT`` socket) into what ``sampler.run`` takes,
after checking that the model can use it: the same text encoder it was trained on, the same width.
"""
from __future__ import annotations

from typing import Optional

import torch

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


def guidance_text(model: InfinityTransformer, prompts: Optional[PromptMap], guidance: float) -> Optional[torch.Tensor]:
    """The empty prompt's states ``[1, L, C]`` that text guidance contrasts the prompt with, or None when
    guidance is off (1); refuses guidance that cannot apply, in the node's terms."""
    if guidance == 1.0:
        return None
    if guidance < 0:
        raise BoundlessError(f"text_guidance must be >= 0 (1 = off), got {guidance}")
    if not model.config.text_dim or prompts is None:
        raise BoundlessError("text_guidance only applies to a text-conditioned model with a prompt on its 'text' "
                             "input; set text_guidance to 1 for this model")
    if prompts.empty is None:
        raise BoundlessError("this prompt map carries no empty-prompt states for text guidance; make it with "
                             "Encode Text (Boundless), or set text_guidance to 1")
    return prompts.empty.states
