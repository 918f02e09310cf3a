"""ByT5 text states for Paella v3, computed as the authors' pipeline computes them (on ``transformers``).

Paella v3 is conditioned on the hidden states of the ByT5-XL encoder (``google/byt5-xl``: d_model
2560, 36 layers). The authors tokenize with ByT5's byte tokenizer (UTF-8 bytes + 3, EOS = 1 appended,
``""`` -> ``[1]``), pad to the longest prompt of the batch (pad = 0), truncate at 768, pass **no
attention mask**, and take ``last_hidden_state`` (after the final RMSNorm); shared/specs/paella.md
section 4. The network is ``transformers.T5EncoderModel`` with a config inferred from the file's keys
and shapes (the released file is a whole ``T5ForConditionalGeneration``: only ``shared`` and
``encoder.*`` are kept), and the tokenizer ``transformers.ByT5Tokenizer``, which needs no files.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..common.errors import BoundlessError
from ..common.weights import load_state_dict, strict_load

MAX_LENGTH = 768
KEEP = ("shared.", "encoder.")
BYTE_VOCAB = 259             # 256 byte values + pad, EOS, UNK: the smallest vocabulary ByT5's tokens fit
NEEDED = ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
          "encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight")


def infer_config(sd: Mapping[str, torch.Tensor], name: str = "this file"):
    """A ``transformers.T5Config`` for the encoder in ``sd`` (sizes and heads from the shapes)."""
    import transformers
    missing = [key for key in NEEDED if key not in sd]
    if missing:
        raise BoundlessError(f"{name} is not a (complete) T5/ByT5 encoder: missing {', '.join(missing)}; pick "
                             "google/byt5-xl's model file")
    bias_key = NEEDED[1]
    vocab, d_model = sd["shared.weight"].shape
    if vocab < BYTE_VOCAB:
        raise BoundlessError(f"{name} has a vocabulary of {vocab}, too small for ByT5's byte tokens ({BYTE_VOCAB}); "
                             "pick google/byt5-xl")
    buckets, heads = sd[bias_key].shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"
    if ff_key not in sd:
        raise BoundlessError(f"{name} is not a (complete) T5/ByT5 encoder: missing {ff_key}; pick google/byt5-xl's "
                             "model file")
    d_ff = sd[ff_key].shape[0]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    layers = 1 + max(blocks)
    return transformers.T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                                 num_layers=layers, num_heads=heads, relative_attention_num_buckets=buckets,
                                 feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False,
                                 use_cache=False, dropout_rate=0.0)


class ByT5Encoder(nn.Module):
    """Holds the ``transformers`` encoder. ComfyUI's model manager sets ``.device`` on the modules it
    loads, which a ``transformers`` model refuses (a read-only property); this plain module takes it."""

    def __init__(self, t5):
        super().__init__()
        self.t5 = t5

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], pad_to: int = 0) -> torch.Tensor:
        """ByT5 states ``[B, L, d_model]`` float32 of ``prompts``, without an attention mask (as trained);
        ``pad_to`` as in ``tokenize``."""
        ids_bl = tokenize(prompts, pad_to).to(self.t5.shared.weight.device)
        return self.t5(input_ids=ids_bl).last_hidden_state.float()


def load_byt5(path: str) -> ByT5Encoder:
    """The encoder of a ByT5 file (decoder and LM head dropped) on ``transformers.T5EncoderModel``."""
    import transformers
    sd = {k: v for k, v in load_state_dict(path).items() if k.startswith(KEEP)}
    config = infer_config(sd, os.path.basename(path))
    sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
    model = transformers.T5EncoderModel(config).eval()
    strict_load(model, sd, f"ByT5 encoder {os.path.basename(path)}")
    return ByT5Encoder(model).eval()


def tokenize(prompts: Sequence[str], pad_to: int = 0) -> torch.Tensor:
    """Byte ids ``[B, L]``: the authors' ``padding="longest"``, ``max_length=768`` call, then padded (pad = 0)
    to at least ``pad_to`` tokens (at most 768). Without an attention mask a prompt padded to ``L`` has the
    states it gets when encoded in one batch with prompts of up to ``L`` tokens, so two prompts encoded
    apart with the same ``pad_to`` equal the pair encoded together."""
    import transformers
    tokenizer = transformers.ByT5Tokenizer()
    ids = tokenizer(list(prompts), padding="longest", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt")["input_ids"]
    target = min(int(pad_to), MAX_LENGTH)
    if ids.shape[1] < target:
        ids = torch.nn.functional.pad(ids, (0, target - ids.shape[1]), value=tokenizer.pad_token_id)
    return ids

