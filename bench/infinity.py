#!/usr/bin/env python3
"""NUWA-Infinity benchmark: cost per patch vs canvas size, NCP vs full context, KV cache vs none.

``.venv/bin/python bench/infinity.py [--threads 1] [--repeats 3] > infinity.json``

All numbers come from one run on one machine with one small random-weight model (the timings
depend on the token count per patch and the model width, not on trained weights):

* scaling: seconds and NCP peak memory per patch for canvases of 4, 16, 64 and 256 patches,
  (a) two-row strips scanned along their length (order "right"), (b) squares scanned in rows;
* ncp_vs_full: a square canvas (raster) generated with the NCP (extents 1,1,0) and with a
  full-context baseline that attends to the cached keys/values of *every* previous patch (the same
  model, extents covering the canvas), i.e. a plain autoregressive transformer with a KV cache:
  64 patches with the paper's 16×16 tokens per patch (``--full-patch``), and 256 small patches;
* kv_cache: token-level KV cache inside a patch vs recomputing the patch prefix at every token.

Cases that are compared are timed in interleaved rounds with equal work per round (small canvases
are generated repeatedly), keeping each case's best round of ``--repeats``, so a shared machine's
load hits them alike. Memory is the exact byte count of the NCP's caches at their high-water mark
(plus CUDA's peak allocation on a GPU).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from packpath import pack_module  # noqa: E402

config = pack_module("nodes.infinity.config")
model_mod = pack_module("nodes.infinity.model")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")


def make_model(args, trained: tuple[int, int, int], device: torch.device, patch: int = 0):
    torch.manual_seed(0)
    patch = patch or args.patch
    cfg = config.InfinityConfig(n_embed=args.vocab, dim=args.dim, depth=args.depth, heads=args.heads,
                                mlp_dim=4 * args.dim, patch_h=patch, patch_w=patch,
                                trained_extents=config.Extents(*trained))
    return model_mod.InfinityTransformer(cfg).to(device).eval()


def generate_once(model, cols: int, rows: int, order: str, extents, **options):
    """Seconds to generate one canvas, and the run's statistics."""
    state = state_mod.plan_fill(state_mod.empty_state(model, cols, rows, extents=extents), order)
    cuda = model.pos_emb.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    stats = sampler.run(model, state, seed=0, top_k=0, **options)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started, stats


def compare(cases: dict, rounds: int, work: int) -> dict:
    """Time every case in interleaved rounds; each round a case generates ``work`` patches in total
    (repeating small canvases), so every case is exposed alike to a shared machine's load. Keeps the
    best round per case."""
    best = {name: float("inf") for name in cases}
    stats = {}
    for _ in range(rounds):
        for name, (model, cols, rows, order, extents, options) in cases.items():
            repeats = max(1, work // (cols * rows))
            if model.pos_emb.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = 0.0
            for _ in range(repeats):
                took, stats[name] = generate_once(model, cols, rows, order, extents, **options)
                seconds += took
            best[name] = min(best[name], seconds / (repeats * cols * rows))
            if model.pos_emb.device.type == "cuda":
                stats[name].cuda_peak = torch.cuda.max_memory_allocated()
    report = {}
    for name, (model, cols, rows, order, extents, _) in cases.items():
        run = stats[name]
        report[name] = {"patches": cols * rows, "canvas": f"{cols}x{rows}", "order": order,
                        "extents": list(extents.as_tuple()), "ms_per_patch": round(1000 * best[name], 3),
                        "peak_pool_patches": run.peak_pool, "peak_pool_bytes": run.peak_pool_bytes,
                        "max_context_patches": run.max_context}
        if hasattr(run, "cuda_peak"):
            report[name]["cuda_peak_bytes"] = run.cuda_peak
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4, help="tokens per patch side")
    p.add_argument("--full-patch", type=int, default=16,
                   help="tokens per patch side for the 64-patch NCP vs full-context comparison")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    local = config.Extents(1, 1, 0)
    model = make_model(args, (1, 1, 0), device)
    generate_once(model, 2, 2, "right", local)                          # warm-up (allocator, kernels)

    strips = compare({n: (model, n // 2, 2, "right", local, {}) for n in (4, 16, 64, 256)}, args.repeats, 256)
    squares = compare({n: (model, side, side, "down", local, {}) for n, side in ((4, 2), (16, 4), (64, 8), (256, 16))},
                      args.repeats, 256)

    comparisons = {}
    for side, patch, rounds in ((8, args.full_patch, 1), (16, args.patch, args.repeats)):
        reach = side - 1                                          # a table that covers the whole canvas
        wide = make_model(args, (reach, reach, 0), device, patch)
        generate_once(wide, 2, 2, "down", local)
        found = compare({"ncp": (wide, side, side, "down", local, {}),
                         "full_context": (wide, side, side, "down", config.Extents(reach, reach, 0), {})},
                        rounds, side * side)
        comparisons[f"{side * side}_patches_{patch * patch}_tokens"] = {
            **found, "speedup": round(found["full_context"]["ms_per_patch"] / found["ncp"]["ms_per_patch"], 3),
            "pool_memory_ratio": round(found["full_context"]["peak_pool_bytes"] / found["ncp"]["peak_pool_bytes"], 3)}

    kv = compare({"with": (model, 4, 4, "down", local, {}),
                  "without": (model, 4, 4, "down", local, {"use_kv_cache": False})}, args.repeats, 16)

    report = {
        "command": "python bench/infinity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "device": str(device),
                    "threads": torch.get_num_threads()},
        "model": {"dim": args.dim, "depth": args.depth, "heads": args.heads, "tokens_per_patch": args.patch ** 2,
                  "vocab": args.vocab},
        "scaling_strip": list(strips.values()),
        "scaling_square": list(squares.values()),
        "ratio_256_vs_4_strip": round(strips[256]["ms_per_patch"] / strips[4]["ms_per_patch"], 3),
        "ratio_256_vs_4_square": round(squares[256]["ms_per_patch"] / squares[4]["ms_per_patch"], 3),
        "ncp_vs_full": comparisons,
        "kv_cache": {**kv, "speedup": round(kv["without"]["ms_per_patch"] / kv["with"]["ms_per_patch"], 3)},
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
