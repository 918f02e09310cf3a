"""ComfyUI nodes for StoryDiffusion's second stage, the Semantic Motion Predictor, and video output
(glue; the logic is in smp.py, motion_tokens.py, motion_patch.py and common/video.py).

From two story frames (or a batch of them) to a transition video with the user's own SD1.5-type
model: **SMP Loader** -> **Semantic Motion Predict** (image-encoder embeddings of the keyframes,
per-frame embeddings in between) -> **Apply Motion Conditioning** (frame ``i``'s image tokens go into
the cross-attention of batch item ``i``) -> any sampler with a latent batch of ``frame_count`` ->
VAE Decode -> **Save Video**.
"""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from typing import Mapping, Optional

import torch
from comfy_api.latest import InputImpl, Types, io, ui

import folder_paths
from comfy.ldm.modules.attention import optimized_attention

from ..common import comfy_glue
from ..common.errors import BoundlessError
from ..common import video
from ..common.weights import read_checkpoint
from .motion_patch import MotionCrossAttention, cross_attention_layers
from .motion_tokens import MotionConditioner, flatten_ip_adapter, has_conditioning, load_conditioner
from .smp import PREFIX, SemanticMotionPredictor, load_predictor, story_motion

SMPSocket = io.Custom("BOUNDLESS_SMP")          # MotionModels below
MotionSocket = io.Custom("BOUNDLESS_MOTION")    # Motion below

CATEGORY = "Boundless/story"
FROM_SMP_FILE = "(from the SMP file)"
MODES = ("semantic motion predictor", "linear interpolation (baseline)")
UNCOND = ("zero image embedding (IP-Adapter)", "text only")
IPADAPTER_FOLDER = "ipadapter"
EMBEDDINGS_FOLDER = "motion_embeddings"
NO_FILE = "none"


comfy_glue.register_folder(IPADAPTER_FOLDER)        # models/ipadapter, where IP-Adapter files usually live
comfy_glue.register_folder(EMBEDDINGS_FOLDER, {".safetensors"})


@dataclasses.dataclass
class MotionModels:
    """What flows on the BOUNDLESS_SMP socket."""

    predictor: object                 # ModelPatcher around SemanticMotionPredictor
    conditioner: Optional[object]     # ModelPatcher around MotionConditioner, or None
    embed_dim: int
    name: str


@dataclasses.dataclass
class Motion:
    """What flows on the BOUNDLESS_MOTION socket: per-frame embeddings of the whole video."""

    embeds: torch.Tensor              # [T, D] float32, CPU
    keyframes: int
    frames_per_transition: int
    mode: str


def comfy_attention(q, k, v, heads, attn_precision=None):
    """ComfyUI's configured attention (xformers / SDPA / sage / sub-quadratic)."""
    return optimized_attention(q, k, v, heads, attn_precision=attn_precision)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise BoundlessError(f"{os.path.basename(path)} holds a {type(checkpoint).__name__}, not named weights; "
                             "pick an SMP file (scripts/train_smp.py) or an IP-Adapter file")
    return flatten_ip_adapter(checkpoint)


class SMPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessSMPLoader", display_name="SMP Loader", category=CATEGORY,
            description="Load a Semantic Motion Predictor (models/story) and the image-prompt cross-attention "
                        "weights that bring its embeddings into the UNet (from the same file or an IP-Adapter file).",
            inputs=[
                io.Combo.Input("smp_name", options=comfy_glue.model_files("story"),
                               tooltip="Predictor file in models/story (made by scripts/train_smp.py). It must be "
                                       "trained on the embeddings of the image encoder you connect later."),
                io.Combo.Input("cross_attention", options=[FROM_SMP_FILE] + folder_paths.get_filename_list(
                    IPADAPTER_FOLDER), default=FROM_SMP_FILE,
                               tooltip="Token projection + per-layer to_k_ip/to_v_ip weights: from the SMP file, or "
                                       "a basic IP-Adapter file in models/ipadapter (e.g. ip-adapter_sd15) made for "
                                       "the same image encoder and your model family."),
            ],
            outputs=[SMPSocket.Output(
                display_name="smp",
                tooltip="The motion predictor and its cross-attention weights: connect it to Semantic Motion "
                        "Predict and to Apply Motion Conditioning.")])

    @classmethod
    def execute(cls, smp_name, cross_attention) -> io.NodeOutput:
        sd = read_weights(comfy_glue.model_path("story", smp_name))
        if not any(k.startswith(PREFIX) for k in sd):
            raise BoundlessError(f"{smp_name} holds no Semantic Motion Predictor (no '{PREFIX}*' tensors). Pick an SMP "
                                 "file as smp_name; IP-Adapter files go into cross_attention.")
        predictor = load_predictor(sd, f"SMP {smp_name}")
        conditioner: Optional[MotionConditioner] = None
        if cross_attention == FROM_SMP_FILE:
            if has_conditioning(sd):
                conditioner = load_conditioner(sd, f"cross-attention weights in {smp_name}")
        else:
            path = comfy_glue.model_path(IPADAPTER_FOLDER, cross_attention)
            conditioner = load_conditioner(read_weights(path), f"IP-Adapter {cross_attention}")
        d = predictor.config.embed_dim
        if conditioner is not None and conditioner.config.embed_dim != d:
            raise BoundlessError(
                f"the predictor works on {d}-wide image embeddings but the cross-attention weights expect "
                f"{conditioner.config.embed_dim}-wide ones: both must come from the same image encoder (e.g. CLIP "
                "ViT-H gives 1024). Train a predictor for that encoder with scripts/train_smp.py --clip-vision <file>.")
        # The predictor is a few MB and runs once per video: float32 costs nothing there and keeps its
        # time features and embeddings in one dtype; the IP-Adapter weights follow ComfyUI's choice.
        return io.NodeOutput(MotionModels(comfy_glue.managed(predictor, supported=(torch.float32,)),
                                          None if conditioner is None else comfy_glue.managed(conditioner),
                                          d, smp_name))


def keyframe_embeddings(clip_vision, images: list[torch.Tensor], crop: bool) -> torch.Tensor:
    """Image-encoder embeddings ``[N, D]`` of the keyframes, in order."""
    rows = []
    for image in images:
        out = clip_vision.encode_image(image, crop=crop)
        embeds = out["image_embeds"]
        if embeds is None:
            raise BoundlessError("this CLIP vision model gives no image embeddings (image_embeds); use a CLIP vision "
                                 "model with a projection (e.g. CLIP-ViT-H-14 or ViT-L-14)")
        rows.append(embeds.float().cpu())
    return torch.cat(rows)


def embeddings_from_file(name: str) -> torch.Tensor:
    """Precomputed keyframe embeddings ``[N, D]`` of a file in models/motion_embeddings: key
    ``image_embeds`` or the file's only tensor. Only names from the folder's list are read, so a
    prompt cannot make the server open (or reveal) any other file."""
    path = comfy_glue.model_path(EMBEDDINGS_FOLDER, name)
    tensors = read_weights(path)
    embeds = tensors.get("image_embeds")
    if embeds is None:
        if len(tensors) != 1:
            raise BoundlessError(f"{os.path.basename(path)} holds {len(tensors)} tensors; name the keyframe "
                                 "embeddings 'image_embeds' ([N, D])")
        embeds = next(iter(tensors.values()))
    if embeds.ndim != 2 or embeds.shape[0] == 0 or embeds.shape[1] == 0 or not embeds.is_floating_point():
        raise BoundlessError(f"{os.path.basename(path)}: the keyframe embeddings must be a float tensor [N, D] with "
                             f"N >= 1 keyframes, got {embeds.dtype} of shape {tuple(embeds.shape)} (per-patch "
                             "states or a batch of them are not keyframe embeddings)")
    if not bool(torch.isfinite(embeds).all()):
        raise BoundlessError(f"{os.path.basename(path)}: the keyframe embeddings hold NaN or inf values (a float16 "
                             "export that overflowed?); recompute them in float32")
    return embeds.float()


