#!/usr/bin/env python3
"""Train the pack's demo VQGAN: ``.venv/bin/python scripts/train_vqgan.py [--minutes M]``.

Data: the painted panoramas and coast of the MIT-licensed ``ursina`` wheel, plus CC0 / public-domain
photos from scikit-image (astronaut, chelsea, coffee, rocket), so the tokenizer handles both the
Infinity demo's painted skies and ordinary photos. Extra arguments go to nodes/vq/train.py.
"""
import importlib.util
import pathlib
import sys
import tempfile

from PIL import Image

from packpath import ROOT, pack_module


def package_dir(name: str) -> pathlib.Path:
    """Locate an installed package without importing (executing) it."""
    return pathlib.Path(importlib.util.find_spec(name).origin).parent


def training_images(folder: pathlib.Path) -> list[pathlib.Path]:
    ursina = package_dir("ursina") / "textures"
    files = [ursina / "sky_default.jpg", ursina / "sky_sunset.jpg", ursina / "shore.jpg"]
    from skimage import data
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        files.append(path)
    return files


if __name__ == "__main__":
    train = pack_module("nodes.vq.train")
    out = ROOT / "models" / "vqgan" / "boundless_demo_f16.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = training_images(pathlib.Path(tmp))
        train.main([*map(str, files), "--out", str(out), *sys.argv[1:]])
