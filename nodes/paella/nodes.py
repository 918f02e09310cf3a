"""ComfyUI nodes for Paella v3 / v1 (glue only: the work happens in ``pipeline`` and the samplers).

Models load from ``models/paella``; precomputed encoder outputs (ByT5-XL states, OpenCLIP vectors)
from ``models/paella_embeddings/*.safetensors`` or from ComfyUI CONDITIONING / CLIP vision outputs.
Each manipulation is its own node; the sampler settings travel as their own socket so a v1
checkpoint can never silently run the v3 sampler.
"""
from __future__ import annotations


import torch
from comfy_api.latest import io
from safetensors.torch import load_file

import comfy.clip_vision
import folder_paths

from ..common import comfy_glue, sockets
from ..common.draws import MODE_TOOLTIP as DRAWS_TOOLTIP, MODEL_DEVICE, MODES as DRAW_MODES
from ..common.errors import BoundlessError
from ..common.weights import load_state_dict
from ..common.images import normalize_mask
from . import byt5 as byt5_mod
from . import clip_image
from . import conditioning as paella_conditioning
from . import loader, pipeline
from .prior import sample_prior

PaellaModel = io.Custom("BOUNDLESS_PAELLA_MODEL")            # ModelPatcher around PaellaV3 / PaellaV1
PaellaVQGAN = io.Custom("BOUNDLESS_PAELLA_VQGAN")            # ModelPatcher around VQGANF4 / VQGANF8
PaellaPrior = io.Custom("BOUNDLESS_PAELLA_PRIOR")            # ModelPatcher around PriorModel
PaellaConditioning = io.Custom("BOUNDLESS_PAELLA_CONDITIONING")  # conditioning.PaellaConditioning
PaellaSampler = io.Custom("BOUNDLESS_PAELLA_SAMPLER")        # pipeline.V3Sampler / V1Sampler
ByT5Model = io.Custom("BOUNDLESS_BYT5")                       # ModelPatcher around transformers.T5EncoderModel
TEXT_ENCODERS_FOLDER = "text_encoders"
CLIP_VISION_FOLDER = "clip_vision"

CATEGORY = "Boundless/paella"
EMBEDDINGS_FOLDER = "paella_embeddings"
NO_FILE = "none"


comfy_glue.register_folder(EMBEDDINGS_FOLDER, {".safetensors"})


def _embedding_files() -> list[str]:
    return [NO_FILE] + folder_paths.get_filename_list(EMBEDDINGS_FOLDER)


def _load(patcher):
    return comfy_glue.load_for_use(patcher)


def _setup(model_patcher, vqgan_patcher, sampler):
    """Load the model pair in one request (so loading one never evicts the other on a small GPU) and
    refuse mismatched versions / tokenizers before anything else."""
    net, tok = comfy_glue.load_together(model_patcher, vqgan_patcher)
    pipeline.check_sampler(net, sampler)
    pipeline.check_vqgan(net, tok)
    return net, tok


def _image_out(image_b3hw: torch.Tensor) -> torch.Tensor:
    return image_b3hw.movedim(1, -1).float().to(comfy_glue.output_device())


def _tokens_out(vqgan, indices_bhw: torch.Tensor):
    return pipeline.to_tokens(vqgan, indices_bhw.to(comfy_glue.output_device()))


def _image_in(image_bhwc: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] in [0,1] -> [B,3,H,W] in [0,1] (the Paella VQGANs' own range)."""
    if image_bhwc.ndim != 4:
        raise BoundlessError(f"expected an IMAGE [B,H,W,C], got shape {tuple(image_bhwc.shape)}")
    channels = image_bhwc.shape[-1]
    if channels == 1:
        image_bhwc = image_bhwc.expand(-1, -1, -1, 3)
    return image_bhwc[..., :3].movedim(-1, 1).float()


def _draws_input():
    return io.Combo.Input("draws", options=list(DRAW_MODES), default=MODEL_DEVICE, optional=True,
                          tooltip=DRAWS_TOOLTIP)


def _seed_input():
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                        tooltip="Seed of the random generator (where it draws: the sampler's 'draws' setting).")


def _common_inputs():
    return [PaellaModel.Input("model", tooltip="Paella v3 or v1 token model from Paella Loader."),
            PaellaVQGAN.Input("vqgan", tooltip="The VQGAN of that model (v3: vqgan_f4, v1: Gumbel f8)."),
            PaellaSampler.Input("sampler", tooltip="Settings from Paella v3 Sampler or Paella v1 Sampler "
                                                   "(must match the model's version).")]


def _negative_input():
    return PaellaConditioning.Input(
        "negative", optional=True,
        tooltip="Unconditional side of guidance. v3: the embeddings of \"\" (or a negative prompt), needed "
                "unless CFG is 1. v1: optional, defaults to the all-zero vector it was trained with.")


def _generate(net, tok, sampler, positive, negative, *, progress=None, **kwargs) -> torch.Tensor:
    """Token grids from ``pipeline.generate`` with a progress bar (token-decoded preview, interrupt)."""
    with torch.inference_mode():
        return pipeline.generate(net, tok, sampler, positive, negative,
                                 progress=progress or comfy_glue.progress_reporter(sampler.steps), **kwargs)


