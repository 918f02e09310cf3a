#!/usr/bin/env python3
"""Train the demo-world NUWA-Infinity models: the panorama model, or with ``--captions`` the text model:
``.venv/bin/python scripts/train_infinity_world.py [--captions] [--world 200] [--minutes 120] [--resume FILE]``.

Data: ``--world`` (default 200) seamless 360° panoramas of the demo world (``nodes/world``, seeds 0..N-1 at
2048×512, i.e. 8×2 patches of 256 px), tokenized with the world VQGAN (``--vqgan``; default the
256-code merge of ``boundless_world_f16`` made by ``scripts/merge_codebook.py --codes 256``, whose
caches that script carries over from the 1,024-code tokenizer's). Seeds from
``VALIDATION_SEED`` on (16 panoramas at 1024×512) measure the held-out cross-entropy for early
stopping; seeds from ``BENCH_SEED`` on are left for ``bench/infinity_quality.py --material world``,
so the benchmark measures on pictures that neither training nor model selection saw. The world is
made from its seed alone (CC0 by construction).

Unlike the three painted pictures the first demo model was trained on, the world cannot be
memorised: every seed is a new scene, so the model has to learn what continues what.

Token maps (with each scene's caption) are cached (``--cache``, keyed by the tokenizer and the seed
range) so that a resumed run, or the text model after the unconditional one, does not render and
tokenize again. Extra arguments override the training flags of
nodes/infinity/train.py (e.g. ``--lr 3e-4 --threads 1``); ``--resume`` continues any checkpoint
trained on the same tokenizer.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import pathlib

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from packpath import ROOT, pack_module

VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors"
OUT = ROOT / "models" / "infinity" / "boundless_world_panorama.safetensors"
TEXT_OUT = ROOT / "models" / "infinity" / "boundless_world_text.safetensors"
CACHE = ROOT / "output" / "cache"
VALIDATION_SEED, VALIDATION_COUNT = 100_000, 16
BENCH_SEED = 200_000
TRAIN_SIZE, VALIDATION_SIZE = (2048, 512), (1024, 512)
tiling = pack_module("nodes.vq.tiling")
WRAP_MARGIN_PX = tiling.PANORAMA_MARGIN_PX        # part of the token caches' names
DEFAULTS = ["--dim", "128", "--depth", "4", "--heads", "4", "--patch", "16", "16", "--extents", "1", "1", "0",
            "--canvas", "2", "2", "--batch", "2", "--lr", "3e-4", "--steps", "1000000", "--minutes", "60",
            "--save-every", "200", "--threads", "1", "--rope-base", "100"]


def world_picture(seed: int, width: int, height: int) -> np.ndarray:
    """The world panorama of ``seed`` as ``uint8 [height, width, 3]``."""
    scene_mod, render = pack_module("nodes.world.scene"), pack_module("nodes.world.render")
    return render.panorama(scene_mod.sample_scene(seed), width, height)


_WORKER: dict = {}


def _start_worker(vqgan_path: str, size: tuple[int, int]) -> None:
    torch.set_num_threads(1)
    _WORKER["vqgan"] = pack_module("nodes.vq.loader").load_vqgan(vqgan_path).eval()
    _WORKER["size"] = size


def _tokenize_seed(seed: int) -> torch.Tensor:
    picture = torch.from_numpy(world_picture(seed, *_WORKER["size"])).float().div(127.5).sub(1.0)
    with torch.no_grad():
        return encode_panorama(_WORKER["vqgan"], picture.permute(2, 0, 1)[None])[0]


def encode_panorama(vqgan, picture_bchw: torch.Tensor) -> torch.Tensor:
    """Token maps of world panoramas, which are seamless 360°: encoded round (``tiling.encode_tiled``'s
    ``wrap_px``), so no frame codes sit at their left and right ends, where crops and rolled wrap
    canvases would put them in the middle of a training canvas."""
    return tiling.encode_tiled(vqgan, picture_bchw, wrap_px=WRAP_MARGIN_PX)


def tokens_only(path: pathlib.Path) -> pathlib.Path:
    """The token maps of a captioned token file, without the captions (for an unconditional model)."""
    plain = path.with_name(path.stem.replace("captioned_", "") + ".safetensors")
    if not plain.is_file():
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = {k: v for k, v in (handle.metadata() or {}).items() if k != "text_encoder"}
        save_file({"tokens": tensors["tokens"]}, str(plain), metadata=metadata)
    return plain


def world_tokens(seeds: range, size: tuple[int, int], vqgan_path: pathlib.Path, cache: pathlib.Path,
                 jobs: int = 1, captions: bool = False) -> pathlib.Path:
    """A token file (``tokens`` int64 ``[N, h, w]``, the trainer's ``--tokens`` format) of the world
    panoramas of ``seeds``, made once per tokenizer and seed range (rendering and encoding a 2048-px
    panorama takes seconds on one CPU thread, so ``jobs`` processes share the seeds). With
    ``captions``, also the MiniLM states of each scene's caption (``text``) and of ``""``."""
    vq_loader, tokens_mod = pack_module("nodes.vq.loader"), pack_module("nodes.common.tokens")
    vqgan = vq_loader.load_vqgan(str(vqgan_path)).eval()
    identity = tokens_mod.fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight)
    kind = "captioned_" if captions else ""
    path = cache / (f"world_{kind}{seeds.start}_{seeds.stop}_{size[0]}x{size[1]}_round{WRAP_MARGIN_PX}_"
                    f"{cache_key(vqgan)}.safetensors")
    if path.is_file():
        return path
    tensors, metadata = {}, {"tokenizer": identity, "factor": str(vqgan.factor), "seeds": f"{seeds.start}:{seeds.stop}"}
    if captions:
        text_mod = pack_module("nodes.text.minilm")
        encoder = text_mod.load_text_encoder(text_mod.default_path())
        scene_mod = pack_module("nodes.world.scene")
        tensors["text"] = encoder.encode([scene_mod.caption(scene_mod.sample_scene(seed)) for seed in seeds]).states
        tensors["null_text"] = encoder.encode([""]).states[0]
        metadata["text_encoder"] = encoder.name
    with multiprocessing.get_context("spawn").Pool(jobs, _start_worker, (str(vqgan_path), size)) as pool:
        maps = []
        for tokens in pool.imap(_tokenize_seed, seeds):
            maps.append(tokens)
            if len(maps) % 25 == 0:
                print(f"[world] tokenized {len(maps)}/{len(seeds)}", flush=True)
    tensors["tokens"] = torch.stack(maps).long()
    return save_cache(path, tensors, metadata)


