#!/usr/bin/env python3
"""Train the shipped NUWA-Infinity demo model: ``.venv/bin/python scripts/train_infinity_demo.py``.

Data: the two painted 4096x1024 sky panoramas (``sky_default.jpg``, ``sky_sunset.jpg``) and the
painted coast (``shore.jpg``) of the MIT-licensed ``ursina`` wheel (textures by Petter Amland),
downscaled to 512 px high (two 256-px patch rows) at two widths, plus their mirror images;
tokenized with the demo VQGAN (``models/vqgan/boundless_demo_f16.safetensors``). The right
quarter of every source picture (``HELD_OUT``) is never trained on: bench/infinity_quality.py
measures on it. Extra arguments override the training flags of nodes/infinity/train.py (e.g.
``--minutes 60``).
"""
import pathlib
import sys
import tempfile

from PIL import Image, ImageOps

from packpath import ROOT, pack_module
from train_vqgan import package_dir

VQGAN = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
OUT = ROOT / "models" / "infinity" / "boundless_demo_panorama.safetensors"
DEFAULTS = ["--dim", "128", "--depth", "4", "--heads", "4", "--patch", "16", "16", "--extents", "1", "1", "0",
            "--canvas", "2", "2", "--batch", "2", "--lr", "6e-4", "--steps", "100000", "--minutes", "30",
            "--save-every", "50", "--threads", "2", "--rope-base", "100"]


# Source picture -> training sizes (width, height) of the whole picture.
SOURCES = {"sky_default": [(2048, 512), (2560, 640)], "sky_sunset": [(2048, 512), (2560, 640)],
           "shore": [(936, 512)]}
HELD_OUT = 0.25   # share of each picture's width, on the right, that training never sees


def source_image(name: str, width: int, height: int) -> Image.Image:
    """A source picture resized to ``width × height`` (the whole picture, held-out part included)."""
    image = Image.open(package_dir("ursina") / "textures" / f"{name}.jpg").convert("RGB")
    return image.resize((width, height), Image.LANCZOS)


def split_column(width: int) -> int:
    """First pixel column of the held-out part of a picture ``width`` px wide (a 16-px token boundary)."""
    return int(width * (1 - HELD_OUT)) // 16 * 16


def prepare_images(folder: pathlib.Path) -> None:
    """The training part of each picture (panoramas at 2048x512 and 2560x640, the coast at 512 px
    high, all without their held-out right quarter), each also mirrored."""
    for name, sizes in SOURCES.items():
        for width, height in sizes:
            part = source_image(name, width, height).crop((0, 0, split_column(width), height))
            part.save(folder / f"{name}_{width}.png")
            ImageOps.mirror(part).save(folder / f"{name}_{width}_mirror.png")


if __name__ == "__main__":
    if not VQGAN.is_file():
        sys.exit(f"train the demo VQGAN first: .venv/bin/python scripts/train_vqgan.py ({VQGAN} is missing)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_images(pathlib.Path(tmp))
        pack_module("nodes.infinity.train").main(
            ["--images", tmp, "--vqgan", str(VQGAN), "--max-side", "4096", "--out", str(OUT),
             *DEFAULTS, *sys.argv[1:]])
