#!/usr/bin/env python3
"""The GPU benchmark: every system at released sizes, in fp32 / bf16 / fp16, device draws against CPU draws.

``.venv/bin/python bench/gpu.py > gpu.json`` on a machine with CUDA (about 6 minutes on one H100);
``--dry-run`` runs the same code at tiny sizes on whatever device there is (the test suite does, on
the CPU). Random weights with the released layouts: timings depend on shapes, not on trained values.

* ``var``: VAR d16 and d30 (256 px, 10 scales, cfg 4, top-k 900, top-p 0.95, batch 8) images/s;
* ``paella_v3``: the 1 B released layout, seconds per image at 256 and 512 px (12 steps, CFG on);
* ``infinity``: a paper-sized decoder (24 layers x 1280, 16x16-token patches, 2x2-patch canvas):
  tokens/s and patches/s;
* ``csa``: StoryDiffusion Consistent Self-Attention at SDXL's 1024-px self-attention shapes (4 identity
  images, cond+uncond, 4096 and 1024 tokens, 640 and 1280 channels) against plain attention;
* each run's peak memory; every system with ``draws = model device`` (the pack's default) and ``cpu``
  (a host round trip per draw: what the pack did before, the baseline), and for Infinity the host
  syncs per token counted by ``torch.cuda.set_sync_debug_mode``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import sys
import time
import warnings

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))          # the random-weight builders of the tiny test models

from packpath import pack_module  # noqa: E402

precision = pack_module("nodes.common.precision")
draws_mod = pack_module("nodes.common.draws")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        into["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)


def var(device, dtype, tiny: bool, repeats: int) -> dict:
    from var_tiny import _randomize, tiny_vqvae_config
    transformer_mod, vqvae_mod = pack_module("nodes.var.transformer"), pack_module("nodes.var.vqvae")
    sampling = pack_module("nodes.var.sampling")
    schedule = pack_module("nodes.var.schedule")
    sizes = {"d16": (16, 1024), "d30": (30, 1920)} if not tiny else {"d2": (2, 64)}
    batch = 8 if not tiny else 2
    patch_nums = schedule.SCHEDULE_256 if not tiny else (1, 2, 3)
    vae_config = vqvae_mod.VQVAEConfig() if not tiny else tiny_vqvae_config()
    vae = vqvae_mod.VQVAE(vae_config).eval()
    _randomize(vae, 0)
    vae = precision.cast_module(vae.to(device), dtype)
    out = {}
    for name, (depth, width) in sizes.items():
        config = transformer_mod.VARConfig(depth=depth, width=width, ffn_hidden=4 * width,
                                           latent_channels=vae_config.latent_channels,
                                           vocab_size=vae_config.vocab_size, patch_nums=tuple(patch_nums))
        net = transformer_mod.VARTransformer(config).eval()
        _randomize(net, 1)
        net = precision.cast_module(net.to(device), dtype)
        settings = sampling.SamplingSettings(cfg=4.0, top_k=900, top_p=0.95)
        row = {}
        for mode in draws_mod.MODES:
            def run():
                with torch.inference_mode():
                    result = sampling.sample(net, vae, batch, draws_mod.Draws(0, device, mode), labels=[1] * batch,
                                             settings=settings)
                    vae.decode_fhat(result.f_hat)
            with peak_memory(device, row):
                seconds = timed(run, device, repeats)
            row[f"images_per_s_draws_{mode.replace(' ', '_')}"] = round(batch / seconds, 2)
        out[name] = row
        del net
    return out


def paella_v3(device, dtype, tiny: bool, repeats: int) -> dict:
    import paella
    sampling_v3 = pack_module("nodes.paella.sampling_v3")
    preset = paella.PRESETS["full"]["v3"] if not tiny else dict(c_hidden=(32, 64, 64), blocks=(1, 1, 1))
    model = paella.build_v3(preset).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model = precision.cast_module(model, dtype)
    cond = sampling_v3.V3Condition(torch.randn(1, paella.BYT5_LENGTH, 2560), torch.randn(1, 1024))
    uncond = sampling_v3.V3Condition(torch.zeros(1, paella.BYT5_LENGTH, 2560), torch.zeros(1, 1024))
    out = {}
    for px in ((256, 512) if not tiny else (64,)):
        row = {}
        for mode in draws_mod.MODES:
            def run():
                with torch.inference_mode():
                    sampling_v3.sample_v3(model, cond, uncond, seed=0, shape=(1, px // 4, px // 4),
                                          steps=12 if not tiny else 2, draws=mode)
            with peak_memory(device, row):
                row[f"seconds_per_image_draws_{mode.replace(' ', '_')}"] = round(timed(run, device, repeats), 3)
        out[f"{px}px"] = row
    return out


def infinity(device, dtype, tiny: bool, repeats: int) -> dict:
    config_mod, model_mod = pack_module("nodes.infinity.config"), pack_module("nodes.infinity.model")
    sampler = pack_module("nodes.infinity.sampler")
    if tiny:
        config = config_mod.InfinityConfig(n_embed=64, dim=32, depth=2, heads=4, mlp_dim=64, patch_h=4, patch_w=4,
                                           rope_base=100)
    else:
        config = config_mod.InfinityConfig(n_embed=16384, dim=1280, depth=24, heads=20, mlp_dim=5120, patch_h=16,
                                           patch_w=16, rope_base=100)
    torch.manual_seed(0)
    model = precision.cast_module(model_mod.InfinityTransformer(config).eval().to(device), dtype)
    cols, rows = 2, 2
    tokens = cols * rows * config.tokens_per_patch
    out = {}
    for mode in draws_mod.MODES:
        def run():
            sampler.generate_canvas(model, cols, rows, order="right", seed=0, top_k=64, draws=mode)
        row = {}
        with peak_memory(device, row):
            seconds = timed(run, device, repeats)
        row.update(tokens_per_s=round(tokens / seconds, 1), patches_per_s=round(cols * rows / seconds, 3))
        if device.type == "cuda":
            row["host_syncs_per_token"] = round(count_cuda_syncs(run) / tokens, 3)
        out[f"draws_{mode.replace(' ', '_')}"] = row
    for candidates in (1, 8):          # a 360° canvas: its last column drawn once, or as 8 candidates
        def run_wrap():
            sampler.generate_canvas(model, 3, rows, order="right", wrap=True, seed=0, top_k=64,
                                    close_candidates=candidates)
        row = {}
        with peak_memory(device, row):
            row["seconds_per_canvas"] = round(timed(run_wrap, device, repeats), 4)
        if device.type == "cuda":
            row["host_syncs_per_token"] = round(count_cuda_syncs(run_wrap) / (3 * rows * config.tokens_per_patch), 3)
        out[f"wrap_close_candidates_{candidates}"] = row
    return out


def count_cuda_syncs(run) -> int:
    """Synchronizing CUDA calls made during ``run``, as torch's sync debug mode reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message).lower() for w in caught)


