#!/usr/bin/env python3
"""Where do the seams of free-running canvases come from? Per-boundary steps and the model's certainty.

``.venv/bin/python bench/seam_profile.py --model NAME=PATH [--model ...]`` (world models; JSON out)

``bench/infinity_quality.py`` pools the step at every patch column of every canvas into one seam
ratio. This benchmark takes it apart, for canvases made with the Generate Canvas node's defaults
(order right, temperature 1, top-k 64, ``--canvases`` canvases of 8×2 patches, seeds from
``--first-seed``):

* **per boundary**: each of the 7 column boundaries of each patch row, its step ÷ the mean step at
  the other token boundaries of the same pixel rows; quantiles and the share above 2, so a few hard
  edges (a forest that starts at a patch edge) and a general small step can be told apart;
* **per token row** inside the patch row: the same ratio pooled over boundaries, for each of the
  patch's token rows (the first rows are sampled with the least of their own patch known);
* **certainty where it sampled**: the canvases scored teacher-forced by the model that made them
  (``training.teacher_forced_log_probs``), beside held-out world token maps (seeds from
  ``train_infinity_world.BENCH_SEED``): mean entropy of the predicted distribution and the
  cross-entropy of the actual tokens, at each patch's first token column (left neighbour known) and
  inside patches. A model that is less sure at the first column than inside draws more varied
  tokens there, which shows as a step even when its argmax continues the neighbour;
* **frame codes**: the share of each model's tokens that are the tokenizer's border codes
  (``frame_codes``: what a plain encode puts at a panorama's ends and a 360° encode does not),
  beside their share inside held-out maps. Maps encoded plainly have them at their ends, where
  training crops and rolled 360° canvases put them inside a canvas.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402
from infinity_quality import EXTENTS, HEIGHT, Tokenizer, to_tensor  # noqa: E402
from packpath import pack_module  # noqa: E402
from train_infinity_world import BENCH_SEED, world_picture  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
sampler = pack_module("nodes.infinity.sampler")
training = pack_module("nodes.infinity.training")
tiling = pack_module("nodes.vq.tiling")
vq_loader = pack_module("nodes.vq.loader")

COLS, ROWS = 8, 2


def _row_steps(image_hw3: torch.Tensor, patch_px: int, token_px: int):
    """Per-pixel-row steps ``[H, W - 1]`` (``[:, x - 1]`` is the step at column x, grey level), and
    which of those columns start a patch and which are the other token boundaries."""
    grey_hw = image_hw3.float().mean(-1)
    steps_hw = (grey_hw[:, 1:] - grey_hw[:, :-1]).abs()
    x = torch.arange(1, steps_hw.shape[1] + 1)
    return steps_hw, x % patch_px == 0, (x % token_px == 0) & (x % patch_px != 0)


def boundary_ratios(image_hw3: torch.Tensor, patch_px: int, token_px: int) -> np.ndarray:
    """``[patch rows, COLS - 1]``: step at each patch column boundary ÷ mean step at the other token
    boundaries, over the pixel rows of that patch row."""
    steps_hw, patch_cols, token_cols = _row_steps(image_hw3, patch_px, token_px)
    return np.stack([(band_hw[:, patch_cols].mean(0) / band_hw[:, token_cols].mean()).numpy()
                     for band_hw in steps_hw.split(patch_px, dim=0)])


def token_row_ratios(images: list[torch.Tensor], patch_px: int, token_px: int) -> list[float]:
    """For each token row of a patch (0 = first sampled): mean boundary step ÷ mean other-boundary step,
    pooled over every image and patch row."""
    at, other = np.zeros(patch_px // token_px), np.zeros(patch_px // token_px)
    for image in images:
        steps_hw, patch_cols, token_cols = _row_steps(image, patch_px, token_px)
        y_in_patch = torch.arange(steps_hw.shape[0]) % patch_px // token_px
        for k in range(len(at)):
            rows_hw = steps_hw[y_in_patch == k]
            at[k] += float(rows_hw[:, patch_cols].mean())
            other[k] += float(rows_hw[:, token_cols].mean())
    return [round(float(v), 3) for v in at / other]


END_COLUMNS = [0, -3, -2, -1]          # where a plain encode draws a picture's left and right border


def frame_codes(plain_maps: list[torch.Tensor], round_maps: list[torch.Tensor], vocab: int,
                ratio: float = 5.0, floor: float = 0.005) -> torch.Tensor:
    """``[vocab]`` bool: the codes a plain encode puts at a panorama's ends (``END_COLUMNS``) at least
    ``ratio``× as often as the same pictures encoded round (``tiling.encode_tiled``'s ``wrap_px``) have
    them there, and on at least ``floor`` of the end tokens: the tokenizer's border codes, told apart
    from the pictures' own content by comparing the same places of the same pictures."""
    def shares(maps):
        ends = torch.stack(maps)[..., END_COLUMNS]
        return torch.bincount(ends.flatten(), minlength=vocab).float() / ends.numel()
    plain, round_ = shares(plain_maps), shares(round_maps)
    return (plain >= ratio * round_) & (plain >= floor)


def frame_code_share(maps: list[torch.Tensor], codes_v: torch.Tensor, columns=None) -> float:
    """Share of the tokens of ``maps`` (or of their ``columns``) that are among ``codes_v``."""
    tokens = torch.stack(maps)
    tokens = tokens if columns is None else tokens[..., columns]
    return round(float(codes_v[tokens].float().mean()), 4)


def certainty(model, maps_hw: list[torch.Tensor], batch: int = 4) -> dict:
    """Teacher-forced entropy and cross-entropy (nats) at each patch's first token column (where the
    left neighbour is known: patch columns 1..) and inside patches (token columns 1.. of a patch)."""
    pw = model.config.patch_w
    sums = {"first_column": [0.0, 0.0, 0], "inside": [0.0, 0.0, 0]}
    for start in range(0, len(maps_hw), batch):
        tokens_bfhw = torch.stack(maps_hw[start:start + batch])[:, None]
        log_probs = training.teacher_forced_log_probs(model, tokens_bfhw, "right")[:, 0]   # [B, H, W, V]
        entropy_bhw = -(log_probs.exp() * log_probs).sum(-1)
        nll_bhw = -log_probs.gather(-1, tokens_bfhw[:, 0, ..., None]).squeeze(-1)
        x = torch.arange(tokens_bfhw.shape[-1])
        for name, where in (("first_column", (x % pw == 0) & (x >= pw)), ("inside", x % pw != 0)):
            sums[name][0] += float(entropy_bhw[..., where].sum())
            sums[name][1] += float(nll_bhw[..., where].sum())
            sums[name][2] += int(entropy_bhw[..., where].numel())
    return {name: {"entropy": round(e / n, 3), "cross_entropy": round(c / n, 3)} for name, (e, c, n) in sums.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="NAME=PATH of a world NUWA-Infinity model")
    p.add_argument("--vqgan", default=str(ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors"))
    p.add_argument("--canvases", type=int, default=16)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--world-pictures", type=int, default=8, help="held-out world panoramas scored teacher-forced")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--neighbour-guidance", type=float, default=1.0)
    p.add_argument("--edge-temperature", type=float, default=1.0, help="× the temperature at patch edges (1 = off)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = Tokenizer(vq_loader.load_vqgan(args.vqgan).eval())
    pictures = [to_tensor(world_picture(seed, 2048, HEIGHT))
                for seed in range(BENCH_SEED, BENCH_SEED + args.world_pictures)]
    real_maps = [tok.encode(picture) for picture in pictures]
    result = {"config": {"canvases": args.canvases, "first_seed": args.first_seed, "temperature": args.temperature,
                         "top_k": args.top_k, "neighbour_guidance": args.neighbour_guidance,
                         "edge_temperature": args.edge_temperature,
                         "world_pictures": args.world_pictures}}
    with torch.no_grad():
        round_maps = [tiling.encode_tiled(tok.vqgan, picture.permute(2, 0, 1)[None] * 2 - 1,
                                          wrap_px=tiling.PANORAMA_MARGIN_PX)[0] for picture in pictures]
    border_v = frame_codes(real_maps, round_maps, tok.vqgan.quantize.embedding.weight.shape[0])
    inside = list(range(16, real_maps[0].shape[-1] - 16))
    result["frame_codes"] = {"codes": int(border_v.sum()),
                             "share_at_the_ends_plain": frame_code_share(real_maps, border_v, END_COLUMNS),
                             "share_at_the_ends_round": frame_code_share(round_maps, border_v, END_COLUMNS),
                             "share_inside_held_out_maps": frame_code_share(round_maps, border_v, inside)}
    for name, path in (item.split("=", 1) for item in args.model):
        model = checkpoint.load_infinity(path).eval()
        patch_px, token_px = model.config.patch_w * tok.vqgan.factor, tok.vqgan.factor
        maps = [sampler.generate_canvas(model, COLS, ROWS, order="right", extents=EXTENTS, seed=seed,
                                        temperature=args.temperature, top_k=args.top_k,
                                        neighbour_guidance=args.neighbour_guidance,
                                        edge_temperature=args.edge_temperature).tokens[0, 0]
                for seed in range(args.first_seed, args.first_seed + args.canvases)]
        images = [tok.decode(tokens) for tokens in maps]
        per_boundary = np.stack([boundary_ratios(image, patch_px, token_px) for image in images])  # [N, rows, 7]
        result[name] = {
            "seam_vertical": round(metrics.seam_ratio(images, patch_px, "vertical"), 3),
            "seam_vertical_vs_token_boundaries": round(metrics.seam_ratio(images, patch_px, "vertical", token_px), 3),
            "per_boundary_quantiles_10_50_90_99": [round(float(q), 3) for q in
                                                   np.quantile(per_boundary, [0.1, 0.5, 0.9, 0.99])],
            "per_boundary_share_above_2": round(float((per_boundary > 2).mean()), 3),
            "per_boundary_by_patch_row_median": [round(float(v), 3) for v in np.median(per_boundary, axis=(0, 2))],
            "per_boundary_by_column_median": [round(float(v), 3) for v in np.median(per_boundary, axis=(0, 1))],
            "per_token_row": token_row_ratios(images, patch_px, token_px),
            "frame_code_share": frame_code_share(maps, border_v),
            "certainty_generated": certainty(model, maps),
            "certainty_held_out": certainty(model, real_maps),
        }
        print(json.dumps({name: result[name]}), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
