#!/usr/bin/env python3
"""Demo tokenizers on held-out material: world seeds and photographs none of them trained on.

For each VQGAN given (``--vqgan NAME=PATH``, default the shipped demo VQGAN), in one run:

* **World**: ``--world`` panoramas of seeds from ``train_vqgan_world.HELD_OUT_SEED`` on (1024×512).
  Round-trip PSNR, speckle (as for photos; the world's renders are smooth, so a tokenizer's dots
  stand out there), and the Fréchet distance / KID of EfficientNet-lite0 features of 256-px crops of
  the round-trips against crops of the real pictures; the floor beside it is real vs real (crops
  of other held-out seeds).
* **Photos**: the Debian photographs held out of tokenizer training
  (``train_vqgan_world.HELD_OUT_PHOTOS``, fetched by ``scripts/fetch_photos.py``) and
  scikit-learn's two sample photos (``china.jpg``, ``flower.jpg``) and scikit-image's Hubble deep
  field (black stays black?), each 512 px on its short side.
  PSNR, the largest per-channel difference of the picture means (colour error), speckle per
  megapixel (isolated outlier pixels, ``shared/specs/quality_metrics.md``) with the share on the
  16-px token grid, and the error in the outer 4-px frame and in the 16-px corner blocks ÷ the
  error inside (border lines and corner spots show as ratios well above 1).
* **Locality** of the codes, on the world panoramas: the share of tokens that stay the same when the
  left half is encoded alone (all of it, and its last two token columns at the cut), and when the
  picture is encoded without its first token column (a one-token camera pan); for a tokenizer with
  the first one's codebook, also the share of whole-picture tokens equal to the first one's (its
  token maps, and the models trained on them, stay valid).

Prints JSON. Run: ``.venv/bin/python bench/tokenizer.py --vqgan shipped=A.safetensors --vqgan new=B.safetensors``
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402
from packpath import pack_module  # noqa: E402
from train_vqgan_world import HELD_OUT_SEED, PHOTOS, debian_photos, fit  # noqa: E402

vq_loader = pack_module("nodes.vq.loader")
DEMO_VQGAN = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
SPECKLE_THRESHOLD = 0.2         # a pixel this far (in [0, 1]) from its 5×5 median, in any channel
FRAME_PX, CORNER_PX = 4, 16


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)       # [H, W, 3]


def world_pictures(first: int, count: int) -> list[torch.Tensor]:
    scene_mod, render = pack_module("nodes.world.scene"), pack_module("nodes.world.render")
    return [torch.from_numpy(render.panorama(scene_mod.sample_scene(seed), 1024, 512).astype(np.float32) / 255.0)
            for seed in range(first, first + count)]


def photos(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    found = {path.stem.split("__")[-1]: to_tensor(fit(Image.open(path))) for path in debian_photos(folder, True)}
    from sklearn.datasets import load_sample_image
    for name in ("china.jpg", "flower.jpg"):
        found[name] = to_tensor(fit(Image.fromarray(load_sample_image(name))))
    from skimage import data
    found["hubble_deep_field"] = to_tensor(fit(Image.fromarray(data.hubble_deep_field())))
    return found


@torch.no_grad()
def round_trip(vqgan, image_hw3: torch.Tensor) -> torch.Tensor:
    x = image_hw3.permute(2, 0, 1)[None] * 2 - 1
    return ((vqgan.decode_indices(vqgan.encode_indices(x)).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0)


def speckle(image_hw3: torch.Tensor, token_px: int = 16) -> tuple[float, float]:
    """(isolated outlier pixels per megapixel, share of them on the token grid)."""
    x = image_hw3.permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    patches = F.unfold(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5)              # [1, 3·25, H·W]
    median = patches.view(1, 3, 25, h * w).median(dim=2).values.view(1, 3, h, w)
    outlier = ((x - median).abs() > SPECKLE_THRESHOLD).any(1)[0].float()          # [H, W]
    neighbours = F.conv2d(outlier[None, None], torch.ones(1, 1, 3, 3), padding=1)[0, 0] - outlier
    isolated = (outlier > 0) & (neighbours == 0)
    count = int(isolated.sum())
    ys, xs = isolated.nonzero(as_tuple=True)
    on_grid = ((ys % token_px == 0) | (ys % token_px == token_px - 1) |
               (xs % token_px == 0) | (xs % token_px == token_px - 1)).float()
    return count / (h * w / 1e6), float(on_grid.mean()) if count else 0.0


def frame_and_corner_ratios(recon_hw3: torch.Tensor, truth_hw3: torch.Tensor) -> tuple[float, float]:
    """Error in the outer frame and in the four corner blocks ÷ the error inside them."""
    error = (recon_hw3 - truth_hw3).abs().mean(-1)
    inside = error[CORNER_PX:-CORNER_PX, CORNER_PX:-CORNER_PX].mean()
    frame = torch.cat([error[:FRAME_PX].flatten(), error[-FRAME_PX:].flatten(),
                       error[:, :FRAME_PX].flatten(), error[:, -FRAME_PX:].flatten()]).mean()
    c = CORNER_PX
    corners = max(float(block.mean()) for block in (error[:c, :c], error[:c, -c:], error[-c:, :c], error[-c:, -c:]))
    return float(frame / inside), corners / float(inside)


@torch.no_grad()
def locality(vqgan, image_hw3: torch.Tensor) -> dict[str, float]:
    """Shares of tokens unchanged when a crop is encoded alone (see the module docstring)."""
    x = image_hw3.permute(2, 0, 1)[None] * 2 - 1
    f = vqgan.factor
    whole_hw = vqgan.encode_indices(x)[0]
    half = whole_hw.shape[1] // 2
    left_hw = vqgan.encode_indices(x[..., :half * f])[0]
    shifted_hw = vqgan.encode_indices(x[..., f:])[0]
    return {"crop_all": float((left_hw == whole_hw[:, :half]).float().mean()),
            "crop_cut": float((left_hw[:, -2:] == whole_hw[:, half - 2:half]).float().mean()),
            "shift": float((shifted_hw == whole_hw[:, 1:]).float().mean())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vqgan", action="append", default=[], help="NAME=PATH of a taming-layout VQGAN (repeatable)")
    p.add_argument("--world", type=int, default=8, help="held-out world panoramas (1024×512)")
    p.add_argument("--photos", type=pathlib.Path, default=PHOTOS, help="folder of scripts/fetch_photos.py")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizers = dict(item.split("=", 1) for item in args.vqgan) or {"shipped": str(DEMO_VQGAN)}
    features = metrics.Features()
    world = world_pictures(HELD_OUT_SEED, args.world)
    other_world = world_pictures(HELD_OUT_SEED + args.world, args.world)
    world_feat = features([c for image in world for c in metrics.crops(image)])
    pictures = photos(args.photos)
    real_speckle = {name: speckle(image)[0] for name, image in pictures.items()}
    result = {"config": {"world": args.world, "photos": sorted(pictures), "speckle_threshold": SPECKLE_THRESHOLD},
              "reference": {"world_fed_real_vs_real": round(metrics.frechet_distance(
                  features([c for image in other_world for c in metrics.crops(image)]), world_feat), 2),
                  "world_speckle_per_mpx": round(float(np.mean([speckle(image)[0] for image in world])), 1),
                  "photo_speckle_per_mpx": {k: round(v, 1) for k, v in real_speckle.items()}}}
    first_codes = None
    for name, path in tokenizers.items():
        vqgan = vq_loader.load_vqgan(path).float().eval()
        codes = vqgan.quantize.embedding.weight
        if first_codes is None:
            first_codes, first_maps = codes, [vqgan.encode_indices(image.permute(2, 0, 1)[None] * 2 - 1)
                                              for image in world]
        trips = [round_trip(vqgan, image) for image in world]
        trip_feat = features([c for image in trips for c in metrics.crops(image)])
        kid, spread = metrics.kernel_inception_distance(trip_feat, world_feat)
        trip_speckle = [speckle(image) for image in trips]
        row = {"world": {"psnr": round(float(np.mean([metrics.psnr(a, b) for a, b in zip(trips, world)])), 2),
                         "speckle_per_mpx": round(float(np.mean([s for s, _ in trip_speckle])), 1),
                         "speckle_on_grid": round(float(np.mean([g for _, g in trip_speckle])), 2),
                         "fed": round(metrics.frechet_distance(trip_feat, world_feat), 2),
                         "kid_x1e3": round(kid, 2), "kid_spread": round(spread, 2)},
               "photos": {}}
        local = [locality(vqgan, image) for image in world]
        row["locality"] = {k: round(float(np.mean([entry[k] for entry in local])), 3) for k in local[0]}
        if torch.equal(codes, first_codes):
            row["locality"]["same_as_first"] = round(float(np.mean([
                (vqgan.encode_indices(image.permute(2, 0, 1)[None] * 2 - 1) == first).float().mean()
                for image, first in zip(world, first_maps)])), 3)
        for photo, image in pictures.items():
            trip = round_trip(vqgan, image)
            per_mpx, on_grid = speckle(trip)
            frame, corner = frame_and_corner_ratios(trip, image)
            colour = (trip.mean((0, 1)) - image.mean((0, 1))).abs()
            row["photos"][photo] = {"psnr": round(metrics.psnr(trip, image), 2),
                                    "colour_error": round(float(colour.max()), 4),
                                    "speckle_per_mpx": round(per_mpx, 1), "speckle_on_grid": round(on_grid, 2),
                                    "frame_ratio": round(frame, 2), "corner_ratio": round(corner, 2)}
        shown = row["photos"].values()
        row["photo_summary"] = {"mean_psnr": round(float(np.mean([r["psnr"] for r in shown])), 2),
                                "max_colour_error": max(r["colour_error"] for r in shown),
                                "mean_speckle_per_mpx": round(float(np.mean([r["speckle_per_mpx"] for r in shown])), 1),
                                "max_frame_ratio": max(r["frame_ratio"] for r in shown),
                                "max_corner_ratio": max(r["corner_ratio"] for r in shown)}
        result[name] = row
        print(json.dumps({name: row}), flush=True)
    result["reference"]["mean_photo_speckle_per_mpx"] = round(float(np.mean(list(real_speckle.values()))), 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
