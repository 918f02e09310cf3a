#!/usr/bin/env python3
"""Half precision against float32, for every system: how many tokens agree and how far values move.

``.venv/bin/python bench/precision.py [--threads 2] > precision.json``

Each network is cast with ``common.precision.cast_module`` (what the nodes do with the dtype ComfyUI
picks: codebooks stay float32) and run next to its float32 self on the same inputs and seed:

* ``infinity``: the bundled panorama model, a 4x1-patch canvas, greedy and sampled (top-k 64);
* ``vqgan``: the bundled demo tokenizer on a 128x256 crop of an example picture (encode agreement,
  decode error from the same tokens);
* ``paella_v3`` / ``paella_v1`` / ``prior`` / ``var``: the released layouts at test size with random
  weights (no trained weights ship for them), so the numbers say how far the arithmetic drifts, not
  how a trained model's pictures change.

Agreement is the share of equal tokens; errors are max / mean absolute differences. The CPU computes
half precision slowly, so the seconds here say nothing about a GPU (see bench/gpu.py).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from packpath import pack_module  # noqa: E402

precision = pack_module("nodes.common.precision")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a == b).float().mean()), 4)


def errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.float() - b.float()).abs()
    return {"max_abs": round(float(diff.max()), 5), "mean_abs": round(float(diff.mean()), 6)}


def infinity() -> dict:
    checkpoint = pack_module("nodes.infinity.checkpoint")
    sampler = pack_module("nodes.infinity.sampler")
    path = str(ROOT / "models" / "infinity" / "boundless_demo_panorama.safetensors")
    runs = {"greedy": {"temperature": 0.0}, "top_k_64": {"temperature": 1.0, "top_k": 64}}
    reference = {name: sampler.generate_canvas(checkpoint.load_infinity(path), 4, 1, order="right", seed=3,
                                               **options).tokens for name, options in runs.items()}
    out = {}
    for label, dtype in DTYPES.items():
        model = precision.cast_module(checkpoint.load_infinity(path), dtype)
        out[label] = {f"{name}_token_agreement": agreement(
            sampler.generate_canvas(model, 4, 1, order="right", seed=3, **options).tokens, reference[name])
            for name, options in runs.items()}
    return out


def vqgan() -> dict:
    loader = pack_module("nodes.vq.loader")
    path = str(ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors")
    picture = np.array(Image.open(ROOT / "workflows" / "inputs" / "boundless_shore.png").convert("RGB"))
    x = torch.from_numpy(picture).float().div(255).permute(2, 0, 1)[None, :, :128, :256] * 2 - 1
    reference = loader.load_vqgan(path)
    indices, pixels = reference.encode_indices(x), reference.decode_indices(reference.encode_indices(x))
    out = {}
    for label, dtype in DTYPES.items():
        model = precision.cast_module(loader.load_vqgan(path), dtype)
        out[label] = {"encode_token_agreement": agreement(model.encode_indices(x), indices),
                      "decode": errors(model.decode_indices(indices), pixels)}
    return out


def paella() -> dict:
    import paella_tiny
    sampling_v3 = pack_module("nodes.paella.sampling_v3")
    sampling_v1 = pack_module("nodes.paella.sampling_v1")
    prior_mod = pack_module("nodes.paella.prior")
    pipeline = pack_module("nodes.paella.pipeline")
    g = torch.Generator().manual_seed(0)
    cond = sampling_v3.V3Condition(torch.randn(1, 8, paella_tiny.BYT5_WIDTH, generator=g),
                                   torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g))
    uncond = sampling_v3.V3Condition(torch.zeros(1, 8, paella_tiny.BYT5_WIDTH), torch.zeros(1, paella_tiny.CLIP_WIDTH))
    clip = torch.randn(1, paella_tiny.CLIP_WIDTH, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g)

    def v3(model, mode):
        return sampling_v3.sample_v3(model, cond, uncond, seed=1, shape=(1, 16, 16), steps=6, mode=mode)

    def v1(model):
        return sampling_v1.sample_v1(model, clip, seed=1, size=(16, 16), T=6, renoise_steps=5)

    def prior(model):
        return prior_mod.sample_prior(model, clip, 1, steps=10)

    ref = {"v3_multinomial": v3(paella_tiny.tiny_v3(), "multinomial"), "v3_argmax": v3(paella_tiny.tiny_v3(), "argmax"),
           "v1": v1(paella_tiny.tiny_v1()), "prior": prior(paella_tiny.tiny_prior()),
           "f4": pipeline.encode(paella_tiny.tiny_f4(), image), "f8": pipeline.encode(paella_tiny.tiny_f8(), image)}
    ref_f4_pixels = pipeline.decode(paella_tiny.tiny_f4(), ref["f4"])
    out = {}
    for label, dtype in DTYPES.items():
        def cast(module):
            return precision.cast_module(module, dtype)
        f4 = cast(paella_tiny.tiny_f4())
        out[label] = {
            "v3_multinomial_token_agreement": agreement(v3(cast(paella_tiny.tiny_v3()), "multinomial"),
                                                        ref["v3_multinomial"]),
            "v3_argmax_token_agreement": agreement(v3(cast(paella_tiny.tiny_v3()), "argmax"), ref["v3_argmax"]),
            "v1_token_agreement": agreement(v1(cast(paella_tiny.tiny_v1())), ref["v1"]),
            "prior_vector": errors(prior(cast(paella_tiny.tiny_prior())), ref["prior"]),
            "f4_encode_token_agreement": agreement(pipeline.encode(f4, image), ref["f4"]),
            "f4_decode": errors(pipeline.decode(f4, ref["f4"]), ref_f4_pixels),
            "f8_encode_token_agreement": agreement(pipeline.encode(cast(paella_tiny.tiny_f8()), image), ref["f8"]),
        }
    return out


def var() -> dict:
    from var_tiny import random_transformer, random_vqvae, tiny_transformer_config
    sampling = pack_module("nodes.var.sampling")
    draws = pack_module("nodes.common.draws")
    config = tiny_transformer_config(patch_nums=(1, 2, 3, 4, 6))
    settings = sampling.SamplingSettings(cfg=4.0, top_k=50, top_p=0.95)

    def run(vae, transformer):
        return sampling.sample(transformer, vae, 2, draws.Draws(0, "cpu"), labels=[3, 9], settings=settings)

    reference = run(random_vqvae(), random_transformer(config, seed=7))
    out = {}
    for label, dtype in DTYPES.items():
        result = run(precision.cast_module(random_vqvae(), dtype),
                     precision.cast_module(random_transformer(config, seed=7), dtype))
        total = sum(t.numel() for t in reference.tokens)
        out[label] = {"token_agreement": round(sum(int((a == b).sum()) for a, b in zip(result.tokens, reference.tokens))
                                               / total, 4),
                      "first_scale_equal": bool(torch.equal(result.tokens[0], reference.tokens[0]))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__}}
    with torch.inference_mode():
        for name, measure in (("infinity", infinity), ("vqgan", vqgan), ("paella", paella), ("var", var)):
            started = time.perf_counter()
            report[name] = measure()
            report[name]["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
