#!/usr/bin/env python3
"""Paella benchmark on CPU: seconds per image vs steps and size, CFG on/off, attention baseline.

``.venv/bin/python bench/paella.py [--threads 2] [--preset small] [--repeats 1] > paella.json``

All numbers come from one run on one machine with random weights (timings depend on shapes, not on
trained values). Presets: ``small`` keeps the released layouts (patch 2, levels CT/CTA/CTA, 16 heads,
ByT5 2560 / CLIP 1024 inputs, 8192 codes; v1: 3 levels, 8192 codes) at a quarter of the channel
widths and fewer blocks, so the whole run takes a few minutes on two cores; ``full`` is the released
size (v3 1.0 B parameters, v1 0.58 B; expect about 15 s per v3 forward at 64x64 tokens on a laptop CPU).

* ``v3.sample`` / ``v1.sample``: seconds per image of the official samplers (``pipeline.generate``)
  for each image size, step count and CFG on/off (CFG doubles the model calls);
* ``v3.draw_seconds_per_step_64x64``: softmax + the CPU multinomial draw over 4096 x 8192 probabilities
  (the RNG contract fixes this draw; it is model-size independent);
* ``v3.forward``: one forward at 64x64 tokens with our attention (PyTorch SDPA on the packed
  in-projection), the baseline the reference code uses (``nn.MultiheadAttention`` with the same
  weights), and the notebook's explicit re-weighted attention (best of at least 3, round-robin);
* ``ratios``: ``cfg_on_vs_off`` (same size, same steps), ``sdpa_speedup_vs_mha`` (baseline / ours),
  ``reweighting_cost`` (re-weighted / plain), ``typical_filtering_cost`` (v1 with / without filtering).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from packpath import pack_module  # noqa: E402

v3_model = pack_module("nodes.paella.v3_model")
v1_model = pack_module("nodes.paella.v1_model")
vqgan_f4 = pack_module("nodes.paella.vqgan_f4")
vqgan_f8 = pack_module("nodes.paella.vqgan_f8")
pipeline = pack_module("nodes.paella.pipeline")
conditioning = pack_module("nodes.paella.conditioning")
taming = pack_module("nodes.vq.vqgan")

PRESETS = {
    "small": {"v3": dict(c_hidden=(160, 320, 320), blocks=(2, 4, 2)), "v1": dict(c_levels=(80, 160, 320),
                                                                               blocks=(2, 2, 4)),
              "v3_sizes": (128, 256), "v1_sizes": (128, 256), "steps": (4, 8)},
    "full": {"v3": dict(c_hidden=(640, 1280, 1280), blocks=(6, 16, 6)), "v1": dict(c_levels=(320, 640, 1280),
                                                                                  blocks=(4, 8, 16)),
             "v3_sizes": (256,), "v1_sizes": (256,), "steps": (12,)},
}
BYT5_LENGTH = 48


def build_v3(preset: dict) -> nn.Module:
    cfg = v3_model.PaellaV3Config(num_labels=8192, c_in=256, c_out=256, patch_size=2,
                                  level_config=("CT", "CTA", "CTA"), c_cond=1024, c_r=64, byt5_width=2560,
                                  clip_width=1024, clip_seq_len=4, **preset)
    return v3_model.PaellaV3(cfg).eval().requires_grad_(False)


def build_f4() -> nn.Module:
    return vqgan_f4.VQGANF4(vqgan_f4.VQGANF4Config((192, 384), 12, 4, 8192)).eval().requires_grad_(False)


def build_v1(preset: dict) -> nn.Module:
    config = v1_model.PaellaV1Config(num_labels=8192, c_clip=1024, **preset)
    return v1_model.PaellaV1(config).eval().requires_grad_(False)


def build_f8() -> nn.Module:
    cfg = taming.VQGANConfig(ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2, attn_levels=(3,), z_channels=256,
                             embed_dim=256, n_embed=8192)
    return vqgan_f8.VQGANF8(vqgan_f8.VQGANF8Config(cfg, 256, 256, 8192)).eval().requires_grad_(False)


class MHABaseline(nn.Module):
    """The reference's attention: ``nn.MultiheadAttention`` holding the same packed weights."""

    def __init__(self, packed):
        super().__init__()
        c = packed.out_proj.in_features
        self.attn = nn.MultiheadAttention(c, packed.num_heads, bias=True, batch_first=True)
        self.attn.load_state_dict(packed.state_dict())

    def forward(self, q_bnc, kv_bmc, key_weights=None):
        return self.attn(q_bnc, kv_bmc, kv_bmc, need_weights=False)[0]


