"""ComfyUI nodes for VAR (next-scale prediction): load, sample by ImageNet class, edit, encode, decode."""
from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

import comfy.model_management as mm

from ..common import comfy_glue, sockets
from ..common.draws import MODE_TOOLTIP as DRAWS_TOOLTIP, MODEL_DEVICE, MODES as DRAW_MODES, Draws
from ..common.errors import BoundlessError
from ..common.images import image_to_model, model_to_image
from ..common.tokens import Tokens, fingerprint
from .checkpoint import load_transformer, load_vqvae
from .classes import class_choices, parse_class, parse_class_list
from .editing import EditMode, check_edit_inputs, edit_label, keep_grid
from .editing import composite as composite_pixels
from .sampling import SamplingSettings, decoded_preview, edit_guide, sample
from .schedule import PIXELS_PER_TOKEN
from .transformer import VARConfig

VARModel = io.Custom("BOUNDLESS_VAR_MODEL")      # VARBundle below
TOKENIZER_KIND = "var-vqvae"
CATEGORY = "Boundless/var"
MAX_IMAGES = 64          # per VAR Sample run, whatever mix of classes and batch_size
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclasses.dataclass(frozen=True)
class VARBundle:
    """The value of a BOUNDLESS_VAR_MODEL socket: both networks under ComfyUI's memory manager."""

    vae: object            # ModelPatcher around vqvae.VQVAE
    transformer: object    # ModelPatcher around transformer.VARTransformer
    config: VARConfig

    def load(self, with_transformer: bool = True):
        """Place the networks on the compute device together (one request, so neither evicts the other)."""
        patchers = [self.vae, self.transformer] if with_transformer else [self.vae]
        mm.load_models_gpu(patchers)
        return [p.model for p in patchers]


def _tokens(vae, maps) -> Tokens:
    return Tokens(scales=tuple(m.to(comfy_glue.output_device()) for m in maps),
                  tokenizer=fingerprint(TOKENIZER_KIND, vae.quantize.codebook), factor=PIXELS_PER_TOKEN)


