"""ComfyUI nodes for the taming VQGAN tokenizer: load, IMAGE -> TOKENS, TOKENS -> IMAGE."""
from __future__ import annotations


from comfy_api.latest import io

from ..common import comfy_glue, sockets
from ..common.errors import BoundlessError
from ..common.images import image_to_model, model_to_image
from ..common.tokens import Tokens, fingerprint
from .guided import load_guide
from .loader import KIND, load_vqgan
from .tiling import (OUTPAINT_MARGIN_PX, PANORAMA_MARGIN_PX, SIZE_POLICIES, check_fits, check_output_fits,
                     decode_tiled, encode_tiled, fit_to_factor, mirror_pads, wrap_margin)



def tile_inputs() -> list:
    """The tiling widgets shared by VQGAN Encode/Decode (and decoders elsewhere in the pack)."""
    return [io.Int.Input("tile_size", default=0, min=0, max=8192, step=16,
                         tooltip="0 = one pass over the whole image (exactly what the original VQGAN computes). "
                                 "Otherwise the canvas is processed in tiles of this many pixels, each with "
                                 "'tile_margin' pixels of real neighbouring context, so memory stays bounded "
                                 "on huge canvases."),
            io.Int.Input("tile_margin", default=64, min=0, max=1024, step=16,
                         tooltip="Context pixels around each tile (multiple of the factor).")]


class VQGANLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessVQGANLoader", display_name="VQGAN Loader", category="Boundless/vq",
            description="Load a taming-transformers / latent-diffusion VQGAN (.safetensors or Lightning .ckpt) "
                        "from models/vqgan. The architecture is read from the file.",
            inputs=[io.Combo.Input("vqgan_name", options=comfy_glue.model_files("vqgan"),
                                   tooltip="Weight file in models/vqgan (taming vqgan_imagenet_f16_16384, "
                                           "latent-diffusion vq-f4/f8/f16, or the pack's demo model).")],
            outputs=[sockets.VQGANModel.Output(
                display_name="vqgan",
                tooltip="The loaded VQGAN tokenizer: connect it to VQGAN Encode / Decode, NCP State → Image or "
                        "→ Frames, or Infinity Stream Canvas (or preview_vqgan of the Infinity nodes).")])

    @classmethod
    def execute(cls, vqgan_name) -> io.NodeOutput:
        model = load_vqgan(comfy_glue.model_path("vqgan", vqgan_name))
        return io.NodeOutput(comfy_glue.managed(model, comfy_glue.TOKENIZER))


# VQGAN Encode's outpaint_sides: the names of Infinity Outpaint Step's directions.
OUTPAINT_SIDES = {"none": (), "right": ("right",), "left": ("left",), "left+right": ("left", "right"),
                  "up": ("up",), "down": ("down",), "up+down": ("up", "down"),
                  "all sides": ("left", "right", "up", "down")}


class VQGANEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessVQGANEncode", display_name="VQGAN Encode", category="Boundless/vq",
            description="Turn an image into discrete VQGAN tokens (one token per f x f pixels).",
            inputs=[sockets.VQGANModel.Input("vqgan", tooltip="The VQGAN tokenizer from VQGAN Loader; use the one "
                                                              "your generator was trained with."),
                    io.Image.Input("image", tooltip="Image batch to tokenize; any size, fitted to a multiple of "
                                                    "the VQGAN's factor by size_policy."),
                    io.Combo.Input("size_policy", options=list(SIZE_POLICIES), default="pad",
                                   tooltip="For sizes that are not a multiple of the factor: 'pad' replicates "
                                           "the right/bottom edge up to the next multiple, 'crop' drops the "
                                           "remainder, 'error' refuses."),
                    *tile_inputs(),
                    io.Float.Input("temporal_stability", default=0.0, min=0.0, max=10.0, step=0.01, optional=True,
                                   tooltip="For video frames. 0 = every image of the batch is tokenized on its "
                                           "own. Above 0 the batch is taken as frames in time order, and a token "
                                           "keeps the previous frame's code when that code's squared distance to "
                                           "the latent is within this much of the nearest code's: flat areas "
                                           "stop flickering between near-duplicate codes. The demo walk model was "
                                           "trained on tokens made with 0.05 and the demo VQGAN."),
                    io.Boolean.Input("wrap_360", default=False, optional=True,
                                     tooltip="The image is a seamless 360° panorama: encode it round, with "
                                             f"{PANORAMA_MARGIN_PX} px of its other end beside each end, so its "
                                             "first and last token columns are codes of what is there, not of "
                                             "a picture border. Use it for panoramas you continue with wrap."),
                    io.Combo.Input("outpaint_sides", options=list(OUTPAINT_SIDES), default="none", optional=True,
                                   tooltip="The sides you will extend with Infinity Outpaint Step. Past them the "
                                           f"tokenizer sees {OUTPAINT_MARGIN_PX} px of the image's mirror image, so "
                                           "the tokens along those edges are codes of picture content, not of a "
                                           "picture border, which the continuation would keep as a dark bar at "
                                           "the cut. Decode such tokens as part of the outpainted canvas: decoded "
                                           "alone, without the border the decoder expects, the picture may shift "
                                           "in colour. 'none' encodes exactly as the tokenizer's authors do.")],
            outputs=[sockets.Tokens.Output(
                display_name="tokens",
                tooltip="The images as VQGAN tokens (one per f x f pixels): connect them to NCP State from Tokens "
                        "to extend the image with Infinity, or to VQGAN Decode.")])

    @classmethod
    def execute(cls, vqgan, image, size_policy, tile_size, tile_margin, temporal_stability=0.0,
                wrap_360=False, outpaint_sides="none") -> io.NodeOutput:
        model = comfy_glue.load_for_use(vqgan)
        batch, height, width, _ = image.shape
        wrap = wrap_margin(width, model.factor, PANORAMA_MARGIN_PX) if wrap_360 else 0
        if wrap_360 and width % model.factor:
            raise BoundlessError(f"VQGAN Encode: a 360° panorama must be a multiple of {model.factor} px wide "
                                 f"(this one is {width} px), or padding would break its seam; resize it")
        if outpaint_sides not in OUTPAINT_SIDES:
            raise BoundlessError(f"VQGAN Encode: outpaint_sides must be one of {', '.join(OUTPAINT_SIDES)}, "
                                 f"got {outpaint_sides!r}")
        sides = OUTPAINT_SIDES[outpaint_sides]
        if wrap_360 and {"left", "right"} & set(sides):
            raise BoundlessError("VQGAN Encode: a 360° panorama has no left or right edge to outpaint (wrap_360 "
                                 "joins its ends); set outpaint_sides to 'none', 'up', 'down' or 'up+down'")
        left, right, top, bottom = mirror_pads(height, width, model.factor, OUTPAINT_MARGIN_PX, sides)
        check_fits(model.config, batch, height + top + bottom, width + 2 * wrap + left + right,
                   comfy_glue.free_memory(), tile_size, tile_margin)
        device = comfy_glue.compute_device()
        x_bchw = fit_to_factor(image_to_model(image), model.factor, size_policy).to(device)
        indices_bhw = encode_tiled(model, x_bchw, tile_size, tile_margin, progress=comfy_glue.progress_reporter(1),
                                   stability=temporal_stability, wrap_px=wrap, mirror_px=OUTPAINT_MARGIN_PX,
                                   mirror_sides=sides)
        tokens = Tokens(scales=(indices_bhw.to(comfy_glue.output_device()),),
                        tokenizer=fingerprint(KIND, model.quantize.embedding.weight), factor=model.factor)
        return io.NodeOutput(tokens)


class VQGANDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessVQGANDecode", display_name="VQGAN Decode", category="Boundless/vq",
            description="Turn VQGAN tokens back into an image.",
            inputs=[sockets.VQGANModel.Input("vqgan", tooltip="The tokenizer that made the tokens."),
                    sockets.Tokens.Input("tokens", tooltip="Tokens from VQGAN Encode or a generator node."),
                    *tile_inputs(),
                    io.Boolean.Input("wrap_360", default=False, optional=True,
                                     tooltip="The tokens are a 360° panorama (a canvas generated with wrap): "
                                             f"decode them round, with {PANORAMA_MARGIN_PX} px of the other end "
                                             "beside each end, so the decoder draws no border there and the "
                                             "picture joins up when its ends meet.")],
            outputs=[io.Image.Output(
                display_name="image",
                tooltip="The decoded images: connect them to Preview Image or Save Image.")])

    @classmethod
    def execute(cls, vqgan, tokens, tile_size, tile_margin, wrap_360=False) -> io.NodeOutput:
        model = comfy_glue.load_for_use(vqgan)
        tokens.require(fingerprint(KIND, model.quantize.embedding.weight), "VQGAN Decode")
        height, width = tokens.pixel_size
        wrap = wrap_margin(width, model.factor, PANORAMA_MARGIN_PX) if wrap_360 else 0
        check_output_fits(tokens.batch, height, width, comfy_glue.free_output_memory(), "VQGAN Decode")
        check_fits(model.config, tokens.batch, height, width + 2 * wrap, comfy_glue.free_memory(), tile_size,
                   tile_margin)
        device = comfy_glue.compute_device()
        x_bchw = decode_tiled(model, tokens.indices.to(device), tile_size, tile_margin,
                              progress=comfy_glue.progress_reporter(1), out_device=comfy_glue.output_device(),
                              wrap_px=wrap)
        return io.NodeOutput(model_to_image(x_bchw))


class PixelGuideLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessPixelGuideLoader", display_name="Pixel Guide Loader (PG-VQGAN)", category="Boundless/vq",
            description="Load the pixel guide of a VQGAN from models/pixel_guide: with it, video frames are "
                        "decoded with the previous frame's pixels as a guide (less flicker).",
            inputs=[io.Combo.Input("guide_name", options=comfy_glue.model_files("pixel_guide"),
                                   tooltip="Guide file in models/pixel_guide, trained for your VQGAN (the pack "
                                           "ships boundless_demo_f16_guide.safetensors for the demo VQGAN).")],
            outputs=[sockets.PixelGuide.Output(
                display_name="pixel_guide",
                tooltip="The VQGAN's pixel guide: connect it to pixel_guide of NCP State → Frames for steadier "
                        "video frames.")])

    @classmethod
    def execute(cls, guide_name) -> io.NodeOutput:
        guide = load_guide(comfy_glue.model_path("pixel_guide", guide_name))
        return io.NodeOutput(comfy_glue.managed(guide, comfy_glue.TOKENIZER))


NODES = [VQGANLoader, VQGANEncode, VQGANDecode, PixelGuideLoader]
