#!/usr/bin/env python3
"""Train the shipped NUWA-Infinity demo model: ``.venv/bin/python scripts/train_infinity_demo.py``.

Data: the two painted 4096x1024 sky panoramas (``sky_default.jpg``, ``sky_sunset.jpg``) and the
painted coast (``shore.jpg``) of the MIT-licensed ``ursina`` wheel (textures by Petter Amland),
downscaled to 512 px high (two 256-px patch rows) at two widths, plus their mirror images;
tokenized with the demo VQGAN (``models/vqgan/boundless_demo_f16.safetensors``). Extra arguments
override the training flags of nodes/infinity/train.py (e.g. ``--minutes 60``).
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
            "--save-every", "50", "--threads", "2"]


def prepare_images(folder: pathlib.Path) -> None:
    """Panoramas at 2048x512 and 2560x640, the coast at 512 px high, each also mirrored."""
    textures = package_dir("ursina") / "textures"
    sources = {"sky_default": [(2048, 512), (2560, 640)], "sky_sunset": [(2048, 512), (2560, 640)],
               "shore": [(936, 512)]}
    for name, sizes in sources.items():
        image = Image.open(textures / f"{name}.jpg").convert("RGB")
        for width, height in sizes:
            resized = image.resize((width, height), Image.LANCZOS)
            resized.save(folder / f"{name}_{width}.png")
            ImageOps.mirror(resized).save(folder / f"{name}_{width}_mirror.png")


if __name__ == "__main__":
    if not VQGAN.is_file():
        sys.exit(f"train the demo VQGAN first: .venv/bin/python scripts/train_vqgan.py ({VQGAN} is missing)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_images(pathlib.Path(tmp))
        pack_module("nodes.infinity.train").main(
            ["--images", tmp, "--vqgan", str(VQGAN), "--max-side", "4096", "--out", str(OUT),
             *DEFAULTS, *sys.argv[1:]])
