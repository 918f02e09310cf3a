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
from typing import Mapping, Sequence

import torch

from ..common.errors import BoundlessError
from ..common.weights import load_state_dict, strict_load

MAX_LENGTH = 768
KEEP = ("shared.", "encoder.")


def infer_config(sd: Mapping[str, torch.Tensor]):
    """A ``transformers.T5Config`` for the encoder in ``sd`` (sizes and heads from the shapes)."""
    import transformers
    bias_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if "shared.weight" not in sd or bias_key not in sd:
        raise BoundlessError("not a T5/ByT5 encoder: expected keys shared.weight and encoder.block.N.layer.*; pick "
                             "google/byt5-xl's model file")
    vocab, d_model = sd["shared.weight"].shape
    buckets, heads = sd[bias_key].shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    d_ff = sd["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    return transformers.T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                                 num_layers=layers, num_heads=heads, relative_attention_num_buckets=buckets,
                                 feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False,
                                 use_cache=False, dropout_rate=0.0)


def load_byt5(path: str):
    """``transformers.T5EncoderModel`` from a ByT5 file (encoder only; decoder and LM head dropped)."""
    import transformers
    sd = {k: v for k, v in load_state_dict(path).items() if k.startswith(KEEP)}
    sd.setdefault("encoder.embed_tokens.weight", sd.get("shared.weight"))
    model = transformers.T5EncoderModel(infer_config(sd)).eval()
    strict_load(model, sd, f"ByT5 encoder {os.path.basename(path)}")
    return model


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """Byte ids ``[B, L]``: the authors' ``padding="longest"``, ``max_length=768`` call."""
    import transformers
    tokenizer = transformers.ByT5Tokenizer()
    return tokenizer(list(prompts), padding="longest", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt")["input_ids"]


@torch.no_grad()
def encode(model, prompts: Sequence[str]) -> torch.Tensor:
    """ByT5 states ``[B, L, d_model]`` float32 of ``prompts``, without an attention mask (as trained)."""
    weight = model.shared.weight
    ids_bl = tokenize(prompts).to(weight.device)
    return model(input_ids=ids_bl).last_hidden_state.float()
