#!/usr/bin/env python3
"""NUWA-Infinity's 360° seam: how well the patch that closes a panorama's loop meets both sides.

For each model (``--model NAME=PATH``, repeatable; default the shipped world panorama model) and each
``--close-candidates`` value (``sampler.run``'s ``close_candidates``; 1 = each closing patch drawn
once), ``--canvases`` 360° canvases of 8×2 patches (order ``--order``, the nodes' defaults: temperature
1, top-k 64, edge temperature 0.7), decoded rolled by half their width so the seam sits in the middle:

* the step at the 360° seam ÷ the mean step at the other token boundaries, per canvas, with mean,
  median, 90 % bootstrap interval of the mean and the share of canvases over 2 (a seam one sees);
* the step at the closing column's other edge (where it meets the column drawn before it; order
  ``right``: the column to its left), the same way;
* the seam ratio at the other patch columns (``metrics.seam_ratio`` on each half of the rolled
  canvas, so the 360° seam is left out), so a gain at the seam that came at their expense would show;
* seconds per canvas (generation only; the variants take turns canvas by canvas, so a busy machine
  slows them alike).

Beside it, the ceiling: the same step for the round-trip of held-out world panoramas (seeds
``train_infinity_world.BENCH_SEED`` on), rolled the same way. ``--save-examples DIR`` writes each
variant's rolled canvases as PNGs to look at. Prints JSON.
Run: ``.venv/bin/python bench/infinity_wrap.py [--close-candidates 1,4] [--first-seed 100]``
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import infinity_directions as directions  # noqa: E402
import infinity_quality as iq  # noqa: E402
import metrics  # noqa: E402

COLS, ROWS = 8, 2
VISIBLE = 2.0          # a 360° seam step over twice an ordinary token boundary's reads as a seam


def seam_summary(ratios: list[float]) -> dict:
    return {"mean": round(float(np.mean(ratios)), 3), "median": round(float(np.median(ratios)), 3),
            "mean_90ci": metrics.mean_interval(ratios), "over_2": round(float(np.mean(np.array(ratios) > VISIBLE)), 3),
            "per_canvas": [round(r, 2) for r in ratios]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="NAME=PATH of a NUWA-Infinity model (repeatable)")
    p.add_argument("--vqgan", default=str(directions.WORLD_VQGAN))
    p.add_argument("--canvases", type=int, default=12, help="360° canvases of 8×2 patches per variant")
    p.add_argument("--close-candidates", default="1,4", help="comma-separated close_candidates values")
    p.add_argument("--order", default="right", choices=directions.ORDERS, help="ADC order of the canvases")
    p.add_argument("--pictures", type=int, default=12,
                   help="held-out world panoramas for the round-trip ceiling (0 = skip it)")
    p.add_argument("--first-seed", type=int, default=0, help="first sampling seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-examples", type=pathlib.Path, help="write every rolled canvas here as PNG")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model) or {"shipped": str(directions.SHIPPED)}
    tok = iq.Tokenizer(iq.vq_loader.load_vqgan(args.vqgan).eval())
    patch_px = 256
    half_px = COLS * patch_px // 2
    ceiling = []
    for seed in range(iq.BENCH_SEED, iq.BENCH_SEED + args.pictures):
        rolled = iq.to_tensor(Image.fromarray(iq.world_picture(seed, COLS * patch_px, iq.HEIGHT))).roll(half_px, dims=1)
        ceiling.append(iq.junction_ratio(tok.decode(tok.encode(rolled)), half_px, tok.vqgan.factor))
    result = {"config": {"canvases": args.canvases, "order": args.order, "first_seed": args.first_seed,
                         "threads": args.threads, **directions.SETTINGS}}
    if ceiling:
        result["truth_round_trip"] = seam_summary(ceiling)
    print(json.dumps(result), flush=True)
    variants = {f"{name}@c{n}": (iq.checkpoint.load_infinity(path).eval(), int(n))
                for name, path in models.items() for n in args.close_candidates.split(",")}
    closing_edge = half_px + patch_px if args.order == "left" else half_px - patch_px   # its other side
    found = {variant: {"ratios": [], "closing_edge": [], "images": [], "closed": 0, "seconds": 0.0}
             for variant in variants}
    for seed in range(args.first_seed, args.first_seed + args.canvases):
        for variant, (model, candidates) in variants.items():      # in turn, so a busy machine slows all alike
            pw, entry = model.config.patch_w, found[variant]
            started = time.perf_counter()
            state = iq.sampler.plan_fill(iq.sampler.empty_state(model, COLS, ROWS, extents=iq.EXTENTS, wrap=True),
                                         args.order)
            entry["closed"] += iq.sampler.run(model, state, seed=seed, close_candidates=candidates,
                                              **directions.SETTINGS).closed
            entry["seconds"] += time.perf_counter() - started
            image = tok.decode(state.tokens[0, 0].roll(COLS * pw // 2, dims=-1))
            entry["ratios"].append(iq.junction_ratio(image, half_px, tok.vqgan.factor))
            entry["closing_edge"].append(iq.junction_ratio(image, closing_edge, tok.vqgan.factor))
            entry["images"].append(image)
    for variant, entry in found.items():
        images = entry["images"]
        result[variant] = {
            "wrap_seam": seam_summary(entry["ratios"]),
            "closing_column_other_edge": round(float(np.mean(entry["closing_edge"])), 3),
            "closing_patches_per_canvas": entry["closed"] / args.canvases,
            "seam_vertical_other_columns": round(metrics.seam_ratio(
                [part for image in images for part in (image[:, :half_px], image[:, half_px:])], patch_px,
                "vertical"), 3),
            "seconds_per_canvas": round(entry["seconds"] / args.canvases, 2)}
        print(json.dumps({variant: result[variant]}), flush=True)
        if args.save_examples:
            args.save_examples.mkdir(parents=True, exist_ok=True)
            for seed, image in zip(range(args.first_seed, args.first_seed + args.canvases), images):
                Image.fromarray((image.clamp(0, 1) * 255).round().byte().numpy()).save(
                    args.save_examples / f"{variant}_seed{seed}.png")
    return result


if __name__ == "__main__":
    main()
