"""top_p and min_p of the Infinity sampler: which codes a token may be drawn from."""
from __future__ import annotations

import pytest
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

sampler = pack_module("nodes.infinity.sampler")
training = pack_module("nodes.infinity.training")
Draws = pack_module("nodes.common.draws").Draws
BoundlessError = pack_module("nodes.common.errors").BoundlessError

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])          # code 1 most likely, then 3, 2, 0


def drawn_codes(**cuts) -> set[int]:
    logits_bv = PROBS.log().expand(4000, -1)
    return set(sampler.sample_token(logits_bv, Draws(3, "cpu"), 1.0, 0, **cuts).tolist())


def test_no_cut_draws_every_code():
    assert drawn_codes() == {0, 1, 2, 3}


def test_min_p_drops_codes_below_that_share_of_the_most_likely():
    assert drawn_codes(min_p=0.2) == {1, 2, 3}         # 0.05 < 0.2 × 0.5
    assert drawn_codes(min_p=0.5) == {1, 3}            # 0.15 < 0.25 <= 0.3
    assert drawn_codes(min_p=0.99) == {1}


def test_top_p_keeps_the_fewest_most_likely_codes_that_reach_it():
    assert drawn_codes(top_p=0.5) == {1}               # 0.5 alone reaches 0.5
    assert drawn_codes(top_p=0.7) == {1, 3}            # 0.5 + 0.3 reaches 0.7
    assert drawn_codes(top_p=0.9) == {1, 2, 3}
    assert drawn_codes(top_p=0.01) == {1}              # the most likely code always passes


def test_cuts_keep_the_kept_codes_odds():
    logits_bv = PROBS.log().expand(20000, -1)
    tokens = sampler.sample_token(logits_bv, Draws(5, "cpu"), 1.0, 0, top_p=0.7)
    share_of_1 = (tokens == 1).float().mean().item()
    assert share_of_1 == pytest.approx(0.5 / 0.8, abs=0.02)


def test_run_refuses_cuts_that_keep_nothing_or_mean_nothing():
    model = tiny_model()
    state = sampler.plan_fill(sampler.empty_state(model, 2, 1), "right")
    for cuts, message in (({"top_p": 0.0}, "top_p must lie in"), ({"min_p": 1.0}, "min_p must lie in")):
        with pytest.raises(BoundlessError, match=message):
            sampler.run(model, state.clone(), **cuts)


def test_every_token_of_a_canvas_passes_the_cuts_of_its_own_distribution():
    """Scored teacher-forced by the model that drew it, each token is inside the top-p set (the mass of
    the codes more likely than it is below top_p) and at least min_p × the most likely code's odds."""
    model = tiny_model()
    drawn = {}
    for cuts in ({"top_p": 0.3}, {"min_p": 0.5}):
        tokens = drawn[next(iter(cuts))] = sampler.generate_canvas(model, 3, 2, order="right", seed=4, temperature=1.0, **cuts).tokens
        assert torch.equal(tokens, sampler.generate_canvas(model, 3, 2, order="right", seed=4, **cuts).tokens)
        probs_hwv = training.teacher_forced_log_probs(model, tokens, "right")[0, 0].exp()
        own_hw = probs_hwv.gather(-1, tokens[0, 0, ..., None]).squeeze(-1)
        if "top_p" in cuts:
            more_likely_hw = (probs_hwv * (probs_hwv > own_hw[..., None])).sum(-1)
            assert bool((more_likely_hw < cuts["top_p"]).all())
        else:
            assert bool((own_hw >= cuts["min_p"] * probs_hwv.amax(-1) - 1e-6).all())
    plain = sampler.generate_canvas(model, 3, 2, order="right", seed=4).tokens
    assert not torch.equal(plain, drawn["top_p"])                   # the cut changed what was drawn
