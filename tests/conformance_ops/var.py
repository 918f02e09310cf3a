"""Conformance ops of VAR (FoundationVision/VAR): thin adapters from the fixture ops to ``nodes.var``.

The meaning of every op is in ``shared/fixtures/var/OPS.md``; the logic lives in the pack.
"""
from __future__ import annotations

import torch

from packpath import pack_module

from . import Kind

checkpoint = pack_module("nodes.var.checkpoint")
sampling = pack_module("nodes.var.sampling")
Draws = pack_module("nodes.common.draws").Draws


def _maps(inputs: dict, prefix: str = "idx_") -> list[torch.Tensor]:
    count = sum(1 for name in inputs if name.startswith(prefix))
    return [inputs[f"{prefix}{k}"] for k in range(count)]


def _named(maps, prefix: str = "idx_") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": m for k, m in enumerate(maps)}


def img_to_idx(models, inputs, params):
    (vae,) = models
    latent, maps = vae.image_to_indices(inputs["image"], params["patch_nums"])
    return {"latent": latent, **_named(maps)}


def fhat(models, inputs, params):
    (vae,) = models
    return _named(vae.fhat_from_indices(_maps(inputs), params["patch_nums"]), "fhat_")


def idx_to_img(models, inputs, params):
    (vae,) = models
    return {"image": vae.indices_to_image(_maps(inputs), params["patch_nums"])}


def logits(models, inputs, params):
    vae, var = models
    var_input = sampling.teacher_forcing_inputs(vae, _maps(inputs), var.config.patch_nums)
    all_logits = var.teacher_forced_logits(inputs["labels"], var_input)
    return {"logits": all_logits[:, list(params["positions"])], "var_input": var_input}


def _settings(params) -> "sampling.SamplingSettings":
    return sampling.SamplingSettings(cfg=params["cfg"], top_k=params["top_k"], top_p=params["top_p"],
                                     more_smooth=params["more_smooth"])


def _outputs(vae, result) -> dict[str, torch.Tensor]:
    image = (vae.decode_fhat(result.f_hat) + 1) * 0.5
    return {**_named(result.tokens), **_named(result.drawn, "sampled_idx_"), "image": image,
            "labels": result.labels}


def sample(models, inputs, params):
    vae, var = models
    result = sampling.sample(var, vae, params["batch_size"], Draws(params["seed"], var.weight_device), labels=params["labels"],
                             settings=_settings(params))
    return _outputs(vae, result)


def inpaint(models, inputs, params):
    vae, var = models
    image = inputs["image"]
    guide = sampling.edit_guide(vae, image, inputs["mask"], var.config.patch_nums)
    result = sampling.sample(var, vae, image.shape[0], Draws(params["seed"], var.weight_device), labels=params["label"],
                             settings=_settings(params), guide=guide)
    return _outputs(vae, result)


KINDS = {
    "var.vqvae": Kind(load=checkpoint.load_vqvae, check_shapes=checkpoint.check_vqvae_shapes,
                      detect=checkpoint.looks_like_vqvae),
    "var.transformer": Kind(load=checkpoint.load_transformer, check_shapes=checkpoint.check_transformer_shapes,
                            detect=checkpoint.looks_like_transformer),
}

OPS = {
    "var.vae.img_to_idx": img_to_idx,
    "var.vae.fhat": fhat,
    "var.vae.idx_to_img": idx_to_img,
    "var.logits": logits,
    "var.sample": sample,
    "var.inpaint": inpaint,
}
