"""ComfyUI-side helpers shared by every ``nodes.py``: folders, memory management, progress.

This is glue, like the ``nodes.py`` files: it imports ``comfy`` and ``folder_paths`` and is only
imported when the pack runs inside ComfyUI. Pure-torch modules never import it.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import torch

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths

from .errors import BoundlessError
from .precision import HALF_AND_FULL, cast_module
from .progress import Preview

# ComfyUI models/<kind> folders the pack reads weights from, and the files each lists (None: every
# weight extension ComfyUI knows; pixel guides are read from .safetensors only).
MODEL_FOLDERS = {"vqgan": None, "pixel_guide": {".safetensors"}, "paella": None, "var": None, "infinity": None,
                 "story": None}
PACK_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "models")


def register_folder(kind: str, extensions=None) -> None:
    """Make ``models/<kind>`` list files with ``extensions`` (default: ComfyUI's weight extensions).

    ComfyUI reads extra_model_paths.yaml before custom nodes load, and a kind named there arrives
    as an entry holding only the user's folders and *no* extension filter (every file listed). So an
    existing entry keeps the user's folders and gains ``models/<kind>`` beside them, and an empty
    filter gets ours; a filter someone else set (another pack) is left alone.
    """
    wanted = set(extensions if extensions is not None else folder_paths.supported_pt_extensions)
    default = os.path.join(folder_paths.models_dir, kind)
    if kind not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[kind] = ([default], wanted)
        return
    paths, exts = folder_paths.folder_names_and_paths[kind]
    if default not in paths:
        paths.append(default)
    if not exts:
        exts.update(wanted)


def register_model_folders() -> None:
    """Register models/<kind> for each of the pack's kinds, plus the pack's bundled models."""
    for kind, extensions in MODEL_FOLDERS.items():
        register_folder(kind, extensions)
        bundled = os.path.join(PACK_MODELS_DIR, kind)
        if os.path.isdir(bundled):
            folder_paths.add_model_folder_path(kind, bundled)


def model_files(kind: str) -> list[str]:
    return folder_paths.get_filename_list(kind)


def model_path(kind: str, name: str) -> str:
    """Full path of a file from the ``models/<kind>`` list; anything else is refused the same way
    (ComfyUI resolves names inside the kind's folders only, so ``../`` or absolute paths never leave them)."""
    path = folder_paths.get_full_path(kind, name)
    if path is None:
        raise BoundlessError(f"{name!r} is not a file in ComfyUI/models/{kind}; put the file there and pick it from "
                             "the list (refresh the page after adding files)")
    return path


# What a network is to ComfyUI's precision choice: a denoiser/transformer ("unet" flags), a
# tokenizer or decoder of pixels ("vae" flags) or a text encoder ("text_enc" flags).
GENERATOR, TOKENIZER, TEXT_ENCODER = "generator", "tokenizer", "text encoder"


def chosen_dtype(module: torch.nn.Module, role: str = GENERATOR,
                 supported: tuple[torch.dtype, ...] = HALF_AND_FULL) -> torch.dtype:
    """The dtype ComfyUI picks for this kind of network on its compute device.

    Its own helpers decide, so the user's ``--force-fp32``, ``--bf16-unet``, ``--fp16-vae``,
    ``--fp32-text-enc``... flags hold: bf16 or fp16 on a GPU that runs them well, float32 on a CPU.
    A dtype the network cannot compute in (an fp8 flag) falls back to ComfyUI's manual-cast choice.
    """
    device = mm.get_torch_device()
    if role == TOKENIZER:
        dtype = mm.vae_dtype(device, allowed_dtypes=list(supported))
    elif role == TEXT_ENCODER:
        # ComfyUI keeps text encoder weights in fp16 and computes on a CPU in float32; so do we.
        dtype = torch.float32 if mm.is_device_cpu(device) else mm.text_encoder_dtype(device)
    else:
        params = sum(p.numel() for p in module.parameters())
        dtype = mm.unet_dtype(device, model_params=params, supported_dtypes=list(supported))
    if dtype not in supported:
        dtype = mm.unet_manual_cast(dtype, device, list(supported)) or torch.float32
    return dtype


def managed(module: torch.nn.Module, role: str = GENERATOR, dtype: torch.dtype | None = None,
            supported: tuple[torch.dtype, ...] = HALF_AND_FULL) -> comfy.model_patcher.ModelPatcher:
    """Put a pure-torch network under ComfyUI's memory manager (offloaded until used), cast to the
    dtype ComfyUI picks for its role (or ``dtype``), float32 parts kept (``precision.cast_module``)."""
    module.eval().requires_grad_(False)
    cast_module(module, dtype or chosen_dtype(module, role, supported))
    return comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def load_for_use(patcher: comfy.model_patcher.ModelPatcher, memory_required: int = 0) -> torch.nn.Module:
    """Ask ComfyUI to place the model on its compute device; return the module to call."""
    return load_together(patcher, memory_required=memory_required)[0]


def load_together(*patchers: comfy.model_patcher.ModelPatcher, memory_required: int = 0) -> list[torch.nn.Module]:
    """Place several models at once (a sampler and its VQGAN), so loading one never evicts the other."""
    mm.load_models_gpu(list(patchers), memory_required=memory_required)
    return [patcher.model for patcher in patchers]


def clip_vision_model(config: dict) -> comfy.clip_vision.ClipVisionModel:
    """ComfyUI's own CLIP vision model (its memory management, dtype choice and outputs) for a
    configuration ComfyUI does not ship; its constructor reads the configuration from a JSON file."""
    handle, path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(config, f)
        return comfy.clip_vision.ClipVisionModel(path)
    finally:
        os.unlink(path)


def compute_device() -> torch.device:
    return mm.get_torch_device()


def free_memory() -> int:
    """Bytes free on the compute device (RAM when running on CPU)."""
    return int(mm.get_free_memory(mm.get_torch_device()))


def free_output_memory() -> int:
    """Bytes free where node outputs live (RAM, or the GPU with --gpu-only)."""
    return int(mm.get_free_memory(mm.intermediate_device()))


def save_location(node: str, filename_prefix: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """ComfyUI's (folder, name, next counter, subfolder) for a prefix under output/, in our words on
    failure (a folder in the prefix that is a file, a name the file system refuses, ...)."""
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
    except Exception as exc:          # ComfyUI raises a bare Exception for paths outside output/
        raise BoundlessError(f"{node}: cannot save under filename_prefix {filename_prefix[:80]!r} ({exc}); give a "
                             "name inside ComfyUI's output folder, such as 'Boundless/my_canvas'") from exc
    return folder, name, counter, subfolder


def output_device() -> torch.device:
    return mm.intermediate_device()


def progress_reporter(total: int, preview_size: int = 512, min_interval: float = 0.25):
    """A ``Progress`` callable backed by a ComfyUI ProgressBar; it raises on interrupt.

    Every call is an interrupt point. The bar itself (a websocket message) is updated at most every
    ``min_interval`` seconds, and always when a preview is offered or the loop finishes, so loops
    may report per token without flooding the client.
    """
    bar = comfy.utils.ProgressBar(total)
    last = [0.0]

    def report(done: int, total_now: int, preview: Preview = None) -> None:
        mm.throw_exception_if_processing_interrupted()
        now = time.monotonic()
        if preview is None and done < total_now and now - last[0] < min_interval:
            return
        last[0] = now
        shown = None
        if preview is not None:
            image = preview()
            if image is not None:
                from PIL import Image
                array = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                shown = ("JPEG", Image.fromarray(array), preview_size)
        bar.update_absolute(done, total_now, preview=shown)

    return report
