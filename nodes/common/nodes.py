"""Nodes every system's example workflows share: the pack's own example pictures.

The shipped workflows start from pictures in ``workflows/inputs/``. With ComfyUI's Load Image a
workflow opened from the template browser fails until the user copies those files into ComfyUI's
``input/`` folder; this node reads them from the pack itself, so every template runs as opened.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps
from comfy_api.latest import io

from . import comfy_glue
from .errors import BoundlessError

EXAMPLES_DIR = os.path.join(os.path.dirname(comfy_glue.PACK_MODELS_DIR), "workflows", "inputs")


def example_names() -> list[str]:
    return sorted(name for name in os.listdir(EXAMPLES_DIR) if name.lower().endswith(".png"))


class ExampleImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessExampleImage", display_name="Load Example Image (Boundless)",
            category="Boundless/examples",
            description="One of the example pictures that ship with the pack (workflows/inputs), so the example "
                        "workflows run without copying files into ComfyUI's input folder. Use Load Image for "
                        "your own pictures.",
            inputs=[io.Combo.Input("image", options=example_names(),
                                   tooltip="An example picture shipped with the pack (CC0/MIT sources, see the "
                                           "README).")],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The picture as an IMAGE batch of one (RGB, 0..1), as Load Image "
                                             "gives it; connect it wherever an image goes.")])

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        if image not in example_names():
            raise BoundlessError(f"{image!r} is not one of the pack's example pictures; pick one from the list")
        with Image.open(os.path.join(EXAMPLES_DIR, image)) as picture:
            rgb = np.asarray(ImageOps.exif_transpose(picture).convert("RGB"), dtype=np.float32) / 255.0
        return io.NodeOutput(torch.from_numpy(rgb)[None].to(comfy_glue.output_device()))


NODES = [ExampleImage]
