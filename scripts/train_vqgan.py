#!/usr/bin/env python3
"""Train the pack's demo VQGAN: ``.venv/bin/python scripts/train_vqgan.py [--minutes M]``.

Data: the painted panoramas and coast of the MIT-licensed ``ursina`` wheel, CC0 / public-domain
photos from scikit-image (astronaut, chelsea, coffee, rocket), and sheets of the CC0 Kenney character
frames of the ``arcade`` wheel on flat backgrounds, so the tokenizer handles the Infinity demos' painted
skies, the animation demo's sprites and ordinary photos. Crops are 256 px by default: the model's
GroupNorm and mid-block attention then see statistics like those of the large images it is used on
(a 64-px-crop model drifts in colour when run in one pass over a panorama). Extra arguments go to
nodes/vq/train.py.
"""
import importlib.util
import pathlib
import random
import sys
import tempfile

from PIL import Image

from demo_frames import BACKGROUNDS, HELDOUT
from packpath import ROOT, pack_module


def package_dir(name: str) -> pathlib.Path:
    """Locate an installed package without importing (executing) it."""
    return pathlib.Path(importlib.util.find_spec(name).origin).parent


SPRITE_SHEETS, SHEET_COLS, SPRITE_SCALE = 3, 7, 2


def sprite_sheets(folder: pathlib.Path) -> list[pathlib.Path]:
    """The 13 frames of the Kenney characters (but the held-out ones), each on a flat background
    of the demo palette and at twice their size (as the animation demo uses them), in 3 sheets."""
    root = package_dir("arcade") / "resources" / "assets" / "images" / "animated_characters"
    files = sorted(f for f in root.glob("*/*.png") if f.parent.name not in HELDOUT)
    w, h = (side * SPRITE_SCALE for side in Image.open(files[0]).size)
    rng = random.Random(0)
    per_sheet = -(-len(files) // SPRITE_SHEETS)
    paths = []
    for i in range(SPRITE_SHEETS):
        chunk = files[i * per_sheet:(i + 1) * per_sheet]
        rows = -(-len(chunk) // SHEET_COLS)
        sheet = Image.new("RGB", (w * SHEET_COLS, h * rows), (128, 128, 128))
        for k, file in enumerate(chunk):
            cell = Image.new("RGBA", (w, h), rng.choice(BACKGROUNDS) + (255,))
            cell.alpha_composite(Image.open(file).convert("RGBA").resize((w, h), Image.BICUBIC))
            sheet.paste(cell.convert("RGB"), ((k % SHEET_COLS) * w, (k // SHEET_COLS) * h))
        paths.append(folder / f"kenney_sheet_{i}.png")
        sheet.save(paths[-1])
    return paths


def panoramas_and_photos(folder: pathlib.Path) -> list[pathlib.Path]:
    """ursina's painted panoramas and coast, and four CC0 / public-domain scikit-image photos."""
    ursina = package_dir("ursina") / "textures"
    files = [ursina / "sky_default.jpg", ursina / "sky_sunset.jpg", ursina / "shore.jpg"]
    from skimage import data
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        files.append(path)
    return files


def training_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return panoramas_and_photos(folder) + sprite_sheets(folder)


if __name__ == "__main__":
    train = pack_module("nodes.vq.train")
    out = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = training_images(pathlib.Path(tmp))
        train.main([*map(str, files), "--out", str(out), "--crop", "256", "--batch", "2", *sys.argv[1:]])
