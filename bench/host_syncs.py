#!/usr/bin/env python3
"""Host syncs per loop, on the CPU stand-in device: this tree against another checkout of the pack.

``.venv/bin/python bench/host_syncs.py [--baseline DIR]`` prints JSON. Each system's sampler runs
with its tiny test model on ``tests/standin_device.py``'s stand-in, which counts every operation
that would make the host wait for a GPU (scalar reads, copies to the host, data-dependent shapes,
``torch.multinomial``). ``--baseline`` names another checkout (e.g. ``git worktree add /tmp/old
5c1f2fd``) whose pack is counted the same way, with the same tests/ helpers of this tree.

Runs: Infinity 3x2 patches of 4x4 tokens (96 tokens, top-k 8); VAR 5 scales (batch 2); Paella v3
and v1, 6 steps at 16x16 tokens; StoryDiffusion CSA 4 steps of an identity pass (3 images) and a
panel pass (4 panels) over 3 layers, one model call per step.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


HEADS, DIM, LATENT = 2, 8, (8, 8)


def csa_story(pack_module, device, steps: int) -> tuple[list[torch.Tensor], object]:
    """An identity pass (characters A, A, B) then a panel pass (A / B / A+B / nobody) as a ComfyUI
    sampler drives the patch: per step one model call (cond and uncond batched), one ``sigmas``
    tensor shared by every layer of that call, one ``sample_sigmas`` per run. Returns the layer
    outputs and the bank."""
    csa, patch_mod = pack_module("nodes.story.csa"), pack_module("nodes.story.patch")
    bank_mod, layers_mod = pack_module("nodes.story.bank"), pack_module("nodes.story.layers")
    layers = [layers_mod.LayerSpec("output", 0, 0, 2, HEADS, DIM), layers_mod.LayerSpec("output", 1, 0, 2, HEADS, DIM),
              layers_mod.LayerSpec("output", 2, 0, 1, HEADS, DIM)]
    settings = patch_mod.CSASettings(seed=3, gating=csa.Gating(start_step=0, skip_prob_early=0.2, skip_prob_late=0.2))
    bank = bank_mod.CharacterBank("cpu")
    g = torch.Generator().manual_seed(0)

    def sample(attention, images):
        schedule = torch.linspace(14.6, 0.0, steps + 1, device=device)
        outs = []
        for step in range(steps):
            sigmas = schedule[step].repeat(images)
            for spec in layers:
                tokens = layers_mod.level_tokens(*LATENT, spec.factor)
                q, k, v = (torch.randn(2 * images, tokens, HEADS * DIM, generator=g).to(device) for _ in range(3))
                options = {"n_heads": HEADS, "dim_head": DIM, "cond_or_uncond": [1, 0],
                           "block": (spec.block, spec.number), "block_index": spec.block_index,
                           "original_shape": [images, 4, *LATENT], "sigmas": sigmas, "sample_sigmas": schedule}
                outs.append(attention(q, k, v, options))
        return outs

    identity = sample(patch_mod.StoryAttention(layers, settings, bank, "write", [("A",), ("A",), ("B",)]), 3)
    panels = sample(patch_mod.StoryAttention(layers, settings, bank, "read", [("A",), ("B",), ("A", "B"), ()]), 4)
    return identity + panels, bank


def count() -> dict:
    """Host syncs of each run, for the pack that ``packpath`` finds (see ``main``)."""
    from packpath import pack_module
    from standin_device import STANDIN, StandInDevice
    import paella_tiny
    from infinity_tiny import tiny_config
    from var_tiny import random_transformer, random_vqvae, tiny_transformer_config

    def syncs(run) -> int:
        with torch.no_grad(), StandInDevice() as dev:
            go = run(STANDIN)
            dev.reset()
            go()
            return dev.syncs

    result = {}
    infinity_model = pack_module("nodes.infinity.model")
    infinity_sampler = pack_module("nodes.infinity.sampler")

    def infinity(device):
        torch.manual_seed(0)
        model = infinity_model.InfinityTransformer(tiny_config(patch_h=4, patch_w=4)).eval().to(device)
        model.fingerprint()
        return lambda: infinity_sampler.generate_canvas(model, 3, 2, order="right", seed=5, top_k=8)
    result["infinity_96_tokens"] = syncs(infinity)

    var_sampling = pack_module("nodes.var.sampling")

    def var(device):
        vae = random_vqvae().to(device)
        net = random_transformer(tiny_transformer_config(patch_nums=(1, 2, 3, 4, 6)), seed=7).to(device)
        if "draws" in inspect.signature(var_sampling.sample).parameters:
            rng = pack_module("nodes.common.draws").Draws(0, device)
        else:
            rng = torch.Generator().manual_seed(0)
        return lambda: var_sampling.sample(net, vae, 2, rng, labels=[3, 9])
    result["var_5_scales"] = syncs(var)

    sampling_v3 = pack_module("nodes.paella.sampling_v3")
    sampling_v1 = pack_module("nodes.paella.sampling_v1")
    g = torch.Generator().manual_seed(0)
    cond = sampling_v3.V3Condition(torch.randn(1, 5, paella_tiny.BYT5_WIDTH, generator=g),
                                   torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g))
    uncond = sampling_v3.V3Condition(torch.zeros(1, 5, paella_tiny.BYT5_WIDTH), torch.zeros(1, paella_tiny.CLIP_WIDTH))

    def v3(device):
        model = paella_tiny.tiny_v3().to(device)
        return lambda: sampling_v3.sample_v3(model, cond, uncond, seed=1, shape=(1, 16, 16), steps=6)
    result["paella_v3_6_steps"] = syncs(v3)

    def v1(device):
        model = paella_tiny.tiny_v1().to(device)
        clip = torch.randn(1, paella_tiny.CLIP_WIDTH)
        return lambda: sampling_v1.sample_v1(model, clip, seed=1, size=(16, 16), T=6, renoise_steps=5)
    result["paella_v1_6_steps"] = syncs(v1)
    result["csa_8_model_calls"] = syncs(lambda device: lambda: csa_story(pack_module, device, 4))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=pathlib.Path, help="another checkout of the pack to count the same way")
    parser.add_argument("--count-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.count_only:                        # child process: count the pack packpath finds
        print(json.dumps(count()))
        return 0
    report = {}
    for label, tree in (("this_tree", ROOT), ("baseline", args.baseline)):
        if tree is None:
            continue
        # the checkout's own packpath (so its pack is imported), this tree's test helpers and stand-in
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(tree).resolve() / "scripts"),
                                                            str(ROOT / "tests"), str(ROOT / "bench")])}
        child = subprocess.run([sys.executable, __file__, "--count-only"], env=env, capture_output=True, text=True,
                               check=True)
        report[label] = json.loads(child.stdout.strip().splitlines()[-1])
    if args.baseline:
        report["baseline_dir"] = str(args.baseline)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
