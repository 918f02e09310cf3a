"""Paella nodes through the real server (tiny random weights): every manipulation, tokens, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

import paella_tiny
from comfy_server import PromptError
from conftest import WORKFLOWS

pytestmark = pytest.mark.server

V3_FILES = {"model": "paella_v3_tiny.safetensors", "vqgan": "vqgan_f4_tiny.pt"}
V1_FILES = {"model": "paella_v1_tiny.safetensors", "vqgan": "vqgan_f8_tiny.safetensors"}


def base(files, sampler: dict) -> dict:
    return {
        "m": {"class_type": "BoundlessPaellaLoader", "inputs": {"model_name": files["model"]}},
        "v": {"class_type": "BoundlessPaellaVQGANLoader", "inputs": {"vqgan_name": files["vqgan"]}},
        "s": sampler,
    }


def v3_sampler(**overrides):
    inputs = {"steps": 2, "renoise_steps": -1, "temperature_start": 1.0, "temperature_end": 0.2, "cfg_start": 8.0,
              "cfg_end": 8.0, "cfg_steps": -1, "mode": "multinomial", "quant_from_step": -1,
              "attention_reweighting": True, **overrides}
    return {"class_type": "BoundlessPaellaV3Sampler", "inputs": inputs}


def v1_sampler(**overrides):
    inputs = {"steps": 3, "renoise_steps": -1, "temperature_start": 1.0, "temperature_end": 1.0, "cfg": 5.0,
              "typical_filtering": True, "typical_mass": 0.2, "typical_min_tokens": 1, "renoise_mode": "start",
              **overrides}
    return {"class_type": "BoundlessPaellaV1Sampler", "inputs": inputs}


def cond(name):
    return {"class_type": "BoundlessPaellaConditioning", "inputs": {"embeddings": name}}


def common(extra=None):
    return {"model": ["m", 0], "vqgan": ["v", 0], "sampler": ["s", 0], **(extra or {})}


def text_to_image(files, sampler, positive="v3_prompt_tiny.safetensors", negative="v3_empty_tiny.safetensors",
                  width=64, height=32, batch=2):
    graph = base(files, sampler)
    graph["p"] = cond(positive)
    inputs = common({"positive": ["p", 0], "width": width, "height": height, "batch_size": batch, "seed": 5})
    if negative:
        graph["n"] = cond(negative)
        inputs["negative"] = ["n", 0]
    graph["t"] = {"class_type": "BoundlessPaellaTextToImage", "inputs": inputs}
    graph["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["t", 0]}}
    graph["d"] = {"class_type": "BoundlessPaellaDecode", "inputs": {"vqgan": ["v", 0], "tokens": ["t", 1]}}
    graph["od"] = {"class_type": "PreviewImage", "inputs": {"images": ["d", 0]}}
    return graph


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_v3_text_to_image_with_prior_and_tokens_round_trip(comfy):
    graph = text_to_image(V3_FILES, v3_sampler())
    graph["pl"] = {"class_type": "BoundlessPaellaPriorLoader", "inputs": {"prior_name": "prior_tiny.safetensors"}}
    graph["pr"] = {"class_type": "BoundlessPaellaPrior",
                   "inputs": {"prior": ["pl", 0], "conditioning": ["p", 0], "seed": 1, "steps": 3, "cfg": 3.0}}
    graph["t"]["inputs"]["positive"] = ["pr", 0]
    outputs = comfy.run(graph)
    images, decoded = comfy.images(outputs, "o"), comfy.images(outputs, "od")
    assert [im.size for im in images] == [(64, 32), (64, 32)]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(images, decoded))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_v3_from_typed_prompts(comfy):
    """ByT5 Loader + Paella v3 Text Encode: a typed prompt (and "" for the negative side) drives the
    sampler; another prompt with the same seed gives another picture."""
    def graph_for(prompt):
        graph = text_to_image(V3_FILES, v3_sampler(attention_reweighting=False), batch=1)
        graph["b"] = {"class_type": "BoundlessPaellaByT5Loader", "inputs": {"byt5_name": paella_tiny.BYT5_TINY_NAME}}
        graph["p"] = {"class_type": "BoundlessPaellaTextEncode", "inputs": {"byt5": ["b", 0], "text": prompt}}
        graph["n"] = {"class_type": "BoundlessPaellaTextEncode", "inputs": {"byt5": ["b", 0], "text": ""}}
        return graph
    first = pixels(comfy.images(comfy.run(graph_for("a red barn in the snow")), "o")[0])
    again = pixels(comfy.images(comfy.run(graph_for("a red barn in the snow")), "o")[0])
    other = pixels(comfy.images(comfy.run(graph_for("blue waves at night")), "o")[0])
    assert first.shape == (32, 64, 3) and first.std() > 2
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_v1_inpaint_any_size_keeps_the_unmasked_half(comfy):
    graph = base(V1_FILES, v1_sampler())
    graph["p"] = cond("v1_prompt_a_tiny.safetensors")
    graph["i"] = {"class_type": "EmptyImage", "inputs": {"width": 72, "height": 40, "batch_size": 1, "color": 0x3366AA}}
    graph["k"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 72, "height": 40}}
    graph["r"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 36, "height": 40}}
    graph["mk"] = {"class_type": "MaskComposite",
                   "inputs": {"destination": ["k", 0], "source": ["r", 0], "x": 36, "y": 0, "operation": "add"}}
    graph["t"] = {"class_type": "BoundlessPaellaInpaint",
                  "inputs": common({"positive": ["p", 0], "image": ["i", 0], "mask": ["mk", 0], "seed": 2,
                                    "paste_original": True})}
    graph["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["t", 0]}}
    [image] = comfy.images(comfy.run(graph), "o")
    assert image.size == (72, 40)
    left = pixels(image)[:, :36]
    assert np.abs(left - np.array([0x33, 0x66, 0xAA])).max() <= 1


def test_v1_regional_interpolation_and_structural_edit(comfy):
    graph = base(V1_FILES, v1_sampler(cfg=1.0))
    graph["a"] = cond("v1_prompt_a_tiny.safetensors")
    graph["b"] = cond("v1_prompt_b_tiny.safetensors")
    graph["rc"] = {"class_type": "BoundlessPaellaRegionalConditioning",
                   "inputs": {"base": ["a", 0], "region": ["b", 0], "layout": "grid", "rows": 1, "columns": 2,
                              "cell": 1}}
    graph["t"] = {"class_type": "BoundlessPaellaTextToImage",
                  "inputs": common({"positive": ["rc", 0], "width": 64, "height": 64, "batch_size": 1, "seed": 1})}
    graph["e"] = {"class_type": "BoundlessPaellaStructuralEdit",
                  "inputs": common({"tokens": ["t", 1], "positive": ["b", 0], "strength": 0.6, "seed": 4})}
    graph["f"] = {"class_type": "BoundlessPaellaInterpolate",
                  "inputs": common({"positive_a": ["a", 0], "positive_b": ["b", 0], "width": 64, "height": 64,
                                    "frames": 3, "seed": 7})}
    for node, source in (("o1", "t"), ("o2", "e"), ("o3", "f")):
        graph[node] = {"class_type": "PreviewImage", "inputs": {"images": [source, 0]}}
    outputs = comfy.run(graph)
    assert [im.size for im in comfy.images(outputs, "o2")] == [(64, 64)]
    assert [im.size for im in comfy.images(outputs, "o3")] == [(64, 64)] * 3


def test_bad_input_gives_clear_errors(comfy):
    v1_with_v3_sampler = text_to_image(V1_FILES, v3_sampler(), positive="v1_prompt_a_tiny.safetensors", negative=None)
    wrong_vqgan = text_to_image({**V3_FILES, "vqgan": V1_FILES["vqgan"]}, v3_sampler(steps=1))
    no_negative = text_to_image(V3_FILES, v3_sampler(steps=3), negative=None)
    bad_size = text_to_image(V3_FILES, v3_sampler(steps=4), width=48)
    v3_missing_byt5 = text_to_image(V3_FILES, v3_sampler(steps=5), positive="v1_prompt_a_tiny.safetensors")
    vqgan_as_model = text_to_image({**V3_FILES, "model": "vqgan_f8_tiny.safetensors"}, v3_sampler(steps=6))
    cases = [(v1_with_v3_sampler, "Paella v1 checkpoint but the sampler settings are for Paella v3"),
             (wrong_vqgan, "connect the matching VQGAN"),
             (no_negative, "needs a negative conditioning"),
             (bad_size, "multiples of 32 px"),
             (v3_missing_byt5, "needs ByT5-XL hidden states"),
             (vqgan_as_model, "is a Paella v1 Gumbel f8 VQGAN.*needs Paella v3 token model")]
    for graph, message in cases:
        with pytest.raises(PromptError, match=message):
            comfy.run(graph)


# The shipped workflows carry real settings (e.g. the notebook's 32 steps at 256 px); the tests keep
# their wiring and shrink steps and sizes so the tiny models finish in seconds on a shared CPU.
FAST = {"BoundlessPaellaV3Sampler": {"steps": 2, "cfg_steps": -1}, "BoundlessPaellaV1Sampler": {"steps": 2},
        "BoundlessPaellaPrior": {"steps": 3}, "BoundlessPaellaTextToImage": {"width": 64, "height": 64},
        "BoundlessPaellaInterpolate": {"width": 64, "height": 64, "frames": 3},
        "BoundlessPaellaVariations": {"width": 64, "height": 32, "batch_size": 2}}


# Shipped workflows name the released files; the test server has tiny stand-ins under other names.
RELEASED_TO_TINY = {"paella_v3.pt": V3_FILES["model"], "vqgan_f4.pt": V3_FILES["vqgan"],
                    "prior_v1.pt": "prior_tiny.safetensors", "byt5-xl.safetensors": paella_tiny.BYT5_TINY_NAME}
LOADER_INPUTS = {"BoundlessPaellaLoader": "model_name", "BoundlessPaellaVQGANLoader": "vqgan_name",
                 "BoundlessPaellaPriorLoader": "prior_name", "BoundlessPaellaByT5Loader": "byt5_name"}


def fast_overrides(ui: dict) -> dict:
    overrides = {str(n["id"]): dict(FAST[n["type"]]) for n in ui["nodes"] if n["type"] in FAST}
    for n in ui["nodes"]:
        name = (n.get("widgets_values") or [None])[0]
        if n["type"] in LOADER_INPUTS and name in RELEASED_TO_TINY:
            overrides[str(n["id"])] = {LOADER_INPUTS[n["type"]]: RELEASED_TO_TINY[name]}
    return overrides


def run_shipped(comfy, ui: dict, overrides: dict | None = None) -> dict:
    """A shipped workflow on the tiny models: released file names mapped to the stand-ins, ComfyUI's
    Load CLIP replaced by a tiny CLIP as wide as the tiny Paella v3's CLIP input, fast settings."""
    from workflow_convert import ui_to_api
    api = ui_to_api(ui, comfy.object_info())
    for node_id, values in {**fast_overrides(ui), **(overrides or {})}.items():
        api[node_id]["inputs"].update(values)
    for node in api.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"], node["inputs"] = "BoundlessTinyCLIPLoader", {"weights_seed": 0,
                                                                             "width": paella_tiny.CLIP_WIDTH}
    return comfy.run(api)


