"""VAR nodes through the real server (tiny random weights): sampling, editing, tokens, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from comfy_server import PromptError
from conftest import WORKFLOWS
from var_tiny import TRANSFORMER_512_FILE, TRANSFORMER_FILE, VAE_FILE

pytestmark = pytest.mark.server


def loader(transformer=TRANSFORMER_FILE, vae=VAE_FILE):
    return {"class_type": "BoundlessVARLoader",
            "inputs": {"vqvae_name": vae, "transformer_name": transformer, "precision": "auto"}}


SAMPLING = {"seed": 3, "cfg": 4.0, "top_k": 900, "top_p": 0.95, "more_smooth": False, "previews": False}


def sample_graph(class_name="207: golden retriever", classes="", batch_size=1, **overrides) -> dict:
    return {
        "1": loader(),
        "2": {"class_type": "BoundlessVARSample",
              "inputs": {"var_model": ["1", 0], "class_name": class_name, "batch_size": batch_size,
                         "classes": classes, **SAMPLING, **overrides}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "var_test"}},
        "4": {"class_type": "BoundlessVARDecode", "inputs": {"var_model": ["1", 0], "tokens": ["2", 1]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "var_test_decoded"}},
    }


def edit_graph(mode="inpaint", image_side=256, mask_side=256, transformer=TRANSFORMER_FILE, composite=True):
    return {
        "1": loader(transformer),
        "2": {"class_type": "EmptyImage",
              "inputs": {"width": image_side, "height": image_side, "batch_size": 1, "color": 0x3366AA}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": mask_side, "height": mask_side}},
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "5": {"class_type": "MaskComposite",
              "inputs": {"destination": ["3", 0], "source": ["4", 0], "x": 64, "y": 64, "operation": "add"}},
        "6": {"class_type": "BoundlessVAREdit",
              "inputs": {"var_model": ["1", 0], "image": ["2", 0], "mask": ["5", 0], "mode": mode,
                         "class_name": "88: macaw", **SAMPLING, "cfg": 3.0, "more_smooth": True,
                         "composite": composite}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "var_test_edit"}},
    }


def pixels(comfy, outputs, node_id):
    return [np.asarray(im.convert("RGB")).astype(np.int16) for im in comfy.images(outputs, node_id)]


def test_sampling_is_deterministic_and_tokens_round_trip(comfy):
    first = comfy.run(sample_graph(previews=True))   # previews decode per scale; they must not change the result
    [image] = pixels(comfy, first, "3")
    assert image.shape == (256, 256, 3) and image.std() > 5
    # the tokens output decodes to the very image the sampler returned
    assert np.abs(pixels(comfy, first, "5")[0] - image).max() <= 1
    again = comfy.run(sample_graph(classes=" 207 "))        # the same class given by id in the list
    assert np.array_equal(pixels(comfy, again, "3")[0], image)
    other = comfy.run(sample_graph(seed=4))
    assert not np.array_equal(pixels(comfy, other, "3")[0], image)


def test_an_edit_that_keeps_every_token_equals_encode_then_decode(comfy):
    graph = edit_graph(composite=False)
    graph["5"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 256, "height": 256}}
    graph["8"] = {"class_type": "BoundlessVAREncode", "inputs": {"var_model": ["1", 0], "image": ["2", 0]}}
    graph["9"] = {"class_type": "BoundlessVARDecode", "inputs": {"var_model": ["1", 0], "tokens": ["8", 0]}}
    graph["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "var_test_rt"}}
    outputs = comfy.run(graph)
    [edited], [roundtrip] = pixels(comfy, outputs, "7"), pixels(comfy, outputs, "10")
    assert np.array_equal(edited, roundtrip)


def test_class_lists_give_batch_size_images_per_class(comfy):
    outputs = comfy.run(sample_graph(classes="tench, 980", batch_size=2))
    assert len(comfy.images(outputs, "3")) == 4


@pytest.mark.parametrize("mode", ["inpaint", "outpaint", "class-edit"])
def test_edit_keeps_pixels_outside_the_mask(comfy, mode):
    outputs = comfy.run(edit_graph(mode))
    [edited] = pixels(comfy, outputs, "7")
    source = np.array([0x33, 0x66, 0xAA])
    outside = np.ones((256, 256), bool)
    outside[64:128, 64:128] = False
    assert np.abs(edited[outside] - source).max() <= 1          # composited back exactly
    assert np.abs(edited[~outside] - source).mean() > 2          # the box was regenerated


def test_bad_input_gives_clear_errors_and_the_server_keeps_serving(comfy):
    cases = [
        ({**sample_graph(), "1": loader(vae=TRANSFORMER_FILE)}, "is a VAR transformer .*not the VQVAE"),
        ({**sample_graph(), "1": loader(transformer=VAE_FILE)}, "is the VAR VQVAE .*not a transformer"),
        (sample_graph(classes="5, 1000"), "class id 1000 is out of range"),
        (sample_graph(classes="random, 5"), "cannot be mixed"),
        (sample_graph(classes="--5"), "unknown ImageNet class '--5'"),
        (sample_graph(classes="0, 1, 2, 3, 4, 5, 6, 7", batch_size=64),      # once killed the server (OOM)
         r"8 classes x batch_size 64 = 512 images, over the 64"),
        (edit_graph(mask_side=128), "edit mask is 128x128 but the image is 256x256"),
        (edit_graph(transformer=TRANSFORMER_512_FILE), "edits 512x512 images, got 256x256"),
    ]
    for graph, message in cases:
        with pytest.raises(PromptError, match=message):
            comfy.run(graph)
    assert len(comfy.images(comfy.run(sample_graph(seed=9)), "3")) == 1


def test_outpaint_workflow_fills_the_padded_border(comfy):
    ui = json.loads((WORKFLOWS / "var_outpaint.json").read_text())
    outputs = comfy.run_workflow(ui)
    [image] = pixels(comfy, outputs, "6")
    assert image.shape == (256, 256, 3)
    border = np.concatenate([image[:32].reshape(-1, 3), image[-32:].reshape(-1, 3)])
    assert border.std() > 5                                        # generated, not the flat padding