class SemanticMotionPredict(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessSemanticMotionPredict", display_name="Semantic Motion Predict", category=CATEGORY,
            description="Per-frame semantic embeddings of a transition video between two story frames (or through a "
                        "batch of story frames, pair by pair), predicted from image-encoder embeddings.",
            inputs=[
                SMPSocket.Input("smp", tooltip="The Semantic Motion Predictor from SMP Loader; it must be trained "
                                               "on the embeddings of the image encoder used here."),
                io.Int.Input("frames", default=16, min=2, max=256,
                             tooltip="Frames per transition, both keyframes included. N keyframes give "
                                     "(N-1)*(frames-1)+1 frames in all."),
                io.Combo.Input("mode", options=list(MODES), default=MODES[0],
                               tooltip="The trained predictor, or plain linear interpolation of the two "
                                       "embeddings (the baseline, for comparison)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Image encoder (CLIP Vision loader): the one the predictor was trained "
                                            "with."),
                io.Image.Input("start", optional=True,
                               tooltip="Start frame; a batch of several story frames makes one transition per "
                                       "consecutive pair."),
                io.Image.Input("end", optional=True, tooltip="End frame(s), appended after start."),
                io.Boolean.Input("crop", default=True, optional=True,
                                 tooltip="Centre-crop to a square before encoding (as CLIP Vision Encode does)."),
                io.Combo.Input("embeddings_file", options=[NO_FILE] + comfy_glue.model_files(EMBEDDINGS_FOLDER),
                               default=NO_FILE, optional=True,
                               tooltip="Instead of images: precomputed keyframe embeddings 'image_embeds' [N, D], a "
                                       ".safetensors file in ComfyUI/models/motion_embeddings (refresh after adding "
                                       "one); 'none' encodes the start/end images."),
            ],
            outputs=[MotionSocket.Output(display_name="motion",
                                         tooltip="The predicted per-frame embeddings of the whole video: connect "
                                                 "them to Apply Motion Conditioning."),
                     io.Int.Output(display_name="frame_count",
                                   tooltip="How many frames the video has, (keyframes-1)*(frames-1)+1: connect it "
                                           "to batch_size of the Empty Latent Image that is sampled.")])

    @classmethod
    def execute(cls, smp, frames, mode, clip_vision=None, start=None, end=None, crop=True,
                embeddings_file=NO_FILE) -> io.NodeOutput:
        if embeddings_file != NO_FILE:
            keyframes_nd = embeddings_from_file(embeddings_file)
        else:
            images = [image for image in (start, end) if image is not None]
            if clip_vision is None or not images:
                raise BoundlessError("Semantic Motion Predict needs keyframes: connect a CLIP vision model and a start "
                                     "and end image (or a batch of story frames to start), or pick an embeddings_file")
            keyframes_nd = keyframe_embeddings(clip_vision, images, crop)
        if keyframes_nd.shape[0] < 2:
            raise BoundlessError("Semantic Motion Predict got a single keyframe; connect an end image, or a batch of at "
                                 "least two story frames to start")
        if keyframes_nd.shape[1] != smp.embed_dim:
            raise BoundlessError(
                f"the image encoder gives {keyframes_nd.shape[1]}-wide embeddings but the predictor {smp.name} was "
                f"trained on {smp.embed_dim}-wide ones: connect the encoder it was trained with (its file's metadata "
                "names it), or train a predictor for this encoder with scripts/train_smp.py --clip-vision <its file>")
        if mode == MODES[0]:
            predictor: SemanticMotionPredictor = comfy_glue.load_for_use(smp.predictor)
            device = next(predictor.parameters()).device
            with torch.no_grad():
                embeds = story_motion(keyframes_nd.to(device), frames, predictor).float().cpu()
        else:
            embeds = story_motion(keyframes_nd, frames).float()
        motion = Motion(embeds, int(keyframes_nd.shape[0]), frames, mode)
        return io.NodeOutput(motion, int(embeds.shape[0]))


class ApplyMotionConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessApplyMotionConditioning", display_name="Apply Motion Conditioning", category=CATEGORY,
            description="Patch the model so batch item i is conditioned on frame i's predicted embedding through "
                        "image-prompt cross-attention (IP-Adapter style), added to the text cross-attention. Sample "
                        "with a latent batch of frame_count (SD1.5-type models, also with AnimateDiff-style motion "
                        "modules).",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5-type model (the cross-attention weights must fit it)."),
                SMPSocket.Input("smp", tooltip="From SMP Loader (its cross-attention weights are used)."),
                MotionSocket.Input("motion", tooltip="Per-frame embeddings from Semantic Motion Predict: batch "
                                                     "item i of the latent gets frame i's embedding."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                               tooltip="Scale of the image-prompt attention added to the text attention."),
                io.Combo.Input("uncond", options=list(UNCOND), default=UNCOND[0],
                               tooltip="What the negative (uncond) batch sees: the tokens of a zero embedding, as "
                                       "IP-Adapter does, or only the text."),
            ],
            outputs=[io.Model.Output(
                display_name="model",
                tooltip="The patched model: connect it to a KSampler with a latent batch of frame_count, then "
                        "VAE Decode and Save Video (Boundless).")])

    @classmethod
    def execute(cls, model, smp, motion, weight, uncond) -> io.NodeOutput:
        if smp.conditioner is None:
            raise BoundlessError(f"{smp.name} has no cross-attention weights: pick an IP-Adapter file in SMP Loader's "
                                 "cross_attention (e.g. ip-adapter_sd15 for SD1.5 with CLIP ViT-H embeddings)")
        conditioner: MotionConditioner = smp.conditioner.model
        layers = cross_attention_layers(model.get_model_object("diffusion_model"))
        cond_tnc = conditioner.tokens(motion.embeds)
        uncond_tnc = conditioner.tokens(torch.zeros(1, motion.embeds.shape[1])) if uncond == UNCOND[0] else None
        patch = MotionCrossAttention(layers, conditioner, cond_tnc, uncond_tnc, weight, attend=comfy_attention)
        patched = model.clone()
        for layer in layers:
            patched.set_model_attn2_replace(patch, layer.block, layer.number, layer.block_index)
        patched.set_additional_models("boundless_motion", [smp.conditioner])
        return io.NodeOutput(patched)


class SaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessSaveVideo", display_name="Save Video (Boundless)", category=CATEGORY,
            description="Write an image batch as a video (mp4 H.264, animated webp or gif) into the output folder; "
                        "also outputs it as ComfyUI's VIDEO for the core video nodes.",
            inputs=[
                io.Image.Input("images", tooltip="The frames to write, in playback order: an image batch of one "
                                                 "size, e.g. from VAE Decode or NCP State → Frames."),
                io.String.Input("filename_prefix", default="Boundless/story_video",
                                tooltip="Output file name prefix; may contain a subfolder."),
                io.Combo.Input("format", options=list(video.FORMATS), default="mp4",
                               tooltip="mp4 (H.264 via imageio-ffmpeg), animated webp, or gif."),
                io.Float.Input("fps", default=8.0, min=0.1, max=120.0, step=0.5,
                               tooltip="Playback speed in frames per second (0.1-120): the video lasts the number "
                                       "of frames / fps seconds. Higher is smoother and shorter."),
                io.Int.Input("loop_count", default=0, min=0, max=100,
                             tooltip="webp/gif: how often the animation repeats; 0 = forever (mp4 has no loop flag)."),
                io.Boolean.Input("pingpong", default=False,
                                 tooltip="Play forwards then backwards (a seamless loop for transitions)."),
                io.Int.Input("quality", default=90, min=1, max=100, tooltip="mp4 / webp quality (gif ignores it)."),
            ],
            outputs=[io.Video.Output(display_name="video",
                                     tooltip="The same frames as ComfyUI's VIDEO (the file is already saved): "
                                             "optional, for core video nodes such as Save Video.")],
            is_output_node=True)

    @classmethod
    def execute(cls, images, filename_prefix, format, fps, loop_count, pingpong, quality) -> io.NodeOutput:
        frames = video.frames_to_uint8(images)
        if pingpong:
            frames = video.pingpong(frames)
        height, width = frames.shape[1:3]
        folder, name, counter, subfolder = comfy_glue.save_location("Save Video", filename_prefix, width, height)
        file = f"{name}_{counter:05}_.{format}"
        video.write_video(frames, os.path.join(folder, file), fps, loop_count, quality)
        components = Types.VideoComponents(images=torch.from_numpy(frames).float() / 255.0,
                                           frame_rate=Fraction(fps).limit_denominator(1000))
        return io.NodeOutput(InputImpl.VideoFromComponents(components),
                             ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))


NODES = [SMPLoader, SemanticMotionPredict, ApplyMotionConditioning, SaveVideo]

if os.environ.get("BOUNDLESS_TEST_NODES") == "1":
    from .motion_testing import StandInVisionLoader
    NODES.append(StandInVisionLoader)
