"""Conformance ops for StoryDiffusion Consistent Self-Attention (fixtures: shared/fixtures/story).

Thin adapters from the fixture's JSON params to ``nodes.story.csa`` / ``nodes.story.patch``; the
set has no model files (every case works on given q/k/v).
"""
from __future__ import annotations

import torch

from packpath import pack_module

csa = pack_module("nodes.story.csa")
patch = pack_module("nodes.story.patch")
bank_module = pack_module("nodes.story.bank")
layers_module = pack_module("nodes.story.layers")

KINDS: dict = {}


def _gating(params) -> "csa.Gating":
    return csa.Gating(**params["gating"])


def identity(models, inputs, params):
    opts = params["extra_options"]
    chunks, heads = len(opts["cond_or_uncond"]), opts["n_heads"]
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    if not _gating(params).applies(params["step"], params["u"]):
        return {"out": csa.plain_attention(q, k, v, heads)}
    return {"out": csa.identity_attention(q, k, v, inputs.get("select"), chunks, heads)}


def panel(models, inputs, params):
    opts = params["extra_options"]
    q, k, v, heads = inputs["q"], inputs["k"], inputs["v"], opts["n_heads"]
    if not _gating(params).applies(params["step"], params["u"]) or "bank_k" not in inputs:
        return {"out": csa.plain_attention(q, k, v, heads)}
    banks = [(inputs["bank_k"][c], inputs["bank_v"][c]) for c in range(len(opts["cond_or_uncond"]))]
    return {"out": csa.panel_attention(q, k, v, banks, heads)}


def write_read_sequence(models, inputs, params):
    layers = [layers_module.LayerSpec(tuple(spec["block"])[0], tuple(spec["block"])[1], spec["block_index"],
                                      int(spec["level"][1:]) // 8, spec["n_heads"], spec["dim_head"])
              for spec in params["layers"]]
    settings = patch.CSASettings(seed=params["seed"], rate_h32=params["rate_h32"], rate_h16=params["rate_h16"],
                                 gating=_gating(params))
    bank = bank_module.CharacterBank()
    sigmas = torch.tensor(params["sample_sigmas"], dtype=torch.float32)
    latent_h, latent_w = params["latent_size"]
    outputs = {}
    for p in params["passes"]:
        if p["mode"] == "write":
            rows = [(p["characters"][0],)] * p["n_images"]
        else:
            rows = [tuple(p["characters"])] * p["n_images"]
        story_attention = patch.StoryAttention(layers, settings, bank, p["mode"], rows)
        per_layer = {spec["name"]: [] for spec in params["layers"]}
        for s in range(params["steps"]):
            for spec in params["layers"]:
                q = inputs[f"{p['name']}/{spec['name']}/q"][s]
                k = inputs[f"{p['name']}/{spec['name']}/k"][s]
                v = inputs[f"{p['name']}/{spec['name']}/v"][s]
                batch = q.shape[0]
                extra_options = {"n_heads": spec["n_heads"], "dim_head": spec["dim_head"],
                                 "cond_or_uncond": list(p["cond_or_uncond"]), "block": tuple(spec["block"]),
                                 "block_index": spec["block_index"],
                                 "original_shape": [batch, 4, latent_h, latent_w],
                                 "sigmas": sigmas[s].repeat(batch), "sample_sigmas": sigmas}
                per_layer[spec["name"]].append(story_attention(q, k, v, extra_options))
        for name, outs in per_layer.items():
            outputs[f"{p['name']}/{name}/out"] = torch.stack(outs)
    return outputs


def sample_tokens(models, inputs, params):
    draws = csa.TokenDraws(params["seed"], params["rows"],
                           [(params["tokens_h32"], params["rate_h32"]), (params["tokens_h16"], params["rate_h16"])])
    selections = [draws.draw(d) for d in range(params["draws"])]
    return {"select_h32": torch.stack([s[0] for s in selections]),
            "select_h16": torch.stack([s[1] for s in selections])}


def skip_draws(models, inputs, params):
    return {"u": csa.skip_draws(params["seed"], params["steps"], params["n_layers"]),
            "csa_applied": csa.gating_table(params["seed"], params["steps"], params["n_layers"], _gating(params))}


OPS = {
    "story.csa.identity": identity,
    "story.csa.panel": panel,
    "story.csa.write_read_sequence": write_read_sequence,
    "story.csa.sample_tokens": sample_tokens,
    "story.csa.skip_draws": skip_draws,
}
