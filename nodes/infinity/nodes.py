"""ComfyUI nodes for NUWA-Infinity: load, make canvas states, generate, outpaint, decode, save/resume.

The canvas travels between nodes as a ``CanvasState`` on the ``BOUNDLESS_NCP_STATE`` socket. Nodes
never modify a state they receive: generation works on a copy, so every output stays valid and can
be reused by other branches of the graph (ComfyUI caches outputs).
"""
from __future__ import annotations

import logging
import os
import time

from comfy_api.latest import io

import comfy.model_management as mm
import folder_paths

from ..common import comfy_glue, sockets
from ..common.draws import MODE_TOOLTIP as DRAWS_TOOLTIP, MODEL_DEVICE, MODES as DRAW_MODES
from ..common.errors import BoundlessError
from ..common.images import image_to_model, model_to_image
from ..common.tokens import Tokens, fingerprint
from ..vq.loader import KIND as VQGAN_KIND
from ..vq.guided import decode_frames
from ..vq.nodes import tile_inputs
from ..vq.tiling import check_fits, check_output_fits, decode_tiled
from .adc import FUTURE, ORDERS
from .checkpoint import load_infinity
from .conditioning import guidance_text, text_condition
from .config import Extents
from .render import PatchPreview, decode_state, require_tokenizer
from .sampler import DEFAULT_MAX_POOL_BYTES, run
from .state import CanvasState, empty_state, plan_fill, plan_outpaint, state_from_tokens
from .stream import stream_canvas

InfinityModel = io.Custom("BOUNDLESS_INFINITY")
NCPState = io.Custom("BOUNDLESS_NCP_STATE")
STATE_FOLDER = "infinity_states"
# The sampling nodes' edge temperature, measured on the demo world models (BENCHMARKS.md "Where the seams
# come from"); the sampler's own default stays 1 (every token alike).
EDGE_TEMPERATURE = 0.7
# Candidates of a patch that closes a loop (sampler.run's close_candidates; BENCHMARKS.md "Closing the
# 360° loop"); the sampler's own default stays 1.
CLOSE_CANDIDATES = 8
DIRECTIONS = {"right": [("right",)], "left": [("left",)], "down": [("down",)], "up": [("up",)],
              "left+right": [("left",), ("right",)], "up+down": [("up",), ("down",)],
              "all sides": [("left",), ("right",), ("up",), ("down",)], "next frames": [(FUTURE,)]}


def _extent_inputs():
    return [io.Int.Input("e_w", default=1, min=0, max=8, tooltip="NCP extent across columns: how many patches "
                         "left/right of the current one it sees. At most what the model was trained for."),
            io.Int.Input("e_h", default=1, min=0, max=8, tooltip="NCP extent across rows (patches above/below)."),
            io.Int.Input("e_f", default=0, min=0, max=8, tooltip="NCP extent back in time (frames), for video.")]


def _sampling_inputs():
    return [io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Each patch draws from its own generator seeded from this seed and its "
                                 "position, so a resumed run gives the same canvas (see 'draws' for devices)."),
            io.Float.Input("temperature", default=1.0, min=0.0, max=3.0, step=0.05,
                           tooltip="Sampling temperature; 0 picks the most likely token (greedy)."),
            io.Int.Input("top_k", default=64, min=0, max=65536,
                         tooltip="Sample among the k most likely tokens; 0 = all tokens."),
            sockets.VQGANModel.Input("preview_vqgan", optional=True,
                                     tooltip="Optional: the VQGAN of the model, for a live preview of the "
                                             "growing canvas in the progress bar."),
            _text_input(), _draws_input(), *_guidance_inputs(), _close_candidates_input()]


def _close_candidates_input():
    return io.Int.Input("close_candidates", default=CLOSE_CANDIDATES, min=1, max=16, optional=True,
                        tooltip="For a patch that meets finished patches on its far side too (the last column of a "
                                "360° canvas, where it meets the first): draw it this many times and keep the one "
                                "the finished side continues most naturally, judged by the model (1 = draw once). "
                                "On the demo world panorama model 8 lowers the 360° seam from about 3.4 to 2.2 "
                                "ordinary token boundaries; only those patches cost more (at 8 about 5x on a CPU), "
                                "canvases without wrap-around none (BENCHMARKS.md 'Closing the 360° loop').")