def _decode(tok, indices: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return pipeline.decode(tok, indices).cpu()


class PaellaLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaLoader", display_name="Paella Loader", category=CATEGORY,
            description="Load a Paella token model: v3 (paella_v3.pt, 2023) or v1 (model_600000.pt, 2022). "
                        "The architecture is read from the file; .pt files are read weights-only.",
            inputs=[io.Combo.Input("model_name", options=comfy_glue.model_files("paella"),
                                   tooltip="Weight file in models/paella (paella_v3.pt, model_600000.pt, "
                                           "model_50000_img.pt or a .safetensors conversion).")],
            outputs=[PaellaModel.Output(
                display_name="model",
                tooltip="The Paella token model (v3 or v1): connect it to the model input of Paella Text to Image, "
                        "Inpaint / Outpaint, Image Variations, Latent Interpolation or Structural Edit.")])

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        model = loader.load_model(comfy_glue.model_path("paella", model_name), (loader.V3, loader.V1))
        return io.NodeOutput(comfy_glue.managed(model))


class PaellaVQGANLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaVQGANLoader", display_name="Paella VQGAN Loader", category=CATEGORY,
            description="Load the tokenizer of a Paella model: the v3 f4 VQGAN (vqgan_f4.pt, also Würstchen / "
                        "Stable Cascade stage A layouts) or ruDALL-E's Gumbel f8 VQGAN for v1.",
            inputs=[io.Combo.Input("vqgan_name", options=comfy_glue.model_files("paella"),
                                   tooltip="Weight file in models/paella (vqgan_f4.pt for v3, "
                                           "vqgan.gumbelf8-sber.model.ckpt for v1).")],
            outputs=[PaellaVQGAN.Output(
                display_name="vqgan",
                tooltip="The Paella tokenizer: connect it to the vqgan input of the Paella generator nodes, Paella "
                        "Encode and Paella Decode (v3 models need vqgan_f4, v1 the Gumbel f8).")])

    @classmethod
    def execute(cls, vqgan_name) -> io.NodeOutput:
        vqgan = loader.load_model(comfy_glue.model_path("paella", vqgan_name), (loader.V3_VQGAN, loader.V1_VQGAN))
        return io.NodeOutput(comfy_glue.managed(vqgan, comfy_glue.TOKENIZER))


class PaellaPriorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaPriorLoader", display_name="Paella Prior Loader", category=CATEGORY,
            description="Load the v3 CLIP prior (prior_v1.pt) that turns a CLIP text vector into a CLIP image "
                        "vector, as the official notebook does for text-to-image.",
            inputs=[io.Combo.Input("prior_name", options=comfy_glue.model_files("paella"),
                                   tooltip="Weight file in models/paella (prior_v1.pt).")],
            outputs=[PaellaPrior.Output(
                display_name="prior",
                tooltip="The v3 CLIP prior: connect it to the prior input of Paella Prior.")])

    @classmethod
    def execute(cls, prior_name) -> io.NodeOutput:
        prior = loader.load_model(comfy_glue.model_path("paella", prior_name), loader.V3_PRIOR)
        return io.NodeOutput(comfy_glue.managed(prior))


class PaellaByT5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaByT5Loader", display_name="ByT5 Loader (Paella v3)", category=CATEGORY,
            description="Load the ByT5-XL text encoder that Paella v3 is conditioned on (google/byt5-xl; only the "
                        "encoder is kept). Runs on transformers, offline.",
            inputs=[io.Combo.Input("byt5_name", options=folder_paths.get_filename_list(TEXT_ENCODERS_FOLDER),
                                   tooltip="The ByT5-XL weights in models/text_encoders (google/byt5-xl's "
                                           "pytorch_model.bin or a .safetensors conversion, ~4.7 GB in fp16).")],
            outputs=[ByT5Model.Output(
                display_name="byt5",
                tooltip="The ByT5 encoder: connect it to Paella v3 Text Encode.")])

    @classmethod
    def execute(cls, byt5_name) -> io.NodeOutput:
        model = byt5_mod.load_byt5(comfy_glue.model_path(TEXT_ENCODERS_FOLDER, byt5_name))
        # T5 overflows in fp16; ComfyUI's text-encoder choice is kept unless it is fp16
        return io.NodeOutput(comfy_glue.managed(model, comfy_glue.TEXT_ENCODER,
                                                supported=(torch.bfloat16, torch.float32)))


class PaellaTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaTextEncode", display_name="Paella v3 Text Encode", category=CATEGORY,
            description="A typed prompt as Paella v3 conditioning: ByT5-XL states of the text (tokenized, padded and "
                        "unmasked as in the authors' code), plus the CLIP ViT-H-14 text vector from a CONDITIONING "
                        "(CLIP Text Encode with the SD 2.x text encoder gives exactly that vector).",
            inputs=[ByT5Model.Input("byt5", tooltip="ByT5-XL from ByT5 Loader (Paella v3)."),
                    io.String.Input("text", multiline=True, default="",
                                    tooltip="The prompt. An empty text is the unconditional side of guidance, as "
                                            "the authors train it: encode \"\" for the negative input."),
                    io.Conditioning.Input("clip_text", optional=True,
                                          tooltip="Optional: CLIP Text Encode of the same text with the OpenCLIP "
                                                  "ViT-H-14 text encoder (SD 2.x's, via Load CLIP); its pooled "
                                                  "vector is Paella v3's CLIP text input and the prior's input."),
                    io.Int.Input("pad_to", default=0, min=0, max=byt5_mod.MAX_LENGTH, optional=True,
                                 tooltip="Pad the byte tokens (one per UTF-8 byte, plus one) to at least this many, "
                                         "as the authors' batches pad to their longest prompt. 0 = the prompt's "
                                         "own length. Latent Interpolation needs both prompts equally long: give "
                                         "both the same value, at least the longer prompt's bytes + 1.")],
            outputs=[PaellaConditioning.Output(
                display_name="conditioning",
                tooltip="Paella v3 conditioning (ByT5 states, and the CLIP text vector when given): connect it to "
                        "positive or negative of a Paella generator node, or to Paella Prior.")])

    @classmethod
    def execute(cls, byt5, text, clip_text=None, pad_to=0) -> io.NodeOutput:
        model = comfy_glue.load_for_use(byt5)
        states = model.encode([text], pad_to).cpu()
        return io.NodeOutput(paella_conditioning.from_sources({"byt5": states}, clip_text))


class PaellaCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaCLIPVisionLoader", display_name="Load CLIP Vision (OpenCLIP, Paella)",
            category=CATEGORY,
            description="Load the vision tower of a LAION OpenCLIP model into ComfyUI's own CLIP vision classes, "
                        "its size read from the weights. Needed for Paella v1's image variations: ComfyUI's Load "
                        "CLIP Vision has no configuration for ViT-g-14 (1408 wide, 40 layers). Also loads "
                        "ViT-H-14 (Paella v3). Reads open_clip_pytorch_model.bin or model.safetensors of the LAION "
                        "repository (the text tower in it is skipped).",
            inputs=[io.Combo.Input("clip_name", options=folder_paths.get_filename_list(CLIP_VISION_FOLDER),
                                   tooltip="An OpenCLIP checkpoint in models/clip_vision: for Paella v1 "
                                           "laion/CLIP-ViT-g-14-laion2B-s12B-b42K (open_clip_pytorch_model.bin "
                                           "or model.safetensors), for v3 CLIP-ViT-H-14-laion2B-s32B-b79K.")],
            outputs=[io.ClipVision.Output(
                display_name="clip_vision",
                tooltip="The vision tower: connect it to Paella CLIP Image Encode (the authors' preprocessing) "
                        "or to CLIP Vision Encode.")])

    @classmethod
    def execute(cls, clip_name) -> io.NodeOutput:
        path = comfy_glue.model_path(CLIP_VISION_FOLDER, clip_name)
        sd = dict(load_state_dict(path))
        if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:          # open_clip's own layout
            sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
        sd = clip_image.vision_tower(sd)
        try:
            config = clip_image.vision_config(sd)
        except BoundlessError as exc:
            raise BoundlessError(f"Load CLIP Vision (OpenCLIP, Paella): {clip_name} is {exc}") from None
        model = comfy_glue.clip_vision_model(config)
        missing, unexpected = model.load_sd(sd)
        if missing or unexpected:
            raise BoundlessError(f"Load CLIP Vision (OpenCLIP, Paella): {clip_name} does not match the tower its "
                                 f"shapes describe (missing {sorted(missing)[:5]}, unexpected "
                                 f"{sorted(unexpected)[:5]}); pick an OpenCLIP ViT checkpoint")
        return io.NodeOutput(model)


class PaellaCLIPImageEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaCLIPImageEncode", display_name="Paella CLIP Image Encode", category=CATEGORY,
            description="The CLIP image vector of a picture exactly as the Paella authors compute it: their "
                        "resizing and cropping on float pixels (ComfyUI's CLIP Vision Encode crops and rounds "
                        "differently, so its vector is close but not the same), then the tower's encode_image. "
                        "Connect the output where a CLIP Vision Encode output goes (Paella Image Variations, "
                        "Paella Conditioning).",
            inputs=[io.ClipVision.Input("clip_vision",
                                        tooltip="The OpenCLIP vision tower: v3 ViT-H-14, v1 ViT-g-14 (Load CLIP "
                                                "Vision (OpenCLIP, Paella) or ComfyUI's Load CLIP Vision)."),
                    io.Image.Input("image", tooltip="The picture(s): one CLIP image vector per batch item."),
                    io.Combo.Input("preprocessing", options=list(clip_image.PREPROCESSING), default="v3",
                                   tooltip="Whose preparation to reproduce. " + "; ".join(
                                       f"{k}: {v}" for k, v in clip_image.PREPROCESSING.items()) + ".")],
            outputs=[io.ClipVisionOutput.Output(
                display_name="clip_vision_output",
                tooltip="image_embeds = the unnormalised projected vector Paella is conditioned on (and the tower's "
                        "last and penultimate hidden states): connect it to Paella Image Variations or Paella "
                        "Conditioning.")])

    @classmethod
    def execute(cls, clip_vision, image, preprocessing) -> io.NodeOutput:
        pixels_b3hw = clip_image.authors_pixels(_image_in(image), preprocessing, clip_vision.image_size)
        comfy_glue.load_for_use(clip_vision.patcher)
        with torch.inference_mode():
            hidden, penultimate, embeds, _ = clip_vision.model(pixel_values=pixels_b3hw.to(clip_vision.load_device),
                                                               intermediate_output=-2)
        output = comfy.clip_vision.Output()
        device = comfy_glue.output_device()
        output["last_hidden_state"], output["penultimate_hidden_states"] = hidden.to(device), penultimate.to(device)
        output["image_embeds"], output["mm_projected"] = embeds.to(device), None
        return io.NodeOutput(output)


class PaellaConditioningNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaConditioning", display_name="Paella Conditioning", category=CATEGORY,
            description="Assemble Paella conditioning from precomputed encoder outputs. v3 needs ByT5-XL states "
                        "plus OpenCLIP ViT-H-14 text (and optional image) vectors; v1 needs one OpenCLIP ViT-g-14 "
                        "vector. File keys: byt5 [L,2560], clip_text [1024], clip_image [1024]; a leading batch axis "
                        "is optional, so a 2-D clip_image [B,1024] is one vector per image: to mix N image "
                        "vectors give [1,N,1024] (or [B,N,1024]).",
            inputs=[io.Combo.Input("embeddings", options=_embedding_files(), default=NO_FILE,
                                   tooltip="A .safetensors file in models/paella_embeddings with keys byt5, "
                                           "clip_text and/or clip_image (batch axis optional; clip_image "
                                           "[B,1024] is one vector per image, [1,N,1024] mixes N vectors)."),
                    io.Conditioning.Input("conditioning", optional=True,
                                          tooltip="ComfyUI CONDITIONING: its pooled_output becomes the CLIP text "
                                                  "vector (SD 2.x's OpenCLIP ViT-H-14 gives exactly v3's); its "
                                                  "token states are used as ByT5 states only if 2560 wide."),
                    io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                              tooltip="CLIP Vision Encode output: image_embeds become a CLIP image "
                                                      "vector (appended after any from the file).")],
            outputs=[PaellaConditioning.Output(
                display_name="conditioning",
                tooltip="The assembled Paella conditioning: connect it to positive or negative of a Paella "
                        "generator node, to Paella Prior (v3 text-to-image) or to Paella Regional Conditioning "
                        "(v1).")])

    @classmethod
    def execute(cls, embeddings, conditioning=None, clip_vision_output=None) -> io.NodeOutput:
        tensors = None
        if embeddings != NO_FILE:
            path = comfy_glue.model_path(EMBEDDINGS_FOLDER, embeddings)
            try:
                tensors = load_file(path, device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise BoundlessError(f"{embeddings} is not a readable .safetensors file ({exc})") from exc
        image_embeds = None if clip_vision_output is None else clip_vision_output["image_embeds"]
        return io.NodeOutput(paella_conditioning.from_sources(tensors, conditioning, image_embeds))


class PaellaPriorNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaPrior", display_name="Paella Prior", category=CATEGORY,
            description="v3 text-to-image as in the official notebook: sample a CLIP image vector from the "
                        "conditioning's CLIP text vector (DDPM, cosine schedule) and add it to the conditioning.",
            inputs=[PaellaPrior.Input("prior", tooltip="The v3 CLIP prior (prior_v1.pt) from Paella Prior Loader."),
                    PaellaConditioning.Input("conditioning", tooltip="Needs a CLIP text vector (clip_text)."),
                    _seed_input(),
                    io.Int.Input("steps", default=60, min=1, max=1000,
                                 tooltip="Denoising steps of the prior's DDPM sampler that draws the CLIP image "
                                         "vector (the notebook uses 60). Time grows linearly; far fewer steps "
                                         "give a rougher vector."),
                    io.Float.Input("cfg", default=3.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="Guidance against an all-zero text vector (notebook: 3)."),
                    _draws_input()],
            outputs=[PaellaConditioning.Output(
                display_name="conditioning",
                tooltip="The input conditioning with the sampled CLIP image vector added: connect it to "
                        "positive of Paella Text to Image (v3).")])

    @classmethod
    def execute(cls, prior, conditioning, seed, steps, cfg, draws=MODEL_DEVICE) -> io.NodeOutput:
        if conditioning.clip_text is None:
            raise BoundlessError("the prior needs a CLIP text vector: give clip_text in the embeddings file or "
                                 "connect a CONDITIONING with a pooled_output")
        model = _load(prior)
        device = pipeline.device_of(model)
        with torch.inference_mode():
            image_bc = sample_prior(model, conditioning.clip_text.to(device), seed, steps, cfg,
                                    progress=comfy_glue.progress_reporter(steps), draws=draws).cpu()
        return io.NodeOutput(paella_conditioning.add_images(conditioning, image_bc[:, None]))


