"""ComfyUI nodes for StoryDiffusion Consistent Self-Attention: story prompt, CSA model patch,
character bank, comic page (glue; the logic is in the pure modules of this package).

A story is sampled in two ordinary sampler runs with the user's own checkpoint, LoRAs, ControlNets,
sampler and scheduler:
1. identity images (the first lines of each character) with the MODEL of *Consistent
   Self-Attention*: images of one character share tokens and fill the character bank;
2. the panels with the MODEL of *Read Character Bank*: each panel reads the bank of the characters
   it names. Feeding the identity sampler's LATENT into *Read Character Bank* makes ComfyUI run the
   identity pass first.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from comfy_api.latest import io

from comfy.ldm.modules.attention import optimized_attention

from ..common import comfy_glue
from ..common.errors import BoundlessError
from .bank import CharacterBank, tensor_digest
from .comic import comic_pages, in_reading_order
from .conditioning import stack_encodings
from .csa import Gating
from .layers import BLOCK_CHOICES, LayerSpec, choose_layers, unet_attention_layers
from .patch import CSASettings, StoryAttention
from .prompts import PROMPT_SLOT, Story, parse_story

StorySocket = io.Custom("BOUNDLESS_STORY")          # prompts.Story
BankSocket = io.Custom("BOUNDLESS_STORY_BANK")      # StoryBank below

CATEGORY = "Boundless/story"
DEFAULT_STYLE = f"comic book illustration, {PROMPT_SLOT}, clean ink outlines, flat vivid colours, detailed"
DEFAULT_NEGATIVE = "photo, realistic, blurry, deformed, extra limbs, watermark, text"
EXAMPLE_CHARACTERS = ("[Bob] a man in his thirties, short black hair, wearing a black suit and red tie\n"
                      "[Alice] a young woman with curly red hair, wearing a green dress")
EXAMPLE_PANELS = ("[Bob] at home, reading the newspaper at breakfast #Bob reads about a lost dog\n"
                  "[Alice] in her garden, watering the flowers #Alice hears barking\n"
                  "[Bob] and [Alice] meet in the park, a small dog between them #They find the dog together\n"
                  "[NC] a small dog asleep in a basket, warm evening light #Home at last")


@dataclasses.dataclass
class StoryBank:
    """What flows on the BOUNDLESS_STORY_BANK socket: the bank and how it is written."""

    bank: CharacterBank
    model: object                    # the unpatched ModelPatcher the identity pass used
    layers: list[LayerSpec]
    settings: CSASettings
    story: Optional[Story]


def comfy_attention(q, k, v, heads, attn_precision=None):
    """ComfyUI's configured attention (xformers / SDPA / sage / sub-quadratic), as CSA's core."""
    return optimized_attention(q, k, v, heads, attn_precision=attn_precision)


def install(model, patch: StoryAttention, layers: list[LayerSpec]):
    """A clone of ``model`` with ``patch`` as the attn1 replacement of every chosen layer."""
    patched = model.clone()
    for layer in layers:
        patched.set_model_attn1_replace(patch, layer.block, layer.number, layer.block_index)
    return patched


def encode_prompts(clip, prompts: list[str]) -> list:
    """One CONDITIONING with one row per prompt (batched to match a latent batch)."""
    if clip is None:
        raise BoundlessError("Story Prompt needs a CLIP text encoder; this checkpoint has none. Load one with a "
                             "CLIP loader and connect it.")
    return stack_encodings([clip.encode_from_tokens(clip.tokenize(text), return_dict=True) for text in prompts])


class StoryPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessStoryPrompt", display_name="Story Prompt", category=CATEGORY,
            description="Characters plus one line per panel (StoryDiffusion format) -> batched prompts for the "
                        "identity images and for the panels.",
            inputs=[
                io.Clip.Input("clip", tooltip="Text encoder of your checkpoint."),
                io.String.Input("characters", multiline=True, default=EXAMPLE_CHARACTERS,
                                tooltip="One character per line: '[Name] description'. Text after # is ignored."),
                io.String.Input("panels", multiline=True, default=EXAMPLE_PANELS,
                                tooltip="One panel per line. [Name] inserts that character's description; [NC] "
                                        "or no tag = no character. Text after # is the panel's caption."),
                io.String.Input("style", default=DEFAULT_STYLE,
                                tooltip=f"Template wrapped around every panel prompt; {PROMPT_SLOT} marks where the "
                                        "panel text goes."),
                io.String.Input("negative", multiline=True, default=DEFAULT_NEGATIVE,
                                tooltip="Negative prompt for every image."),
                io.Int.Input("identity_images", default=1, min=1, max=8,
                             tooltip="Identity images per character: its first lines that name only that "
                                     "character. They are sampled first, share features and fill the bank."),
            ],
            outputs=[
                StorySocket.Output(display_name="story",
                                   tooltip="The parsed story (characters, which lines are identity images, "
                                           "captions): connect it to Consistent Self-Attention and Comic Page."),
                io.Conditioning.Output(display_name="identity",
                                       tooltip="The identity images' prompts, one row per image: connect it to "
                                               "positive of the identity KSampler (latent batch = identity_count)."),
                io.Conditioning.Output(display_name="panels",
                                       tooltip="The other panels' prompts, one row per panel: connect it to "
                                               "positive of the panel KSampler (latent batch = panel_count)."),
                io.Conditioning.Output(display_name="negative",
                                       tooltip="The negative prompt: connect it to negative of both the identity "
                                               "and the panel KSampler."),
                io.Int.Output(display_name="identity_count",
                              tooltip="How many identity images the story has: connect it to batch_size of the "
                                      "identity sampler's Empty Latent Image."),
                io.Int.Output(display_name="panel_count",
                              tooltip="How many panels follow the identity images: connect it to batch_size of "
                                      "the panel sampler's Empty Latent Image."),
            ])

    @classmethod
    def execute(cls, clip, characters, panels, style, negative, identity_images) -> io.NodeOutput:
        story = parse_story(characters, panels, identity_images, style)
        identity = encode_prompts(clip, [story.lines[i].prompt for i in story.identity])
        panel_cond = encode_prompts(clip, [story.lines[i].prompt for i in story.panels])
        negative_cond = encode_prompts(clip, [negative])
        return io.NodeOutput(story, identity, panel_cond, negative_cond, len(story.identity), len(story.panels))


class ConsistentSelfAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessConsistentSelfAttention", display_name="Consistent Self-Attention", category=CATEGORY,
            description="StoryDiffusion Consistent Self-Attention as a model patch (SD1.5 / SDXL UNets). Sample the "
                        "identity images with this MODEL: images of one character share features and their shared "
                        "features are stored in the character bank for the panels.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model (with your LoRAs already applied)."),
                StorySocket.Input("story", optional=True,
                                  tooltip="From Story Prompt: says which batch rows belong to which character. "
                                          "Without it the whole batch is one character."),
                io.Int.Input("selection_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the random token selection and layer skipping. It stays fixed so "
                                     "that changing only the panels reuses the bank (the reference demo uses the "
                                     "sampling seed)."),
                io.Float.Input("rate_h32", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of tokens shared at the coarsest up-block level (image/32; the "
                                       "reference's sa32). Higher = more consistent, less varied."),
                io.Float.Input("rate_h16", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of tokens shared at the image/16 level (the reference's sa64)."),
                io.Float.Input("rate_h8", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of tokens shared at the image/8 level (SD1.5 only; SDXL has no "
                                       "self-attention there)."),
                io.Combo.Input("blocks", options=list(BLOCK_CHOICES), default=BLOCK_CHOICES[0],
                               tooltip="Which self-attention layers get CSA. The reference patches the up blocks only."),
                io.Int.Input("start_step", default=1, min=0, max=1000,
                             tooltip="First sampling step with CSA (earlier steps use plain attention)."),
                io.Float.Input("skip_prob_early", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Chance that a layer skips CSA at a step before late_from_step."),
                io.Float.Input("skip_prob_late", default=0.1, min=0.0, max=1.0, step=0.05,
                               tooltip="Chance that a layer skips CSA from late_from_step on."),
                io.Int.Input("late_from_step", default=20, min=0, max=1000,
                             tooltip="Step from which skip_prob_late applies."),
            ],
            outputs=[io.Model.Output(display_name="identity_model",
                                     tooltip="The model with Consistent Self-Attention: connect it to the KSampler "
                                             "of the identity images (Story Prompt's identity prompts)."),
                     BankSocket.Output(display_name="bank",
                                       tooltip="The character bank this model fills while the identity images are "
                                               "sampled: connect it to Read Character Bank.")])

    @classmethod
    def execute(cls, model, selection_seed, rate_h32, rate_h16, rate_h8, blocks, start_step, skip_prob_early,
                skip_prob_late, late_from_step, story=None) -> io.NodeOutput:
        layers = choose_layers(unet_attention_layers(model.get_model_object("diffusion_model")), blocks)
        settings = CSASettings(seed=selection_seed, rate_h32=rate_h32, rate_h16=rate_h16, rate_h8=rate_h8,
                               gating=Gating(start_step, skip_prob_early, skip_prob_late, late_from_step))
        bank = CharacterBank("cpu")   # never the GPU: ComfyUI caches node outputs across prompts
        rows = story.identity_rows if story is not None else None
        patch = StoryAttention(layers, settings, bank, "write", rows, attend=comfy_attention)
        return io.NodeOutput(install(model, patch, layers), StoryBank(bank, model, layers, settings, story))


class ReadCharacterBank(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessStoryReadBank", display_name="Read Character Bank", category=CATEGORY,
            description="The MODEL for the panels: each panel reads the banked features of the characters it names. "
                        "Sample the panels with the same steps, scheduler and denoise as the identity images (checked: "
                        "the sigma schedules must match); the sampler and size are not checked, but keep them the "
                        "same too.",
            inputs=[
                BankSocket.Input("bank", tooltip="From Consistent Self-Attention."),
                io.Latent.Input("identity_latent",
                                tooltip="The identity sampler's output: connecting it makes the identity pass run "
                                        "first, so the bank is filled before the panels."),
                io.Model.Input("model", optional=True,
                               tooltip="Model for the panels; default: the model the identity pass used. Must be "
                                       "the same network (e.g. the same checkpoint with extra patches)."),
            ],
            outputs=[io.Model.Output(display_name="panel_model",
                                     tooltip="The model that reads the banked character features: connect it to "
                                             "the KSampler of the panels (Story Prompt's panels prompts)."),
                     io.String.Output(display_name="bank_report",
                                      tooltip="One line on what the bank holds (characters, identity images, "
                                              "steps, layers, memory): connect it to Preview Any to check it.")])

    @classmethod
    def execute(cls, bank, identity_latent, model=None) -> io.NodeOutput:
        story = bank.story
        batch = int(identity_latent["samples"].shape[0])
        if story is not None and batch != len(story.identity):
            raise BoundlessError(f"identity_latent has {batch} images but the story has {len(story.identity)} "
                                 "identity images; connect the LATENT of the sampler that used the identity_model")
        if not bank.bank.images:
            raise BoundlessError("The character bank is empty: the identity sampler did not use the identity_model "
                                 "of Consistent Self-Attention (or it was interrupted). Sample the identity images "
                                 "with that model first.")
        bank.bank.check_fresh(tensor_digest(identity_latent["samples"]))
        base = bank.model if model is None else model
        if model is not None:
            mine = {(layer.key, layer.heads, layer.dim_head) for layer in bank.layers}
            theirs = {(layer.key, layer.heads, layer.dim_head)
                      for layer in unet_attention_layers(model.get_model_object("diffusion_model"))}
            if not mine <= theirs:
                raise BoundlessError("Read Character Bank: this model's UNet differs from the one that wrote the bank "
                                     "(other blocks or head sizes); use the same checkpoint for panels and identities.")
        rows = story.panel_rows if story is not None else None
        patch = StoryAttention(bank.layers, bank.settings, bank.bank, "read", rows, attend=comfy_attention)
        report = bank.bank.describe()
        logging.info("[Boundless] %s", report)
        return io.NodeOutput(install(base, patch, bank.layers), report)


class ComicPage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessComicPage", display_name="Comic Page", category=CATEGORY,
            description="Lay the story's images out in reading order on comic pages, with captions.",
            inputs=[
                StorySocket.Input("story", tooltip="From Story Prompt (reading order and captions)."),
                io.Image.Input("identity_images",
                               tooltip="The identity sampler's images after VAE Decode: exactly identity_count "
                                       "of them, in batch order."),
                io.Image.Input("panel_images",
                               tooltip="The panel sampler's images after VAE Decode: exactly panel_count of them "
                                       "(resized to the identity images' size if they differ)."),
                io.Int.Input("columns", default=2, min=1, max=16,
                             tooltip="How many images sit side by side on a page (1-16); the page is columns x "
                                     "image width wide, plus borders."),
                io.Int.Input("rows", default=2, min=1, max=16,
                             tooltip="How many rows of images a page holds (1-16); further images start a new "
                                     "page, unused cells of the last page stay white."),
                io.Int.Input("border", default=10, min=0, max=256, tooltip="White margin around panels, in pixels."),
                io.Int.Input("caption_size", default=0, min=0, max=256,
                             tooltip="Caption font size in pixels; 0 = about 1/17 of the panel height."),
                io.Boolean.Input("captions", default=True, tooltip="Draw the captions (text after # in each line)."),
            ],
            outputs=[io.Image.Output(
                display_name="pages",
                tooltip="The comic pages, one image per page in reading order: connect them to Save Image or "
                        "Preview Image.")])

    @classmethod
    def execute(cls, story, identity_images, panel_images, columns, rows, border, caption_size,
                captions) -> io.NodeOutput:
        images = in_reading_order(story.reading_order(), identity_images, panel_images)
        pages = comic_pages(images, [line.caption for line in story.lines], columns, rows, border,
                            caption_size, captions)
        return io.NodeOutput(pages.to(comfy_glue.output_device()))


NODES = [StoryPrompt, ConsistentSelfAttention, ReadCharacterBank, ComicPage]

if os.environ.get("BOUNDLESS_TEST_NODES") == "1":
    from .testing import TinyCLIPLoader, TinyCLIPVisionLoader, TinyUNetLoader
    NODES += [TinyUNetLoader, TinyCLIPLoader, TinyCLIPVisionLoader]
