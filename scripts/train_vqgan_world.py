#!/usr/bin/env python3
"""Train the demo world's tokenizer: ``.venv/bin/python scripts/train_vqgan_world.py [--minutes M]``.

Data: ``--world`` panoramas of the demo world (``nodes/world``, seeds 0..N-1 at 2048x512; held-out
sets use seeds from ``HELD_OUT_SEED`` on), the MIT-licensed ``ursina`` panoramas and coast, and the
CC0 / public-domain scikit-image photos (astronaut, chelsea, coffee, rocket), and the landscape and
nature photographs of Debian's wallpaper packages that ``scripts/fetch_photos.py`` collects
(GPL-2+, LGPL, CC-BY, CC-BY-SA-4.0, CC0; ``--photos``), but for ``HELD_OUT_PHOTOS``, which only the
benchmarks see; so the tokenizer keeps the world's colours and still handles photographs. Taming layout (the loader, the nodes and the
official checkpoints stay interchangeable); 256-px crops at batch 2 as for the first demo VQGAN.
Extra arguments go to nodes/vq/train.py (e.g. ``--resume FILE --lr 3e-4 --colour-jitter 0.3``).

On a GPU machine (16 cores), one command that fits a 10-minute slot and leaves the weights in $OUT
(the photographs, 79 MB, stay behind unless carried; without them the run says so and goes on):
``python3 scripts/train_vqgan_world.py --world 400 --jobs 14 --resume models/vqgan/boundless_world_f16.safetensors
--device cuda --batch 16 --threads 2 --colour-jitter 0.3 --minutes 6 --save-every 500 --out $OUT/boundless_world_f16.safetensors``
"""
import argparse
import multiprocessing
import pathlib
import tempfile

from PIL import Image

from packpath import ROOT, pack_module
from train_vqgan import panoramas_and_photos

HELD_OUT_SEED = 100_000          # world seeds from here on are never trained on
PHOTOS = ROOT / "output" / "photos"
# Debian photographs kept for measuring (a mountain range, an evening sky, a meadow, a shore, a storm).
HELD_OUT_PHOTOS = ("picosdeeuropa", "EveningGlow", "GreenMeadow", "BytheWater", "Storm")
OUT = ROOT / "models" / "vqgan" / "boundless_world_f16.safetensors"


def _render_world(job: tuple[int, str, int, int]) -> str:
    seed, path, width, height = job
    scene_mod, render = pack_module("nodes.world.scene"), pack_module("nodes.world.render")
    Image.fromarray(render.panorama(scene_mod.sample_scene(seed), width, height)).save(path)
    return path


def world_images(folder: pathlib.Path, count: int, width: int = 2048, height: int = 512,
                 jobs: int = 1) -> list[pathlib.Path]:
    """The world panoramas of seeds 0..count-1 as PNG files in ``folder`` (``jobs`` processes render)."""
    work = [(seed, str(folder / f"world_{seed}.png"), width, height) for seed in range(count)]
    if jobs <= 1:
        return [pathlib.Path(_render_world(job)) for job in work]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return [pathlib.Path(path) for path in pool.map(_render_world, work)]


def fit(image: Image.Image, short: int = 512, multiple: int = 16) -> Image.Image:
    """Resized to ``short`` px on its short side, centre-cropped to whole tokens."""
    scale = short / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    w, h = image.width // multiple * multiple, image.height // multiple * multiple
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def debian_photos(folder: pathlib.Path, held_out: bool = False) -> list[pathlib.Path]:
    """The fetched Debian photographs: the training ones, or with ``held_out`` the measuring ones."""
    files = sorted(folder.glob("*.png"))
    return [f for f in files if any(name in f.stem for name in HELD_OUT_PHOTOS) == held_out]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--world", type=int, default=160, help="world panoramas to train on")
    parser.add_argument("--jobs", type=int, default=1, help="processes that render the world")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--photos", type=pathlib.Path, default=PHOTOS,
                        help="folder of scripts/fetch_photos.py (skipped with a note when it is empty)")
    args, rest = parser.parse_known_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        photos = debian_photos(args.photos)
        if not photos:
            print(f"[world tokenizer] no photographs in {args.photos}: run scripts/fetch_photos.py to add them",
                  flush=True)
        files = (world_images(pathlib.Path(tmp), args.world, jobs=args.jobs) + panoramas_and_photos(pathlib.Path(tmp))
                 + photos)
        print(f"[world tokenizer] {len(files)} training pictures", flush=True)
        pack_module("nodes.vq.train").main([*map(str, files), "--out", str(args.out), "--crop", "256", "--batch", "2",
                                            "--n-embed", "1024", "--perceptual", "0.5", *rest])
