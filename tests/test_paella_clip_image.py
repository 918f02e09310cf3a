"""Paella's CLIP image vectors inside ComfyUI, against open_clip with the authors' own transforms.

Paella v1's image-variation finetune is conditioned on OpenCLIP ViT-g-14 ``encode_image`` and v3 on
ViT-H-14 ``encode_image`` (shared/specs/paella.md). These tests build tiny random-weight OpenCLIP
models, save them in both of LAION's file layouts, load them with Load CLIP Vision (OpenCLIP, Paella)
and check that Paella CLIP Image Encode gives ``open_clip``'s ``encode_image`` of the picture
prepared by the authors' torchvision transforms, written here as the authors wrote them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from safetensors.torch import save_file

import paella_tiny
from conftest import import_comfy_in_process
from packpath import pack_module

open_clip = pytest.importorskip("open_clip")
clip_image = pack_module("nodes.paella.clip_image")

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# The authors' transforms on a [0, 1] tensor (ToTensor of the PIL picture).
AUTHORS = {
    # src_distributed/utils.py: the 256-px training crop (centre crop at sampling), then clip_preprocess
    "v3": T.Compose([T.Resize(256), T.CenterCrop(256), T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
                     T.Normalize(mean=MEAN, std=STD)]),
    # predict.py of the v1 image finetune (model_50000_img.pt)
    "v1": T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.Normalize(mean=MEAN, std=STD)]),
}


def pictures(seed: int = 1) -> torch.Tensor:
    """Two non-square 8-bit pictures as a ComfyUI IMAGE [2, 300, 420, 3] with structure at every scale."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:420] / 60.0
    base = np.stack([np.sin(x * 2.1 + y), np.cos(y * 3.3 - x * 0.7), np.sin(x * y * 0.4)], -1) * 0.4 + 0.5
    noisy = np.clip(base[None] + g.normal(0, 0.08, (2, 300, 420, 3)), 0, 1)
    return torch.from_numpy(np.round(noisy * 255) / 255).float()


@pytest.fixture(scope="module")
def comfy_nodes(tmp_path_factory):
    import_comfy_in_process()
    import folder_paths
    folder = tmp_path_factory.mktemp("clip_vision")
    model = paella_tiny.tiny_open_clip(embed_dim=48)
    whole = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(whole, folder / "open_clip_pytorch_model.bin")                 # LAION's open_clip file layout
    import comfy.clip_vision
    converted = comfy.clip_vision.convert_to_transformers(dict(whole), "visual.")
    save_file({k: v.contiguous() for k, v in converted.items() if not k.startswith("visual.")},
              str(folder / "model.safetensors"))                              # LAION's transformers layout
    save_file({"text_projection": whole["text_projection"]}, str(folder / "not_a_vision_tower.safetensors"))
    folder_paths.add_model_folder_path("clip_vision", str(folder))
    return model, pack_module("nodes.paella.nodes")


@pytest.mark.parametrize("version", ["v3", "v1"])
def test_preprocessing_is_the_authors_transforms(version):
    image = pictures()
    ours = clip_image.authors_pixels(image.movedim(-1, 1), version)
    assert ours.shape == (2, 3, 224, 224)
    assert torch.equal(ours, AUTHORS[version](image.movedim(-1, 1)))


def test_comfyui_preprocessing_is_not_the_authors():
    """Why the node exists: ComfyUI's CLIP Vision Encode prepares the picture otherwise (v3: no 256 step,
    8-bit rounding; v1: a crop instead of a stretch)."""
    import_comfy_in_process()
    import comfy.clip_vision
    image = pictures()
    for version, crop in (("v3", True), ("v1", False)):
        comfy_pixels = comfy.clip_vision.clip_preprocess(image, crop=crop)
        assert (comfy_pixels - AUTHORS[version](image.movedim(-1, 1))).abs().max() > 0.01


@pytest.mark.parametrize("arch", ["ViT-H-14", "ViT-g-14"])
def test_vision_config_of_the_released_towers(arch):
    """The configuration inferred from the shapes of the released towers (built on the meta device) is
    OpenCLIP's own; ViT-H-14's is also ComfyUI's clip_vision_config_h.json."""
    import_comfy_in_process()
    import json
    import pathlib
    import comfy.clip_vision
    config = open_clip.get_model_config(arch)
    with torch.device("meta"):
        model = open_clip.CLIP(embed_dim=config["embed_dim"], vision_cfg=config["vision_cfg"],
                               text_cfg=config["text_cfg"])
    sd = clip_image.vision_tower(comfy.clip_vision.convert_to_transformers(dict(model.state_dict()), "visual."))
    ours, vision = clip_image.vision_config(sd), config["vision_cfg"]
    assert (ours["hidden_size"], ours["num_hidden_layers"], ours["patch_size"], ours["image_size"]) == \
        (vision["width"], vision["layers"], vision["patch_size"], vision["image_size"])
    assert ours["num_attention_heads"] == vision["width"] // vision["head_width"]
    assert ours["intermediate_size"] == int(vision["width"] * vision.get("mlp_ratio", 4.0))
    assert ours["projection_dim"] == config["embed_dim"] and not config.get("quick_gelu", False)
    if arch == "ViT-H-14":
        shipped = json.loads((pathlib.Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json").read_text())
        assert {k: v for k, v in ours.items() if k in shipped} == {k: shipped[k] for k in ours if k in shipped}
        assert len([k for k in ours if k in shipped]) == 13      # all but initializer_factor and torch_dtype


@pytest.mark.parametrize("file", ["open_clip_pytorch_model.bin", "model.safetensors"])
@pytest.mark.parametrize("version", ["v3", "v1"])
def test_image_embeds_are_open_clip_encode_image(comfy_nodes, file, version, monkeypatch):
    """Exact with ComfyUI's --fp32-text-enc; by default ComfyUI keeps CLIP vision weights in fp16 (as for
    its own CLIP Vision Encode), which moves the vector by about 1e-3."""
    from comfy.cli_args import args
    model, nodes = comfy_nodes
    image = pictures()
    with torch.no_grad():
        expected = model.encode_image(AUTHORS[version](image.movedim(-1, 1)))
    [half_tower] = nodes.PaellaCLIPVisionLoader.execute(file).result
    half = nodes.PaellaCLIPImageEncode.execute(half_tower, image, version).result[0]["image_embeds"]
    torch.testing.assert_close(half.float(), expected, rtol=0, atol=3e-3)
    monkeypatch.setattr(args, "fp32_text_enc", True)
    [tower] = nodes.PaellaCLIPVisionLoader.execute(file).result
    [output] = nodes.PaellaCLIPImageEncode.execute(tower, image, version).result
    assert output["image_embeds"].shape == (2, 48)
    torch.testing.assert_close(output["image_embeds"].float(), expected, rtol=1e-5, atol=2e-5)
    assert output["last_hidden_state"].shape == (2, 50, 128) and output["penultimate_hidden_states"].shape == (2, 50, 128)
    other = nodes.PaellaCLIPImageEncode.execute(tower, image, "v1" if version == "v3" else "v3").result[0]
    assert (other["image_embeds"] - output["image_embeds"]).abs().max() > 1e-3    # the recipes differ


def test_loader_refuses_a_file_without_a_vision_tower(comfy_nodes):
    _, nodes = comfy_nodes
    errors = pack_module("nodes.common.errors")
    with pytest.raises(errors.BoundlessError, match="not_a_vision_tower.safetensors is not a CLIP vision tower"):
        nodes.PaellaCLIPVisionLoader.execute("not_a_vision_tower.safetensors")
