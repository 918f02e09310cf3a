#!/usr/bin/env python3
"""Train the shipped pixel guide of the demo VQGAN: ``.venv/bin/python scripts/train_pixel_guide.py``.

Data: the CC0 Kenney walk cycles of the ``arcade`` wheel (8 frames per character), rendered at 256 px
on random backgrounds, sizes, offsets and recolourings (scripts/demo_frames.py). The held-out
characters (demo_frames.HELDOUT) are never trained on; the script prints JSON with, on them, PSNR and temporal error
(flicker) of plain vs pixel-guided decoding, and stores that report in the checkpoint's metadata.
"""
import argparse
import json
import pathlib
import sys

import torch

from demo_frames import HELDOUT, training_characters, walk_cycles
from packpath import ROOT, pack_module

VQGAN = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
OUT = ROOT / "models" / "pixel_guide" / "boundless_demo_f16_guide.safetensors"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vqgan", default=str(VQGAN))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--variants", type=int, default=16, help="random renderings per training character")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-tokens", type=int, default=8, help="train on crops of this many tokens per side")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vq_loader, guide_train, guided = (pack_module(f"nodes.vq.{m}") for m in ("loader", "guide_train", "guided"))
    vqgan = vq_loader.load_vqgan(args.vqgan).float().eval()
    train = walk_cycles(training_characters(), args.variants, True, seed=1)
    held = walk_cycles(HELDOUT, 3, False, seed=2)
    guide = guide_train.train_guide(vqgan, train, minutes=args.minutes, batch=args.batch, crop_tokens=args.crop_tokens,
                                    log=lambda s: print(json.dumps(s), flush=True))
    report = {"heldout_characters": list(HELDOUT), "heldout_clips": int(held.shape[0]),
              "plain": guide_train.evaluate(vqgan, None, held),
              "guided": guide_train.evaluate(vqgan, guide, held)}
    print(json.dumps(report))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    data = pack_module("nodes.story.smp_train").DATA_SOURCE
    guided.save_guide(guide, args.out, extra={"report": report, "data": data})
    print(f"saved {args.out}")


if __name__ == "__main__":
    sys.exit(main())