def _guidance_inputs():
    return [_text_guidance_input(), _neighbour_guidance_input(), _edge_temperature_input(), *_tail_inputs()]


def _tail_inputs():
    return [io.Float.Input("top_p", default=1.0, min=0.01, max=1.0, step=0.01, optional=True,
                           tooltip="Besides top_k: sample among the most likely tokens that together hold this share "
                                   "of the probability (1 = off). On the demo world panorama model 0.95 closes the "
                                   "seams between patch columns a little further and outpaints closer to the truth, "
                                   "but steps more where an outpainting joins its context (BENCHMARKS.md 'Min-p at "
                                   "full scale')."),
            io.Float.Input("min_p", default=0.0, min=0.0, max=0.99, step=0.01, optional=True,
                           tooltip="Besides top_k: drop the tokens less likely than this times the most likely "
                                   "one (0 = off). On the demo world panorama model 0.03 halves the stray dots and "
                                   "closes the column seams, but the canvases look less like real pictures and "
                                   "outpaintings step where they join their context; from about 0.1 canvases turn "
                                   "bland (BENCHMARKS.md 'Min-p at full scale').")]


def _edge_temperature_input():
    return io.Float.Input("edge_temperature", default=EDGE_TEMPERATURE, min=0.0, max=2.0, step=0.05, optional=True,
                          tooltip="Temperature of the tokens along a finished neighbouring patch, times "
                                  "'temperature' (1 = as inside the patch). A model is less sure at patch edges "
                                  "than inside, so below 1 the edges continue their neighbours more surely and the "
                                  "steps at patch columns close, at no extra cost (BENCHMARKS.md 'Where "
                                  "the seams come from').")


def _neighbour_guidance_input():
    return io.Float.Input("neighbour_guidance", default=1.0, min=0.0, max=10.0, step=0.05, optional=True,
                          tooltip="Guidance toward the finished neighbours: 1 = off; above 1 each token weighs "
                                  "what the patches around it imply against what the patch would be alone. On the "
                                  "demo panorama model 1.5 closes the seams between patch columns, but now and then "
                                  "a patch turns into a block of other texture, and on a CPU a patch takes about "
                                  "1.25x as long (BENCHMARKS.md 'Neighbour guidance').")


def _text_guidance_input():
    return io.Float.Input("text_guidance", default=1.0, min=0.0, max=20.0, step=0.5, optional=True,
                          tooltip="Classifier-free guidance of the prompt (text models only): 1 = off; above 1 "
                                  "each token weighs the prompt more against the empty prompt, at twice the work "
                                  "per patch. Raise it in small steps: on the demo world text model 3 already "
                                  "breaks canvases into streaks and blocks.")


def _draws_input():
    return io.Combo.Input("draws", options=list(DRAW_MODES), default=MODEL_DEVICE, optional=True,
                          tooltip=DRAWS_TOOLTIP)


def _text_input():
    return sockets.Text.Input("text", optional=True,
                              tooltip="Prompt(s) from Encode Text / Regional Text, for a text-conditioned model "
                                      "(required there; an empty prompt means no text). Leave it unconnected "
                                      "for an unconditional model.")


