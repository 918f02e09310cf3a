"""Paella nodes through the real server (tiny random weights): every manipulation, tokens, errors."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image
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
        "BoundlessPaellaVariations": {"width": 64, "height": 64, "batch_size": 2}}


# Shipped workflows name the released files; the test server has tiny stand-ins under other names.
RELEASED_TO_TINY = {"paella_v3.pt": V3_FILES["model"], "vqgan_f4.pt": V3_FILES["vqgan"],
                    "prior_v1.pt": "prior_tiny.safetensors", "byt5-xl.safetensors": paella_tiny.BYT5_TINY_NAME,
                    "model_600000.pt": V1_FILES["model"], "model_50000_img.pt": V1_FILES["model"],
                    "vqgan.gumbelf8-sber.model.ckpt": V1_FILES["vqgan"],
                    "open_clip_vit_g14_laion2b_s12b_b42k.bin": paella_tiny.OPEN_CLIP_TINY_NAME}
LOADER_INPUTS = {"BoundlessPaellaLoader": "model_name", "BoundlessPaellaVQGANLoader": "vqgan_name",
                 "BoundlessPaellaPriorLoader": "prior_name", "BoundlessPaellaByT5Loader": "byt5_name",
                 "BoundlessPaellaCLIPVisionLoader": "clip_name"}
V1_MODELS = ("model_600000.pt", "model_50000_img.pt")       # text model, image-variation finetune
# ComfyUI's own encoders the workflows load (Load CLIP type stable_diffusion, Load CLIP Vision), by the
# Paella model they feed. The tests swap in tiny random encoders exactly as wide as that tiny model's CLIP input.
CLIP_TEXT_FILES = {"paella_v3.pt": "sd2_text_encoder_vit_h14.safetensors",             # OpenCLIP ViT-H-14
                   "model_600000.pt": "open_clip_vit_g14_laion2b_s12b_b42k.bin"}       # OpenCLIP ViT-g-14
CLIP_VISION_FILE = "clip_vision_h.safetensors"                                          # OpenCLIP ViT-H-14
TINY_CLIP_WIDTH = {"paella_v3.pt": paella_tiny.V3_CONFIG.clip_width, "model_600000.pt": paella_tiny.V1_CONFIG.c_clip,
                   "model_50000_img.pt": paella_tiny.V1_CONFIG.c_clip}


def fast_overrides(ui: dict) -> dict:
    overrides = {str(n["id"]): dict(FAST[n["type"]]) for n in ui["nodes"] if n["type"] in FAST}
    for n in ui["nodes"]:
        name = (n.get("widgets_values") or [None])[0]
        if n["type"] in LOADER_INPUTS and name in RELEASED_TO_TINY:
            overrides[str(n["id"])] = {LOADER_INPUTS[n["type"]]: RELEASED_TO_TINY[name]}
    return overrides


def released_model(ui: dict) -> str:
    [name] = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "BoundlessPaellaLoader"]
    return name


def run_shipped(comfy, ui: dict, overrides: dict | None = None) -> dict:
    """A shipped workflow on the tiny models: released file names mapped to the stand-ins, ComfyUI's
    Load CLIP / Load CLIP Vision replaced by tiny encoders as wide as the tiny Paella model's CLIP input,
    fast settings."""
    from workflow_convert import ui_to_api
    api = ui_to_api(ui, comfy.object_info())
    for node_id, values in {**fast_overrides(ui), **(overrides or {})}.items():
        api[node_id]["inputs"].update(values)
    width = TINY_CLIP_WIDTH[released_model(ui)]
    for node in api.values():
        if node["class_type"] == "CLIPLoader":
            node["class_type"], node["inputs"] = "BoundlessTinyCLIPLoader", {"weights_seed": 0, "width": width}
        elif node["class_type"] == "CLIPVisionLoader":
            node["class_type"], node["inputs"] = "BoundlessTinyCLIPVisionLoader", {"weights_seed": 0, "width": width}
    return comfy.run(api)


def shipped(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def by_id(ui: dict) -> dict:
    return {n["id"]: n for n in ui["nodes"]}


def link_source(ui: dict, node: dict, input_name: str) -> dict | None:
    """The node feeding ``input_name`` of ``node`` (None when unconnected)."""
    [link] = [i["link"] for i in node["inputs"] if i["name"] == input_name]
    if link is None:
        return None
    [source] = [l[1] for l in ui["links"] if l[0] == link]
    return by_id(ui)[source]


def typed_prompts(ui: dict) -> list[str]:
    """The non-empty prompts of a workflow, in node-id order of their CLIP Text Encode nodes."""
    return [n["widgets_values"][0] for n in sorted(ui["nodes"], key=lambda n: n["id"])
            if n["type"] == "CLIPTextEncode" and n["widgets_values"][0]]


def retyped(ui: dict, old: str, new: str) -> dict:
    """Overrides that type ``new`` wherever the workflow has ``old`` (its CLIP and ByT5 encoders alike)."""
    return {str(n["id"]): {"text": new} for n in ui["nodes"]
            if n["type"] in ("CLIPTextEncode", "BoundlessPaellaTextEncode") and n["widgets_values"][0] == old}


PAELLA_WORKFLOWS = sorted(p.name for p in WORKFLOWS.glob("paella_*.json"))


@pytest.mark.parametrize("name", PAELLA_WORKFLOWS)
def test_shipped_workflow_names_released_files_and_starts_from_typed_prompts(name):
    """No shipped Paella workflow reads an embeddings file or a tiny test file: every loader names a
    released file, every conditioning comes from ComfyUI's text (or vision) encoders, and each v3 prompt
    is read by both ByT5 and CLIP-H from the same text."""
    ui = shipped(name)
    model = released_model(ui)
    version = "v1" if model in V1_MODELS else "v3"
    assert name.startswith(f"paella_{version}_")
    for n in ui["nodes"]:
        values = n.get("widgets_values") or [None]
        if n["type"] in LOADER_INPUTS:
            assert values[0] in RELEASED_TO_TINY, (n["id"], values)
        elif n["type"] == "CLIPLoader":
            assert values == [CLIP_TEXT_FILES[model], "stable_diffusion", "default"], (n["id"], values)
        elif n["type"] == "CLIPVisionLoader":
            assert version == "v3" and values == [CLIP_VISION_FILE]
        elif n["type"] == "BoundlessPaellaCLIPImageEncode":    # the authors' preprocessing of each version
            assert values == [version], (n["id"], values)
        elif n["type"] == "BoundlessPaellaConditioning":
            assert values == ["none"] and link_source(ui, n, "conditioning")["type"] == "CLIPTextEncode", n["id"]
        elif n["type"] == "BoundlessPaellaTextEncode":
            assert version == "v3"
            clip_text = link_source(ui, n, "clip_text")
            assert clip_text["type"] == "CLIPTextEncode" and clip_text["widgets_values"][0] == values[0], n["id"]
            assert link_source(ui, n, "byt5")["type"] == "BoundlessPaellaByT5Loader"
    if version == "v3":   # guidance needs "" encoded the same way
        assert any(n["type"] == "BoundlessPaellaTextEncode" and n["widgets_values"][0] == "" for n in ui["nodes"])
    if "variations" not in name:   # variations start from a picture (v3: and "")
        assert typed_prompts(ui), name


SOURCE = WORKFLOWS / "inputs" / "boundless_shore.png"
NEW_PROMPT = "a field of sunflowers at noon"
# What each shipped workflow gives on the tiny models with FAST settings: the saved image sizes; which
# prompt the test retypes (index into typed_prompts); saved images the retyped prompt must not change.
SHIPPED_EXPECTATIONS = {
    "paella_v1_outpaint.json": {"sizes": [(512, 256)]},                    # 384 x 256 + 64 px each side
    "paella_v1_regional.json": {"sizes": [(64, 64)], "retype": 1},        # prompt B, the right-hand region
    "paella_v3_inpaint.json": {"sizes": [(384, 256)]},
    "paella_v3_interpolation.json": {"sizes": [(64, 64)] * 3, "retype": 1, "unchanged": [0]},
    "paella_v3_structural_edit.json": {"sizes": [(384, 256)]},            # the source image's size
    "paella_v3_text_to_image.json": {"sizes": [(64, 64)]},
    "paella_v3_variations.json": {"sizes": [(64, 64)] * 2, "source": "boundless_sky_crop.png"},
    "paella_v1_variations.json": {"sizes": [(64, 64)] * 2, "source": "boundless_sky_crop.png"},
}


def test_every_shipped_paella_workflow_has_expectations():
    assert sorted(SHIPPED_EXPECTATIONS) == PAELLA_WORKFLOWS


def saved(comfy, ui: dict, overrides: dict | None = None) -> list[np.ndarray]:
    [save] = [str(n["id"]) for n in ui["nodes"] if n["type"] == "SaveImage"]
    outputs = run_shipped(comfy, ui, overrides)
    return [pixels(im) for im in comfy.images(outputs, save)]


@pytest.mark.parametrize("name", PAELLA_WORKFLOWS)
def test_shipped_workflow_follows_its_typed_prompt(comfy, name):
    """Each shipped workflow on the tiny models: the saved images have the expected sizes; with the same
    seed, another typed prompt (the variations workflow: another source picture) gives other images, and
    the original prompt, run again after it, gives the first images exactly."""
    ui, expect = shipped(name), SHIPPED_EXPECTATIONS[name]
    if "source" in expect:
        [encode] = [n for n in ui["nodes"] if n["type"] == "BoundlessPaellaCLIPImageEncode"]
        picture = link_source(ui, encode, "image")
        change = {str(picture["id"]): {"image": expect["source"]}}
    else:
        change = retyped(ui, typed_prompts(ui)[expect.get("retype", 0)], NEW_PROMPT)
    first, other, again = saved(comfy, ui), saved(comfy, ui, change), saved(comfy, ui)   # other evicts first's cache
    assert [(im.shape[1], im.shape[0]) for im in first] == expect["sizes"]
    assert [im.shape for im in other] == [im.shape for im in first]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for i, (a, b) in enumerate(zip(first, other)):
        assert np.array_equal(a, b) == (i in expect.get("unchanged", [])), (name, i)
    assert all(im.std() > 2 for im in first)


def test_v3_inpaint_workflow_keeps_the_picture_outside_its_mask(comfy):
    """paste_original: whatever the prompt, the source pixels stay outside the 128 x 96 mask at (128, 80)."""
    ui = shipped("paella_v3_inpaint.json")
    source = pixels(Image.open(SOURCE))
    outside = np.ones(source.shape[:2], bool)
    outside[80:176, 128:256] = False
    for prompt in (None, NEW_PROMPT):
        [image] = saved(comfy, ui, prompt and retyped(ui, typed_prompts(ui)[0], prompt))
        assert np.abs(image - source)[outside].max() <= 1
        assert np.abs(image - source)[~outside].mean() > 4


def test_v3_interpolation_prompts_are_padded_to_one_byt5_length(comfy):
    """The two prompts differ in length; the workflow pads both to the same ByT5 length (pad_to), without
    which Latent Interpolation refuses them with a hint that names pad_to."""
    ui = shipped("paella_v3_interpolation.json")
    a, b = typed_prompts(ui)
    assert len(a.encode()) != len(b.encode())
    pads = {str(n["id"]): {"pad_to": 0} for n in ui["nodes"]
            if n["type"] == "BoundlessPaellaTextEncode" and n["widgets_values"][0]}
    assert len(pads) == 2
    with pytest.raises(PromptError, match=f"same pad_to, at least {max(len(a.encode()), len(b.encode())) + 1}"):
        run_shipped(comfy, ui, pads)


def test_v3_variations_from_an_embeddings_file(comfy):
    """Paella Conditioning's file path for v3 variations (no CLIP vision weights needed): with the same
    seed, another source vector gives other images."""
    runs = []
    for name in ("image_a_tiny.safetensors", "image_b_tiny.safetensors"):
        graph = base(V3_FILES, v3_sampler())
        graph["i"], graph["e"] = cond(name), cond("v3_empty_tiny.safetensors")
        graph["t"] = {"class_type": "BoundlessPaellaVariations",
                      "inputs": common({"image_embedding": ["i", 0], "positive": ["e", 0], "negative": ["e", 0],
                                        "width": 64, "height": 32, "batch_size": 2, "seed": 0})}
        graph["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["t", 0]}}
        runs.append([pixels(im) for im in comfy.images(comfy.run(graph), "o")])
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
