#!/usr/bin/env python3
"""Held-out numbers of the shipped animation demo (NUWA-Infinity video + pixel-guided decoding).

``.venv/bin/python bench/animation.py [--variants 3] [--threads 2] > animation.json``

On renderings of the held-out Kenney characters (never trained on by any demo model):

* frame_axis: token cross-entropy (nats) of 4-frame clips under the walk model with the NCP's
  frame axis (extents 1,1,1) vs without it (1,1,0): what the model learned from the previous frame;
* next_frame: teacher-forced token accuracy on frame k+1 given the true frame k (argmax of each
  token given the true tokens before it), split into the tokens that stay as in frame k and the
  ones that change (the motion), against copying frame k;
* animation: image → 7 more frames from the first frame of each clip (seeded sampling, as the
  workflow does) and greedily, mean token agreement with the true frames vs copying the first frame's tokens,
  and seconds per generated frame;
* pixel_guide: PSNR and temporal error (flicker) of decoding the true token frames plainly vs with
  the pixel guide (frame 0 given, as when animating an image).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from demo_frames import HELDOUT, walk_cycles  # noqa: E402
from packpath import pack_module  # noqa: E402
from train_infinity_video_demo import OUT as WALK_MODEL, VQGAN, clips, stable_cycle_tokens  # noqa: E402
from train_pixel_guide import OUT as GUIDE  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
training = pack_module("nodes.infinity.training")
vq_loader = pack_module("nodes.vq.loader")
guided = pack_module("nodes.vq.guided")
guide_train = pack_module("nodes.vq.guide_train")


def animate(model, first_bhw: torch.Tensor, frames: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """Tokens ``[B, 1 + frames, h, w]`` of an image animated by ``frames`` new frames."""
    state = state_mod.state_from_tokens(model, first_bhw, config.Extents(1, 1, 1))
    planned = state_mod.plan_outpaint(state, [("future", frames)])
    sampler.run(model, planned, seed=seed, temperature=temperature, top_k=32)
    return planned.tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=int, default=3, help="renderings per held-out character")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=pathlib.Path, default=WALK_MODEL, help="walk model to measure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vqgan = vq_loader.load_vqgan(str(VQGAN)).eval()
    model = checkpoint.load_infinity(str(args.model))
    guide = guided.load_guide(str(GUIDE))
    cycles = walk_cycles(HELDOUT, args.variants, False, seed=11)                   # [N, 8, 3, 256, 256]
    tokens = stable_cycle_tokens(vqgan, cycles)      # [N, 8, 16, 16], quantized as the walk model's training data
    held = clips(tokens, 4)
    with_frames = training.heldout_nll(model, held, config.Extents(1, 1, 1))
    without = training.heldout_nll(model, held, config.Extents(1, 1, 0))

    started = time.perf_counter()
    made = animate(model, tokens[:, 0], 7, seed=0)
    per_frame = (time.perf_counter() - started) / 7
    truth = tokens[:, 1:]
    agree = float((made[:, 1:] == truth).float().mean())
    copy = float((tokens[:, :1].expand_as(truth) == truth).float().mean())
    greedy = float((animate(model, tokens[:, 0], 7, seed=0, temperature=0.0)[:, 1:] == truth).float().mean())

    report = {
        "heldout_characters": list(HELDOUT), "clips": int(held.shape[0]), "threads": args.threads,
        "frame_axis": {"nll_with_previous_frame": round(with_frames, 4), "nll_without": round(without, 4),
                       "reduction": round(1 - with_frames / without, 4)},
        "next_frame": training.next_frame_accuracy(model, clips(tokens, 2)),
        "animation": {"token_agreement_with_truth": round(agree, 4), "greedy_token_agreement": round(greedy, 4),
                      "copy_first_frame_agreement": round(copy, 4), "seconds_per_frame": round(per_frame, 3)},
        "pixel_guide": {"plain": guide_train.evaluate(vqgan, None, cycles),
                        "guided": guide_train.evaluate(vqgan, guide, cycles)},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