def cache_key(vqgan) -> str:
    """The file-name key of a token cache: the codebook's fingerprint (what token maps are compatible
    with) and a hash of the encoder (two tokenizers sharing a codebook may still encode differently,
    e.g. a local-code student of ``scripts/train_vqgan_local.py`` and its teacher)."""
    tokens_mod, vq_loader = pack_module("nodes.common.tokens"), pack_module("nodes.vq.loader")
    codebook = tokens_mod.fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight)[-12:]
    encoder = hashlib.sha1()
    for name, tensor in sorted({**vqgan.encoder.state_dict(), **vqgan.quant_conv.state_dict()}.items()):
        encoder.update(name.encode() + tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{codebook}_{encoder.hexdigest()[:8]}"


def save_cache(path: pathlib.Path, tensors: dict, metadata: dict) -> pathlib.Path:
    """Write a token cache file whole or not at all (a killed run never leaves half a cache behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
    partial.rename(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--world", type=int, default=200, help="training panoramas (seeds 0..N-1)")
    parser.add_argument("--jobs", type=int, default=2, help="processes that render and tokenize the world")
    parser.add_argument("--captions", action="store_true",
                        help="train a text-conditioned model on each scene's caption (MiniLM states; 10%% of the "
                             "items on the empty caption, so an empty prompt means unconditional)")
    parser.add_argument("--vqgan", type=pathlib.Path, default=VQGAN)
    parser.add_argument("--out", type=pathlib.Path,
                        help=f"output model (default {OUT.name}, with --captions {TEXT_OUT.name})")
    parser.add_argument("--cache", type=pathlib.Path, default=CACHE)
    args, rest = parser.parse_known_args(argv)
    args.out = args.out or (TEXT_OUT if args.captions else OUT)
    torch.set_num_threads(1)
    captioned = world_tokens(range(args.world), TRAIN_SIZE, args.vqgan, args.cache, args.jobs, captions=True)
    train_file = captioned if args.captions else tokens_only(captioned)
    val_file = world_tokens(range(VALIDATION_SEED, VALIDATION_SEED + VALIDATION_COUNT), VALIDATION_SIZE,
                            args.vqgan, args.cache, args.jobs)
    print(f"[world] {len(load_file(str(train_file))['tokens'])} training maps in {train_file}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    validation = [] if args.captions else ["--val-tokens", str(val_file)]    # held-out NLL is for models without text
    pack_module("nodes.infinity.train").main(["--tokens", str(train_file), *validation,
                                              "--out", str(args.out), *DEFAULTS, *rest])


if __name__ == "__main__":
    main()
