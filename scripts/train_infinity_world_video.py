#!/usr/bin/env python3
"""Train the demo world's text-to-video NUWA-Infinity model:
``.venv/bin/python scripts/train_infinity_world_video.py [--clips 400] [--minutes 60] [--resume FILE]``.

Data: ``--clips`` clips of the demo world (``nodes/world``, seeds 0..N-1), ``FRAMES`` frames of
``VIEW`` px each, the camera panning right by one token (16 px) per frame, so the nearest layers
move one token column per frame and the far mountains and the sky less (parallax), while the clouds
drift and, in some golden-hour and sunset clips, the sun goes down. Each clip's caption is its
scene's caption (plus "the sun going down" where it sinks), encoded by MiniLM; a share of the items
trains on the empty caption (``--drop-text``), so an empty prompt means "any landscape".

Frames are tokenized by the world VQGAN with temporal hysteresis (``nodes/vq/temporal.py``: a
token keeps the previous frame's code while that code is nearly as close, so flat skies do not
flicker between near-duplicate codes), as VQGAN Encode's ``temporal_stability`` does. The model
has 8×8-token patches (128 px, 2×2 per 256-px frame) and extents (1, 1, 1): each patch sees its
neighbours in its frame and the 3×3 patches around it in the previous frame; ``--frame-align``
also hands every token the previous frame's state at its position.

Token maps are cached (``--cache``, keyed by the tokenizer and the clip range). Held-out clips
are other seeds (``bench/world_video.py`` uses seeds from ``BENCH_SEED`` on). Extra arguments
override the flags of nodes/infinity/train.py.
"""
from __future__ import annotations

import argparse
import multiprocessing
import pathlib

import numpy as np
import torch
from packpath import ROOT, pack_module
from train_infinity_world import cache_key, save_cache

VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16.safetensors"
OUT = ROOT / "models" / "infinity" / "boundless_world_video_text.safetensors"
CACHE = ROOT / "output" / "cache"
FRAMES = 6
VIEW = (384, 256)                 # width, height of a training clip (crops of 256 px are drawn from it)
PAN_PX = 16                       # camera pan per frame: one token of the f16 tokenizer
STABILITY = 0.05                  # VQGAN Encode's temporal_stability for the training clips
SUNSET_SHARE = 0.5                # share of golden-hour / sunset clips in which the sun goes down
BENCH_SEED = 300_000
DEFAULTS = ["--dim", "128", "--depth", "4", "--heads", "4", "--patch", "8", "8", "--extents", "1", "1", "1",
            "--canvas", "2", "2", "--batch", "2", "--lr", "3e-4", "--steps", "1000000", "--minutes", "60",
            "--save-every", "200", "--threads", "1", "--rope-base", "100", "--frame-align", "--drop-text", "0.1"]


def world_clip(seed: int, width: int = VIEW[0], height: int = VIEW[1], frames: int = FRAMES) -> tuple[np.ndarray, str]:
    """Frames ``uint8 [frames, height, width, 3]`` of the camera panning over the scene of ``seed``,
    and the clip's caption."""
    scene_mod, render = pack_module("nodes.world.scene"), pack_module("nodes.world.render")
    scene = scene_mod.sample_scene(seed)
    rng = np.random.default_rng([seed, 11])
    sinking = scene.time in ("golden hour", "sunset") and rng.random() < SUNSET_SHARE
    pictures = render.video(scene, width, height, frames, pan_px_per_frame=PAN_PX,
                            cloud_px_per_frame=rng.uniform(0.5, 2.5), sun_drop_per_frame=0.01 if sinking else 0.0)
    return pictures, scene_mod.caption(scene) + (", the sun going down" if sinking else "")


_WORKER: dict = {}


def _start_worker(vqgan_path: str, stability: float) -> None:
    torch.set_num_threads(1)
    _WORKER["vqgan"] = pack_module("nodes.vq.loader").load_vqgan(vqgan_path).eval()
    _WORKER["stability"] = stability


def _tokenize_clip(seed: int) -> tuple[torch.Tensor, str]:
    pictures, caption = world_clip(seed)
    frames_f3hw = torch.from_numpy(pictures).float().div(127.5).sub(1.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        tokens = pack_module("nodes.vq.temporal").encode_frames_stable(_WORKER["vqgan"], frames_f3hw,
                                                                          _WORKER["stability"])
    return tokens, caption


def clip_tokens(seeds: range, vqgan_path: pathlib.Path, cache: pathlib.Path, jobs: int = 1,
                stability: float = STABILITY) -> pathlib.Path:
    """A token file (``tokens`` int64 ``[N, F, h, w]``, MiniLM ``text`` ``[N, L, C]`` and ``null_text``)
    of the clips of ``seeds``, made once per tokenizer, seed range and temporal ``stability``."""
    vq_loader, tokens_mod = pack_module("nodes.vq.loader"), pack_module("nodes.common.tokens")
    vqgan = vq_loader.load_vqgan(str(vqgan_path)).eval()
    identity = tokens_mod.fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight)
    hysteresis = "" if stability == STABILITY else f"s{stability:g}_"
    path = cache / (f"world_video_{seeds.start}_{seeds.stop}_{FRAMES}x{VIEW[0]}x{VIEW[1]}_{hysteresis}"
                    f"{cache_key(vqgan)}.safetensors")
    if path.is_file():
        return path
    with multiprocessing.get_context("spawn").Pool(jobs, _start_worker, (str(vqgan_path), stability)) as pool:
        maps, captions = [], []
        for tokens, caption in pool.imap(_tokenize_clip, seeds):
            maps.append(tokens)
            captions.append(caption)
            if len(maps) % 25 == 0:
                print(f"[world video] tokenized {len(maps)}/{len(seeds)}", flush=True)
    text_mod = pack_module("nodes.text.minilm")
    encoder = text_mod.load_text_encoder(text_mod.default_path())
    tensors = {"tokens": torch.stack(maps).long(), "text": encoder.encode(captions).states,
               "null_text": encoder.encode([""]).states[0]}
    metadata = {"tokenizer": identity, "factor": str(vqgan.factor), "seeds": f"{seeds.start}:{seeds.stop}",
                "text_encoder": encoder.name, "frames": str(FRAMES), "pan_px": str(PAN_PX),
                "stability": str(stability)}
    return save_cache(path, tensors, metadata)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--clips", type=int, default=400, help="training clips (seeds 0..N-1)")
    parser.add_argument("--jobs", type=int, default=1, help="processes that render and tokenize the clips")
    parser.add_argument("--vqgan", type=pathlib.Path, default=VQGAN)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--cache", type=pathlib.Path, default=CACHE)
    parser.add_argument("--stability", type=float, default=STABILITY,
                        help="temporal hysteresis of the training tokens (VQGAN Encode's temporal_stability)")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    train_file = clip_tokens(range(args.clips), args.vqgan, args.cache, args.jobs, args.stability)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pack_module("nodes.infinity.train").main(["--tokens", str(train_file), "--out", str(args.out),
                                              *DEFAULTS, *rest])


if __name__ == "__main__":
    main()
