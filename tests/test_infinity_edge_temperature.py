"""Edge temperature: tokens along a finished neighbouring patch are drawn at temperature × edge_temperature."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

config = pack_module("nodes.infinity.config")
ncp = pack_module("nodes.infinity.ncp")
sampler = pack_module("nodes.infinity.sampler")
training = pack_module("nodes.infinity.training")
errors = pack_module("nodes.common.errors")


def _item(offset):
    return ncp.ContextItem((0, 0, 0), offset, None)


def test_edge_tokens_are_the_sides_that_touch_finished_neighbours_of_the_same_frame():
    def edges(*offsets):
        return sampler.edge_tokens([_item(o) for o in offsets], 3, 4).view(3, 4)

    assert not edges().any()
    left = edges((-1, 0, 0))
    assert left[:, 0].all() and left.sum() == 3
    right_and_above = edges((1, 0, 0), (0, -1, 0))
    assert right_and_above[:, -1].all() and right_and_above[0].all() and right_and_above.sum() == 3 + 4 - 1
    assert edges((0, 1, 0))[-1].all() and edges((0, 1, 0)).sum() == 4
    # Diagonal neighbours and every patch of the previous frame, the one in place included, do not count.
    assert not edges((-1, -1, 0), (1, 1, 0), (0, 0, -1), (-1, 0, -1)).any()


def test_token_temperatures_scale_the_edges_only():
    context = [_item((-1, 0, 0))]
    assert sampler.token_temperatures(context, 2, 2, 0.8, 1.0) == [0.8] * 4
    assert sampler.token_temperatures(context, 2, 2, 0.8, 0.5) == pytest.approx([0.4, 0.8, 0.4, 0.8])
    assert sampler.token_temperatures([], 2, 2, 0.8, 0.5) == [0.8] * 4


def _sharp_model(seed: int):
    """A tiny model whose logits are far from flat (a random head is scaled up), so greedy and sampled
    tokens differ."""
    model = tiny_model(seed, rope_base=100, trained_extents=config.Extents(1, 1, 0))
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    return model


def _edge_mask(rows: int, cols: int, ph: int = 2, pw: int = 2) -> torch.Tensor:
    """Where a 'right'-order canvas of rows × cols patches has finished left / upper neighbours."""
    mask = torch.zeros(rows * ph, cols * pw, dtype=torch.bool)
    mask[:, pw::pw] = True                     # first token column of patch columns 1..
    mask[ph::ph, :] = True                     # first token row of patch rows 1..
    return mask


@pytest.mark.parametrize("decoder,use_kv_cache", [("dynamic", True), ("static", True), ("dynamic", False)])
def test_edge_temperature_zero_draws_the_edges_greedily_and_the_inside_as_before(decoder, use_kv_cache):
    """At edge temperature 0 every edge token is the model's argmax given all tokens before it (scored
    teacher-forced on the finished canvas), while inside tokens are sampled: on a sharp model some of
    them differ from the argmax, as they do everywhere at edge temperature 1."""
    model = _sharp_model(3)
    options = dict(order="right", extents=config.Extents(1, 1, 0), seed=11, temperature=1.5, top_k=0,
                   decoder=decoder, use_kv_cache=use_kv_cache)
    edge = _edge_mask(2, 4)
    sharp = sampler.generate_canvas(model, 4, 2, edge_temperature=0.0, **options).tokens
    argmax = training.teacher_forced_argmax(model, sharp, "right")
    assert torch.equal(sharp[0, 0][edge], argmax[0, 0][edge])
    assert not torch.equal(sharp[0, 0][~edge], argmax[0, 0][~edge])
    plain = sampler.generate_canvas(model, 4, 2, edge_temperature=1.0, **options).tokens
    assert torch.equal(plain, sampler.generate_canvas(model, 4, 2, **options).tokens)      # 1 is the default
    assert not torch.equal(plain[0, 0][edge], training.teacher_forced_argmax(model, plain, "right")[0, 0][edge])


def test_edge_temperature_follows_precached_neighbours_and_the_wrap():
    """Outpainting: the first new column continues the pre-cached context, so its edge is drawn at the
    edge temperature too. A 360° canvas: the last patch has the first as its right neighbour, so its
    last token column is an edge; the first patch's first column is not (its left neighbour, the last
    patch, comes later)."""
    model = _sharp_model(4)
    extents = config.Extents(1, 1, 0)
    context = sampler.generate_canvas(model, 2, 1, order="right", extents=extents, seed=1, temperature=1.0, top_k=0)
    grown = sampler.outpaint(model, context, "right", 2, seed=2, temperature=1.5, top_k=0, edge_temperature=0.0)
    argmax = training.teacher_forced_argmax(model, grown.tokens, "right")
    assert torch.equal(grown.tokens[0, 0][:, 4::2], argmax[0, 0][:, 4::2])
    wrapped = sampler.generate_canvas(model, 3, 1, order="right", extents=extents, wrap=True, seed=5,
                                      temperature=1.5, top_k=0, edge_temperature=0.0).tokens[0, 0]
    argmax = training.teacher_forced_argmax(model, wrapped[None, None], "right", wrap=True)[0, 0]
    edge = torch.zeros_like(wrapped, dtype=torch.bool)
    edge[:, [2, 4, 5]] = True
    assert torch.equal(wrapped[edge], argmax[edge])
    assert not torch.equal(wrapped[~edge], argmax[~edge])


def test_bad_edge_temperature():
    with pytest.raises(errors.BoundlessError, match="edge temperature must be >= 0"):
        sampler.generate_canvas(tiny_model(0), 2, 1, edge_temperature=-0.1)
