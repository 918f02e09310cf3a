#!/usr/bin/env python3
"""Render pictures (or clips) of the demo world with their captions, for training and held-out sets.

    .venv/bin/python scripts/render_world.py --out DIR --seeds 0:500 --width 2048 --height 512
    .venv/bin/python scripts/render_world.py --out DIR --seeds 10000:10050 --video 16 --width 256

Each seed gives ``world_<seed>.png`` (a seamless 360° panorama) and ``world_<seed>.txt`` (its
caption, as the NUWA-Infinity trainer reads captions: IMAGE.txt beside IMAGE); with ``--video N``
a ``world_<seed>/`` folder of N frames ``0000.png``... of a panning camera, plus the caption.
Everything is made by ``nodes/world`` from the seed alone (no third-party content: CC0 by
construction). Held-out sets are other seed ranges; ``--caption-variant`` picks other wordings
(e.g. for paraphrase tests).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

from packpath import pack_module

scene_mod = pack_module("nodes.world.scene")
render = pack_module("nodes.world.render")


def seed_range(text: str) -> range:
    start, _, stop = text.partition(":")
    return range(int(start), int(stop)) if stop else range(int(start), int(start) + 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seeds", type=seed_range, default=range(0, 16), help="START:STOP (default 0:16)")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--video", type=int, default=0, help="frames per clip (0: still panoramas)")
    parser.add_argument("--pan", type=float, default=6.0, help="camera pan, pixels per frame (video)")
    parser.add_argument("--sunset-share", type=float, default=0.3,
                        help="share of clips in which the sun sinks (golden hour and sunset scenes)")
    parser.add_argument("--caption-variant", type=int, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        scene = scene_mod.sample_scene(seed)
        text = scene_mod.caption(scene, args.caption_variant)
        if args.video:
            rng = np.random.default_rng([seed, 11])
            sinking = scene.time in ("golden hour", "sunset") and rng.random() < args.sunset_share
            frames = render.video(scene, args.width, args.height, args.video, pan_px_per_frame=args.pan * rng.uniform(0.5, 1.5),
                                  cloud_px_per_frame=rng.uniform(0.5, 2.5), sun_drop_per_frame=0.004 if sinking else 0.0)
            folder = args.out / f"world_{seed}"
            folder.mkdir(exist_ok=True)
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"{index:04d}.png")
            (folder / "caption.txt").write_text(text + (", the sun going down" if sinking else "") + "\n")
        else:
            Image.fromarray(render.panorama(scene, args.width, args.height)).save(args.out / f"world_{seed}.png")
            (args.out / f"world_{seed}.txt").write_text(text + "\n")
        print(f"world_{seed}: {text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
