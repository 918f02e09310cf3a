#!/usr/bin/env python3
"""Does the text steer the shipped text-conditioned NUWA-Infinity demo model?

``.venv/bin/python bench/infinity_text.py [--threads 2] [--seeds 2] > infinity_text.json``

The model was trained on three painted pictures (day sky, sunset sky, coast), each with one caption
(scripts/train_infinity_text_demo.py). For the training captions and for *paraphrases never seen in
training* (only the MiniLM encoder relates them to the captions):

* explain: token cross-entropy (nats) of 2x2-patch crops of each picture under each prompt and
  under the empty prompt; "accuracy" = share of pictures whose own prompt explains them best, "gain"
  = mean cross-entropy drop of the own prompt vs the empty one;
* steer: 4x2-patch canvases (1024x512 px) generated from each prompt; a canvas counts as right when
  its mean colour is nearest to the mean colour of the prompt's picture; also seconds per canvas.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from packpath import pack_module  # noqa: E402
from train_infinity_demo import VQGAN, prepare_images  # noqa: E402
from train_infinity_text_demo import CAPTIONS, OUT as TEXT_MODEL  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
sampler = pack_module("nodes.infinity.sampler")
training = pack_module("nodes.infinity.training")
minilm = pack_module("nodes.text.minilm")
vq_loader = pack_module("nodes.vq.loader")

PARAPHRASES = {"sky_default": "blue sky with fluffy clouds at noon",
               "sky_sunset": "evening sky at dusk in warm colours",
               "shore": "waves breaking on rocks by the ocean"}
PICTURES = {"sky_default": "sky_default_2048.png", "sky_sunset": "sky_sunset_2048.png", "shore": "shore_936.png"}


def load_pictures(vqgan, step: int):
    """Per picture: pixels [3, H, W] in [-1, 1] and tokens [h, w] (the 512-px-high training renderings,
    centre-cropped to a multiple of ``step`` px wide)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepare_images(pathlib.Path(tmp))
        for name, file in PICTURES.items():
            image = Image.open(pathlib.Path(tmp) / file).convert("RGB")
            # Centre crop to whole patches, as the trainer does, so the tokens are the ones it saw.
            width = image.width // step * step
            image = image.crop(((image.width - width) // 2, 0, (image.width - width) // 2 + width, image.height))
            array = np.asarray(image, dtype=np.float32) / 127.5 - 1
            pixels = torch.from_numpy(array).permute(2, 0, 1)
            with torch.no_grad():
                out[name] = (pixels, vqgan.encode_indices(pixels[None])[0])
    return out


def crops(tokens_hw, size: int, count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, tokens_hw.shape[0] - size + 1, count)
    xs = rng.integers(0, tokens_hw.shape[1] - size + 1, count)
    return torch.stack([tokens_hw[y:y + size, x:x + size] for y, x in zip(ys, xs)])[:, None]   # [N, 1, s, s]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2, help="canvases per prompt")
    p.add_argument("--crops", type=int, default=6, help="crops per picture for the cross-entropy")
    p.add_argument("--model", type=pathlib.Path, default=TEXT_MODEL, help="text-conditioned Infinity checkpoint")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vqgan = vq_loader.load_vqgan(str(VQGAN)).eval()
    model = checkpoint.load_infinity(str(args.model))
    encoder = minilm.load_text_encoder(minilm.default_path())
    pictures = load_pictures(vqgan, model.config.patch_w * vqgan.factor)
    names = list(PICTURES)
    extents = model.config.trained_extents
    side = 2 * model.config.patch_h
    report = {"model": args.model.name, "threads": args.threads}

    empty = encoder.encode([""]).states
    for label, prompts in (("captions", CAPTIONS), ("paraphrases", PARAPHRASES)):
        states = {n: encoder.encode([prompts[n]]).states for n in names}
        table, right, gains = {}, 0, []
        for n in names:
            canvases = crops(pictures[n][1], side, args.crops, seed=names.index(n))
            row = {m: round(training.heldout_nll(model, canvases, extents, text=states[m]), 4) for m in names}
            row["empty"] = round(training.heldout_nll(model, canvases, extents, text=empty), 4)
            right += min(names, key=lambda m: row[m]) == n
            gains.append(row["empty"] - row[n])
            table[n] = row
        mean_colour = {n: pictures[n][0].mean(dim=(1, 2)) for n in names}
        steer_right, seconds, colours = 0, [], {}
        for n in names:
            for seed in range(args.seeds):
                started = time.perf_counter()
                state = sampler.generate_canvas(model, 4, 2, text=states[n], seed=seed, temperature=1.0, top_k=64)
                seconds.append(time.perf_counter() - started)
                with torch.no_grad():
                    image = vqgan.decode_indices(state.tokens[:, 0]).clamp(-1, 1)[0]
                colour = image.mean(dim=(1, 2))
                nearest = min(names, key=lambda m: float((mean_colour[m] - colour).norm()))
                steer_right += nearest == n
                colours.setdefault(n, []).append([round(float(c), 3) for c in colour])
        report[label] = {
            "prompts": prompts,
            "explain": {"nll_by_picture_and_prompt": table, "accuracy": f"{right}/{len(names)}",
                        "mean_gain_vs_empty_prompt": round(float(np.mean(gains)), 4)},
            "steer": {"right": f"{steer_right}/{len(names) * args.seeds}", "mean_rgb": colours,
                      "seconds_per_canvas": round(float(np.mean(seconds)), 2)},
        }
    report["picture_mean_rgb"] = {n: [round(float(c), 3) for c in pictures[n][0].mean(dim=(1, 2))] for n in names}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
