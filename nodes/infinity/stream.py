"""Stream a wide canvas to a tiled TIFF, column by column, so pixels never fill memory.

The sampler sweeps patch columns left to right (order ``right``) and holds only tokens, which are
small (a 65536x512 px canvas at 16 px per token is 131,072 tokens). Pixels are made one patch column
at a time: once column c+1 is finished, columns c-1..c+1 are decoded together and only column c is
kept, so the VQGAN sees real neighbours on both sides and the seams match a wider decode; the column
is then written as one TIFF tile (tiles are a full column high and one patch wide, which is
row-major tile order for the TIFF writer). Peak pixel memory is three columns, whatever the width.
"""
from __future__ import annotations

import dataclasses
import pathlib
import queue
import threading
from typing import Optional

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from ..common.draws import MODEL_DEVICE
from ..common.errors import BoundlessError
from ..common.images import model_to_image
from ..common.progress import Preview, Progress, no_progress
from .config import Extents
from .model import InfinityTransformer
from .sampler import TextCondition, run
from .state import CanvasState, empty_state, plan_fill


@dataclasses.dataclass
class StreamResult:
    path: str
    width: int
    height: int
    state: CanvasState
    preview: torch.Tensor          # IMAGE [1, h, w, 3], the canvas at reduced size


def decode_column(vqgan, state: CanvasState, col: int) -> np.ndarray:
    """Pixels of patch column ``col`` (batch item 0) as uint8 ``[H, patch_px, 3]``, decoded with
    its left and right neighbour columns as context."""
    _, _, cols = state.grid
    pw = state.patch_w
    lo, hi = max(col - 1, 0), min(col + 2, cols)
    tokens = state.tokens[:1, 0, :, lo * pw:hi * pw]
    if bool((tokens < 0).any()):
        raise BoundlessError(f"column {col} is not finished; cannot decode it yet")
    device = next(iter(vqgan.parameters())).device
    with torch.no_grad():
        pixels = vqgan.decode_indices(tokens.to(device)).float().cpu()
    f = vqgan.factor
    start = (col - lo) * pw * f
    image = model_to_image(pixels[..., start:start + pw * f])[0]
    return (image * 255).round().to(torch.uint8).numpy()


def stream_canvas(model: InfinityTransformer, vqgan, path: str, cols: int, rows: int, *, seed: int = 0,
                  temperature: float = 1.0, top_k: int = 0, extents: Optional[Extents] = None,
                  progress: Progress = no_progress, preview_width: int = 2048,
                  text: TextCondition = None, draws: str = MODEL_DEVICE, guidance: float = 1.0,
                  empty_text: Optional[torch.Tensor] = None, neighbour_guidance: float = 1.0,
                  edge_temperature: float = 1.0, top_p: float = 1.0, min_p: float = 0.0) -> StreamResult:
    """Generate a ``cols x rows``-patch canvas and write it to ``path`` (tiled TIFF) as it grows.

    The TIFF writer pulls tiles from a bounded queue in a worker thread while the sampler runs here;
    after each committed patch, every column whose right neighbour is finished is decoded and queued.
    On an error or interrupt the partial file is removed and the exception propagates.
    """
    state = plan_fill(empty_state(model, cols, rows, 1, 1, extents, False), "right")
    f = vqgan.factor
    patch_px = (state.patch_h * f, state.patch_w * f)
    height, width = rows * patch_px[0], cols * patch_px[1]
    small_w = max(1, round(patch_px[1] * min(1.0, preview_width / width)))
    small_h = max(1, round(height * small_w / patch_px[1]))
    small = torch.zeros(small_h, cols * small_w, 3)
    tiles: queue.Queue = queue.Queue(maxsize=2)
    finished = threading.Event()
    failure: list[BaseException] = []

    def pending():
        while (tile := tiles.get()) is not None:
            yield tile

    try:
        handle = open(path, "xb")          # never replace a file that is already there
    except FileExistsError:
        raise BoundlessError(f"{path} already exists; nothing was overwritten. Pick another filename_prefix") from None
    except OSError as exc:
        raise BoundlessError(f"cannot create {path}: {exc.strerror}; pick a shorter or different filename_prefix "
                             "in a folder you can write to") from exc

    def writer() -> None:
        try:
            with handle:
                tifffile.imwrite(handle, data=pending(), shape=(height, width, 3), dtype=np.uint8,
                                 tile=(height, patch_px[1]), photometric="rgb", compression="zlib",
                                 bigtiff=height * width * 3 > 2**31)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(exc)
            while not finished.is_set():     # keep draining so the producer never blocks on put
                try:
                    tiles.get(timeout=0.05)
                except queue.Empty:
                    pass

    next_col = [0]

    def emit_ready() -> None:
        while next_col[0] < cols and bool(state.done[0, :, next_col[0]:next_col[0] + 2].all()):
            col = next_col[0]
            tile = decode_column(vqgan, state, col)
            small[:, col * small_w:(col + 1) * small_w] = F.interpolate(
                torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 255, size=(small_h, small_w),
                mode="area")[0].permute(1, 2, 0)
            tiles.put(tile)
            next_col[0] += 1

    def on_patch(done: int, total: int, preview: Preview = None) -> None:
        emit_ready()
        progress(done, total, lambda: small[None].clone())

    def finish(writer_thread: threading.Thread) -> None:
        """End the tile stream (a short stream makes the TIFF writer fail, which is then ignored by
        the caller on the error path) and wait for the writer thread."""
        tiles.put(None)
        finished.set()
        writer_thread.join()

    thread = threading.Thread(target=writer, name="boundless-tiff-writer", daemon=True)
    thread.start()
    try:
        run(model, state, seed=seed, temperature=temperature, top_k=top_k, text=text, progress=on_patch,
            draws=draws, guidance=guidance, empty_text=empty_text, neighbour_guidance=neighbour_guidance,
            edge_temperature=edge_temperature, top_p=top_p, min_p=min_p)
        emit_ready()
    except BaseException:
        finish(thread)
        pathlib.Path(path).unlink(missing_ok=True)
        raise
    finish(thread)
    if failure:
        pathlib.Path(path).unlink(missing_ok=True)
        raise BoundlessError(f"could not write {path}: {failure[0]}") from failure[0]
    return StreamResult(path, width, height, state, small[None].clone())