def with_mha(model: nn.Module) -> nn.Module:
    import copy
    baseline = copy.deepcopy(model)
    for module in baseline.modules():
        if isinstance(module, v3_model.Attention2D):
            module.attn = MHABaseline(module.attn)
    return baseline.eval()


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(fns: dict, repeats: int) -> dict:
    """Best time of each function, run round-robin so background load hits all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def v3_conditions():
    g = torch.Generator().manual_seed(0)
    positive = conditioning.PaellaConditioning(byt5=torch.randn(1, BYT5_LENGTH, 2560, generator=g),
                                               clip_text=torch.randn(1, 1024, generator=g),
                                               clip_image=torch.randn(1, 1, 1024, generator=g))
    negative = conditioning.PaellaConditioning(byt5=torch.randn(1, 1, 2560, generator=g),
                                               clip_text=torch.randn(1, 1024, generator=g))
    return positive, negative


def bench_v3(preset: dict, repeats: int) -> dict:
    model, vqgan = build_v3(preset["v3"]), build_f4()
    positive, negative = v3_conditions()
    tokens = torch.randint(0, 8192, (1, 64, 64))
    r = torch.tensor([0.5])
    weights = pack_module("nodes.paella.sampling_v3").notebook_attention_weights(BYT5_LENGTH)
    baseline = with_mha(model)
    args = (tokens, r, positive.byt5, positive.clip_text, positive.clip_image)
    model(*args)   # warm-up
    forward = interleaved_best({"sdpa": lambda: model(*args), "mha_baseline": lambda: baseline(*args),
                                "reweighted": lambda: model(*args, attn_weights=weights)}, max(3, repeats))
    samples = []
    for size in preset["v3_sizes"]:
        grid = (size // 4, size // 4)
        for steps in preset["steps"]:
            for cfg in (True, False):
                sampler = pipeline.V3Sampler(steps=steps, cfg=(8.0, 8.0) if cfg else (1.0, 1.0))
                seconds = best_time(lambda: pipeline.generate(model, vqgan, sampler, positive, negative, seed=0,
                                                              batch=1, grid=grid, with_preview=False), repeats)
                samples.append({"size_px": size, "tokens": list(grid), "steps": steps, "cfg": cfg,
                                "seconds_per_image": round(seconds, 3)})
    decode = best_time(lambda: vqgan.decode_indices(tokens), repeats)
    logits = model(*args)
    draw = best_time(lambda: torch.multinomial(logits.div(1.0).softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, 8192),
                                               1, generator=torch.Generator().manual_seed(0)), repeats)
    return {"parameters": sum(p.numel() for p in model.parameters()), "config": preset["v3"],
            "forward_seconds_64x64": {k: round(v, 3) for k, v in forward.items()},
            "draw_seconds_per_step_64x64": round(draw, 3),
            "vqgan_decode_seconds_256px": round(decode, 3), "sample": samples,
            "ratios": {"sdpa_speedup_vs_mha": round(forward["mha_baseline"] / forward["sdpa"], 3),
                       "reweighting_cost": round(forward["reweighted"] / forward["sdpa"], 3),
                       "cfg_on_vs_off": _cfg_ratio(samples)}}


def bench_v1(preset: dict, repeats: int) -> dict:
    model, vqgan = build_v1(preset["v1"]), build_f8()
    vector = torch.randn(1, 1024, generator=torch.Generator().manual_seed(1))
    positive = conditioning.PaellaConditioning(clip_text=vector)
    samples = []
    for size in preset["v1_sizes"]:
        grid = (size // 8, size // 8)
        for steps in preset["steps"]:
            for cfg in (True, False):
                sampler = pipeline.V1Sampler(steps=steps, cfg=5.0 if cfg else 1.0)
                seconds = best_time(lambda: pipeline.generate(model, vqgan, sampler, positive, None, seed=0,
                                                              batch=1, grid=grid, with_preview=False), repeats)
                samples.append({"size_px": size, "tokens": list(grid), "steps": steps, "cfg": cfg,
                                "seconds_per_image": round(seconds, 3)})
    size, steps = preset["v1_sizes"][-1], preset["steps"][-1]
    grid = (size // 8, size // 8)
    plain = pipeline.V1Sampler(steps=steps, cfg=1.0, typical_filtering=False)
    no_filter = best_time(lambda: pipeline.generate(model, vqgan, plain, positive, None, seed=0, batch=1, grid=grid,
                                                    with_preview=False), repeats)
    filtered = next(s["seconds_per_image"] for s in samples
                    if s["size_px"] == size and s["steps"] == steps and not s["cfg"])
    return {"parameters": sum(p.numel() for p in model.parameters()), "config": preset["v1"], "sample": samples,
            "ratios": {"cfg_on_vs_off": _cfg_ratio(samples),
                       "typical_filtering_cost": round(filtered / no_filter, 3)}}


def _cfg_ratio(samples: list[dict]) -> float:
    """Mean of (CFG on / CFG off) over the size and step combinations."""
    pairs = {}
    for s in samples:
        pairs.setdefault((s["size_px"], s["steps"]), {})[s["cfg"]] = s["seconds_per_image"]
    ratios = [p[True] / p[False] for p in pairs.values()]
    return round(sum(ratios) / len(ratios), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset = PRESETS[args.preset]
    with torch.inference_mode():
        result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                              "torch": torch.__version__, "threads": args.threads, "device": "cpu"},
                  "preset": args.preset, "repeats": args.repeats,
                  "v3": bench_v3(preset, args.repeats), "v1": bench_v1(preset, args.repeats)}
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