class PaellaV3SamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaV3Sampler", display_name="Paella v3 Sampler", category=CATEGORY,
            description="Settings of the official v3 sampler. Defaults: README / src/utils.py (12 steps). "
                        "Official notebook: 32 steps, renoise 26, temperature 1.2 -> 0.2, CFG 8 on the first 20 "
                        "steps, attention re-weighting on.",
            inputs=[io.Int.Input("steps", default=12, min=1, max=200,
                                 tooltip="Number of denoising steps; each runs the model over every token (twice "
                                         "while guidance is on). README default 12, the official notebook uses "
                                         "32; time grows linearly."),
                    io.Int.Input("renoise_steps", default=-1, min=-1, max=200,
                                 tooltip="Steps that re-noise back to the initial noise; -1 = steps - 1."),
                    io.Float.Input("temperature_start", default=1.0, min=0.01, max=5.0, step=0.01,
                                   tooltip="Sampling temperature at the first step (linear schedule)."),
                    io.Float.Input("temperature_end", default=0.2, min=0.01, max=5.0, step=0.01,
                                   tooltip="Sampling temperature at the last step."),
                    io.Float.Input("cfg_start", default=8.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="Guidance scale at the first step (cond*w + uncond*(1-w)); 1 = off."),
                    io.Float.Input("cfg_end", default=8.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="Guidance scale at the last step (linear schedule)."),
                    io.Int.Input("cfg_steps", default=-1, min=-1, max=200,
                                 tooltip="Apply guidance only on the first N steps (notebook: 20); -1 = all."),
                    io.Combo.Input("mode", options=["multinomial", "argmax", "quant"], default="multinomial",
                                   tooltip="multinomial: sample tokens; argmax: most likely token; quant: "
                                           "probability-weighted codebook vector -> nearest code."),
                    io.Int.Input("quant_from_step", default=-1, min=-1, max=200,
                                 tooltip="Switch to 'quant' from this step on (notebook option); -1 = never."),
                    io.Boolean.Input("attention_reweighting", default=False,
                                     tooltip="The notebook's conditional-pass attention weights (x1.2 on late ByT5 "
                                             "and CLIP text keys, x0.4 on the last four, e.g. CLIP image)."),
                    _draws_input()],
            outputs=[PaellaSampler.Output(
                display_name="sampler",
                tooltip="The v3 sampler settings: connect them to the sampler input of a Paella generator node "
                        "that runs a v3 model.")])

    @classmethod
    def execute(cls, steps, renoise_steps, temperature_start, temperature_end, cfg_start, cfg_end, cfg_steps,
                mode, quant_from_step, attention_reweighting, draws=MODEL_DEVICE) -> io.NodeOutput:
        return io.NodeOutput(pipeline.V3Sampler(
            steps=steps, renoise_steps=None if renoise_steps < 0 else renoise_steps,
            temperature=(temperature_start, temperature_end), cfg=(cfg_start, cfg_end),
            conditional_steps=None if cfg_steps < 0 else cfg_steps, mode=mode,
            quant_steps=None if quant_from_step < 0 else quant_from_step,
            attention_reweighting=attention_reweighting, draws=draws))


class PaellaV1SamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaV1Sampler", display_name="Paella v1 Sampler", category=CATEGORY,
            description="Settings of the 2022 v1 sampler (defaults: the Replicate demo's text-to-image: 12 steps, "
                        "locally typical filtering 0.2, CFG 5, re-noise to the start tokens).",
            inputs=[io.Int.Input("steps", default=12, min=1, max=200,
                                 tooltip="Number of sampling steps T: each step draws every token, then re-noises "
                                         "a shrinking share of them. The demo uses 12; time grows linearly."),
                    io.Int.Input("renoise_steps", default=-1, min=-1, max=200,
                                 tooltip="Steps followed by re-noising; -1 = steps - 1."),
                    io.Float.Input("temperature_start", default=1.0, min=0.01, max=5.0, step=0.01,
                                   tooltip="Gumbel-max temperature at the first step."),
                    io.Float.Input("temperature_end", default=1.0, min=0.01, max=5.0, step=0.01,
                                   tooltip="Gumbel-max temperature at the last step."),
                    io.Float.Input("cfg", default=5.0, min=0.0, max=30.0, step=0.1,
                                   tooltip="Guidance as lerp(uncond, cond, cfg) against the all-zero vector "
                                           "(or the negative); 1 = off (outpainting demo: 4, editing: 6)."),
                    io.Boolean.Input("typical_filtering", default=True,
                                     tooltip="Locally typical filtering of each position's distribution."),
                    io.Float.Input("typical_mass", default=0.2, min=0.01, max=1.0, step=0.01,
                                   tooltip="Probability mass kept by typical filtering."),
                    io.Int.Input("typical_min_tokens", default=1, min=1, max=8192,
                                 tooltip="Classes always kept by typical filtering."),
                    io.Combo.Input("renoise_mode", options=["start", "prev", "rand"], default="start",
                                   tooltip="Re-noise from the start tokens, the step's input, or fresh random "
                                           "tokens (the structural-editing demo uses 'prev')."),
                    _draws_input()],
            outputs=[PaellaSampler.Output(
                display_name="sampler",
                tooltip="The v1 sampler settings: connect them to the sampler input of a Paella generator node "
                        "that runs a v1 model.")])

    @classmethod
    def execute(cls, steps, renoise_steps, temperature_start, temperature_end, cfg, typical_filtering,
                typical_mass, typical_min_tokens, renoise_mode, draws=MODEL_DEVICE) -> io.NodeOutput:
        return io.NodeOutput(pipeline.V1Sampler(
            steps=steps, renoise_steps=None if renoise_steps < 0 else renoise_steps,
            temperature=(temperature_start, temperature_end), cfg=cfg, typical_filtering=typical_filtering,
            typical_mass=typical_mass, typical_min_tokens=typical_min_tokens, renoise_mode=renoise_mode,
            draws=draws))