def csa(device, dtype, tiny: bool, repeats: int) -> dict:
    csa_mod = pack_module("nodes.story.csa")
    images, heads = 4, (10 if not tiny else 2)
    shapes = {"h16_4096_tokens": (4096, 640), "h32_1024_tokens": (1024, 1280)} if not tiny else {"tiny": (64, 32)}
    out = {}
    for name, (tokens, channels) in shapes.items():
        q, k, v = (torch.randn(2 * images, tokens, channels, device=device, dtype=dtype) for _ in range(3))
        select = torch.rand(images, tokens) < 0.5
        picks = csa_mod.token_picks(select, device)
        plain = timed(lambda: csa_mod.plain_attention(q, k, v, heads), device, repeats)
        shared = timed(lambda: csa_mod.identity_attention(q, k, v, picks, 2, heads), device, repeats)
        out[name] = {"plain_ms": round(plain * 1e3, 3), "csa_ms": round(shared * 1e3, 3),
                     "overhead": round(shared / plain, 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on any device (for the tests)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--systems", default="var,paella_v3,infinity,csa")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "dry_run": args.dry_run}
    systems = {"var": var, "paella_v3": paella_v3, "infinity": infinity, "csa": csa}
    for system in args.systems.split(","):
        report[system] = {}
        for label in args.dtypes.split(","):
            started = time.perf_counter()
            try:
                report[system][label] = systems[system](device, DTYPES[label], args.dry_run, args.repeats)
            except torch.OutOfMemoryError as exc:                        # keep the other rows
                report[system][label] = {"error": f"out of memory: {exc}"[:200]}
            report[system][label]["seconds"] = round(time.perf_counter() - started, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
