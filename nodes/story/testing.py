"""Test-only: a tiny random-weight SD1.5-shaped UNet, text encoder and VAE, and a tiny CLIP vision
encoder (glue; imports comfy).

Real checkpoints cannot be downloaded in CI, and ComfyUI's checkpoint loaders need real SD sizes,
so server workflow tests of the story nodes use these loaders (the Paella workflow tests use the
tiny text and vision encoders in place of Load CLIP / Load CLIP Vision). ``nodes.py`` lists them
only when the environment variable ``BOUNDLESS_TEST_NODES=1`` is set.
"""
from __future__ import annotations

import functools
import math

import torch
from comfy_api.latest import io

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

from ..common import comfy_glue

CONTEXT_DIM = 32

TINY_UNET = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
             "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
             "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1, "context_dim": CONTEXT_DIM,
             "use_spatial_transformer": True, "use_linear_in_transformer": False, "adm_in_channels": None,
             "use_temporal_attention": False, "use_temporal_resblock": False, "legacy": False,
             "num_head_channels": -1}

TINY_CLIP = {"architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 49407, "hidden_act": "quick_gelu",
             "hidden_size": CONTEXT_DIM, "intermediate_size": 64, "layer_norm_eps": 1e-05,
             "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
             "num_hidden_layers": 1, "pad_token_id": 1, "projection_dim": CONTEXT_DIM, "vocab_size": 49408}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Deterministic variance-preserving random weights (ComfyUI's layers skip initialisation):
    norms at identity, biases zero, other weights N(0, 1/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if sub.weight is not None:
                    sub.weight.fill_(1.0)
                    sub.bias.zero_()
                continue
            for name, param in sub.named_parameters(recurse=False):
                if param.ndim < 2:
                    param.fill_(0.0 if ("bias" in name or "shift" in name) else 1.0)
                else:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))


def tiny_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """An SD1.5-shaped EPS UNet (~1M parameters): attention at input 1, 3, middle 0, output 0-3."""
    config = comfy.supported_models.SD15(dict(TINY_UNET))
    config.unet_config["num_heads"] = 2
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    randomize(model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def tiny_clip(seed: int = 0, width: int = CONTEXT_DIM) -> comfy.sd.CLIP:
    """ComfyUI's SD1 tokenizer with a one-layer CLIP text model ``width`` wide (32 by default)."""
    config = dict(TINY_CLIP, hidden_size=width, projection_dim=width)
    clip_class = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=comfy.sd1_clip.SDClipModel,
                                   textmodel_json_config=config)
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, clip_class)
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    randomize(clip.cond_stage_model, seed + 1)
    return clip


TINY_CLIP_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 32,
                    "image_size": 32, "intermediate_size": 64, "layer_norm_eps": 1e-05,
                    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
                    "num_hidden_layers": 2, "patch_size": 8, "projection_dim": CONTEXT_DIM}


def tiny_clip_vision(seed: int = 0, width: int = CONTEXT_DIM) -> comfy.clip_vision.ClipVisionModel:
    """ComfyUI's CLIP vision model (its preprocessing, CLIP Vision Encode's outputs) around a two-layer ViT
    (CLIP Vision Encode also reads the penultimate layer) on 32 px inputs, ``image_embeds`` ``width`` wide."""
    model = comfy_glue.clip_vision_model(dict(TINY_CLIP_VISION, projection_dim=width))
    randomize(model.model, seed + 3)
    return model


def tiny_vae(seed: int = 0) -> comfy.sd.VAE:
    """A random-weight TAESD (small 4-channel latent autoencoder) wrapped as a ComfyUI VAE."""
    taesd = comfy.taesd.taesd.TAESD()
    randomize(taesd, seed + 2)
    return comfy.sd.VAE(sd=taesd.state_dict())


def _encoder_inputs(width_tooltip: str) -> list:
    """The inputs of the tiny encoder loaders: a weights seed and a width."""
    return [io.Int.Input("weights_seed", default=0, min=0, max=2**31 - 1,
                         tooltip="Seed of the random weights; the same seed always gives the same encoder."),
            io.Int.Input("width", default=CONTEXT_DIM, min=8, max=1024, tooltip=width_tooltip)]


class TinyCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessTinyCLIPLoader", display_name="Tiny CLIP Loader (tests)", category="Boundless/testing",
            description="Test-only: a tiny random-weight CLIP text encoder, in place of Load CLIP.",
            inputs=_encoder_inputs("Width of its token states and pooled vector (the tiny Paella v3 takes 16)."),
            outputs=[io.Clip.Output(display_name="clip",
                                    tooltip="Test-only tiny text encoder: connect it to CLIP Text Encode.")])

    @classmethod
    def execute(cls, weights_seed, width) -> io.NodeOutput:
        return io.NodeOutput(tiny_clip(weights_seed, width))


class TinyCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessTinyCLIPVisionLoader", display_name="Tiny CLIP Vision Loader (tests)",
            category="Boundless/testing",
            description="Test-only: a tiny random-weight CLIP vision encoder, in place of Load CLIP Vision.",
            inputs=_encoder_inputs("Width of its projected image vector (the tiny Paella models take 16)."),
            outputs=[io.ClipVision.Output(display_name="clip_vision",
                                          tooltip="Test-only tiny image encoder: connect it to CLIP Vision "
                                                  "Encode.")])

    @classmethod
    def execute(cls, weights_seed, width) -> io.NodeOutput:
        return io.NodeOutput(tiny_clip_vision(weights_seed, width))


class TinyUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessTinyUNetLoader", display_name="Tiny UNet Loader (tests)", category="Boundless/testing",
            description="Test-only: a tiny random-weight SD1.5-shaped model, text encoder and VAE.",
            inputs=[io.Int.Input("weights_seed", default=0, min=0, max=2**31 - 1,
                                 tooltip="Seed of the random weights of the model, text encoder and VAE; the same "
                                         "seed always gives the same tiny networks.")],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="Test-only tiny SD1.5-shaped model: connect it to a KSampler or "
                                             "Consistent Self-Attention."),
                     io.Clip.Output(display_name="clip",
                                    tooltip="Test-only tiny text encoder: connect it to Story Prompt or CLIP "
                                            "Text Encode."),
                     io.Vae.Output(display_name="vae",
                                   tooltip="Test-only tiny VAE: connect it to VAE Decode.")])

    @classmethod
    def execute(cls, weights_seed) -> io.NodeOutput:
        return io.NodeOutput(tiny_model(weights_seed), tiny_clip(weights_seed), tiny_vae(weights_seed))