def _run_on_copy(patcher, state: CanvasState, seed, temperature, top_k, preview_vqgan, text=None,
                 draws=MODEL_DEVICE, text_guidance=1.0, neighbour_guidance=1.0,
                 edge_temperature=EDGE_TEMPERATURE, top_p=1.0, min_p=0.0,
                 close_candidates=CLOSE_CANDIDATES) -> CanvasState:
    """Run the rest of ``state``'s plan on ComfyUI's device with progress, preview and interrupt.

    On interrupt the partly generated state is saved under output/infinity_states/ (every patch
    committed so far is kept), so ``Load NCP State`` + ``Infinity Resume`` can finish it later.
    """
    preview = None
    if preview_vqgan is None:
        model = comfy_glue.load_for_use(patcher)
    else:
        model, vqgan = comfy_glue.load_together(patcher, preview_vqgan)
        require_tokenizer(state, fingerprint(VQGAN_KIND, vqgan.quantize.embedding.weight), vqgan.factor)
        painter = PatchPreview(vqgan, state)
        preview = painter.update
    condition = text_condition(model, text)
    empty = guidance_text(model, text, text_guidance)
    total = state.plan.n_generate * model.config.tokens_per_patch
    budget = min(DEFAULT_MAX_POOL_BYTES, comfy_glue.free_memory() // 2)
    try:
        run(model, state, seed=seed, temperature=temperature, top_k=top_k, text=condition, progress_unit="token",
            progress=comfy_glue.progress_reporter(max(total, 1)), preview=preview, max_pool_bytes=budget,
            draws=draws, guidance=text_guidance, empty_text=empty, neighbour_guidance=neighbour_guidance,
            edge_temperature=edge_temperature, top_p=top_p, min_p=min_p, close_candidates=close_candidates)
    except mm.InterruptProcessingException:
        path = _save_path("interrupted")
        state.save(path)
        logging.warning("[Boundless] NUWA-Infinity interrupted after %d of %d steps; state saved to %s "
                        "(load it with 'Load NCP State' and continue with 'Infinity Resume')",
                        state.step, state.plan.n_steps, path)
        raise
    return state


def _state_dir() -> str:
    folder = os.path.join(folder_paths.get_output_directory(), STATE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return folder


def _save_path(prefix: str) -> str:
    safe = "".join(ch for ch in prefix if ch.isalnum() or ch in "-_") or "state"
    return os.path.join(_state_dir(), f"{safe}_{time.strftime('%Y%m%d-%H%M%S')}_{time.time_ns() % 10**6:06d}.safetensors")


class InfinityModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessInfinityModelLoader", display_name="Infinity Model Loader",
            category="Boundless/infinity",
            description="Load a NUWA-Infinity token decoder (trained with this pack) from models/infinity.",
            inputs=[io.Combo.Input("model_name", options=comfy_glue.model_files("infinity"),
                                   tooltip="Checkpoint in models/infinity (the pack ships "
                                           "boundless_demo_panorama.safetensors).")],
            outputs=[InfinityModel.Output(
                display_name="model",
                tooltip="The loaded NUWA-Infinity model: connect it to the model input of NCP State (empty), NCP "
                        "State from Tokens, Infinity Generate Canvas, Outpaint Step, Resume or Stream Canvas.")])

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        return io.NodeOutput(comfy_glue.managed(load_infinity(comfy_glue.model_path("infinity", model_name))))


class NCPStateEmpty(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessNCPStateEmpty", display_name="NCP State (empty)", category="Boundless/infinity",
            description="A blank canvas of cols x rows patches for NUWA-Infinity to fill "
                        "(fill it with 'Infinity Outpaint Step', direction 'fill').",
            inputs=[InfinityModel.Input("model", tooltip="The Infinity model that will fill the canvas."),
                    io.Int.Input("cols", default=4, min=1, max=4096,
                                 tooltip="Width of the blank canvas in patches (one patch is the model's patch "
                                         "size, 256 px for the demo model). Each patch costs the same time to "
                                         "fill, so wide canvases only take longer."),
                    io.Int.Input("rows", default=1, min=1, max=4096,
                                 tooltip="Height of the blank canvas in patches (256 px each for the demo "
                                         "model); 1 gives a single strip, as for a panorama."),
                    io.Int.Input("frames", default=1, min=1, max=4096,
                                 tooltip="Video frames (1 for an image). Frames are generated in time order; "
                                         "set e_f >= 1 so each frame sees the previous one."),
                    io.Int.Input("batch", default=1, min=1, max=64, tooltip="Canvases generated side by side."),
                    *_extent_inputs(),
                    io.Boolean.Input("wrap", default=False, tooltip="360° panorama: the right edge conditions "
                                                                     "on the left, so the canvas loops.")],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The blank canvas state (every patch still unknown): connect it to Infinity Outpaint "
                        "Step with direction 'fill' to generate it.")])

    @classmethod
    def execute(cls, model, cols, rows, frames, batch, e_w, e_h, e_f, wrap) -> io.NodeOutput:
        return io.NodeOutput(empty_state(model.model, cols, rows, frames, batch, Extents(e_w, e_h, e_f), wrap))


class NCPStateFromTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessNCPStateFromTokens", display_name="NCP State from Tokens",
            category="Boundless/infinity",
            description="Start a canvas from an encoded image (VQGAN Encode): its patches are pre-cached into "
                        "the Nearby Context Pool before anything new is generated next to them.",
            inputs=[InfinityModel.Input("model", tooltip="The Infinity model that will extend the image."),
                    sockets.Tokens.Input("tokens", tooltip="Tokens of the start image, from VQGAN Encode with the "
                                                           "model's VQGAN (set its outpaint_sides to the sides you "
                                                           "will extend, so no dark bar stays at the cut). Its "
                                                           "size must be whole patches."),
                    *_extent_inputs(),
                    io.Boolean.Input("wrap", default=False,
                                     tooltip="Treat the canvas as a 360° loop. Encode such a panorama with VQGAN "
                                             "Encode's wrap_360 on, so its ends carry no border codes.")],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The canvas state of the start image (all its patches known): connect it to Infinity "
                        "Outpaint Step to extend it, or to NCP State → Image or Save NCP State.")])

    @classmethod
    def execute(cls, model, tokens: Tokens, e_w, e_h, e_f, wrap) -> io.NodeOutput:
        net = model.model
        ph, pw = net.config.patch_h, net.config.patch_w
        _, h, w = tokens.indices.shape
        if h % ph or w % pw:
            f = tokens.factor
            raise BoundlessError(f"the image is {w * f}x{h * f} px, not a whole number of {pw * f}x{ph * f}-px "
                                 "patches; crop or resize it to multiples of the patch size")
        state = state_from_tokens(net, tokens.indices, Extents(e_w, e_h, e_f), wrap, tokens.tokenizer, tokens.factor)
        return io.NodeOutput(state)


class InfinityGenerateCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessInfinityGenerateCanvas", display_name="Infinity Generate Canvas",
            category="Boundless/infinity",
            description="Generate a canvas of any size from nothing, patch by patch (autoregression over "
                        "patches) and token by token inside each patch; memory per patch stays flat.",
            inputs=[InfinityModel.Input("model", tooltip="The NUWA-Infinity model from Infinity Model Loader "
                                                         "that paints the canvas."),
                    io.Int.Input("width_patches", default=16, min=1, max=4096,
                                 tooltip="Canvas width in patches (256 px each for the demo model)."),
                    io.Int.Input("height_patches", default=2, min=1, max=4096,
                                 tooltip="Canvas height in patches (256 px each for the demo model). Usually "
                                         "1-4; for canvases taller than wide use order 'down'."),
                    io.Combo.Input("order", options=list(ORDERS), default="right",
                                   tooltip="Patch order: 'right' sweeps column by column from left to right "
                                           "(best for wide canvases: the NCP holds about one column), 'down' "
                                           "row by row from the top (tall canvases); 'left'/'up' mirror them. "
                                           "'left'/'up' need a model trained with mirrored scan (the world "
                                           "panorama and text models are): older models start each patch on the side away "
                                           "from its finished neighbour and seam there."),
                    io.Int.Input("batch", default=1, min=1, max=64, tooltip="Canvases generated side by side."),
                    *_extent_inputs(),
                    io.Boolean.Input("wrap", default=False, tooltip="360° panorama: the last column conditions "
                                                                     "on the first, so the image loops."),
                    *_sampling_inputs()],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The finished canvas state (tokens, plan and NCP caches): connect it to NCP State → "
                        "Image to see it, to Infinity Outpaint Step to grow it, or to Save NCP State.")])

    @classmethod
    def execute(cls, model, width_patches, height_patches, order, batch, e_w, e_h, e_f, wrap, seed,
                temperature, top_k, preview_vqgan=None, text=None, draws=MODEL_DEVICE,
                text_guidance=1.0, neighbour_guidance=1.0,
                edge_temperature=EDGE_TEMPERATURE, top_p=1.0, min_p=0.0,
                close_candidates=CLOSE_CANDIDATES) -> io.NodeOutput:
        state = plan_fill(empty_state(model.model, width_patches, height_patches, 1, batch,
                                      Extents(e_w, e_h, e_f), wrap), order)
        return io.NodeOutput(_run_on_copy(model, state, seed, temperature, top_k, preview_vqgan, text, draws,
                                          text_guidance, neighbour_guidance, edge_temperature, top_p, min_p,
                                          close_candidates))


