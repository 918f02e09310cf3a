#!/usr/bin/env python3
"""NUWA-Infinity continuity per direction: does a patch join its finished neighbour as well when the
canvas grows leftward or upward as when it grows rightward or downward?

For each model (``--model NAME=PATH``, repeatable; default the shipped world panorama model), on the
held-out demo world (``train_infinity_world.BENCH_SEED`` on, never trained on):

* **Outpainting junction**: ``--pictures`` held-out 2048×512 panoramas, each continued 2 patch columns
  to the right after its first 4, and mirrored, to the left (as ``bench/infinity_quality.py``: the
  context encoded alone with 64 px of mirror image past the cut, VQGAN Encode's ``outpaint_sides``),
  ``--seeds`` seeds each, at the nodes' defaults (temperature 1, top-k 64, edge temperature 0.7).
  The step at the context/continuation column ÷ the mean step at the other token boundaries: mean,
  median, 90 % bootstrap interval of the mean, and per direction; beside it the same for the truth's
  round-trip (context and truth encoded as one picture), the ceiling.
* **Canvas seams per order**: ``--canvases`` canvases of 4×2 patches drawn in each ADC order; seam
  ratio at vertical and horizontal patch boundaries (``metrics.seam_ratio``) with its 90 % interval.

A text model (e.g. ``boundless_world_text``) is prompted with the caption of the held-out scene it
outpaints (``nodes.world.scene.caption``), and each canvas with the caption of scene
``BENCH_SEED + seed``, so it runs as a user would run it.

Many more outpaintings than ``infinity_quality.py`` runs (its 24 per range move by half a token
boundary between seed ranges), and no FED, so it takes minutes. Prints JSON.
Run: ``.venv/bin/python bench/infinity_directions.py [--model a=x.safetensors] [--first-seed 100]``
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import infinity_quality as iq  # noqa: E402
import metrics  # noqa: E402
from packpath import ROOT, pack_module  # noqa: E402

ORDERS = pack_module("nodes.infinity.adc").ORDERS
WORLD_VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors"
SHIPPED = ROOT / "models" / "infinity" / "boundless_world_panorama.safetensors"
MIRROR_PX = 64
SETTINGS = dict(**iq.SAMPLING, edge_temperature=0.7)                 # the sampling nodes' defaults


def summary(junctions: list[float], directions: list[str]) -> dict:
    out = {"mean": round(float(np.mean(junctions)), 3), "median": round(float(np.median(junctions)), 3),
           "mean_90ci": metrics.mean_interval(junctions), "n": len(junctions)}
    for direction in ("right", "left"):
        out[direction] = round(float(np.mean([j for j, d in zip(junctions, directions) if d == direction])), 3)
    return out


def caption_states(model, seed: int):
    """For a text model, the MiniLM states ``[1, L, C]`` of world scene ``seed``'s caption; else None."""
    if not model.config.text_dim:
        return None
    scene_mod, minilm = pack_module("nodes.world.scene"), pack_module("nodes.text.minilm")
    if "encoder" not in _TEXT:
        _TEXT["encoder"] = minilm.load_text_encoder(minilm.default_path())
    return _TEXT["encoder"].encode([scene_mod.caption(scene_mod.sample_scene(seed))]).states


_TEXT: dict = {}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="NAME=PATH of a NUWA-Infinity model (repeatable)")
    p.add_argument("--vqgan", default=str(WORLD_VQGAN))
    p.add_argument("--pictures", type=int, default=12, help="held-out world panoramas (each outpainted both ways)")
    p.add_argument("--seeds", type=int, default=4, help="outpainting seeds per case")
    p.add_argument("--canvases", type=int, default=10, help="4×2-patch canvases per ADC order (0 = skip)")
    p.add_argument("--orders", default=",".join(ORDERS), help="comma-separated ADC orders of the canvases")
    p.add_argument("--first-seed", type=int, default=0, help="first sampling seed (outpainting and canvases)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model) or {"shipped": str(SHIPPED)}
    tok = iq.Tokenizer(iq.vq_loader.load_vqgan(args.vqgan).eval())
    patch_px = 256
    real = [(f"world_{seed}", Image.fromarray(iq.world_picture(seed, 2048, iq.HEIGHT)), iq.CONTEXT_COLS * patch_px)
            for seed in range(iq.BENCH_SEED, iq.BENCH_SEED + args.pictures)]
    cases = iq.outpaint_cases(tok, patch_px, real, MIRROR_PX)
    width = iq.CONTINUE_COLS * patch_px // tok.vqgan.factor
    ceiling = [iq.score_outpaint(tok, *iq.truth_round_trip(tok, case, width), patch_px)[0]["junction_step_ratio"]
               for case in cases]
    result = {"truth_round_trip": summary(ceiling, [c["direction"] for c in cases])}
    print(json.dumps(result), flush=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for name, path in models.items():
        model = iq.checkpoint.load_infinity(path).eval()
        junctions, directions = [], []
        for case in cases:
            state = iq.state_mod.state_from_tokens(model, case["context_tokens"][None], extents=iq.EXTENTS)
            text = caption_states(model, int(case["name"].split("_")[1]))
            for seed in seeds:
                _, cont = iq.continuation(model, state, case, width, seed, {**SETTINGS, "text": text})
                junctions.append(iq.score_outpaint(tok, case, cont, patch_px)[0]["junction_step_ratio"])
                directions.append(case["direction"])
        entry = {"mirrored_scan": model.config.mirrored_scan, "outpaint_junction": summary(junctions, directions),
                 "junction_over_ceiling": round(float(np.mean(junctions)) / float(np.mean(ceiling)), 3)}
        if args.canvases:
            entry["canvas_seams"] = {}
            for order in args.orders.split(","):
                images = [tok.decode(iq.sampler.generate_canvas(model, 4, 2, order=order, extents=iq.EXTENTS,
                                                                seed=seed, text=caption_states(model, iq.BENCH_SEED + seed),
                                                                **SETTINGS).tokens[0, 0])
                          for seed in range(args.first_seed, args.first_seed + args.canvases)]
                entry["canvas_seams"][order] = {
                    axis: round(metrics.seam_ratio(images, patch_px, axis), 3) for axis in ("vertical", "horizontal")}
                entry["canvas_seams"][order]["vertical_90ci"] = [
                    round(v, 3) for v in metrics.seam_ratio_interval(images, patch_px, "vertical")]
                entry["canvas_seams"][order]["horizontal_90ci"] = [
                    round(v, 3) for v in metrics.seam_ratio_interval(images, patch_px, "horizontal")]
        result[name] = entry
        print(json.dumps({name: entry}), flush=True)
    return result


if __name__ == "__main__":
    main()
