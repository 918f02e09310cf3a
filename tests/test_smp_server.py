"""The story transition video workflow through the real server: the test-only tiny UNet stands in for
the SD1.5 checkpoint, the EfficientNet-lite0 stand-in for CLIP vision, and the tiny IP-Adapter-layout
file for ip-adapter_sd15; the bundled demo predictor is used as it ships."""
from __future__ import annotations

import io
import json

import imageio.v3 as iio
import numpy as np
import pytest

from comfy_server import PromptError
from conftest import WORKFLOWS
from smp_tiny import COMBINED_NAME, IP_NAME
from workflow_convert import ui_to_api

pytestmark = pytest.mark.server
SIZE, STEPS, FRAMES = 64, 3, 5


def tiny_transition_graph(comfy, **predict) -> dict:
    """workflows/story_transition_video.json as an API graph on the test models."""
    api = ui_to_api(json.loads((WORKFLOWS / "story_transition_video.json").read_text()), comfy.object_info())
    for node in api.values():
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            node["class_type"], node["inputs"] = "BoundlessTinyUNetLoader", {"weights_seed": 0}
        elif kind == "CLIPVisionLoader":
            node["class_type"], node["inputs"] = "BoundlessStandInVisionLoader", {}
        elif kind == "BoundlessSMPLoader":
            node["inputs"]["cross_attention"] = IP_NAME
        elif kind == "BoundlessSemanticMotionPredict":
            node["inputs"].update(frames=FRAMES, **predict)
        elif kind == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
        elif kind == "KSampler":
            node["inputs"].update(steps=STEPS)
    return api


def node_id(api: dict, class_type: str) -> str:
    [found] = [nid for nid, node in api.items() if node["class_type"] == class_type]
    return found


def saved_video(comfy, api, outputs) -> tuple[dict, np.ndarray]:
    [info] = outputs[node_id(api, "BoundlessSaveVideo")]["images"]
    data = comfy.fetch(info)
    return info, np.stack(list(iio.imiter(io.BytesIO(data), extension="." + info["filename"].rsplit(".", 1)[1])))


def test_transition_workflow_writes_an_mp4_with_one_frame_per_motion_frame(comfy):
    api = tiny_transition_graph(comfy)
    info, frames = saved_video(comfy, api, comfy.run(api))
    assert info["filename"].endswith(".mp4") and info["subfolder"] == "Boundless" and info["type"] == "output"
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)


def test_predictor_and_linear_modes_give_different_videos_and_gif_pingpong(comfy):
    api = tiny_transition_graph(comfy, mode="linear interpolation (baseline)")
    api[node_id(api, "BoundlessSaveVideo")]["inputs"].update(format="gif", pingpong=True)
    _, linear = saved_video(comfy, api, comfy.run(api))
    assert linear.shape[0] == 2 * FRAMES - 2
    api = tiny_transition_graph(comfy)
    api[node_id(api, "BoundlessSaveVideo")]["inputs"].update(format="gif", pingpong=True)
    _, predicted = saved_video(comfy, api, comfy.run(api))
    assert np.array_equal(predicted[0], linear[0]) and np.array_equal(predicted[FRAMES - 1], linear[FRAMES - 1])
    assert not np.array_equal(predicted[1:FRAMES - 1], linear[1:FRAMES - 1])


def test_predictor_and_conditioning_from_one_file(comfy):
    api = tiny_transition_graph(comfy)
    loader = api[node_id(api, "BoundlessSMPLoader")]["inputs"]
    loader.update(smp_name=COMBINED_NAME, cross_attention="(from the SMP file)")
    _, frames = saved_video(comfy, api, comfy.run(api))
    assert frames.shape[0] == FRAMES


def test_missing_conditioning_and_wrong_batch_reach_the_user(comfy):
    api = tiny_transition_graph(comfy)
    api[node_id(api, "BoundlessSMPLoader")]["inputs"]["cross_attention"] = "(from the SMP file)"
    with pytest.raises(PromptError, match="has no cross-attention weights"):
        comfy.run(api)
    api = tiny_transition_graph(comfy)
    api[node_id(api, "EmptyLatentImage")]["inputs"]["batch_size"] = FRAMES + 1
    with pytest.raises(PromptError, match=f"batch_size to {FRAMES}"):
        comfy.run(api)