def _size_inputs():
    return [io.Int.Input("width", default=256, min=32, max=4096, step=32,
                         tooltip="Image width in px (v3: multiple of 32; trained at 256)."),
            io.Int.Input("height", default=256, min=32, max=4096, step=32,
                         tooltip="Image height in px (v3: multiple of 32; v1: multiple of 32, at least 64).")]


class PaellaTextToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaTextToImage", display_name="Paella Text to Image", category=CATEGORY,
            description="Generate images from a Paella conditioning with the official sampler.",
            inputs=[*_common_inputs(),
                    PaellaConditioning.Input("positive", tooltip="What to generate (Paella Conditioning)."),
                    _negative_input(), *_size_inputs(),
                    io.Int.Input("batch_size", default=1, min=1, max=64,
                                 tooltip="How many images to generate at once from the same conditioning (1-64); "
                                         "each gets its own noise from the one seed. Memory and time grow with it."),
                    _seed_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The generated images (batch_size of them): connect them to "
                                             "Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The same images as Paella tokens: connect them to Paella Decode, "
                                                   "or to Paella Structural Edit to edit them with a new prompt.")])

    @classmethod
    def execute(cls, model, vqgan, sampler, positive, width, height, batch_size, seed, negative=None):
        net, tok = _setup(model, vqgan, sampler)
        grid = pipeline.token_grid(net, tok, width, height)
        indices = _generate(net, tok, sampler, positive, negative, seed=seed, batch=batch_size, grid=grid)
        return io.NodeOutput(_image_out(_decode(tok, indices)), _tokens_out(tok, indices))


class PaellaInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaInpaint", display_name="Paella Inpaint / Outpaint", category=CATEGORY,
            description="Regenerate the masked part of an image at any size: the image is encoded, masked tokens "
                        "start as noise and known tokens are pinned after every step. For outpainting, extend the "
                        "canvas first (e.g. Pad Image for Outpainting) and mask the new area.",
            inputs=[*_common_inputs(),
                    PaellaConditioning.Input("positive", tooltip="What to paint into the masked area."),
                    io.Image.Input("image", tooltip="Image (batch) to edit; any size (padded internally)."),
                    io.Mask.Input("mask", tooltip="1 = regenerate, 0 = keep; same size as the image."),
                    _negative_input(), _seed_input(),
                    io.Boolean.Input("paste_original", default=False,
                                     tooltip="Paste the original pixels back outside the mask (otherwise the whole "
                                             "image is the VQGAN's decoding, as in the official demo).")],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The edited images at the input's size, the masked area regenerated: "
                                             "connect them to Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The result as Paella tokens (covering the internally padded "
                                                   "canvas): connect them to Paella Decode or Paella Structural "
                                                   "Edit.")])

    @classmethod
    def execute(cls, model, vqgan, sampler, positive, image, mask, seed, paste_original, negative=None):
        net, tok = _setup(model, vqgan, sampler)
        original_b3hw = _image_in(image)
        batch, _, height, width = original_b3hw.shape
        pixel_mask = normalize_mask(mask, height, width)
        multiple, smallest = pipeline.pixel_limits(net, tok)
        padded_b3hw, padded_mask = pipeline.pad_image_and_mask(original_b3hw, pixel_mask, multiple, smallest)
        with torch.inference_mode():
            known = pipeline.encode(tok, padded_b3hw)
        keep = pipeline.token_mask(padded_mask, pipeline.factor_of(tok))
        indices = _generate(net, tok, sampler, positive, negative, seed=seed, batch=batch,
                            grid=tuple(known.shape[-2:]), start=known, keep_mask=keep)
        result = _decode(tok, indices)[..., :height, :width]
        if paste_original:
            weight = paella_conditioning.expand_batch(pixel_mask, batch, "mask")[:, None]
            result = result * weight + original_b3hw * (1 - weight)
        return io.NodeOutput(_image_out(result), _tokens_out(tok, indices))


