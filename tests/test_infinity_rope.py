"""Token geometry (rotary embeddings on canvas coordinates) and the continuity it buys."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread  # noqa: F401 (autouse fixture)
from packpath import ROOT, pack_module

adc = pack_module("nodes.infinity.adc")
checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
rope = pack_module("nodes.infinity.rope")
synthetic = pack_module("nodes.infinity.synthetic")
training = pack_module("nodes.infinity.training")
errors = pack_module("nodes.common.errors")


def test_scores_depend_only_on_the_offset_between_tokens():
    head_dim, axes = 12, 3
    q, k = torch.randn(1, 1, 1, head_dim, dtype=torch.float64), torch.randn(1, 1, 1, head_dim, dtype=torch.float64)

    def score(at_q, at_k):
        tq = rope.rotation(rope.angles(torch.tensor([at_q]), head_dim, axes, 100), torch.float64)
        tk = rope.rotation(rope.angles(torch.tensor([at_k]), head_dim, axes, 100), torch.float64)
        return float((rope.rotate(q, tq) * rope.rotate(k, tk)).sum())

    assert score((3, 5, 0), (2, 5, 0)) == pytest.approx(score((-7, 40, -1), (-8, 40, -1)), abs=1e-5)
    assert score((3, 5, 0), (2, 5, 0)) != pytest.approx(score((3, 5, 0), (3, 4, 0)), abs=1e-6)
    # rotation keeps lengths, and the time axis matters only for video models (3 axes)
    rotated = rope.rotate(q, rope.rotation(rope.angles(torch.tensor([(4, 9, -1)]), head_dim, axes, 100), torch.float64))
    assert float(rotated.norm()) == pytest.approx(float(q.norm()))
    image_theta = rope.angles(torch.tensor([(4, 9, -1), (4, 9, 0)]), 8, 2, 100)
    assert torch.equal(image_theta[0], image_theta[1])


def test_the_token_left_of_a_patch_is_one_step_left_of_its_first_column():
    patch_h, patch_w = 3, 4
    queries, keys = rope.own_coords(patch_h * patch_w, patch_w)
    assert queries[0].tolist() == [0, 0, 0] and queries[4].tolist() == [0, 1, 0]     # s predicts token s
    assert keys[0].tolist() == [3, -1, 0] and keys[5].tolist() == [0, 1, 0]          # key s carries token s - 1
    left = rope.context_coords([(-1, 0, 0)], patch_h, patch_w)
    assert left[1 * patch_w + patch_w - 1].tolist() == [-1, 1, 0]                     # row 1, last column
    wrapped_right = rope.context_coords([(1, 0, 0)], patch_h, patch_w)                # 360° wrap neighbour
    assert wrapped_right[0].tolist() == [patch_w, 0, 0]
    previous_frame_above = rope.context_coords([(0, -1, -1)], patch_h, patch_w)
    assert previous_frame_above[0].tolist() == [0, -patch_h, -1]


def test_config_checks_and_old_files_keep_their_identity():
    with pytest.raises(errors.BoundlessError, match="channels per head"):
        config.InfinityConfig(dim=8, heads=2, rope_base=100, trained_extents=config.Extents(1, 1, 1))
    old = config.InfinityConfig(dim=32, heads=4)
    assert "rope_base" not in old.to_json()          # fingerprints of files from before the option hold
    assert config.InfinityConfig.from_json(config.InfinityConfig(dim=32, heads=4, rope_base=100).to_json()).rope_base == 100


def test_a_shipped_model_of_the_older_design_still_loads_as_it_was():
    walk = checkpoint.load_infinity(str(ROOT / "models" / "infinity" / "boundless_demo_walk.safetensors"))
    assert walk.config.rope_base == 0 and walk.own_rotation() is None
    assert "rope_base" not in walk.state_dict()


def learn_rows(rope_base: int, steps: int) -> dict:
    """Train a tiny decoder on the ``rows`` task, where a patch's first column is decided only by the
    same token row of its left neighbour; return the held-out boundary accuracies."""
    torch.manual_seed(0)
    cfg = config.InfinityConfig(n_embed=8, dim=32, depth=2, heads=2, mlp_dim=64, patch_h=8, patch_w=8,
                                trained_extents=config.Extents(1, 1, 0), rope_base=rope_base)
    model = model_mod.InfinityTransformer(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    data = torch.Generator().manual_seed(0)
    for step in range(steps):
        canvas = synthetic.canvases("rows", 4, 16, 16, 8, data)
        optimizer.zero_grad(set_to_none=True)
        training.chain_loss(model, canvas, adc.ORDERS[step % 4], cfg.trained_extents, patch_h=8, patch_w=8)
        optimizer.step()
    held_out = synthetic.canvases("rows", 8, 16, 16, 8, torch.Generator().manual_seed(1))
    return synthetic.boundary_accuracy(model.eval(), held_out, "right")


def test_token_geometry_learns_to_continue_the_left_neighbour_where_the_old_design_cannot():
    """The continuity experiment in small (bench/infinity_continuity.py has the full one): same data,
    steps and seed; only the geometry differs. Chance is 1/8. Measured for two other model seeds at 400
    steps (seeds 1, 2): 0.89 and 0.99 with token geometry, 0.14 and 0.19 without."""
    with_rope, without = learn_rows(100, 400), learn_rows(0, 400)
    assert with_rope["inside"] > 0.9 and without["inside"] > 0.9             # both learn to copy inside a patch
    assert with_rope["left_boundary"] > 0.6, with_rope
    assert without["left_boundary"] < 0.3, without
