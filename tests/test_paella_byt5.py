"""Paella v3's ByT5 states from a typed prompt, against transformers' own tokenizer and forward."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import paella_tiny
from packpath import pack_module

byt5 = pack_module("nodes.paella.byt5")
BoundlessError = pack_module("nodes.common.errors").BoundlessError


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny ByT5 saved like google/byt5-xl (encoder + decoder + LM head, embed_tokens tied)."""
    model = paella_tiny.tiny_byt5()
    path = tmp_path_factory.mktemp("byt5") / "byt5_tiny.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()
               if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")},
              str(path))
    return model, str(path)


def test_the_config_is_read_from_the_file_and_only_the_encoder_is_kept(released):
    model, path = released
    encoder = byt5.load_byt5(path).t5
    cfg = encoder.config
    assert (cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (
        384, paella_tiny.BYT5_WIDTH, 2, 2, 12, 32)
    assert cfg.feed_forward_proj == "gated-gelu" and not hasattr(encoder, "decoder")


def test_tokens_are_the_authors_bytes_padded_to_the_longest_prompt():
    ids = byt5.tokenize(["", "ab", "é"])
    assert ids.tolist() == [[1, 0, 0], [100, 101, 1], [198, 172, 1]]       # bytes + 3, EOS 1, pad 0
    assert byt5.tokenize(["x" * 2000]).shape == (1, byt5.MAX_LENGTH)


def test_states_equal_transformers_forward_without_a_mask(released):
    import transformers
    model, path = released
    prompts = ["a misty mountain lake", "red", ""]
    states = byt5.load_byt5(path).encode(prompts)
    batch = transformers.ByT5Tokenizer()(prompts, padding="longest", max_length=768, truncation=True,
                                          return_tensors="pt")
    with torch.no_grad():
        expected = model.get_encoder()(input_ids=batch["input_ids"]).last_hidden_state   # no attention_mask
        masked = model.get_encoder()(**batch).last_hidden_state
    torch.testing.assert_close(states, expected, atol=1e-6, rtol=1e-6)
    assert states.shape == (3, len("a misty mountain lake") + 1, paella_tiny.BYT5_WIDTH)
    assert not torch.allclose(states[1], masked[1], atol=1e-3)           # the padding is attended, as trained


def test_pad_to_gives_each_prompt_the_states_of_a_batch_encoded_together(released):
    """Latent Interpolation needs two prompts of one ByT5 length: encoded apart with the same pad_to
    they are exactly what one padding='longest' batch of both gives (no attention mask)."""
    _, path = released
    encoder = byt5.load_byt5(path)
    prompts = ["a calm lake", "a stormy sea at night"]
    together = encoder.encode(prompts)
    apart = [encoder.encode([p], pad_to=together.shape[1]) for p in prompts]
    assert [a.shape[1] for a in apart] == [together.shape[1]] * 2
    for i, states in enumerate(apart):
        torch.testing.assert_close(states[0], together[i], atol=1e-6, rtol=1e-6)
    assert byt5.tokenize(["ab"], pad_to=5).tolist() == [[100, 101, 1, 0, 0]]
    assert byt5.tokenize(["abcd"], pad_to=2).tolist() == [[100, 101, 102, 103, 1]]      # never cut
    assert byt5.tokenize(["x"], pad_to=10_000).shape == (1, byt5.MAX_LENGTH)


def test_files_that_are_not_a_whole_byt5_encoder_are_refused(tmp_path, released):
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 4)}, str(tmp_path / "bert.safetensors"))
    with pytest.raises(BoundlessError, match="bert.safetensors is not a .*T5/ByT5 encoder: missing shared.weight"):
        byt5.load_byt5(str(tmp_path / "bert.safetensors"))
    model, _ = released
    sd = {k: v.contiguous().clone() for k, v in model.state_dict().items() if k.startswith(("shared.", "encoder."))}
    partial = {k: v for k, v in sd.items() if k != "encoder.block.0.layer.0.SelfAttention.q.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(BoundlessError, match="missing encoder.block.0.layer.0.SelfAttention.q.weight"):
        byt5.load_byt5(str(tmp_path / "partial.safetensors"))
    save_file({**sd, "encoder.block.x.foo": torch.zeros(1)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(BoundlessError, match="unexpected encoder.block.x.foo"):
        byt5.load_byt5(str(tmp_path / "odd.safetensors"))
    small = {**sd, "shared.weight": sd["shared.weight"][:100].clone()}
    save_file(small, str(tmp_path / "small.safetensors"))
    with pytest.raises(BoundlessError, match="small.safetensors has a vocabulary of 100, too small for ByT5"):
        byt5.load_byt5(str(tmp_path / "small.safetensors"))
