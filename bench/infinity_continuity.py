#!/usr/bin/env python3
"""The continuity experiment: can a NUWA-Infinity decoder learn to continue its neighbour at all?

Trains the same tiny decoder twice on synthetic canvases whose patch boundaries are fully
determined by a neighbour (``nodes/infinity/synthetic.py``) — once as the demo models were built
(absolute in-patch positions and one relative vector per neighbouring patch), once with token
geometry (rotary embeddings on canvas coordinates, ``nodes/infinity/rope.py``) — with the same
seed, data and steps, and prints the teacher-forced accuracy at left and top patch boundaries and
inside patches, on fresh canvases (new seed), for the scan orders ``right`` and ``down``.

Run: ``.venv/bin/python bench/infinity_continuity.py [--steps 300] [--task rows]``
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
from packpath import pack_module  # noqa: E402

config_mod = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
synthetic = pack_module("nodes.infinity.synthetic")
training = pack_module("nodes.infinity.training")
adc = pack_module("nodes.infinity.adc")


def train_and_measure(task: str, rope_base: int, args) -> dict:
    torch.manual_seed(args.seed)
    cfg = config_mod.InfinityConfig(n_embed=args.vocab, dim=args.dim, depth=args.depth, heads=args.heads,
                                    mlp_dim=4 * args.dim, patch_h=args.patch, patch_w=args.patch,
                                    trained_extents=config_mod.Extents(1, 1, 0), rope_base=rope_base)
    model = model_mod.InfinityTransformer(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    data_rng = torch.Generator().manual_seed(args.seed)
    side = 2 * args.patch
    started = time.perf_counter()
    for step in range(args.steps):
        batch = synthetic.canvases(task, args.batch, side, side, args.vocab, data_rng)
        order = adc.ORDERS[step % len(adc.ORDERS)]
        optimizer.zero_grad(set_to_none=True)
        training.chain_loss(model, batch, order, cfg.trained_extents, patch_h=args.patch, patch_w=args.patch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - started
    model.eval()
    held_out = synthetic.canvases(task, 16, side, side, args.vocab, torch.Generator().manual_seed(args.seed + 999))
    return {"train_seconds": round(seconds, 1),
            **{order: synthetic.boundary_accuracy(model, held_out, order) for order in ("right", "down")}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="rows,ramp,columns", help="comma list of " + ", ".join(synthetic.TASKS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, default=16, help="tokens per patch side (the demo models use 16)")
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="absolute,rope", help="absolute (the old design), rope (token geometry)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("task", "variants")}}
    for task in args.task.split(","):
        result[task] = {variant: train_and_measure(task, 0 if variant == "absolute" else 100, args)
                        for variant in args.variants.split(",")}
        print(json.dumps({task: result[task]}), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
