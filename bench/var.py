#!/usr/bin/env python3
"""VAR benchmark on CPU: seconds per image, KV cache vs recomputing the prefix, peak memory.

``.venv/bin/python bench/var.py [--threads 1] [--repeats 2] [--depths 4 8] [--batches 1 4] > var.json``

All numbers come from one run on one machine with random weights (timings depend on shapes, not
on trained values). For each transformer depth d (width 64·d, d heads, 256-px schedule: 10 scales,
680 tokens, 4096 codes, CFG so every step runs 2·B sequences) and batch size B:

* ``cached``: the real sampler, keys/values of earlier scales kept in a cache, each scale feeds only
  its own pn² tokens;
* ``recomputed``: the baseline without a cache, each scale re-runs the whole block-causal prefix
  (what a plain masked transformer does); it draws the very same tokens;
* ``speedup`` = recomputed / cached seconds.

Each (depth, batch, mode) runs in a fresh process so that its peak resident memory
(``ru_maxrss`` minus the resident size just before sampling) is its own; times are the best of
``--repeats``. ``vqvae_decode`` times one 256-px decode with the release-size VQVAE (base width
160), the fixed cost added to every image, and ``kv_cache_mib`` is the exact size of the cache at
the last scale (keys and values of every block, 2B sequences, L positions, float32).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import platform
import resource
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _models(depth: int):
    from var_tiny import random_transformer, random_vqvae, tiny_transformer_config, tiny_vqvae_config
    vae = random_vqvae(tiny_vqvae_config(latent_channels=32, vocab_size=4096))
    config = tiny_transformer_config(depth=depth, width=64 * depth, latent_channels=32, vocab_size=4096)
    return vae, random_transformer(config)


def run_sampler(depth: int, batch: int, use_cache: bool, repeats: int, threads: int, queue) -> None:
    """Child process: best-of-``repeats`` seconds and the peak RSS growth of one configuration."""
    torch.set_num_threads(threads)
    from packpath import pack_module
    sampling = pack_module("nodes.var.sampling")
    Draws = pack_module("nodes.common.draws").Draws
    vae, var = _models(depth)
    settings = sampling.SamplingSettings(cfg=4.0, top_k=900, top_p=0.95)
    # keys + values of every block for all 2B sequences (CFG) and all L positions, float32
    cache_bytes = 2 * var.config.depth * 2 * batch * var.config.length * var.config.width * 4
    before = _rss_mib()
    best, tokens = float("inf"), None
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            result = sampling.sample(var, vae, batch, Draws(0, var.weight_device), labels=[1] * batch,
                                     settings=settings, use_cache=use_cache)
            best = min(best, time.perf_counter() - start)
            tokens = [t.tolist() for t in result.tokens]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": best, "seconds_per_image": best / batch, "peak_rss_growth_mib": max(peak - before, 0.0),
               "kv_cache_mib": cache_bytes / 2 ** 20 if use_cache else 0.0, "tokens": tokens})


def run_decode(threads: int, repeats: int, queue) -> None:
    torch.set_num_threads(threads)
    from var_tiny import random_vqvae
    from packpath import pack_module
    vqvae_mod = pack_module("nodes.var.vqvae")
    vae = random_vqvae(vqvae_mod.VQVAEConfig())
    f_hat = torch.randn(1, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            vae.decode_fhat(f_hat)
            best = min(best, time.perf_counter() - start)
    queue.put({"seconds": best, "params_m": sum(p.numel() for p in vae.parameters()) / 1e6})


def in_child(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    rows = []
    for depth in args.depths:
        for batch in args.batches:
            cached = in_child(run_sampler, depth, batch, True, args.repeats, args.threads)
            recomputed = in_child(run_sampler, depth, batch, False, args.repeats, args.threads)
            same_tokens = cached.pop("tokens") == recomputed.pop("tokens")
            rows.append({"depth": depth, "width": 64 * depth, "batch": batch, "cached": cached,
                         "recomputed": recomputed, "same_tokens": same_tokens,
                         "speedup": recomputed["seconds"] / cached["seconds"]})
            print(f"depth {depth} batch {batch}: {cached['seconds_per_image']:.2f} s/image cached, "
                  f"{recomputed['seconds_per_image']:.2f} recomputed", file=sys.stderr)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": args.threads},
        "settings": {"schedule": "256-px (10 scales, 680 tokens)", "vocab": 4096, "cfg": 4.0, "top_k": 900,
                     "top_p": 0.95, "repeats": args.repeats},
        "sampler": rows,
        "vqvae_decode": in_child(run_decode, args.threads, args.repeats),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
