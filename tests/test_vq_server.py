"""VQGAN nodes through the real server: round-trip quality, size policy, and bad input."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import PromptError
from conftest import WORKFLOW_INPUTS, WORKFLOWS
from train_infinity_world import world_picture
from packpath import ROOT, pack_module
from vq_tiny import CORRUPT_NAME, TINY_NAME, WRONG_KIND_NAME

tiling = pack_module("nodes.vq.tiling")
vq_loader = pack_module("nodes.vq.loader")
VQGAN_DIR = ROOT / "models" / "vqgan"

pytestmark = pytest.mark.server
DEMO = "boundless_demo_f16.safetensors"


def roundtrip_graph(vqgan: str, image_node: dict, policy: str = "pad", tile: int = 0, wrap_360: bool = False,
                    outpaint_sides: str = "none") -> dict:
    graph = {
        "1": image_node,
        "2": {"class_type": "BoundlessVQGANLoader", "inputs": {"vqgan_name": vqgan}},
        "3": {"class_type": "BoundlessVQGANEncode",
              "inputs": {"vqgan": ["2", 0], "image": ["1", 0], "size_policy": policy, "tile_size": tile,
                         "tile_margin": 64}},
        "4": {"class_type": "BoundlessVQGANDecode",
              "inputs": {"vqgan": ["2", 0], "tokens": ["3", 0], "tile_size": tile, "tile_margin": 64}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    if wrap_360:
        graph["3"]["inputs"]["wrap_360"] = graph["4"]["inputs"]["wrap_360"] = True
    graph["3"]["inputs"]["outpaint_sides"] = outpaint_sides
    return graph


def load(name):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def empty(width, height):
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": 0}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def test_roundtrip_workflow_reconstructs_the_input(comfy):
    ui = json.loads((WORKFLOWS / "vqgan_roundtrip.json").read_text())
    outputs = comfy.run_workflow(ui)
    [out] = comfy.images(outputs, 5)
    src = Image.open(WORKFLOW_INPUTS / "boundless_shore.png").convert("RGB")
    assert out.size == src.size
    # One pass, as the original computes it: measured 27.0 dB with the shipped demo tokenizer.
    assert psnr(np.asarray(out.convert("RGB")), np.asarray(src)) > 25.0


def test_tiled_roundtrip_matches_single_pass(comfy):
    whole = comfy.images(comfy.run(roundtrip_graph(DEMO, load("boundless_shore.png"))), 5)[0]
    tiled = comfy.images(comfy.run(roundtrip_graph(DEMO, load("boundless_shore.png"), tile=128)), 5)[0]
    assert tiled.size == whole.size
    # Tiles see only their margin of context (GroupNorm statistics and attention are global), so
    # they differ from one pass (measured 23.4 dB apart) but reconstruct the source nearly as well.
    src = np.asarray(Image.open(WORKFLOW_INPUTS / "boundless_shore.png").convert("RGB"))
    tiled_vs_src = psnr(np.asarray(tiled.convert("RGB")), src)                 # measured 25.2 dB
    whole_vs_src = psnr(np.asarray(whole.convert("RGB")), src)                 # measured 27.0 dB
    assert not np.array_equal(np.asarray(tiled), np.asarray(whole))
    assert whole_vs_src - 2.5 < tiled_vs_src


@pytest.mark.parametrize("policy,size", [("pad", (112, 48)), ("crop", (96, 32))])
def test_odd_sizes_follow_the_policy(comfy, policy, size):
    outputs = comfy.run(roundtrip_graph(TINY_NAME, empty(100, 40), policy))
    assert comfy.images(outputs, 5)[0].size == size


def test_a_360_panorama_round_trips_with_its_ends_joined(comfy):
    """wrap_360 on Encode and Decode: the decoded panorama's last column continues into its first
    (plainly the decoder draws a border at both ends, which steps far more than a token boundary)."""
    buffer = io.BytesIO()
    Image.fromarray(world_picture(1, 1024, 256)).save(buffer, format="PNG")
    comfy.upload_image(buffer.getvalue(), "world_360.png")
    ratios = []
    for wrap_360 in (False, True):
        out = comfy.images(comfy.run(roundtrip_graph("boundless_world_f16_m256.safetensors", load("world_360.png"),
                                                     wrap_360=wrap_360)), 5)[0]
        image = torch.from_numpy(np.asarray(out.convert("RGB"), dtype=np.float32))
        token_steps = (image[:, 16::16] - image[:, 15:-1:16]).abs().mean()
        ratios.append(((image[:, 0] - image[:, -1]).abs().mean() / token_steps).item())
    plain, round_ = ratios                   # measured 14.3 and 0.44 (tiling's own test: seeds 0-2)
    assert round_ < 2 and plain > 5, ratios


def test_a_picture_to_outpaint_is_encoded_with_its_mirror_image_past_that_edge(comfy):
    """outpaint_sides 'right' is tiling's mirrored encode of that edge: the decoded picture is the
    in-process decode of those tokens, and differs from a plain encode most near the right edge (the
    encoder's attention and GroupNorms see the whole picture, so the rest moves a little too)."""
    picture = world_picture(2, 1024, 256)[:, :512]
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    comfy.upload_image(buffer.getvalue(), "world_left_half.png")
    decoded = {}
    for sides in ("none", "right"):
        out = comfy.images(comfy.run(roundtrip_graph("boundless_world_f16_m256.safetensors",
                                                     load("world_left_half.png"), outpaint_sides=sides)), 5)[0]
        decoded[sides] = np.asarray(out.convert("RGB"), dtype=np.float32)
    vqgan = vq_loader.load_vqgan(str(VQGAN_DIR / "boundless_world_f16_m256.safetensors")).eval()
    x = torch.from_numpy(picture).float().div(127.5).sub(1).permute(2, 0, 1)[None]
    with torch.no_grad():
        tokens = tiling.encode_tiled(vqgan, x, mirror_px=tiling.OUTPAINT_MARGIN_PX, mirror_sides=("right",))
        expected = (vqgan.decode_indices(tokens).clamp(-1, 1)[0].permute(1, 2, 0) + 1) * 127.5
    gap = np.abs(decoded["right"] - np.floor(expected.numpy()))         # PreviewImage truncates to uint8
    assert gap.mean() < 0.05 and gap.max() <= 8, (gap.mean(), np.quantile(gap, 0.999), gap.max())
    change = np.abs(decoded["right"] - decoded["none"]).mean(axis=(0, 2))
    # measured 6.7 and 3.6
    assert change[-32:].mean() > 1.5 * change[:256].mean(), (change[-32:].mean(), change[:256].mean())


def test_bad_input_gives_clear_errors_and_server_keeps_serving(comfy):
    cases = [
        (roundtrip_graph(CORRUPT_NAME, empty(64, 64)), "not a readable .safetensors"),
        (roundtrip_graph(WRONG_KIND_NAME, empty(64, 64)), "not a taming VQGAN checkpoint"),
        (roundtrip_graph(TINY_NAME, empty(100, 40), "error"), "not a multiple of the tokenizer's factor"),
        (roundtrip_graph(TINY_NAME, empty(8192, 8192)), "set tile_size"),
        (roundtrip_graph(TINY_NAME, empty(100, 32), wrap_360=True), "360° panorama must be a multiple of 16 px wide"),
        (roundtrip_graph(TINY_NAME, empty(64, 32), wrap_360=True, outpaint_sides="left+right"),
         "no left or right edge to outpaint"),
    ]
    for graph, message in cases:
        with pytest.raises(PromptError, match=message):
            comfy.run(graph)
    # the server still serves the next prompt
    outputs = comfy.run(roundtrip_graph(TINY_NAME, empty(64, 32)))
    assert comfy.images(outputs, 5)[0].size == (64, 32)
