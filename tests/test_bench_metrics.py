"""The quality measures of bench/metrics.py on inputs whose answer is known."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from packpath import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402


def test_seam_ratio_sees_a_step_at_patch_starts_only():
    torch.manual_seed(0)
    noise = torch.rand(64, 96, 3)
    assert metrics.seam_ratio([noise], 32) == pytest.approx(1.0, abs=0.15)
    seamed = noise * 0.2
    seamed[:, 32:64] += 0.5                          # two patch boundaries (x = 32, 64) with a step of 0.5
    assert metrics.seam_ratio([seamed], 32) > 3
    assert metrics.seam_ratio([seamed], 32, "horizontal") == pytest.approx(1.0, abs=0.2)
    assert metrics.seam_ratio([seamed.transpose(0, 1)], 32, "horizontal") > 3
    # against token boundaries only: a token grid (every 8 px) that steps as much as the patch starts
    grid = torch.zeros(16, 64, 3)
    grid[:, ::16] = 1.0                              # steps at every x = 16k and 16k + 1
    assert metrics.seam_ratio([grid], 32, token_px=16) == pytest.approx(1.0)
    assert metrics.seam_ratio([grid], 32) > 5


def test_seam_ratio_interval_brackets_the_pooled_ratio_and_widens_with_disagreeing_images():
    torch.manual_seed(1)
    noise = [torch.rand(64, 96, 3) * 0.2 for _ in range(8)]
    alike = [image.clone() for image in noise]
    for image in alike:
        image[:, 32:64] += 0.3
    mixed = [image.clone() for image in noise]
    for image in mixed[:4]:
        image[:, 32:64] += 0.6                       # half the canvases seamed, half clean
    for images in (alike, mixed):
        low, high = metrics.seam_ratio_interval(images, 32)
        assert low <= metrics.seam_ratio(images, 32) <= high
    alike_low, alike_high = metrics.seam_ratio_interval(alike, 32)
    mixed_low, mixed_high = metrics.seam_ratio_interval(mixed, 32)
    assert mixed_high - mixed_low > 3 * (alike_high - alike_low)
    assert metrics.seam_ratio_interval(mixed, 32, seed=0) == metrics.seam_ratio_interval(mixed, 32, seed=0)


def test_never_seen_pairs_split_across_and_inside_patches():
    reference = {(0, 1), (1, 0)}
    tokens = torch.tensor([[0, 1, 2, 3]])            # patch 2: pairs (0,1) (2,3) inside, (1,2) across
    shares = metrics.never_seen_pairs([tokens], reference, 2)
    assert shares == {"across_boundaries": 1.0, "inside_patches": 0.5}
    assert metrics.pair_set([tokens]) == {(0, 1), (1, 2), (2, 3)}
    assert metrics.pair_set([tokens.t()], "vertical") == {(0, 1), (1, 2), (2, 3)}
    assert metrics.never_seen_pairs([tokens.t()], reference, 2, "vertical") == shares


def test_psnr_and_colour_error():
    a = torch.full((4, 4, 3), 0.5)
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    b = a.clone()
    b[..., 0] += 0.3
    assert metrics.mean_colour_error(a, b) == pytest.approx(0.1, abs=1e-6)
    assert len(metrics.crops(torch.zeros(512, 768, 3), 256, 64)) == 5 * 9


def test_frechet_and_kernel_distances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    shifted = b + 2.0
    assert metrics.frechet_distance(a, b) < 0.5
    assert metrics.frechet_distance(a, shifted) == pytest.approx(4 * 8, rel=0.1)     # |Δμ|² = 8 · 2²
    same, _ = metrics.kernel_inception_distance(a, b)
    far, _ = metrics.kernel_inception_distance(a, shifted)
    assert abs(same) < 0.1 * far and far > 0


def test_frame_codes_are_what_plain_ends_hold_and_the_same_ends_encoded_round_do_not():
    import seam_profile
    torch.manual_seed(0)
    round_maps = [torch.randint(0, 8, (4, 64)) for _ in range(3)]  # codes 0..7 everywhere
    round_maps[0][:, -1] = 11                                      # a picture whose own content ends in code 11
    plain_maps = [tokens.clone() for tokens in round_maps]
    for tokens in plain_maps:
        tokens[:, [0, -3, -2]] = 9                                 # the border, drawn by a plain encode
    plain_maps[0][:, -1] = 10
    border_v = seam_profile.frame_codes(plain_maps, round_maps, vocab=12)
    assert border_v.nonzero().flatten().tolist() == [9, 10]         # not 11: the round encode has it too
    canvas = torch.randint(0, 8, (4, 64))
    canvas[:, 10:26] = 9                                          # a quarter of the canvas is border
    assert seam_profile.frame_code_share([canvas], border_v) == 0.25
    assert seam_profile.frame_code_share(plain_maps, border_v, seam_profile.END_COLUMNS) == round(40 / 48, 4)
