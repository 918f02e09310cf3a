#!/usr/bin/env python3
"""Fine-tune a tokenizer's encoder so its codes are local (``nodes/vq/local_encoder.py`` says why).

``.venv/bin/python scripts/train_vqgan_local.py [--teacher T] [--out O] [--world N] [--minutes M]``

The codebook and the decoder stay the teacher's, so token maps, world models and pictures stay
interchangeable; only which code a place gets when it is encoded in a crop changes. Data: world
panoramas of seeds 0..N-1 at 2048x512 (their teacher codes come from the world token cache of
``scripts/train_infinity_world.py`` when it exists, else the teacher encodes them), the ursina
panoramas, the scikit-image photos and the training photographs of ``scripts/fetch_photos.py`` (each
512 px on its short side), so photos to outpaint are covered too. Resumable: ``--resume`` a student.
"""
import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from packpath import ROOT, pack_module
from train_infinity_world import CACHE, TRAIN_SIZE, cache_key, world_picture
from train_vqgan import panoramas_and_photos
from train_vqgan_world import PHOTOS, debian_photos, fit

TEACHER = ROOT / "models" / "vqgan" / "boundless_world_f16.safetensors"
OUT = ROOT / "output" / "runs" / "boundless_world_f16_local.safetensors"


def photo_tensor(path: pathlib.Path) -> torch.Tensor:
    """A photo fitted as the tokenizer benchmark fits them, ``[3, H, W]`` in [-1, 1]."""
    array = np.asarray(fit(Image.open(path).convert("RGB")), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def cached_world_codes(teacher, count: int) -> torch.Tensor | None:
    """Teacher codes of world seeds 0..count-1 from a world token cache made with this teacher."""
    for path in sorted(CACHE.glob(f"world_0_*_{TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}_{cache_key(teacher)}.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if handle.get_slice("tokens").get_shape()[0] >= count:
                return load_file(str(path))["tokens"][:count]
    return None


@torch.no_grad()
def training_pictures(teacher, world: int, photos: pathlib.Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(picture [3,H,W] in [-1,1], teacher codes [h,w])`` of the world scenes and the photographs."""
    pictures = []
    codes = cached_world_codes(teacher, world)
    for seed in range(world):
        x = torch.from_numpy(world_picture(seed, *TRAIN_SIZE)).float().div(127.5).sub(1.0).permute(2, 0, 1)
        pictures.append((x, codes[seed] if codes is not None else teacher.encode_indices(x[None])[0]))
        if (seed + 1) % 50 == 0:
            print(f"[local encoder] world {seed + 1}/{world}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = panoramas_and_photos(pathlib.Path(tmp)) + debian_photos(photos)
        for path in files:
            x = photo_tensor(path)
            pictures.append((x, teacher.encode_indices(x[None])[0]))
    return pictures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=pathlib.Path, default=TEACHER)
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    p.add_argument("--resume", type=pathlib.Path, help="a student to continue (its encoder is kept)")
    p.add_argument("--world", type=int, default=150, help="world scenes (seeds 0..N-1) to learn from")
    p.add_argument("--photos", type=pathlib.Path, default=PHOTOS)
    p.add_argument("--batch", type=int, default=4, help="crops per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--pull", type=float, default=1.0, help="weight of the squared distance to the teacher's code")
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-attention", action="store_true",
                   help="keep the encoder's attention blocks (trained too) instead of switching them off")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    vq_loader, local, train = (pack_module(f"nodes.vq.{name}") for name in ("loader", "local_encoder", "train"))

    teacher = vq_loader.load_vqgan(str(args.teacher)).float().eval()
    pictures = training_pictures(teacher, args.world, args.photos)
    student = vq_loader.load_vqgan(str(args.resume or args.teacher)).float()
    student.quantize.embedding.weight.data.copy_(teacher.quantize.embedding.weight)   # the teacher's codes
    student.requires_grad_(False)
    student.encoder.requires_grad_(True)
    student.quant_conv.requires_grad_(True)
    switched = 0 if args.keep_attention else local.switch_off_encoder_attention(student)
    student.encoder.train()
    sampler = local.AlignedCropSampler(pictures, teacher.factor, args.seed)
    probe = torch.cat([teacher.quant_conv(teacher.encoder(sampler.one()[0][None])).flatten(2) for _ in range(8)], 2)
    temperature = local.nearest_distance_sq(probe[..., None], teacher.quantize.embedding.weight)
    params = [param for param in student.parameters() if param.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    previous = int(train.load_metadata(args.resume).get("steps", 0)) if args.resume else 0
    metadata = {"format": "taming.vqgan", "encoder": "distilled from the teacher's whole-picture codes on crops"
                + ("" if args.keep_attention else ", attention off"),
                "teacher": args.teacher.name, "config": vars(args)}
    print(f"[local encoder] {len(pictures)} pictures, {switched} attention blocks off, "
          f"code temperature {temperature:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        stats = local.distill_step(student, opt, [sampler.one() for _ in range(args.batch)], temperature, args.pull)
        step += 1
        if step % 25 == 0 or step == 1:
            print(json.dumps({"step": previous + step, "min": round((time.time() - start) / 60, 2),
                              **{k: round(v.item(), 4) for k, v in stats.items()}}), flush=True)
        if step % args.save_every == 0:
            train.save_vqgan(student, args.out, {**metadata, "steps": previous + step})
    train.save_vqgan(student.eval(), args.out, {**metadata, "steps": previous + step})
    print(f"saved {args.out} after {step} steps", flush=True)


if __name__ == "__main__":
    main()
