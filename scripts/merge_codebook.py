#!/usr/bin/env python3
"""Merge a tokenizer's near-duplicate codes (``nodes/vq/merge_codes.py`` says why) and carry its
world token caches over: ``.venv/bin/python scripts/merge_codebook.py --codes 256``.

Usage weights come from the largest world token cache of the tokenizer (``output/cache``). Every
world cache of the tokenizer is rewritten for the merged one (tokens remapped to their cluster's
representative, metadata naming the new tokenizer), so ``scripts/train_infinity_world.py --vqgan
<merged>`` and ``train_infinity_world_video.py --vqgan <merged>`` find their data without
re-encoding. The remapped maps pick each place's cluster through the *old* nearest code; the merged
tokenizer picks the nearest centroid, which agrees on most places (printed).
"""
import argparse
import pathlib

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from packpath import ROOT, pack_module
from train_infinity_world import CACHE, cache_key, save_cache, world_picture

VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16.safetensors"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vqgan", type=pathlib.Path, default=VQGAN)
    p.add_argument("--codes", type=int, default=256, help="distinct codes to keep")
    p.add_argument("--out", type=pathlib.Path, help="merged tokenizer (default: <vqgan>_m<codes>.safetensors)")
    p.add_argument("--cache", type=pathlib.Path, default=CACHE)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    vq_loader, merge, train, tokens_mod = (pack_module(f"nodes.{name}") for name in
                                           ("vq.loader", "vq.merge_codes", "vq.train", "common.tokens"))
    args.out = args.out or args.vqgan.with_name(f"{args.vqgan.stem}_m{args.codes}.safetensors")
    vqgan = vq_loader.load_vqgan(str(args.vqgan)).float().eval()
    old_key = cache_key(vqgan)
    caches = sorted(args.cache.glob(f"*_{old_key}.safetensors"))
    if not caches:
        raise SystemExit(f"no token caches of {args.vqgan.name} in {args.cache}: "
                         "run scripts/train_infinity_world.py first")
    picture = torch.from_numpy(world_picture(100_000, 1024, 512)).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        old_codes = vqgan.encode_indices(picture)          # a held-out picture, before the merge
    largest = max(caches, key=lambda path: path.stat().st_size)
    usage_k = torch.bincount(load_file(str(largest))["tokens"].flatten(), minlength=vqgan.n_embed)
    assign_k, merged_ke = merge.merge_codebook(vqgan.quantize.embedding.weight, usage_k, args.codes, seed=args.seed)
    vqgan.quantize.embedding.weight.data.copy_(merged_ke)
    train.save_vqgan(vqgan, args.out, {"format": "taming.vqgan", "merged_from": args.vqgan.name,
                                       "distinct_codes": args.codes})
    merged = vq_loader.load_vqgan(str(args.out)).float().eval()
    remap_k = merge.representatives(assign_k)
    identity = tokens_mod.fingerprint(vq_loader.KIND, merged.quantize.embedding.weight)
    new_key = cache_key(merged)
    for path in caches:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors["tokens"] = remap_k[tensors["tokens"]]
        target = path.with_name(path.name.replace(old_key, new_key))
        save_cache(target, tensors, {**metadata, "tokenizer": identity, "remapped_from": old_key})
        print(f"[merge] {path.name} -> {target.name}", flush=True)
    with torch.no_grad():
        agree = float((merged.encode_indices(picture) == remap_k[old_codes]).float().mean())
    print(f"[merge] {args.out.name}: {args.codes} distinct codes; remapped maps agree with the merged "
          f"tokenizer's own on {agree:.3f} of a held-out picture's tokens", flush=True)


if __name__ == "__main__":
    main()