class PaellaVariations(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaVariations", display_name="Paella Image Variations", category=CATEGORY,
            description="Variations of an image from its CLIP image vector: a precomputed one (Paella Conditioning "
                        "from a file with a clip_image key; no CLIP vision weights needed) and/or a CLIP Vision "
                        "Encode output. v3: the vector becomes CLIP image tokens next to the (optional) text of "
                        "'positive' (needs ByT5 states, e.g. of \"\"). v1: the vector alone conditions the "
                        "image-variation finetune (model_50000_img.pt).",
            inputs=[*_common_inputs(),
                    PaellaConditioning.Input("image_embedding", optional=True,
                                             tooltip="Paella Conditioning holding the source image's CLIP image "
                                                     "vector (its clip_image; other parts are ignored), e.g. from "
                                                     "an embeddings file (v3: ViT-H-14, v1: ViT-g-14)."),
                    io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                              tooltip="CLIP Vision Encode output of the source image (v3: "
                                                      "ViT-H-14, v1: ViT-g-14); appended after image_embedding."),
                    PaellaConditioning.Input("positive", optional=True,
                                             tooltip="v3: text part (ByT5 states required; CLIP text optional). "
                                                     "v1: leave unconnected."),
                    _negative_input(), *_size_inputs(),
                    io.Int.Input("batch_size", default=4, min=1, max=64,
                                 tooltip="How many variations of the source image to generate at once (1-64), "
                                         "all from the one seed; memory and time grow with it."),
                    _seed_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The variations (batch_size of them): connect them to Preview Image "
                                             "or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The variations as Paella tokens: connect them to Paella Decode "
                                                   "or Paella Structural Edit.")])

    @classmethod
    def execute(cls, model, vqgan, sampler, width, height, batch_size, seed, image_embedding=None,
                clip_vision_output=None, positive=None, negative=None):
        net, tok = _setup(model, vqgan, sampler)
        grid = pipeline.token_grid(net, tok, width, height)
        image_embeds = None if clip_vision_output is None else clip_vision_output["image_embeds"]
        cond = paella_conditioning.variation_conditioning(pipeline.version_of(net), image_embedding, image_embeds,
                                                          positive)
        indices = _generate(net, tok, sampler, cond, negative, seed=seed, batch=batch_size, grid=grid)
        return io.NodeOutput(_image_out(_decode(tok, indices)), _tokens_out(tok, indices))


class PaellaInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaInterpolate", display_name="Paella Latent Interpolation", category=CATEGORY,
            description="Frames between two prompts: every frame samples (same seed) from a linear mix of the two "
                        "conditionings, as in the v1 demo. Output: one image per frame.",
            inputs=[*_common_inputs(),
                    PaellaConditioning.Input("positive_a", tooltip="Conditioning of the first frame."),
                    PaellaConditioning.Input("positive_b", tooltip="Conditioning of the last frame (same parts and "
                                                                   "ByT5 length as positive_a)."),
                    _negative_input(), *_size_inputs(),
                    io.Int.Input("frames", default=5, min=2, max=256, tooltip="Number of frames (both ends included)."),
                    _seed_input()],
            outputs=[io.Image.Output(display_name="frames",
                                     tooltip="One image per frame, from positive_a to positive_b in order: connect "
                                             "it to Save Video (Boundless), Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The frames as Paella tokens (one token grid per frame): connect "
                                                   "them to Paella Decode.")])

    @classmethod
    def execute(cls, model, vqgan, sampler, positive_a, positive_b, width, height, frames, seed, negative=None):
        net, tok = _setup(model, vqgan, sampler)
        grid = pipeline.token_grid(net, tok, width, height)
        mixes = [paella_conditioning.interpolate(positive_a, positive_b, f / (frames - 1)) for f in range(frames)]
        steps = sampler.steps
        report = comfy_glue.progress_reporter(frames * steps)
        outputs = []
        for f, cond in enumerate(mixes):
            def progress(done, total, preview=None, offset=f * steps):
                report(offset + done, frames * steps, preview)
            outputs.append(_generate(net, tok, sampler, cond, negative, seed=seed, batch=1, grid=grid,
                                     progress=progress))
        indices = torch.cat(outputs)
        return io.NodeOutput(_image_out(_decode(tok, indices)), _tokens_out(tok, indices))


class PaellaStructuralEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaStructuralEdit", display_name="Paella Structural Edit", category=CATEGORY,
            description="Re-noise an encoded image partly and finish sampling with a new prompt: the layout "
                        "survives, the content follows the prompt (v1 demo: 24 steps from step 8, CFG 6, renoise "
                        "'prev' ~ strength 0.87).",
            inputs=[*_common_inputs(),
                    sockets.Tokens.Input("tokens", tooltip="Encoded image from Paella Encode (same VQGAN)."),
                    PaellaConditioning.Input("positive", tooltip="Paella Conditioning of the new prompt the edited "
                                                                  "image should follow; its layout is kept."),
                    _negative_input(),
                    io.Float.Input("strength", default=0.6, min=0.01, max=1.0, step=0.01,
                                   tooltip="Fraction of tokens re-noised before sampling resumes (v3: the start "
                                           "noise level t; v1: mapped to the step with that masking rate)."),
                    _seed_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The edited images (the same size as the tokens' image): connect "
                                             "them to Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The edited images as Paella tokens: connect them to Paella "
                                                   "Decode, or to another Structural Edit.")])

    @classmethod
    def execute(cls, model, vqgan, sampler, tokens, positive, strength, seed, negative=None):
        net, tok = _setup(model, vqgan, sampler)
        start = pipeline.from_tokens(tok, tokens, "Paella Structural Edit")
        height, width = tokens.pixel_size
        grid = pipeline.token_grid(net, tok, width, height)
        indices = _generate(net, tok, sampler, positive, negative, seed=seed, batch=tokens.batch, grid=grid,
                            start=start, strength=strength)
        return io.NodeOutput(_image_out(_decode(tok, indices)), _tokens_out(tok, indices))


class PaellaRegionalConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaRegionalConditioning", display_name="Paella Regional Conditioning",
            category=CATEGORY,
            description="v1 multi-conditioning: place the 'region' prompt vector on part of the image (a mask or "
                        "a grid cell) and 'base' elsewhere; chain nodes for more regions. v3 has no spatial "
                        "conditioning.",
            inputs=[PaellaConditioning.Input("base", tooltip="Background prompt (v1 vector or a regional map)."),
                    PaellaConditioning.Input("region", tooltip="Paella Conditioning (a v1 CLIP vector) used inside "
                                                                "the region; 'base' applies everywhere else."),
                    io.Combo.Input("layout", options=["mask", "grid"], default="grid",
                                   tooltip="Use the mask, or one cell of a rows x cols grid."),
                    io.Int.Input("rows", default=1, min=1, max=16,
                                 tooltip="Number of equal rows the image is split into for layout 'grid' (1-16); "
                                         "ignored for layout 'mask'."),
                    io.Int.Input("columns", default=2, min=1, max=16,
                                 tooltip="Number of equal columns the image is split into for layout 'grid' "
                                         "(1-16); ignored for layout 'mask'."),
                    io.Int.Input("cell", default=1, min=0, max=255, tooltip="Grid cell for the region, row-major "
                                                                              "from 0 (default: right half)."),
                    io.Mask.Input("mask", optional=True, tooltip="Region mask (1 = region) for layout 'mask'.")],
            outputs=[PaellaConditioning.Output(
                display_name="conditioning",
                tooltip="The base conditioning with this region placed on it: connect it to positive of a Paella "
                        "v1 generator node, or to base of another Regional Conditioning for more regions.")])

    @classmethod
    def execute(cls, base, region, layout, rows, columns, cell, mask=None) -> io.NodeOutput:
        if layout == "mask":
            if mask is None:
                raise BoundlessError("layout 'mask' needs a mask input; connect one or use layout 'grid'")
            region_mask = mask.reshape(-1, *mask.shape[-2:])
        else:
            if cell >= rows * columns:
                raise BoundlessError(f"grid cell {cell} does not exist in a {rows}x{columns} grid "
                                     f"(cells 0..{rows * columns - 1}, row-major)")
            region_mask = paella_conditioning.grid_masks(rows, columns)[cell]
        return io.NodeOutput(paella_conditioning.with_region(base, region, region_mask))


class PaellaEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaEncode", display_name="Paella Encode", category=CATEGORY,
            description="Image -> Paella tokens (v3 f4 VQGAN: 4 px per token; v1 Gumbel f8: 8 px, argmax code).",
            inputs=[PaellaVQGAN.Input("vqgan", tooltip="The Paella VQGAN from Paella VQGAN Loader: the one of "
                                                       "the model that will use the tokens."),
                    io.Image.Input("image", tooltip="Image batch to turn into tokens; any size, fitted to the "
                                                    "required multiple by size_policy."),
                    io.Combo.Input("size_policy", options=list(pipeline.SIZE_POLICIES), default="pad",
                                   tooltip=f"Sides must be multiples of {pipeline.ENCODE_MULTIPLE} px: 'pad' "
                                           "replicates the right/bottom edge, 'crop' drops the remainder.")],
            outputs=[sockets.Tokens.Output(
                display_name="tokens",
                tooltip="The images as Paella tokens: connect them to Paella Structural Edit or Paella Decode.")])

    @classmethod
    def execute(cls, vqgan, image, size_policy) -> io.NodeOutput:
        tok = _load(vqgan)
        image_b3hw = pipeline.fit_image(_image_in(image), pipeline.ENCODE_MULTIPLE, size_policy)
        with torch.inference_mode():
            indices = pipeline.encode(tok, image_b3hw)
        return io.NodeOutput(_tokens_out(tok, indices))


class PaellaDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPaellaDecode", display_name="Paella Decode", category=CATEGORY,
            description="Paella tokens -> image (with the VQGAN that made them).",
            inputs=[PaellaVQGAN.Input("vqgan", tooltip="The VQGAN that made the tokens."),
                    sockets.Tokens.Input("tokens", tooltip="Tokens from a Paella node or Paella Encode.")],
            outputs=[io.Image.Output(
                display_name="image",
                tooltip="The decoded images: connect them to Preview Image or Save Image.")])

    @classmethod
    def execute(cls, vqgan, tokens) -> io.NodeOutput:
        tok = _load(vqgan)
        indices = pipeline.from_tokens(tok, tokens, "Paella Decode")
        return io.NodeOutput(_image_out(_decode(tok, indices)))


NODES = [PaellaLoader, PaellaVQGANLoader, PaellaPriorLoader, PaellaByT5Loader, PaellaTextEncode,
         PaellaCLIPVisionLoader, PaellaCLIPImageEncode,
         PaellaConditioningNode, PaellaPriorNode,
         PaellaV3SamplerNode, PaellaV1SamplerNode, PaellaTextToImage, PaellaInpaint, PaellaVariations,
         PaellaInterpolate, PaellaStructuralEdit, PaellaRegionalConditioning, PaellaEncode, PaellaDecode]