def _decode(vae, f_hat_bchw: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Images from ``f_hat``, a few at a time: the decoder's full-resolution activations are the
    largest tensors of a run, so a big batch decoded at once is what runs out of memory."""
    parts = [model_to_image(vae.decode_fhat(f_hat_bchw[i:i + chunk])).to(comfy_glue.output_device())
             for i in range(0, f_hat_bchw.shape[0], chunk)]
    return torch.cat(parts)


def _settings(cfg, top_k, top_p, more_smooth) -> SamplingSettings:
    return SamplingSettings(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)


def _sampling_inputs(cfg_default: float, smooth_default: bool) -> list:
    return [
        io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Seed of the generator that draws every token (where: see 'draws'). Same seed on "
                             "CPU in fp32: the same tokens as the authors' code; in bf16/fp16 the logits differ "
                             "slightly, so some tokens can differ."),
        io.Float.Input("cfg", default=cfg_default, min=0.0, max=20.0, step=0.1,
                       tooltip="Classifier-free guidance at the last scale; it ramps up linearly from 0 at the "
                               "1x1 scale. The authors' demo uses 4 (3 for editing); FID runs use 1.5. "
                               "No effect in VAR Edit's inpaint/outpaint modes (null class: both guidance "
                               "halves are the same)."),
        io.Int.Input("top_k", default=900, min=0, max=65536,
                     tooltip="Keep only the k most likely codes at each position (0 = off)."),
        io.Float.Input("top_p", default=0.95, min=0.0, max=1.0, step=0.01,
                       tooltip="Nucleus sampling after top-k: keep the smallest set of codes holding this much "
                               "probability (0 = off)."),
        io.Boolean.Input("more_smooth", default=smooth_default,
                         tooltip="Blend code vectors with a Gumbel-softmax instead of using the drawn code; "
                                 "smoother images (the authors' editing notebook turns it on)."),
        io.Boolean.Input("previews", default=True,
                         tooltip="Show the image after every scale in the progress bar; costs one VQVAE decode "
                                 "per scale (noticeable on CPU)."),
    ]


def _draws_input():
    return io.Combo.Input("draws", options=list(DRAW_MODES), default=MODEL_DEVICE, optional=True,
                          tooltip=DRAWS_TOOLTIP)


def _vqvae_node_schema(node_id: str, display_name: str, description: str, data_input, output) -> io.Schema:
    """Schema of a node that runs only the VQVAE of a VAR model: the model plus one input, one output."""
    return io.Schema(
        node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
        inputs=[VARModel.Input("var_model", tooltip="Models from VAR Loader (only the VQVAE runs)."), data_input],
        outputs=[output])


class VARLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = comfy_glue.model_files("var")
        return io.Schema(
            node_id="BoundlessVARLoader", display_name="VAR Loader", category=CATEGORY,
            description="Load VAR's multi-scale VQVAE and a VAR transformer (FoundationVision/VAR, .pth or "
                        ".safetensors) from models/var. Depth, width, 256/512-px schedule and attention variant "
                        "are read from the file.",
            inputs=[io.Combo.Input("vqvae_name", options=files,
                                   tooltip="The VQVAE file in models/var (vae_ch160v4096z32.pth)."),
                    io.Combo.Input("transformer_name", options=files,
                                   tooltip="The transformer file in models/var: var_d16/d20/d24/d30 (256 px) or "
                                           "var_d36 (512 px)."),
                    io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                                   tooltip="Transformer dtype: auto = what ComfyUI picks for the device and its "
                                           "precision flags (fp32 on CPU, bf16 or fp16 on most GPUs). Logits, "
                                           "codebook distances and f_hat always stay fp32; the VQVAE's encoder "
                                           "and decoder follow ComfyUI's VAE precision.")],
            outputs=[VARModel.Output(
                display_name="var_model",
                tooltip="The VAR VQVAE and transformer together: connect it to VAR Sample, VAR Edit, VAR Encode "
                        "or VAR Decode.")])

    @classmethod
    def execute(cls, vqvae_name, transformer_name, precision) -> io.NodeOutput:
        vae = load_vqvae(comfy_glue.model_path("var", vqvae_name))
        transformer = load_transformer(comfy_glue.model_path("var", transformer_name))
        if (transformer.config.latent_channels, transformer.config.vocab_size) != (
                vae.config.latent_channels, vae.config.vocab_size):
            raise BoundlessError(f"{transformer_name} expects a VQVAE with {transformer.config.latent_channels} "
                                 f"latent channels and {transformer.config.vocab_size} codes, but {vqvae_name} has "
                                 f"{vae.config.latent_channels} and {vae.config.vocab_size}; pick the matching VQVAE")
        return io.NodeOutput(VARBundle(vae=comfy_glue.managed(vae, comfy_glue.TOKENIZER),
                                       transformer=comfy_glue.managed(transformer, dtype=PRECISIONS[precision]),
                                       config=transformer.config))


class VARSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessVARSample", display_name="VAR Sample", category=CATEGORY,
            description="Generate ImageNet-class images by next-scale prediction (10 scales, KV cache).",
            inputs=[VARModel.Input("var_model", tooltip="The VQVAE and transformer from VAR Loader; 256-px "
                                                        "models draw 256x256 images, var_d36 512x512."),
                    io.Combo.Input("class_name", options=class_choices(), default="207: golden retriever",
                                   tooltip="ImageNet class to draw; 'random' draws a class per image from the "
                                           "seed, 'unconditional' uses the null class."),
                    *_sampling_inputs(cfg_default=4.0, smooth_default=False),
                    io.Int.Input("batch_size", default=1, min=1, max=64,
                                 tooltip="How many images to draw per class (1-64): the batch size for "
                                         "class_name or 'random'; with a classes list, each class gets this many."),
                    io.String.Input("classes", default="", multiline=False,
                                    tooltip="Optional list of classes (ids or ImageNet names, separated by commas) "
                                            "that replaces class_name; each gets batch_size images. Names match "
                                            "in any case, but the exact case wins ('Cardigan' 264 is the corgi, "
                                            "'cardigan' 474 the sweater)."),
                    _draws_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The generated images (batch_size per class, classes in order): "
                                             "connect them to Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The same images as VAR's multi-scale tokens: connect them to "
                                                   "VAR Decode.")])

    @classmethod
    def execute(cls, var_model, class_name, seed, cfg, top_k, top_p, more_smooth, previews, batch_size,
                classes, draws=MODEL_DEVICE) -> io.NodeOutput:
        num_classes = var_model.config.num_classes
        chosen = parse_class_list(classes, num_classes) if classes.strip() else [parse_class(class_name, num_classes)]
        if None in chosen and len(chosen) > 1:
            raise BoundlessError("'random' draws every label from the seed; it cannot be mixed with other classes")
        labels = None if chosen == [None] else [c for c in chosen for _ in range(batch_size)]
        total = batch_size if labels is None else len(labels)
        if total > MAX_IMAGES:
            raise BoundlessError(f"VAR Sample: {len(chosen)} classes x batch_size {batch_size} = {total} images, over "
                                 f"the {MAX_IMAGES} one run can hold; split the classes over several VAR Sample "
                                 "nodes or lower batch_size")
        vae, transformer = var_model.load()
        result = sample(transformer, vae, total, Draws(seed, transformer.weight_device, draws), labels=labels,
                        settings=_settings(cfg, top_k, top_p, more_smooth),
                        progress=comfy_glue.progress_reporter(len(var_model.config.patch_nums)),
                        preview=decoded_preview(vae) if previews else None)
        image = _decode(vae, result.f_hat)
        return io.NodeOutput(image, _tokens(vae, result.tokens))


class VAREdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessVAREdit", display_name="VAR Edit", category=CATEGORY,
            description="Zero-shot editing as in the authors' notebook: tokens of the image are kept outside the "
                        "mask and regenerated inside it, scale by scale.",
            inputs=[VARModel.Input("var_model", tooltip="The VQVAE and transformer from VAR Loader; the image "
                                                        "must be at its size (256x256, or 512x512 for var_d36)."),
                    io.Image.Input("image", tooltip="Image to edit, at the model's size (256x256, or 512x512 for "
                                                    "var_d36)."),
                    io.Mask.Input("mask", tooltip="White = regenerate, black = keep; same size as the image. Every "
                                                  "16x16-pixel token that is touched by the mask is redrawn."),
                    io.Combo.Input("mode", options=[m.value for m in EditMode], default=EditMode.INPAINT.value,
                                   tooltip="inpaint / outpaint: fill the masked area with no class (the null "
                                           "class, as in the notebook, so class_name and cfg have no effect; "
                                           "outpaint is meant for a mask around the border, e.g. from Pad "
                                           "Image for Outpainting). class-edit: redraw the masked area as "
                                           "class_name, guided by cfg."),
                    io.Combo.Input("class_name", options=class_choices()[2:], default="207: golden retriever",
                                   tooltip="The class drawn inside the mask in class-edit mode (ignored otherwise)."),
                    *_sampling_inputs(cfg_default=3.0, smooth_default=True),
                    io.Boolean.Input("composite", default=True,
                                     tooltip="Paste the original pixels back outside the mask (blended by the "
                                             "mask), since tokens can only follow the mask in 16-pixel steps."),
                    _draws_input()],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The edited images (with the original pasted back outside the mask "
                                             "when composite is on): connect them to Preview Image or Save Image."),
                     sockets.Tokens.Output(display_name="tokens",
                                           tooltip="The edited images as VAR's multi-scale tokens: connect them to "
                                                   "VAR Decode.")])

    @classmethod
    def execute(cls, var_model, image, mask, mode, class_name, seed, cfg, top_k, top_p, more_smooth, previews,
                composite, draws=MODEL_DEVICE) -> io.NodeOutput:
        config = var_model.config
        label = edit_label(EditMode(mode), parse_class(class_name, config.num_classes), config.num_classes)
        mask_bhw = mask.reshape(-1, *mask.shape[-2:]).float().clamp(0.0, 1.0)   # [H,W] / [B,1,H,W] -> [B,H,W]
        check_edit_inputs(image, mask_bhw, config.image_size)
        vae, transformer = var_model.load()
        device = transformer.weight_device
        guide = edit_guide(vae, image_to_model(image).to(device), keep_grid(mask_bhw).to(device), config.patch_nums)
        result = sample(transformer, vae, image.shape[0], Draws(seed, device, draws), labels=label,
                        settings=_settings(cfg, top_k, top_p, more_smooth), guide=guide,
                        progress=comfy_glue.progress_reporter(len(config.patch_nums)),
                        preview=decoded_preview(vae) if previews else None)
        edited = _decode(vae, result.f_hat)
        if composite:
            edited = composite_pixels(model_to_image(image_to_model(image)), edited, mask_bhw)   # RGB source
        return io.NodeOutput(edited.to(comfy_glue.output_device()), _tokens(vae, result.tokens))


class VAREncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _vqvae_node_schema(
            "BoundlessVAREncode", "VAR Encode",
            "Image -> VAR's multi-scale tokens (one token map per scale of the model's schedule).",
            io.Image.Input("image", tooltip="Image at the model's size (256x256, or 512x512 for var_d36)."),
            sockets.Tokens.Output(display_name="tokens",
                                  tooltip="The image as VAR's multi-scale tokens (one map per scale): connect them "
                                          "to VAR Decode."))

    @classmethod
    def execute(cls, var_model, image) -> io.NodeOutput:
        config = var_model.config
        side = config.image_size
        if tuple(image.shape[1:3]) != (side, side):
            raise BoundlessError(f"this VAR model encodes {side}x{side} images, got {image.shape[2]}x{image.shape[1]}; "
                                 f"scale or crop the image to {side}x{side} first")
        (vae,) = var_model.load(with_transformer=False)
        _, maps = vae.image_to_indices(image_to_model(image).to(vae.weight_device), config.patch_nums)
        return io.NodeOutput(_tokens(vae, maps))


class VARDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _vqvae_node_schema(
            "BoundlessVARDecode", "VAR Decode", "VAR's multi-scale tokens -> image (sums every scale, then decodes).",
            sockets.Tokens.Input("tokens", tooltip="Tokens from VAR Encode, Sample or Edit."),
            io.Image.Output(display_name="image",
                            tooltip="The decoded images: connect them to Preview Image or Save Image."))

    @classmethod
    def execute(cls, var_model, tokens) -> io.NodeOutput:
        (vae,) = var_model.load(with_transformer=False)
        tokens.require(fingerprint(TOKENIZER_KIND, vae.quantize.codebook), "VAR Decode")
        maps = [m.to(vae.weight_device) for m in tokens.scales]
        patch_nums = tuple(int(m.shape[-1]) for m in maps)
        image = model_to_image(vae.indices_to_image(maps, patch_nums))
        return io.NodeOutput(image.to(comfy_glue.output_device()))


NODES = [VARLoader, VARSample, VAREdit, VAREncode, VARDecode]
