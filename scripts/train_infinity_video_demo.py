#!/usr/bin/env python3
"""Train the shipped NUWA-Infinity *video* demo model: ``.venv/bin/python scripts/train_infinity_video_demo.py``.

Data: the CC0 Kenney walk cycles of the ``arcade`` wheel (8 frames per character), rendered at
256x256 px on random backgrounds, sizes, offsets and recolourings (scripts/demo_frames.py) and
tokenized with the demo VQGAN (16x16 tokens per frame) with temporal hysteresis
(nodes/vq/temporal.py: a code is kept from the previous frame when it is nearly as close, which
stops flat backgrounds from flickering between near-duplicate codes). Training clips are ``--clip`` consecutive
frames of a cycle (any start; the cycle loops). The model has 8x8-token patches (2x2 per frame) and
extents (1, 1, 1): each patch sees its neighbours in its own frame and the 3x3 patches around it in
the previous frame.

With ``--frame-align`` (as the shipped model) each token position also receives the previous
frame's state of the same position (nodes/infinity/model.py). Early stopping: every
``--save-every`` steps the cross-entropy of new renderings of the *training* characters
(``--val-variants``, other backgrounds, sizes and offsets) is measured and the output keeps the
best step, so the held-out characters stay unseen by every choice made in training.

The held-out characters (demo_frames.HELDOUT) are never trained on. Afterwards the script prints JSON with the
held-out token cross-entropy with the frame axis of the NCP (e_f = 1) and without it (e_f = 0):
the gap is what the model learned about motion from the previous frame. The report is stored in
the checkpoint's metadata. Extra arguments override nodes/infinity/train.py flags.
"""
import argparse
import json
import pathlib
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

from demo_frames import HELDOUT, training_characters, walk_cycles
from packpath import ROOT, pack_module

VQGAN = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
OUT = ROOT / "models" / "infinity" / "boundless_demo_walk.safetensors"
DEFAULTS = ["--dim", "128", "--depth", "4", "--heads", "4", "--patch", "8", "8", "--extents", "1", "1", "1",
            "--canvas", "2", "2", "--batch", "4", "--lr", "6e-4", "--steps", "100000", "--minutes", "15",
            "--save-every", "100", "--threads", "2"]


def stable_cycle_tokens(vqgan, cycles_nf3hw):
    """Token cycles ``[N, F, h, w]`` of looping pixel cycles ``[N, F, 3, H, W]`` in [-1, 1].

    Frames are quantized with temporal hysteresis (nodes/vq/temporal.py). Each cycle is encoded
    twice over and the second lap kept, so that its first frame is stabilised against its last
    (the cycle loops) as every other frame is against the one before it.
    """
    temporal = pack_module("nodes.vq.temporal")
    frames = cycles_nf3hw.shape[1]
    return torch.stack([temporal.encode_frames_stable(vqgan, torch.cat([cycle, cycle]))[frames:]
                        for cycle in cycles_nf3hw])


def cycle_tokens(vqgan, characters, variants, recolour, seed):
    """Token cycles ``[N, 8, 16, 16]`` (N = characters x variants) of the rendered walk cycles."""
    return stable_cycle_tokens(vqgan, walk_cycles(characters, variants, recolour, seed))


def clips(cycles_nfhw, length):
    """Every ``length``-frame window of every looping cycle: ``[N * 8, length, h, w]``."""
    frames = cycles_nfhw.shape[1]
    return torch.cat([cycles_nfhw[:, [(s + k) % frames for k in range(length)]] for s in range(frames)])


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=int, default=40, help="random renderings per training character")
    p.add_argument("--clip", type=int, default=4, help="frames per training clip")
    p.add_argument("--val-variants", type=int, default=4,
                   help="renderings per training character in the early-stopping set (0 = no early stopping)")
    p.add_argument("--token-cache", type=pathlib.Path,
                   help="keep the tokenized training clips in this file and reuse it while --variants and --clip "
                        "are unchanged (encoding takes minutes)")
    ours, rest = p.parse_known_args(argv)
    vq_loader = pack_module("nodes.vq.loader")
    tokens_mod, train, training = (pack_module(m) for m in ("nodes.common.tokens", "nodes.infinity.train",
                                                            "nodes.infinity.training"))
    checkpoint, config = pack_module("nodes.infinity.checkpoint"), pack_module("nodes.infinity.config")
    vqgan = vq_loader.load_vqgan(str(VQGAN)).float().eval()
    made_with = {"variants": str(ours.variants), "clip": str(ours.clip)}
    if ours.token_cache and ours.token_cache.is_file() and checkpoint.read_metadata(str(ours.token_cache)) == made_with:
        train_clips = load_file(str(ours.token_cache))["tokens"]
    else:
        train_clips = clips(cycle_tokens(vqgan, training_characters(), ours.variants, True, seed=1), ours.clip)
        if ours.token_cache:
            save_file({"tokens": train_clips.contiguous()}, str(ours.token_cache), metadata=made_with)
    held_clips = clips(cycle_tokens(vqgan, HELDOUT, 3, False, seed=2), ours.clip)
    meta = {"tokenizer": tokens_mod.fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight),
            "factor": str(vqgan.factor)}
    out = pathlib.Path(next((rest[i + 1] for i, a in enumerate(rest) if a == "--out"), OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = str(pathlib.Path(tmp) / "walk_tokens.safetensors")
        save_file({"tokens": train_clips.contiguous()}, token_file, metadata=meta)
        early_stop = []
        if ours.val_variants:
            val_file = str(pathlib.Path(tmp) / "walk_val_tokens.safetensors")
            val_clips = clips(cycle_tokens(vqgan, training_characters(), ours.val_variants, False, seed=3), ours.clip)
            save_file({"tokens": val_clips.contiguous()}, val_file)
            early_stop = ["--val-tokens", val_file]
        model = train.main(["--tokens", token_file, "--out", str(out), "--n-embed", str(vqgan.n_embed),
                            *DEFAULTS, *early_stop, *rest])
    report = {"heldout_characters": list(HELDOUT), "heldout_clips": int(held_clips.shape[0]),
              "train_clips": int(train_clips.shape[0]), "clip_frames": ours.clip,
              "nll_with_previous_frame": round(training.heldout_nll(model, held_clips, config.Extents(1, 1, 1)), 4),
              "nll_without_previous_frame": round(training.heldout_nll(model, held_clips, config.Extents(1, 1, 0)), 4)}
    print(json.dumps(report))
    kept = {k: v for k, v in checkpoint.read_metadata(str(out)).items() if k in ("steps", "val_nll")}
    checkpoint.save_infinity(model, str(out), extra={**kept, "report": json.dumps(report),
                                                     "data": pack_module("nodes.story.smp_train").DATA_SOURCE})
    print(f"saved {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