class InfinityOutpaintStep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessInfinityOutpaintStep", display_name="Infinity Outpaint Step",
            category="Boundless/infinity",
            description="Extend a canvas by N patches in a direction (chain several steps to grow it any way). "
                        "The known patches along the border are pre-cached first, so new patches continue them.",
            inputs=[InfinityModel.Input("model", tooltip="The model the state was made with."),
                    NCPState.Input("state", tooltip="Canvas to extend (left unchanged: a new state is output)."),
                    io.Combo.Input("direction", options=[*DIRECTIONS, "fill"], default="right",
                                   tooltip="Where to add patches. 'next frames' animates: it adds frames after "
                                           "the last one (needs a video model and e_f >= 1). 'fill' only "
                                           "generates the canvas's unknown patches (e.g. a blank NCP State)."),
                    io.Int.Input("patches", default=2, min=1, max=4096,
                                 tooltip="How many patch columns/rows to add on each chosen side "
                                         "(for 'next frames': how many frames)."),
                    *_sampling_inputs()],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The extended canvas state (the input state is left unchanged): connect it to NCP "
                        "State → Image (→ Frames for video), another Outpaint Step, or Save NCP State.")])

    @classmethod
    def execute(cls, model, state: CanvasState, direction, patches, seed, temperature, top_k,
                preview_vqgan=None, text=None, draws=MODEL_DEVICE, text_guidance=1.0,
                neighbour_guidance=1.0, edge_temperature=EDGE_TEMPERATURE, top_p=1.0, min_p=0.0,
                close_candidates=CLOSE_CANDIDATES) -> io.NodeOutput:
        state.require_model(model.model)
        if direction == "next frames" and state.extents.f < 1:
            raise BoundlessError("'next frames' needs a state with e_f >= 1 (otherwise a new frame cannot see the "
                                 "previous one); set e_f on the NCP State node, with a model trained on video")
        if direction == "fill":
            planned = plan_fill(state, "right" if state.grid[2] >= state.grid[1] else "down")
        else:
            planned = plan_outpaint(state, [(side, patches) for (side,) in DIRECTIONS[direction]])
            sides = {side for (side,) in DIRECTIONS[direction]}
            if sides & {"left", "up"} and not model.model.config.mirrored_scan:
                logging.warning("[Boundless] this NUWA-Infinity model reads every patch in raster order, so patches "
                                "added to the left or above start on the side away from the picture and may "
                                "seam where they meet it; models trained with --mirrored-scan (the world "
                                "panorama and text models) do not (README: mirrored scan)")
        return io.NodeOutput(_run_on_copy(model, planned, seed, temperature, top_k, preview_vqgan, text, draws,
                                          text_guidance, neighbour_guidance, edge_temperature, top_p, min_p,
                                          close_candidates))


class InfinityResume(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessInfinityResume", display_name="Infinity Resume", category="Boundless/infinity",
            description="Finish the plan of an interrupted canvas state (from Load NCP State). Same seed, same "
                        "result as an uninterrupted run.",
            inputs=[InfinityModel.Input("model", tooltip="The model the state was made with."),
                    NCPState.Input("state", tooltip="A state whose generation was interrupted."),
                    *_sampling_inputs()],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The completed canvas state: connect it to NCP State → Image, an Outpaint Step or "
                        "Save NCP State.")])

    @classmethod
    def execute(cls, model, state: CanvasState, seed, temperature, top_k, preview_vqgan=None,
                text=None, draws=MODEL_DEVICE, text_guidance=1.0, neighbour_guidance=1.0,
                edge_temperature=EDGE_TEMPERATURE, top_p=1.0, min_p=0.0,
                close_candidates=CLOSE_CANDIDATES) -> io.NodeOutput:
        state.require_model(model.model)
        if state.step >= len(state.plan.flat):
            raise BoundlessError("Infinity Resume: this state has nothing left to generate (its plan is finished, or "
                                 "it never had one, like a blank NCP State). Use Infinity Outpaint Step ('fill' "
                                 "generates a state's unknown patches) or Generate Canvas instead")
        return io.NodeOutput(_run_on_copy(model, state.clone(), seed, temperature, top_k, preview_vqgan, text,
                                          draws, text_guidance, neighbour_guidance, edge_temperature, top_p,
                                          min_p, close_candidates))


class NCPStateToTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessNCPStateToTokens", display_name="NCP State → Tokens", category="Boundless/infinity",
            description="The canvas's token map, for VQGAN Decode or other token nodes.",
            inputs=[NCPState.Input("state", tooltip="A finished canvas state (every patch generated); an "
                                                    "unfinished one is refused: run an Outpaint Step 'fill' or "
                                                    "Infinity Resume first."),
                    io.Int.Input("frame", default=0, min=0, max=100000,
                                 tooltip="Which frame to take, counting from 0 in time order. Use 0 for images; "
                                         "for a video it must be below the number of frames.")],
            outputs=[sockets.Tokens.Output(
                display_name="tokens",
                tooltip="The token map of that frame, tagged with the model's VQGAN: connect it to VQGAN "
                        "Decode (or another node that takes tokens).")])

    @classmethod
    def execute(cls, state: CanvasState, frame) -> io.NodeOutput:
        tokens = state.frame_tokens(frame)
        if bool((tokens < 0).any()):
            raise BoundlessError("the canvas still has patches that were never generated; run an Outpaint Step "
                                 "with direction 'fill' (or Infinity Resume) first")
        if not state.tokenizer or not state.factor:
            raise BoundlessError("this model was trained without recording its VQGAN, so its tokens cannot be "
                                 "tagged for VQGAN Decode; use 'NCP State → Image' with the right VQGAN")
        return io.NodeOutput(Tokens(scales=(tokens,), tokenizer=state.tokenizer, factor=state.factor))


class NCPStateToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessNCPStateToImage", display_name="NCP State → Image", category="Boundless/infinity",
            description="Decode the canvas with the model's VQGAN (patches not generated yet are grey). "
                        "360° canvases are decoded with circular padding so the seam is invisible.",
            inputs=[NCPState.Input("state", tooltip="The canvas state to decode, finished or not: patches "
                                                    "not generated yet are shown grey."),
                    sockets.VQGANModel.Input("vqgan", tooltip="The VQGAN the Infinity model was trained with."),
                    io.Int.Input("frame", default=0, min=0, max=100000,
                                 tooltip="Which frame to decode, counting from 0 in time order. Use 0 for "
                                         "images; for a video it must be below the number of frames."),
                    *tile_inputs()],
            outputs=[io.Image.Output(
                display_name="image",
                tooltip="The decoded canvas, one image per canvas of the batch: connect it to Preview Image "
                        "or Save Image.")])

    @classmethod
    def execute(cls, state: CanvasState, vqgan, frame, tile_size, tile_margin) -> io.NodeOutput:
        model = comfy_glue.load_for_use(vqgan)
        require_tokenizer(state, fingerprint(VQGAN_KIND, model.quantize.embedding.weight), model.factor)
        _, rows, cols = state.grid
        height, width = rows * state.patch_h * model.factor, cols * state.patch_w * model.factor
        check_output_fits(state.batch, height, width, comfy_glue.free_output_memory(), "NCP State → Image")
        check_fits(model.config, state.batch, height, width, comfy_glue.free_memory(), tile_size, tile_margin)
        image = decode_state(model, state, frame,
                             decode=lambda idx: decode_tiled(model, idx, tile_size, tile_margin),
                             progress=comfy_glue.progress_reporter(1))
        return io.NodeOutput(image.to(comfy_glue.output_device()))


class NCPStateToFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessNCPStateToFrames", display_name="NCP State → Frames", category="Boundless/infinity",
            description="Decode every frame of a video canvas to an image batch (frames in time order; with a "
                        "batch of videos, all frames of the first, then the second, ...). With a pixel guide each "
                        "frame is decoded with the previous output frame as a guide (PG-VQGAN), which steadies "
                        "details that the tokens leave open.",
            inputs=[NCPState.Input("state", tooltip="A finished video canvas state."),
                    sockets.VQGANModel.Input("vqgan", tooltip="The VQGAN the Infinity model was trained with."),
                    sockets.PixelGuide.Input("pixel_guide", optional=True,
                                             tooltip="Optional: the VQGAN's pixel guide (Pixel Guide Loader). "
                                                     "Without it every frame is decoded on its own."),
                    io.Image.Input("first_frame", optional=True,
                                   tooltip="Optional: the image that was animated. Output frame 0 is then this "
                                           "image exactly, and it guides frame 1 (needs a pixel guide).")],
            outputs=[io.Image.Output(
                display_name="frames",
                tooltip="Every decoded frame as one image batch in time order (all frames of the first video, "
                        "then the next): connect it to Save Video (Boundless), Preview Image or Save Image.")])

    @classmethod
    def execute(cls, state: CanvasState, vqgan, pixel_guide=None, first_frame=None) -> io.NodeOutput:
        tokens_bfhw = state.tokens
        if bool((tokens_bfhw < 0).any()):
            raise BoundlessError("the video still has patches that were never generated; run an Outpaint Step "
                                 "(or Infinity Resume) first")
        if pixel_guide is None:
            model = comfy_glue.load_for_use(vqgan)
            guide = None
        else:
            model, guide = comfy_glue.load_together(vqgan, pixel_guide)
        require_tokenizer(state, fingerprint(VQGAN_KIND, model.quantize.embedding.weight), model.factor)
        batch, frames, h, w = tokens_bfhw.shape
        check_output_fits(batch * frames, h * model.factor, w * model.factor, comfy_glue.free_output_memory(),
                          "NCP State → Frames")
        check_fits(model.config, batch, h * model.factor, w * model.factor, comfy_glue.free_memory(), 0, 0)
        device = comfy_glue.compute_device()
        first_bchw = None
        if first_frame is not None:
            if guide is None:
                raise BoundlessError("'first_frame' is only used by pixel-guided decoding; connect a pixel guide "
                                     "or disconnect first_frame")
            if tuple(first_frame.shape[1:3]) != (h * model.factor, w * model.factor):
                raise BoundlessError(f"first_frame is {first_frame.shape[2]}x{first_frame.shape[1]} px but the video "
                                     f"is {w * model.factor}x{h * model.factor}; connect the image that was "
                                     "encoded into the state")
            first_bchw = image_to_model(first_frame[:1]).expand(batch, -1, -1, -1).to(device)
        pixels_fbchw = decode_frames(model, tokens_bfhw.transpose(0, 1).to(device), guide, first_bchw,
                                     progress=comfy_glue.progress_reporter(frames))
        pixels_nchw = pixels_fbchw.transpose(0, 1).flatten(0, 1).float().cpu()
        return io.NodeOutput(model_to_image(pixels_nchw).to(comfy_glue.output_device()))


class SaveNCPState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessSaveNCPState", display_name="Save NCP State", category="Boundless/infinity",
            description="Write a canvas state (tokens, plan and live NCP caches) to output/infinity_states/ "
                        "so it can be loaded and continued later.",
            inputs=[NCPState.Input("state", tooltip="The canvas state to write, finished or not (an unfinished "
                                                    "one can be loaded later and finished with Infinity Resume)."),
                    io.String.Input("filename_prefix", default="canvas",
                                    tooltip="Start of the file name in output/infinity_states/; the date, time and "
                                            "a unique number are appended. Only letters, digits, '-' and '_' are "
                                            "kept.")],
            outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, state: CanvasState, filename_prefix) -> io.NodeOutput:
        path = _save_path(filename_prefix)
        state.save(path)
        return io.NodeOutput(ui={"text": [os.path.relpath(path, folder_paths.get_output_directory())]})


class LoadNCPState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = sorted(f for f in os.listdir(_state_dir()) if f.endswith(".safetensors"))
        return io.Schema(
            node_id="BoundlessLoadNCPState", display_name="Load NCP State", category="Boundless/infinity",
            description="Load a canvas state saved by Save NCP State or by an interrupted generation.",
            inputs=[io.Combo.Input("state_file", options=files,
                                   tooltip="A file in output/infinity_states/ (interrupted runs are saved there "
                                           "as interrupted_*.safetensors). Empty until a state has been saved: "
                                           "run Save NCP State first, then refresh the page.")],
            outputs=[NCPState.Output(
                display_name="state",
                tooltip="The saved canvas state: connect it to Infinity Resume to finish an interrupted run, to "
                        "an Outpaint Step to grow it, or to NCP State → Image to see it.")])

    @classmethod
    def execute(cls, state_file) -> io.NodeOutput:
        path = os.path.join(_state_dir(), os.path.basename(state_file))
        return io.NodeOutput(CanvasState.load(path))


class InfinityStreamCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessInfinityStreamCanvas", display_name="Infinity Stream Canvas To Disk",
            category="Boundless/infinity", is_output_node=True,
            description="Generate a canvas wider than memory would hold as one image (e.g. 65536x512) and write "
                        "it column by column to a tiled TIFF in output/; only a few columns of pixels are ever "
                        "in memory. Outputs the final state and a reduced preview.",
            inputs=[InfinityModel.Input("model", tooltip="The NUWA-Infinity model from Infinity Model Loader "
                                                         "that paints the canvas."),
                    sockets.VQGANModel.Input("vqgan", tooltip="The VQGAN the model was trained with."),
                    io.Int.Input("width_patches", default=64, min=1, max=65536,
                                 tooltip="Canvas width in patches (256 px each for the demo model). The canvas "
                                         "is written column by column, so width costs time and disk, not "
                                         "memory."),
                    io.Int.Input("height_patches", default=2, min=1, max=64,
                                 tooltip="Canvas height in patches (256 px each for the demo model). A whole "
                                         "column of patches is decoded at once, so keep it small."),
                    *_extent_inputs(), *_sampling_inputs()[:3],
                    io.String.Input("filename_prefix", default="boundless/infinity_stream",
                                    tooltip="Path under output/ (without extension) of the .tif file."),
                    _text_input(), _draws_input(), *_guidance_inputs()],
            outputs=[NCPState.Output(display_name="state",
                                     tooltip="The final canvas state (tokens of the whole canvas): connect it to "
                                             "Save NCP State to keep it, or to an Outpaint Step to extend it."),
                     io.Image.Output(display_name="preview",
                                     tooltip="The canvas shrunk to at most about 2048 px wide, for Preview Image; "
                                             "the full-size picture is the .tif file written to output/.")])

    @classmethod
    def execute(cls, model, vqgan, width_patches, height_patches, e_w, e_h, e_f, seed, temperature, top_k,
                filename_prefix, text=None, draws=MODEL_DEVICE, text_guidance=1.0,
                neighbour_guidance=1.0, edge_temperature=EDGE_TEMPERATURE, top_p=1.0, min_p=0.0) -> io.NodeOutput:
        net, tokenizer = comfy_glue.load_together(model, vqgan)
        condition = text_condition(net, text)
        empty = guidance_text(net, text, text_guidance)
        if net.tokenizer and net.tokenizer != fingerprint(VQGAN_KIND, tokenizer.quantize.embedding.weight):
            raise BoundlessError("this VQGAN is not the one the Infinity model was trained with; connect that one")
        folder, name, counter, subfolder = comfy_glue.save_location("Infinity Stream Canvas", filename_prefix)
        # ComfyUI's counter only recognises "name_00001_.ext", so that is the pattern to use.
        path = os.path.join(folder, f"{name}_{counter:05}_.tif")
        result = stream_canvas(net, tokenizer, path, width_patches, height_patches, seed=seed,
                               temperature=temperature, top_k=top_k, extents=Extents(e_w, e_h, e_f), text=condition,
                               progress=comfy_glue.progress_reporter(width_patches * height_patches), draws=draws,
                               guidance=text_guidance, empty_text=empty, neighbour_guidance=neighbour_guidance,
                               edge_temperature=edge_temperature, top_p=top_p, min_p=min_p)
        logging.info("[Boundless] wrote %dx%d px canvas to %s", result.width, result.height, path)
        return io.NodeOutput(result.state, result.preview.to(comfy_glue.output_device()),
                             ui={"text": [f"{os.path.join(subfolder, os.path.basename(path))} "
                                          f"({result.width}x{result.height} px)"]})


NODES = [InfinityModelLoader, NCPStateEmpty, NCPStateFromTokens, InfinityGenerateCanvas, InfinityOutpaintStep,
         InfinityResume, NCPStateToTokens, NCPStateToImage, NCPStateToFrames, SaveNCPState, LoadNCPState,
         InfinityStreamCanvas]
