"""Frames -> video file (mp4, animated webp or gif) through imageio; pure, no comfy import.

mp4 is H.264 in yuv420p written by the ffmpeg binary that ``imageio-ffmpeg`` ships (so nothing on the
system is needed); yuv420p needs even sizes, so an odd width or height is padded by repeating the last
column/row. webp and gif go through imageio's Pillow plugin; gif stores delays in 1/100 s, so its frame
rate is rounded to that. ``loop_count`` (0 = forever) applies to webp and gif; an mp4 has no loop flag.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import BoundlessError

FORMATS = ("mp4", "webp", "gif")


def frames_to_uint8(frames_thwc: torch.Tensor) -> np.ndarray:
    """IMAGE batch ``[T, H, W, C]`` in 0..1 -> uint8 ``[T, H, W, 3]`` (alpha dropped, grey expanded)."""
    if frames_thwc.ndim != 4 or frames_thwc.shape[-1] not in (1, 3, 4):
        raise BoundlessError(f"video frames must be an IMAGE batch [T,H,W,3], got shape {tuple(frames_thwc.shape)}")
    if frames_thwc.shape[0] < 1:
        raise BoundlessError("no frames to write: the image batch is empty")
    x = frames_thwc[..., :3] if frames_thwc.shape[-1] != 1 else frames_thwc.expand(-1, -1, -1, 3)
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def pingpong(frames: np.ndarray) -> np.ndarray:
    """Forward then backward without repeating the turning frames: 0 1 2 3 -> 0 1 2 3 2 1."""
    return np.concatenate([frames, frames[-2:0:-1]]) if len(frames) > 2 else frames


def pad_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where height/width is odd (H.264 yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames: np.ndarray, path: str, fps: float, loop_count: int = 0, quality: int = 90) -> str:
    """Write uint8 ``[T, H, W, 3]`` frames to a *new* file ``path``; the format follows the extension.

    ``quality`` 1..100: webp quality, mp4 quality (mapped onto imageio-ffmpeg's 1..10 scale); gif is
    palette-based and ignores it. An existing file is never replaced, and a write that fails (the
    ffmpeg binary only logs some failures) leaves no partial file and raises. Returns ``path``."""
    import imageio.v2 as iio2
    import imageio.v3 as iio

    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise BoundlessError(f"unsupported video format '{fmt}'; use one of {', '.join(FORMATS)}")
    if not fps > 0:
        raise BoundlessError(f"fps must be positive, got {fps}")
    if loop_count < 0:
        raise BoundlessError(f"loop_count must be 0 (forever) or more, got {loop_count}")
    if not 1 <= quality <= 100:
        raise BoundlessError(f"quality must be within 1..100, got {quality}")
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise BoundlessError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    reserve(path)
    duration_ms = 1000.0 / fps
    try:
        if fmt == "mp4":
            writer = iio2.get_writer(path, format="FFMPEG", fps=float(fps), codec="libx264", pixelformat="yuv420p",
                                     quality=1 + (quality - 1) * 9 / 99, macro_block_size=1)
            try:
                for frame in pad_even(frames):
                    writer.append_data(frame)
            finally:
                writer.close()
        elif fmt == "webp":
            iio.imwrite(path, frames, is_batch=True, extension=".webp", duration=round(duration_ms),
                        loop=loop_count, quality=quality)
        else:
            iio.imwrite(path, frames, is_batch=True, extension=".gif", duration=round(duration_ms), loop=loop_count)
        if os.path.getsize(path) == 0:
            raise OSError("the encoder wrote nothing")
    except Exception as exc:
        if os.path.exists(path):
            os.remove(path)
        raise BoundlessError(f"could not write the video {path}: {exc}") from exc
    return path


def reserve(path: str) -> None:
    """Create ``path`` empty, refusing an existing file or a name the file system cannot hold."""
    try:
        open(path, "xb").close()
    except FileExistsError:
        raise BoundlessError(f"{path} already exists; nothing was overwritten. Pick another filename_prefix") from None
    except OSError as exc:
        raise BoundlessError(f"cannot create {path}: {exc.strerror}; pick a shorter or different filename_prefix "
                             "in a folder you can write to") from exc
