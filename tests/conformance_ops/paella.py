"""Conformance ops for Paella v1 / v3 (shared/fixtures/paella/OPS.md). Thin: logic lives in nodes.paella."""
import torch
from packpath import pack_module

from . import Kind

loader = pack_module("nodes.paella.loader")
prior = pack_module("nodes.paella.prior")
sampling_v1 = pack_module("nodes.paella.sampling_v1")
sampling_v3 = pack_module("nodes.paella.sampling_v3")


def _kind(kind):
    return Kind(load=lambda path: loader.load_model(path, kind),
                check_shapes=lambda shapes: loader.check_shapes(kind, shapes),
                detect=lambda shapes: loader.detect_kind(shapes) == kind)


KINDS = {k: _kind(k) for k in (loader.V3, loader.V3_VQGAN, loader.V3_PRIOR, loader.V1, loader.V1_VQGAN)}


def v3_vqgan_encode(models, inputs, params):
    indices, latent = models[0].encode(inputs["image"])
    return {"indices": indices, "latent": latent}


def v3_logits(models, inputs, params):
    return {"logits": models[0](inputs["tokens"], inputs["r"], inputs["byt5"], inputs.get("clip"),
                                inputs.get("clip_image"), inputs.get("attn_weights"))}


def v3_sample(models, inputs, params):
    model, vqgan = models
    cond = sampling_v3.V3Condition(inputs["byt5"], inputs.get("clip"), inputs.get("clip_image"))
    uncond = sampling_v3.V3Condition(inputs["byt5_uncond"], inputs.get("clip_uncond"),
                                     inputs.get("clip_image_uncond"))
    tokens = sampling_v3.sample_v3(
        model, cond, uncond, seed=params["seed"], shape=tuple(params["latent_shape"]), steps=params["steps"],
        renoise_steps=params.get("renoise_steps"), temperature=tuple(params["temperature"]),
        cfg=tuple(params["cfg"]), t_start=params["t_start"], t_end=params["t_end"], mode=params["mode"],
        conditional_steps=params.get("sampling_conditional_steps"), quant_steps=params.get("sampling_quant_steps"),
        attn_weights=inputs.get("attn_weights"), init_x=inputs.get("init_x"), codebook=vqgan.codebook,
        quantize=vqgan.vquantizer.nearest)
    return {"tokens": tokens, "image": vqgan.decode_indices(tokens).clamp(0, 1)}


def v3_prior_sample(models, inputs, params):
    return {"clip_image": prior.sample_prior(models[0], inputs["clip_text"], params["seed"], params["timesteps"],
                                             params["cfg"], params["t_start"], params["t_end"])}


def v1_vqgan_encode(models, inputs, params):
    vqgan = models[0]
    if params.get("quantize") == "gumbel":
        return {"indices": vqgan.encode(inputs["image"], torch.Generator("cpu").manual_seed(params["seed"]))}
    return {"indices": vqgan.encode(inputs["image"]), "logits": vqgan.code_logits(inputs["image"])}


def v1_sample(models, inputs, params):
    model, vqgan = models
    tokens = sampling_v1.sample_v1(
        model, inputs["c"], seed=params["seed"], size=tuple(params["size"]), T=params["T"], x=inputs.get("x"),
        mask=inputs.get("mask"), starting_t=params["starting_t"], temp_range=tuple(params["temp_range"]),
        typical_filtering=params["typical_filtering"], typical_mass=params["typical_mass"],
        typical_min_tokens=params["typical_min_tokens"], classifier_free_scale=params["classifier_free_scale"],
        renoise_steps=params["renoise_steps"], renoise_mode=params["renoise_mode"])
    return {"tokens": tokens, "image": vqgan.decode_indices(tokens)}


OPS = {
    "paella.v3.vqgan.encode": v3_vqgan_encode,
    "paella.v3.vqgan.decode_indices": lambda m, i, p: {"image": m[0].decode_indices(i["indices"])},
    "paella.v3.logits": v3_logits,
    "paella.v3.sample": v3_sample,
    "paella.v3.prior.eps": lambda m, i, p: {"eps": m[0](i["x"], i["r"], i["c"])},
    "paella.v3.prior.sample": v3_prior_sample,
    "paella.v1.vqgan.encode": v1_vqgan_encode,
    "paella.v1.vqgan.decode_indices": lambda m, i, p: {"image": m[0].decode_indices(i["indices"])},
    "paella.v1.logits": lambda m, i, p: {"logits": m[0](i["tokens"], i["c"], i["r"])},
    "paella.v1.sample": v1_sample,
}
