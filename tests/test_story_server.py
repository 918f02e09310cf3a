"""The shipped story workflows through the real server, with the test-only tiny UNet standing in
for the SDXL / SD1.5 checkpoint (same MODEL, CLIP, VAE outputs)."""
from __future__ import annotations

import json

import pytest

from comfy_server import PromptError
from conftest import WORKFLOWS
from workflow_convert import ui_to_api

pytestmark = pytest.mark.server
SIZE = 64
STEPS = 3


def tiny_story_graph(comfy, workflow: str, **story_overrides) -> dict:
    """The UI workflow as an API graph on the tiny model: small latents, few steps."""
    api = ui_to_api(json.loads((WORKFLOWS / workflow).read_text()), comfy.object_info())
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"], node["inputs"] = "BoundlessTinyUNetLoader", {"weights_seed": 0}
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
        elif node["class_type"] == "KSampler":
            node["inputs"].update(steps=STEPS)
        elif node["class_type"] == "BoundlessStoryPrompt":
            node["inputs"].update(story_overrides)
    return api


def node_id(api: dict, class_type: str) -> str:
    [found] = [nid for nid, node in api.items() if node["class_type"] == class_type]
    return found


@pytest.mark.parametrize("workflow", ["story_sdxl_comic.json", "story_sd15_comic.json"])
def test_story_workflow_makes_a_captioned_comic_page(comfy, workflow):
    api = tiny_story_graph(comfy, workflow)
    outputs = comfy.run(api)
    [page] = comfy.images(outputs, node_id(api, "SaveImage"))
    assert page.size == (2 * SIZE + 3 * 10, 2 * SIZE + 3 * 10)            # 2 identity images + 2 panels, 2x2
    [report] = outputs[node_id(api, "PreviewAny")]["text"]
    assert "Mira (1 identity image)" in report and "Otto (1 identity image)" in report and "MiB" in report


def test_story_errors_reach_the_user(comfy):
    api = tiny_story_graph(comfy, "story_sd15_comic.json",
                           panels="[Mira] at the bus stop\n[Otto] on the pier\n[Nora] in the lighthouse")
    with pytest.raises(PromptError, match=r"unknown character \[Nora\]"):
        comfy.run(api)
    api = tiny_story_graph(comfy, "story_sd15_comic.json")
    panel_sampler = [nid for nid, node in api.items() if node["class_type"] == "KSampler"
                     and node["inputs"]["model"][0] == node_id(api, "BoundlessStoryReadBank")][0]
    api[panel_sampler]["inputs"]["steps"] = STEPS + 1
    with pytest.raises(PromptError, match="same steps, scheduler and denoise"):
        comfy.run(api)
