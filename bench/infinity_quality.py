#!/usr/bin/env python3
"""NUWA-Infinity continuity and quality on material the models never trained on.

For each model given (``--model NAME=PATH``, default the shipped panorama demo model), in one run:

* **Generation** (the Generate Canvas node's defaults: order ``right``, temperature 1, top-k 64,
  extents 1/1/0; but edge temperature 1, the sampler's default, unless ``--edge-temperature`` says
  otherwise — the nodes draw patch edges at 0.7 since session 13): ``--canvases`` canvases of 8×2 patches. Seam ratio at vertical and horizontal patch
  boundaries (``metrics.seam_ratio``; also against the other token boundaries only), never-seen token
  pairs across boundaries vs inside patches (reference: the codes of the training pictures), FED/KID
  of 256-px crops against crops of the held-out pictures; and ``--wrap-canvases``
  360° canvases, decoded rolled by half their width: the step at the wrap seam ÷ the step at the
  other token boundaries (their last column drawn as ``--close-candidates`` candidates, the nodes'
  default 8; ``bench/infinity_wrap.py`` measures that seam on more canvases).
* **Outpainting** of the held-out right quarter of the demo's pictures (``train_infinity_demo.HELD_OUT``;
  both sky panoramas at both training sizes, each also mirrored so that it is outpainted to the left):
  4 patch columns of context, encoded alone as a user's picture is (seeing ``--context-mirror`` px of its
  mirror image past the cut, as the outpainting workflows' VQGAN Encode does; 0 = plainly), 2 patch
  columns continued, ``--seeds`` seeds each. PSNR over the
  continuation and over its first patch column, mean-colour error, FED/KID of the continuations
  against the truth, and the step at the context/continuation column ÷ the mean step at the other
  token boundaries (also per direction, and with a 90 % bootstrap interval of its mean: leftward
  outpainting joins worse than rightward with a raster-scan model, see ``token_scan``).
  Beside it, baselines built in token space and decoded by the same VQGAN: mirror the context's
  tokens about its edge, repeat its last token column, tile its last two patch columns; and the
  round-trip of the truth (the ceiling: context and truth encoded as one picture and decoded; until
  session 15 its context column came from the context encoded alone, so its junction carried the
  border codes' step too).

``--material world`` measures on the demo world instead (``nodes/world``): ``--world-pictures``
panoramas of seeds from ``train_infinity_world.BENCH_SEED`` on (2048×512, never trained on nor used
for early stopping) are the held-out pictures; outpainting continues 2 patch columns of each after
its first 4 (and, mirrored, to the left); the never-seen pairs are counted against the codes of
``--world-reference`` training panoramas (seeds 0..N-1).

``--neighbour-guidance 1,1.5`` measures each model at each neighbour-guidance scale (entries
``NAME@g1.5``; 1 = off), and ``--edge-temperature 1,0.7`` at each edge temperature (``NAME@e0.7``),
on the same seeds; ``--first-seed`` moves every seed (canvases, wrap,
outpainting) to a fresh range, so a scale chosen on one range can be checked on another.

Seconds per generated patch are measured with the models taking turns (best of ``--timing-rounds``).
The references: the same seam ratios of the VQGAN round-trip of the real pictures, the never-seen
pair shares of the held-out pictures' own codes, and the FED/KID of the held-out round-trip.
Prints JSON. Run: ``.venv/bin/python bench/infinity_quality.py [--model old=a.safetensors --model new=b.safetensors]``
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402
from packpath import pack_module  # noqa: E402
from train_infinity_demo import OUT as DEMO_MODEL, SOURCES, VQGAN as DEMO_VQGAN, source_image, split_column  # noqa: E402
from train_infinity_world import BENCH_SEED, world_picture  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
config_mod = pack_module("nodes.infinity.config")
vq_loader = pack_module("nodes.vq.loader")
tiling = pack_module("nodes.vq.tiling")

HEIGHT = 512            # two 256-px patch rows
CONTEXT_COLS, CONTINUE_COLS = 4, 2
EXTENTS = config_mod.Extents(1, 1, 0)
SAMPLING = dict(temperature=1.0, top_k=64)         # the Generate Canvas node's defaults (--temperature, --top-k)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)          # [H, W, 3] in [0, 1]


def world_pictures(count: int) -> list[tuple[str, Image.Image, int]]:
    """(name, held-out 2048×512 world panorama, where outpainting starts: after 4 of its 8 patch columns)."""
    return [(f"world_{seed}", Image.fromarray(world_picture(seed, 2048, HEIGHT)), CONTEXT_COLS * 256)
            for seed in range(BENCH_SEED, BENCH_SEED + count)]


def demo_pictures() -> list[tuple[str, Image.Image, int]]:
    """(name, 512-px-high picture, first held-out column) of every training size; rows as in training."""
    found = []
    for name, sizes in SOURCES.items():
        for width, height in sizes:
            image = source_image(name, width, height)
            top = (height - height // 256 * 256) // 2          # the trainer's centre crop to whole patches
            found.append((f"{name}_{width}", image.crop((0, top, width, top + HEIGHT)), split_column(width)))
    return found


class Tokenizer:
    def __init__(self, vqgan):
        self.vqgan = vqgan

    @torch.no_grad()
    def encode(self, image_hw3: torch.Tensor, mirror_px: int = 0, mirror_sides=()) -> torch.Tensor:
        """Tokens ``[h, w]``; with ``mirror_px``, seeing the picture's mirror image past ``mirror_sides``
        (VQGAN Encode's ``outpaint_sides``)."""
        return tiling.encode_tiled(self.vqgan, image_hw3.permute(2, 0, 1)[None] * 2 - 1, mirror_px=mirror_px,
                                   mirror_sides=mirror_sides)[0]

    @torch.no_grad()
    def decode(self, tokens_hw: torch.Tensor) -> torch.Tensor:
        return ((self.vqgan.decode_indices(tokens_hw[None]).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0)


def outpaint_cases(tok: Tokenizer, patch_px: int, real: list[tuple[str, Image.Image, int]],
                   mirror_px: int = 0) -> list[dict]:
    """Context pixels/tokens and the true continuation, for both directions, at each picture's split.

    The context is encoded alone, as a user's picture is, seeing ``mirror_px`` of its mirror image past
    the side it is continued on (0: plainly, so its tokens at the cut are border codes)."""
    cases = []
    ctx_px, cont_px = CONTEXT_COLS * patch_px, CONTINUE_COLS * patch_px
    for name, image, split in real:
        if image.width - split < cont_px:
            continue                                            # the coast's held-out strip is too narrow
        for mirrored in (False, True):
            picture = to_tensor(ImageOps.mirror(image) if mirrored else image)
            if not mirrored:
                context, truth = picture[:, split - ctx_px:split], picture[:, split:split + cont_px]
            else:
                edge = image.width - split
                context, truth = picture[:, edge:edge + ctx_px], picture[:, edge - cont_px:edge]
            direction = "left" if mirrored else "right"
            cases.append({"name": name + ("_mirror" if mirrored else ""), "direction": direction,
                          "context": context, "truth": truth,
                          "context_tokens": tok.encode(context, mirror_px, (direction,))})
    return cases


def assemble(context: torch.Tensor, continuation: torch.Tensor, direction: str) -> torch.Tensor:
    """Context and continuation side by side (either tokens or pixels), in canvas order."""
    return torch.cat([context, continuation] if direction == "right" else [continuation, context], dim=1)


def token_baseline(kind: str, context_hw: torch.Tensor, width: int, patch_w: int, direction: str) -> torch.Tensor:
    """Continuation tokens ``[h, width]`` made from the context alone (built as if extending to the right)."""
    ctx = context_hw if direction == "right" else context_hw.flip(-1)
    if kind == "mirror":
        cont = ctx.flip(-1)[:, :width]
    elif kind == "repeat":
        cont = ctx[:, -1:].expand(-1, width)
    else:                                                       # tile the last patch columns
        cont = ctx[:, -CONTINUE_COLS * patch_w:].repeat(1, width // (CONTINUE_COLS * patch_w) + 1)[:, :width]
    return cont if direction == "right" else cont.flip(-1)


def junction_ratio(canvas_hw3: torch.Tensor, x: int, token_px: int) -> float:
    """Step at column x ÷ mean step at the canvas's other token-boundary columns.

    Against the other token boundaries, not every column: the decoder's token grid (and the JPEG
    blocking of the source pictures, which a round-trip partly keeps) makes every boundary column
    step more than the columns inside tokens."""
    steps = metrics.column_steps(canvas_hw3)
    columns = torch.arange(1, steps.shape[0] + 1)
    others = (columns % token_px == 0) & (columns != x)
    return float(steps[x - 1] / steps[others].mean())


def truth_round_trip(tok: Tokenizer, case: dict, width: int) -> tuple[dict, torch.Tensor]:
    """The ceiling of a case: context and truth encoded as one picture; returns the case with that
    context and the truth's continuation tokens (``width`` token columns)."""
    whole = tok.encode(assemble(case["context"], case["truth"], case["direction"]))
    right = case["direction"] == "right"
    return ({**case, "context_tokens": whole[:, :-width] if right else whole[:, width:]},
            whole[:, -width:] if right else whole[:, :width])


def continuation(model, state, case: dict, width: int, seed: int, options: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Outpaint ``state`` (the case's context) by ``CONTINUE_COLS`` patches in the case's direction:
    the whole canvas's tokens and the continuation's (``width`` token columns)."""
    grown = sampler.outpaint(model, state, case["direction"], CONTINUE_COLS, seed=seed, **options)
    tokens = grown.tokens[0, 0]
    return tokens, tokens[:, -width:] if case["direction"] == "right" else tokens[:, :width]


def score_outpaint(tok: Tokenizer, case: dict, cont_tokens: torch.Tensor, patch_px: int) -> tuple[dict, torch.Tensor]:
    """Scores of one continuation against the truth, and its pixels.

    Decoded with the one context patch column next to it (decoding costs most of this benchmark's
    time on a CPU); every method and baseline is decoded the same way."""
    direction = case["direction"]
    near = patch_px // tok.vqgan.factor                       # tokens of one patch column
    context_tokens = case["context_tokens"]
    context_tokens = context_tokens[:, -near:] if direction == "right" else context_tokens[:, :near]
    canvas = tok.decode(assemble(context_tokens, cont_tokens, direction))
    ctx_w = patch_px
    if direction == "right":
        cont, x, first = canvas[:, ctx_w:], ctx_w, slice(0, patch_px)
    else:
        cont_w = canvas.shape[1] - ctx_w
        cont, x, first = canvas[:, :cont_w], cont_w, slice(cont_w - patch_px, cont_w)
    truth = case["truth"]
    return ({"psnr": metrics.psnr(cont, truth), "psnr_first_column": metrics.psnr(cont[:, first], truth[:, first]),
             "mean_colour_error": metrics.mean_colour_error(cont, truth), "junction_step_ratio": junction_ratio(canvas, x, tok.vqgan.factor)},
            cont)


def interleaved_seconds_per_patch(variants: dict, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` seconds per generated patch of each variant, the variants taking turns in each
    round so that a busy machine slows them alike (4×2-patch canvases, the generation settings)."""
    best = {name: float("inf") for name in variants}
    for seed in range(rounds):
        for name, (model, options) in variants.items():
            started = time.perf_counter()
            sampler.generate_canvas(model, 4, 2, order="right", extents=EXTENTS, seed=seed, **SAMPLING, **options)
            best[name] = min(best[name], (time.perf_counter() - started) / 8)
    return {name: round(value, 4) for name, value in best.items()}


def summarise(rows: list[dict], crops_feat: np.ndarray, truth_feat: np.ndarray, directions: list[str]) -> dict:
    """Means of the rows, the junction per direction (``directions[i]`` is row i's) with a 90 % bootstrap
    interval of its mean (a few outpaintings with a hard edge move the mean by tenths), and FED/KID."""
    out = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}
    junctions = [r["junction_step_ratio"] for r in rows]
    out["junction_step_ratio_90ci"] = metrics.mean_interval(junctions)
    for direction in sorted(set(directions)):
        chosen = [j for j, d in zip(junctions, directions) if d == direction]
        out[f"junction_step_ratio_{direction}"] = round(float(np.mean(chosen)), 4)
    out["fed"] = round(metrics.frechet_distance(crops_feat, truth_feat), 2)
    kid, spread = metrics.kernel_inception_distance(crops_feat, truth_feat)
    out["kid_x1e3"], out["kid_spread"] = round(kid, 2), round(spread, 2)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], help="NAME=PATH of a NUWA-Infinity model (repeatable)")
    p.add_argument("--vqgan", default=str(DEMO_VQGAN))
    p.add_argument("--canvases", type=int, default=16, help="unconditional canvases of 8×2 patches per model")
    p.add_argument("--seeds", type=int, default=4, help="outpainting seeds per case")
    p.add_argument("--wrap-canvases", type=int, default=4,
                   help="360° canvases of 8×2 patches per model: step at the wrap seam ÷ other token boundaries")
    p.add_argument("--max-crops", type=int, default=400, help="256-px crops per set for FED/KID")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-rounds", type=int, default=3, help="interleaved timing rounds (best of)")
    p.add_argument("--material", choices=("demo", "world"), default="demo",
                   help="held-out pictures: the right quarter of the demo's painted pictures, or new world seeds")
    p.add_argument("--world-pictures", type=int, default=8, help="--material world: held-out panoramas")
    p.add_argument("--world-reference", type=int, default=32,
                   help="--material world: training panoramas whose codes make the never-seen-pairs reference")
    p.add_argument("--save-examples", type=pathlib.Path, help="write one canvas and one outpainting per model here")
    p.add_argument("--temperature", type=float, default=SAMPLING["temperature"], help="sampling temperature")
    p.add_argument("--top-k", type=int, default=SAMPLING["top_k"], help="sampling top-k (0 = all codes)")
    p.add_argument("--neighbour-guidance", default="1",
                   help="comma-separated neighbour-guidance scales, each measured for every model (1 = off)")
    p.add_argument("--edge-temperature", default="1",
                   help="comma-separated edge temperatures (× the temperature, at tokens along a finished "
                        "neighbour), each measured for every model and guidance scale (1 = off)")
    p.add_argument("--cuts", default="none",
                   help="comma-separated tail cuts of the token draw, each measured for every model and setting "
                        "above: none, top_p:P or min_p:P (the sampler's top_p / min_p, beside top-k)")
    p.add_argument("--context-mirror", type=int, default=tiling.OUTPAINT_MARGIN_PX,
                   help="outpainting: px of mirror image the tokenizer sees past the context's cut (VQGAN Encode's "
                        "outpaint_sides, as the outpainting workflows set it); 0 = encode the context plainly")
    p.add_argument("--first-seed", type=int, default=0, help="first seed of canvases, wrap canvases and outpainting")
    p.add_argument("--close-candidates", type=int, default=8,
                   help="close_candidates of the 360° canvases (the nodes' default 8; 1 = each patch drawn once, "
                        "as before session 17)")
    p.add_argument("--timing-only", action="store_true", help="only the interleaved seconds per patch")
    args = p.parse_args(argv)
    SAMPLING.update(temperature=args.temperature, top_k=args.top_k)
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model) or {"shipped": str(DEMO_MODEL)}
    vqgan = vq_loader.load_vqgan(args.vqgan).eval()
    tok = Tokenizer(vqgan)
    features = metrics.Features()
    rng = np.random.default_rng(0)

    def feats(images: list[torch.Tensor]) -> np.ndarray:
        chosen = [images[i] for i in sorted(rng.choice(len(images), min(len(images), args.max_crops), replace=False))]
        return features(chosen)

    # -- references ---------------------------------------------------------------------------------
    models = {name: checkpoint.load_infinity(path).eval() for name, path in models.items()}
    scales = [float(g) for g in args.neighbour_guidance.split(",")]
    edges = [float(e) for e in args.edge_temperature.split(",")]
    cuts = {"none": {}} | {item: {item.split(":")[0]: float(item.split(":")[1])}
                          for item in args.cuts.split(",") if item != "none"}
    variants = {name + ("" if scales == [1.0] else f"@g{g:g}") + ("" if edges == [1.0] else f"@e{e:g}")
                + ("" if cut == "none" else "@" + cut.replace(":", "")):
                (model, {"neighbour_guidance": g, "edge_temperature": e, **cuts[cut]})
                for name, model in models.items() for g in scales for e in edges
                for cut in args.cuts.split(",")}
    if args.timing_only:
        result = {"config": {"threads": args.threads, "timing_rounds": args.timing_rounds, **SAMPLING},
                  "seconds_per_patch_interleaved": interleaved_seconds_per_patch(variants, args.timing_rounds)}
        print(json.dumps(result))
        return result
    first = next(iter(models.values()))
    ph, pw = first.config.patch_h, first.config.patch_w
    patch_px = pw * vqgan.factor
    train_maps, held_maps = [], []
    if args.material == "world":
        real = world_pictures(args.world_pictures)
        held_out = [to_tensor(image) for _, image, _ in real]                  # whole pictures: new seeds
        held_maps = [tok.encode(h) for h in held_out]
        train_maps = [tok.encode(to_tensor(Image.fromarray(world_picture(seed, 2048, HEIGHT))))
                      for seed in range(args.world_reference)]
    else:
        real = demo_pictures()
        held_out = [to_tensor(image)[:, split:] for _, image, split in real if image.width - split >= 256]
        for _, image, split in real:
            picture = to_tensor(image)
            train_tokens = tok.encode(picture[:, :split])
            train_maps += [train_tokens, train_tokens.flip(-1)]
            held_maps.append(tok.encode(picture[:, split:]))
    round_trips = [tok.decode(tok.encode(to_tensor(image))) for _, image, _ in real]
    held_out += [h.flip(1) for h in held_out]
    held_crops = [c for h in held_out for c in metrics.crops(h)]
    held_feat = feats(held_crops)
    held_rt_feat = feats([c for h in held_out for c in metrics.crops(tok.decode(tok.encode(h)))])
    reference_h, reference_v = metrics.pair_set(train_maps, "horizontal"), metrics.pair_set(train_maps, "vertical")
    half = len(held_crops) // 2
    result = {"config": {"material": args.material, "canvases": args.canvases, "seeds": args.seeds, "wrap_canvases": args.wrap_canvases,
                         **SAMPLING,
                         "max_crops": args.max_crops,
                         "threads": args.threads, "patch_px": patch_px,
                         "neighbour_guidance": scales, "edge_temperature": edges, "cuts": args.cuts,
                         "first_seed": args.first_seed, "context_mirror_px": args.context_mirror,
                         "close_candidates": args.close_candidates},
              "reference": {
                  "round_trip_seam_vertical": round(metrics.seam_ratio(round_trips, patch_px, "vertical"), 3),
                  "round_trip_seam_horizontal": round(metrics.seam_ratio(round_trips, patch_px, "horizontal"), 3),
                  # the pictures themselves: the round-trip's horizontal step is content the tokenizer
                  # sharpens (BENCHMARKS.md "What the horizontal round-trip ratio is"), not a seam
                  "rendered_seam_horizontal": round(metrics.seam_ratio([to_tensor(image) for _, image, _ in real],
                                                                       patch_px, "horizontal"), 3),
                  "round_trip_seam_vertical_90ci": [round(v, 3) for v in
                                                    metrics.seam_ratio_interval(round_trips, patch_px, "vertical")],
                  "round_trip_seam_vertical_vs_token_boundaries": round(
                      metrics.seam_ratio(round_trips, patch_px, "vertical", vqgan.factor), 3),
                  "held_out_never_seen_h": metrics.never_seen_pairs(held_maps, reference_h, pw, "horizontal"),
                  "held_out_never_seen_v": metrics.never_seen_pairs(held_maps, reference_v, ph, "vertical"),
                  "fed_real_vs_real": round(metrics.frechet_distance(features(held_crops[:half]),
                                                                     features(held_crops[half:])), 2),
                  "fed_round_trip_vs_real": round(metrics.frechet_distance(held_rt_feat, held_feat), 2),
                  "kid_round_trip_vs_real_x1e3": round(metrics.kernel_inception_distance(held_rt_feat, held_feat)[0], 2),
                  "n_held_out_crops": len(held_crops)}}
    # The sky pictures are 360° panoramas: their own wrap seam, rolled to the middle and round-tripped.
    seams = []
    for name, image, _ in real:
        if name.startswith(("sky_", "world_")) and image.width % (2 * patch_px) == 0:
            rolled = to_tensor(image).roll(image.width // 2, dims=1)
            seams.append(junction_ratio(tok.decode(tok.encode(rolled)), image.width // 2, vqgan.factor))
    result["reference"]["round_trip_wrap_seam_step_ratio"] = round(float(np.mean(seams)), 3)

    result["seconds_per_patch_interleaved"] = interleaved_seconds_per_patch(variants, args.timing_rounds)

    # -- outpainting baselines -------------------------------------------------------------------------
    cases = outpaint_cases(tok, patch_px, real, args.context_mirror)
    truth_feat = features([c for case in cases for c in metrics.crops(case["truth"])])
    outpaint = {}
    for kind in ("mirror", "repeat", "tile", "truth_round_trip"):
        rows, conts = [], []
        for case in cases:
            width = CONTINUE_COLS * pw
            scored = case
            if kind == "truth_round_trip":                 # context and truth encoded as one picture
                scored, cont_tokens = truth_round_trip(tok, case, width)
            else:                                                               # from all the context
                cont_tokens = token_baseline(kind, case["context_tokens"], width, pw, case["direction"])
            row, cont = score_outpaint(tok, scored, cont_tokens, patch_px)
            rows.append(row)
            conts += metrics.crops(cont)
        outpaint[kind] = summarise(rows, feats(conts), truth_feat, [case["direction"] for case in cases])
    result["outpaint_baselines"] = outpaint

    # -- each model ------------------------------------------------------------------------------------
    def seeds(count: int) -> range:
        return range(args.first_seed, args.first_seed + count)

    for name, (model, options) in variants.items():
        canvases, started, patches = [], time.perf_counter(), 0
        for seed in seeds(args.canvases):
            state = sampler.generate_canvas(model, 8, 2, order="right", extents=EXTENTS, seed=seed, **SAMPLING,
                                            **options)
            patches += 16
            canvases.append(state.tokens[0, 0])
        seconds_per_patch = (time.perf_counter() - started) / patches
        images = [tok.decode(tokens) for tokens in canvases]
        gen_feat = feats([c for image in images for c in metrics.crops(image)])
        kid, spread = metrics.kernel_inception_distance(gen_feat, held_feat)
        generation = {
            "seam_vertical": round(metrics.seam_ratio(images, patch_px, "vertical"), 3),
            "seam_horizontal": round(metrics.seam_ratio(images, patch_px, "horizontal"), 3),
            "seam_vertical_90ci": [round(v, 3) for v in metrics.seam_ratio_interval(images, patch_px, "vertical")],
            "seam_horizontal_90ci": [round(v, 3) for v in metrics.seam_ratio_interval(images, patch_px, "horizontal")],
            "seam_vertical_vs_token_boundaries": round(metrics.seam_ratio(images, patch_px, "vertical", vqgan.factor), 3),
            "never_seen_h": metrics.never_seen_pairs(canvases, reference_h, pw, "horizontal"),
            "never_seen_v": metrics.never_seen_pairs(canvases, reference_v, ph, "vertical"),
            "fed_vs_held_out": round(metrics.frechet_distance(gen_feat, held_feat), 2),
            "kid_vs_held_out_x1e3": round(kid, 2), "kid_spread": round(spread, 2),
            "seconds_per_patch_in_sequence": round(seconds_per_patch, 4)}
        wrap_ratios = []
        for seed in seeds(args.wrap_canvases):
            state = sampler.generate_canvas(model, 8, 2, order="right", extents=EXTENTS, wrap=True, seed=seed,
                                            close_candidates=args.close_candidates, **SAMPLING, **options)
            rolled = state.tokens[0, 0].roll(4 * pw, dims=-1)            # the 360° seam moves to the middle
            wrap_ratios.append(junction_ratio(tok.decode(rolled), 4 * patch_px, vqgan.factor))
        if wrap_ratios:
            generation["wrap_seam_step_ratio"] = round(float(np.mean(wrap_ratios)), 3)
        rows, conts, examples = [], [], []
        for case in cases:
            state = state_mod.state_from_tokens(model, case["context_tokens"][None], extents=EXTENTS)
            for seed in seeds(args.seeds):
                tokens, cont_tokens = continuation(model, state, case, CONTINUE_COLS * pw, seed,
                                                   {**SAMPLING, **options})
                row, cont = score_outpaint(tok, case, cont_tokens, patch_px)
                rows.append(row)
                conts += metrics.crops(cont)
                if seed == args.first_seed and len(examples) < 2:
                    examples.append(tok.decode(tokens))
        directions = [case["direction"] for case in cases for _ in seeds(args.seeds)]
        result[name] = {"generation": generation, "outpaint": summarise(rows, feats(conts), truth_feat, directions)}
        print(json.dumps({name: result[name]}), flush=True)
        if args.save_examples:
            args.save_examples.mkdir(parents=True, exist_ok=True)
            for kind, shown in (("canvas", images[:2]), ("outpaint", examples)):
                for i, image in enumerate(shown):
                    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(
                        args.save_examples / f"{name}_{kind}_{i}.png")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