def test_v3_variations_workflow_follows_the_image_embedding(comfy):
    """The shipped workflow needs no CLIP vision weights (the source vector comes from an embeddings file);
    with the same seed, another source vector gives other images."""
    ui = json.loads((WORKFLOWS / "paella_v3_variations.json").read_text())
    [source] = [str(n["id"]) for n in ui["nodes"] if n.get("widgets_values") == ["image_a_tiny.safetensors"]]
    [save] = [str(n["id"]) for n in ui["nodes"] if n["type"] == "SaveImage"]
    runs = []
    for name in ("image_a_tiny.safetensors", "image_b_tiny.safetensors"):
        outputs = run_shipped(comfy, ui, {source: {"embeddings": name}})
        runs.append([pixels(im) for im in comfy.images(outputs, save)])
    for images in runs:
        assert [im.shape for im in images] == [(32, 64, 3)] * 2
        assert not np.array_equal(images[0], images[1])
    assert all(not np.array_equal(a, b) for a, b in zip(*runs))


def test_v1_variations_from_an_embeddings_file_and_errors(comfy):
    graph = base(V1_FILES, v1_sampler())
    graph["i"] = cond("image_b_tiny.safetensors")
    graph["t"] = {"class_type": "BoundlessPaellaVariations",
                  "inputs": common({"image_embedding": ["i", 0], "width": 64, "height": 64, "batch_size": 1,
                                    "seed": 3})}
    graph["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["t", 0]}}
    assert [im.size for im in comfy.images(comfy.run(graph), "o")] == [(64, 64)]
    no_image = json.loads(json.dumps(graph))
    del no_image["t"]["inputs"]["image_embedding"]
    text_only = json.loads(json.dumps(graph))
    text_only["i"] = cond("v1_prompt_a_tiny.safetensors")
    with_text = json.loads(json.dumps(graph))
    with_text["p"] = cond("v1_prompt_a_tiny.safetensors")
    with_text["t"]["inputs"]["positive"] = ["p", 0]
    for broken, message in ((no_image, "need the source image's CLIP vector"),
                            (text_only, "has no CLIP image vector"),
                            (with_text, "disconnect 'positive'")):
        with pytest.raises(PromptError, match=message):
            comfy.run(broken)


def test_v3_text_to_image_workflow_starts_from_a_typed_prompt(comfy):
    """The shipped v3 workflow reads no embeddings file: ByT5 and CLIP-H encode the typed prompt."""
    ui = json.loads((WORKFLOWS / "paella_v3_text_to_image.json").read_text())
    kinds = {n["type"] for n in ui["nodes"]}
    assert "BoundlessPaellaConditioning" not in kinds and {"BoundlessPaellaTextEncode", "CLIPTextEncode"} <= kinds
    [byt5_prompt] = [n for n in ui["nodes"] if n["type"] == "BoundlessPaellaTextEncode" and n["widgets_values"][0]]
    [clip_prompt] = [n for n in ui["nodes"] if n["type"] == "CLIPTextEncode" and n["widgets_values"][0]]
    [save] = [str(n["id"]) for n in ui["nodes"] if n["type"] == "SaveImage"]
    images = []
    for prompt in ("a red barn in the snow", "blue waves at night"):
        outputs = run_shipped(comfy, ui, {str(byt5_prompt["id"]): {"text": prompt},
                                          str(clip_prompt["id"]): {"text": prompt}})
        images.append(pixels(comfy.images(outputs, save)[0]))
    assert images[0].shape == (64, 64, 3) and not np.array_equal(*images)


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.glob("paella_*.json")))
def test_shipped_workflows_run(comfy, name):
    ui = json.loads((WORKFLOWS / name).read_text())
    outputs = run_shipped(comfy, ui)
    saved = [info for node_outputs in outputs.values() for info in node_outputs.get("images", [])]
    assert saved, name
    assert all(comfy.fetch(info) for info in saved)
