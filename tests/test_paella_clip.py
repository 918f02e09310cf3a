"""Paella's OpenCLIP text vectors from ComfyUI's own Load CLIP / CLIP Text Encode, against open_clip.

Paella v1 is conditioned on OpenCLIP ViT-g-14 ``encode_text`` and Paella v3 on OpenCLIP ViT-H-14
``encode_text`` (unnormalised, projected, pooled at the end-of-text token; shared/specs/paella.md).
Both text towers are the same architecture (1024 wide, 24 layers, 16 heads, exact GELU), which
ComfyUI loads as its SD 2.x text encoder (``TEModel.CLIP_H``, from the ``text_model.*`` layout the
LAION repositories ship as ``model.safetensors``). These tests build a tiny random-weight OpenCLIP
model of the same shape family, save its text tower in that layout, load it into ComfyUI's SD 2.x
CLIP classes and check that CLIP Text Encode's ``pooled_output`` — what Paella Conditioning reads —
is ``open_clip``'s own ``encode_text`` of the same prompt.
"""
from __future__ import annotations

import functools

import pytest
import torch

from conftest import import_comfy_in_process
from packpath import pack_module

open_clip = pytest.importorskip("open_clip")
paella_conditioning = pack_module("nodes.paella.conditioning")

WIDTH, LAYERS, HEADS = 64, 3, 4
PROMPTS = ["a misty mountain lake at dawn", "A Red Fox, jumping over 3 logs!", "",
           "oil painting of a lighthouse;   stormy sea,\nseagulls", "x" * 40,
           " ".join(["snowy peaks"] * 50)]                     # 100 tokens: the first 75 are kept, as open_clip does


def tiny_open_clip(seed: int = 0):
    """An OpenCLIP CLIP with a tiny text tower of the ViT-g-14 / ViT-H-14 kind (exact GELU, argmax pooling,
    embed_dim = width as in both), random weights."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=WIDTH, vision_cfg={"layers": 1, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 32},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": HEADS,
                                     "layers": LAYERS})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("transformer.", "ln_final", "text_projection")) and param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))          # non-trivial norms and biases
    return model.eval()


def text_tower_in_transformers_layout(model) -> dict[str, torch.Tensor]:
    """The text tower's weights under the ``CLIPModel`` keys of LAION's ``model.safetensors``."""
    sd = model.state_dict()
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"],
           "text_projection.weight": sd["text_projection"].t()}
    for i in range(LAYERS):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = sd[src + f"attn.in_proj_{part}"].chunk(3)
            out.update({dst + f"self_attn.q_proj.{part}": q, dst + f"self_attn.k_proj.{part}": k,
                        dst + f"self_attn.v_proj.{part}": v,
                        dst + f"self_attn.out_proj.{part}": sd[src + f"attn.out_proj.{part}"],
                        dst + f"layer_norm1.{part}": sd[src + f"ln_1.{part}"],
                        dst + f"layer_norm2.{part}": sd[src + f"ln_2.{part}"],
                        dst + f"mlp.fc1.{part}": sd[src + f"mlp.c_fc.{part}"],
                        dst + f"mlp.fc2.{part}": sd[src + f"mlp.c_proj.{part}"]})
    return {k: v.clone().contiguous() for k, v in out.items()}


def comfy_sd2_clip(state: dict[str, torch.Tensor]):
    """ComfyUI's SD 2.x text encoder classes (as Load CLIP builds them for a CLIP_H file) at the tiny size."""
    import_comfy_in_process()
    import json
    import pathlib

    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip as sd2

    config = json.loads((pathlib.Path(sd2.__file__).parent / "sd2_clip_config.json").read_text())
    config.update(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_attention_heads=HEADS,
                  num_hidden_layers=LAYERS, projection_dim=WIDTH)
    clip_model = functools.partial(comfy.sd1_clip.SDClipModel, layer="hidden", layer_idx=-2,
                                   textmodel_json_config=config,
                                   special_tokens={"start": 49406, "end": 49407, "pad": 0},
                                   return_projected_pooled=True)
    clip_class = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_name="h", clip_model=clip_model)  # = SD2ClipModel
    target = comfy.supported_models_base.ClipTarget(sd2.SD2Tokenizer, clip_class)
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    missing, unexpected = clip.load_sd(state)
    assert not [k for k in missing if "position_ids" not in k] and not unexpected
    return clip


def open_clip_file_as_comfyui_reads_it(model) -> dict[str, torch.Tensor]:
    """LAION's ``open_clip_pytorch_model.bin`` layout (whole model, vision tower included), converted as
    ComfyUI's Load CLIP converts a file with ``transformer.resblocks.*`` keys."""
    import_comfy_in_process()
    import comfy.utils
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    converted = comfy.utils.clip_text_transformers_convert(sd, "", "")
    return {k: v for k, v in converted.items() if k.startswith(("text_model.", "text_projection"))}


@pytest.fixture(scope="module", params=["model.safetensors layout", "open_clip layout"])
def pair(request):
    model = tiny_open_clip()
    state = (text_tower_in_transformers_layout(model) if request.param == "model.safetensors layout"
             else open_clip_file_as_comfyui_reads_it(model))
    return model, comfy_sd2_clip(state)


def test_sd2_config_matches_the_open_clip_text_towers():
    """The assumption the whole path rests on: ComfyUI's SD 2.x text config is OpenCLIP's ViT-H-14 and
    ViT-g-14 text tower (width, depth, heads, exact GELU, 77 positions, vocabulary)."""
    import json
    import pathlib
    import_comfy_in_process()
    import comfy.text_encoders.sd2_clip as sd2
    config = json.loads((pathlib.Path(sd2.__file__).parent / "sd2_clip_config.json").read_text())
    for arch in ("ViT-H-14", "ViT-g-14"):
        text = open_clip.get_model_config(arch)["text_cfg"]
        assert (text["width"], text["layers"], text["heads"]) == (config["hidden_size"], config["num_hidden_layers"],
                                                                  config["num_attention_heads"])
        assert text.get("context_length", 77) == config["max_position_embeddings"]
        assert text.get("vocab_size", 49408) == config["vocab_size"]
        assert not open_clip.get_model_config(arch).get("quick_gelu", False) and config["hidden_act"] == "gelu"
        assert open_clip.get_model_config(arch)["embed_dim"] == config["projection_dim"]


def test_comfyui_tokens_are_open_clips_for_plain_prompts(pair):
    _, clip = pair
    for prompt in PROMPTS[:-1]:
        ours = [token for token, _ in clip.tokenize(prompt)["h"][0]]
        theirs = open_clip.tokenize([prompt])[0].tolist()
        assert ours == theirs, prompt


@pytest.mark.parametrize("prompt", PROMPTS)
def test_clip_text_encode_pooled_output_is_open_clip_encode_text(pair, prompt):
    model, clip = pair
    with torch.no_grad():
        expected = model.encode_text(open_clip.tokenize([prompt]))
    cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
    conditioning = paella_conditioning.from_sources(None, [[cond, {"pooled_output": pooled}]])
    assert conditioning.clip_text.shape == (1, WIDTH)
    torch.testing.assert_close(conditioning.clip_text, expected, rtol=0, atol=2e-5)
