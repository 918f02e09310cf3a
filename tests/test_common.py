"""Unit tests of nodes/common: image/mask conversion, tokens, strict loading."""
import pytest
import torch

from packpath import pack_module

images = pack_module("nodes.common.images")
tokens_mod = pack_module("nodes.common.tokens")
weights = pack_module("nodes.common.weights")
BoundlessError = pack_module("nodes.common.errors").BoundlessError


def test_image_roundtrip_and_channels():
    img = torch.rand(2, 5, 7, 3)
    x = images.image_to_model(img)
    assert x.shape == (2, 3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(images.model_to_image(x), img, atol=1e-6)
    rgba = torch.cat([img, torch.ones(2, 5, 7, 1)], -1)
    assert torch.equal(images.image_to_model(rgba), x)
    assert images.image_to_model(img[..., :1]).shape == (2, 3, 5, 7)
    assert images.model_to_image(torch.full((1, 3, 2, 2), 3.0)).max() == 1.0   # clamped
    with pytest.raises(BoundlessError, match="channels"):
        images.image_to_model(torch.rand(1, 4, 4, 2))


def test_mask_normalisation():
    assert images.normalize_mask(torch.ones(4, 6), 4, 6).shape == (1, 4, 6)
    assert images.normalize_mask(torch.ones(2, 1, 4, 6), 4, 6).shape == (2, 4, 6)
    with pytest.raises(BoundlessError, match="resize the mask"):
        images.normalize_mask(torch.ones(4, 5), 4, 6)


def test_tokens_validate_and_fingerprint():
    grid = torch.zeros(2, 3, 4, dtype=torch.int64)
    t = tokens_mod.Tokens(scales=(grid,), tokenizer="a", factor=16)
    assert t.pixel_size == (48, 64) and t.batch == 2
    with pytest.raises(BoundlessError):
        tokens_mod.Tokens(scales=(grid.float(),), tokenizer="a", factor=16)
    with pytest.raises(BoundlessError, match="another tokenizer"):
        t.require("b", "Decode")
    book = torch.randn(8, 4)
    assert tokens_mod.fingerprint("k", book) == tokens_mod.fingerprint("k", book.clone())
    assert tokens_mod.fingerprint("k", book) != tokens_mod.fingerprint("k", book + 1e-3)


def test_strict_load_lists_differences():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(BoundlessError, match=r"wrong shapes weight \(2, 4\) vs \(2, 3\)"):
        weights.strict_load(lin, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "lin")
    with pytest.raises(BoundlessError, match="unexpected extra"):
        weights.strict_load(lin, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "extra": torch.zeros(1)}, "lin")
    weights.strict_load(lin, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "lin")
    assert torch.equal(lin.weight, torch.ones(2, 3))


def test_extract_state_dict_unwraps_ddp_and_drops_prefixes():
    sd = weights.extract_state_dict({"state_dict": {"module.a": torch.zeros(1), "module.loss.b": torch.zeros(1)}},
                                    ("loss.",))
    assert list(sd) == ["a"]
