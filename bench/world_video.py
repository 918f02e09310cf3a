#!/usr/bin/env python3
"""The demo world's video model on held-out clips: text-to-video motion and image animation.

``.venv/bin/python bench/world_video.py [--model FILE] [--clips 12] [--threads 2] > world_video.json``

Held-out clips are world seeds from ``train_infinity_world_video.BENCH_SEED`` on (never trained on),
rendered as in training: 256×256 px, ``FRAMES`` frames, the camera panning right by 16 px a frame.

* **text_to_video**: frames generated from each clip's caption alone (2×2 patches × FRAMES, order
  ``right`` inside each frame, frames in time order, extents 1/1/1, temperature 1, top-k 64, as the
  text-to-video workflow). Motion is read by phase correlation of the middle halves (mountains and
  horizon) of consecutive decoded frames (``skimage.registration.phase_cross_correlation``): the
  horizontal shift in px per frame, its sign (the content of a right pan moves left, i.e. negative)
  and its size, against the same measure on the true clips and on their token round-trips (the
  motion the tokens can carry).
* **next_frame** (teacher-forced, the true tokens before each token given, argmax): accuracy on the
  tokens that stay as in the previous frame (``kept``) and on those that followed the pan, i.e.
  equal the previous frame's token one to the right and not the one in place (``panned``); a model
  that only holds the picture scores 0 on ``panned``.
* **animation**: frame 0 of each clip given (tokenized), the other frames generated. Token agreement
  and PSNR (of the mean squared error over all frames) of the generated frames against the true ones
  (both decoded by the world VQGAN), beside the baseline of repeating frame 0, and the motion as
  above.
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
from packpath import pack_module  # noqa: E402
from train_infinity_world_video import BENCH_SEED, FRAMES, OUT, STABILITY, VQGAN, world_clip  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
sampler = pack_module("nodes.infinity.sampler")
state_mod = pack_module("nodes.infinity.state")
config_mod = pack_module("nodes.infinity.config")
vq_loader = pack_module("nodes.vq.loader")
temporal = pack_module("nodes.vq.temporal")
minilm = pack_module("nodes.text.minilm")
training = pack_module("nodes.infinity.training")

SIDE = 256
EXTENTS = config_mod.Extents(1, 1, 1)
SAMPLING = dict(temperature=1.0, top_k=64)


def shifts_px(frames_fhw3: torch.Tensor) -> list[float]:
    """Horizontal shift (px) from each frame to the next by phase correlation of the grey levels of
    their middle half of rows (negative: the content moved left). That band holds the mountains and
    the horizon, whose edges move with the camera and survive the tokenizer; the sky above barely
    moves, and the water below comes back from the tokenizer as horizontal bands without edges."""
    from skimage.registration import phase_cross_correlation
    height = frames_fhw3.shape[1]
    grey = frames_fhw3.float().mean(-1).numpy()[:, height // 4:3 * height // 4]
    return [float(phase_cross_correlation(grey[i], grey[i + 1], upsample_factor=4, normalization=None)[0][1]) * -1
            for i in range(len(grey) - 1)]


def decode_frames(vqgan, tokens_fhw: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((vqgan.decode_indices(tokens_fhw).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=pathlib.Path, default=OUT)
    p.add_argument("--vqgan", type=pathlib.Path, default=VQGAN)
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--temperature", type=float, default=SAMPLING["temperature"], help="sampling temperature")
    p.add_argument("--top-k", type=int, default=SAMPLING["top_k"], help="sampling top-k (0 = all codes)")
    p.add_argument("--stability", type=float, default=STABILITY,
                   help="temporal hysteresis of the true clips' tokens: the one the model was trained with")
    p.add_argument("--neighbour-guidance", type=float, default=1.0, help="neighbour guidance of the sampler (1 = off)")
    p.add_argument("--edge-temperature", type=float, default=1.0,
                   help="× the temperature at tokens along a finished patch of the same frame (1 = off)")
    args = p.parse_args(argv)
    SAMPLING.update(temperature=args.temperature, top_k=args.top_k, neighbour_guidance=args.neighbour_guidance,
                    edge_temperature=args.edge_temperature)
    torch.set_num_threads(args.threads)
    vqgan = vq_loader.load_vqgan(str(args.vqgan)).eval()
    model = checkpoint.load_infinity(str(args.model)).eval()
    encoder = minilm.load_text_encoder(minilm.default_path())
    patches = SIDE // (model.config.patch_w * vqgan.factor)
    truth_shift, round_trip_shift, t2v_shift, anim_shift = [], [], [], []
    agree, agree_repeat, mse_gen, mse_repeat = [], [], [], []
    hits = {"kept": [0, 0], "panned": [0, 0]}
    for i, seed in enumerate(range(BENCH_SEED, BENCH_SEED + args.clips)):
        pictures, caption = world_clip(seed, SIDE, SIDE)
        truth = torch.from_numpy(pictures).float() / 255.0                         # [F, H, W, 3]
        with torch.no_grad():
            true_tokens = temporal.encode_frames_stable(vqgan, truth.permute(0, 3, 1, 2) * 2 - 1,
                                                          args.stability)
        truth_rt = decode_frames(vqgan, true_tokens)
        truth_shift += shifts_px(truth)
        round_trip_shift += shifts_px(truth_rt)
        text = encoder.encode([caption]).states
        predicted = training.teacher_forced_argmax(model, true_tokens[None], "right", text)[0, 1:, :, :-1]
        now, before, right_before = true_tokens[1:, :, :-1], true_tokens[:-1, :, :-1], true_tokens[:-1, :, 1:]
        for name, where in (("kept", now == before), ("panned", (now == right_before) & (now != before))):
            hits[name][0] += int((predicted == now)[where].sum())
            hits[name][1] += int(where.sum())
        # text to video: every patch of every frame generated
        state = state_mod.plan_fill(state_mod.empty_state(model, patches, patches, FRAMES, 1, EXTENTS), "right")
        sampler.run(model, state, seed=i, text=text, **SAMPLING)
        t2v_shift += shifts_px(decode_frames(vqgan, state.tokens[0]))
        # animation: frame 0 given
        start = state_mod.state_from_tokens(model, true_tokens[:1][None], extents=EXTENTS)
        grown = sampler.outpaint(model, start, "future", FRAMES - 1, seed=i, text=text, **SAMPLING)
        generated = grown.tokens[0]
        frames = decode_frames(vqgan, generated)
        anim_shift += shifts_px(frames)
        agree.append(float((generated[1:] == true_tokens[1:]).float().mean()))
        agree_repeat.append(float((true_tokens[:1] == true_tokens[1:]).float().mean()))
        mse_gen.append(float((frames[1:] - truth_rt[1:]).pow(2).mean()))
        mse_repeat.append(float((truth_rt[:1] - truth_rt[1:]).pow(2).mean()))

    def psnr(mses: list[float]) -> float:
        """PSNR (dB) of the mean squared error over every frame of every clip (a clip whose frames do
        not change would make a mean of per-clip PSNRs infinite)."""
        return round(float(10 * np.log10(1.0 / max(np.mean(mses), 1e-12))), 2)

    def motion(values: list[float]) -> dict:
        arr = np.asarray(values)
        return {"mean_px_per_frame": round(float(arr.mean()), 2), "median_px_per_frame": round(float(np.median(arr)), 2),
                "share_moving_left": round(float((arr < -1).mean()), 3)}

    result = {"config": {"model": args.model.name, "clips": args.clips, "frames": FRAMES, "side": SIDE,
                         "seeds": f"{BENCH_SEED}:{BENCH_SEED + args.clips}", "stability": args.stability, **SAMPLING},
              "truth_motion": motion(truth_shift), "round_trip_motion": motion(round_trip_shift),
              "text_to_video_motion": motion(t2v_shift),
              "next_frame": {f"{name}_accuracy": round(hit / max(count, 1), 4) for name, (hit, count) in hits.items()}
              | {f"{name}_tokens": count for name, (hit, count) in hits.items()},
              "animation": {"motion": motion(anim_shift),
                            "token_agreement": round(float(np.mean(agree)), 4),
                            "token_agreement_repeat_first_frame": round(float(np.mean(agree_repeat)), 4),
                            "psnr_vs_true_round_trip": psnr(mse_gen), "psnr_repeat_first_frame": psnr(mse_repeat)}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
