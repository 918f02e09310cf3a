"""Frames -> mp4 / webp / gif (nodes/common/video.py), read back with imageio."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from packpath import pack_module

video = pack_module("nodes.common.video")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 240), (20, 20, 20), (200, 200, 30)]


def solid_frames(height=36, width=52, colours=COLOURS) -> torch.Tensor:
    """IMAGE batch [T, H, W, 3] in 0..1, one flat colour per frame."""
    return torch.tensor(colours, dtype=torch.float32).div(255).view(-1, 1, 1, 3).expand(-1, height, width, 3).clone()


def read_frames(path) -> np.ndarray:
    return np.stack(list(iio.imiter(path)))[..., :3]


@pytest.mark.parametrize("fmt,tolerance", [("mp4", 12), ("webp", 12), ("gif", 4)])
def test_every_format_writes_readable_frames_in_order(tmp_path, fmt, tolerance):
    path = video.write_video(video.frames_to_uint8(solid_frames()), str(tmp_path / f"clip.{fmt}"), fps=8)
    frames = read_frames(path)
    assert frames.shape == (len(COLOURS), 36, 52, 3)
    centre = frames[:, 18, 26].astype(int)
    assert np.abs(centre - np.array(COLOURS)).max() <= tolerance


def test_mp4_fps_and_odd_sizes_are_padded_to_even(tmp_path):
    path = video.write_video(video.frames_to_uint8(solid_frames(height=35, width=51)), str(tmp_path / "odd.mp4"), fps=12)
    assert read_frames(path).shape == (len(COLOURS), 36, 52, 3)
    assert iio.immeta(path, plugin="FFMPEG")["fps"] == 12


def test_gif_and_webp_keep_delay_and_loop(tmp_path):
    frames = video.frames_to_uint8(solid_frames())
    for fmt in ("gif", "webp"):
        path = video.write_video(frames, str(tmp_path / f"loop.{fmt}"), fps=5, loop_count=3)
        with Image.open(path) as image:
            image.load()                     # webp reports a frame's delay once it is decoded
            assert image.n_frames == len(COLOURS)
            assert image.info["loop"] == 3
            assert image.info["duration"] == 200


def test_pingpong_and_uint8_conversion():
    frames = video.frames_to_uint8(solid_frames()[:4])
    assert frames.dtype == np.uint8 and frames.shape == (4, 36, 52, 3)
    order = [tuple(f[0, 0]) for f in video.pingpong(frames)]
    assert order == [COLOURS[i] for i in (0, 1, 2, 3, 2, 1)]
    grey = video.frames_to_uint8(torch.full((2, 4, 4, 1), 0.5))
    assert grey.shape == (2, 4, 4, 3) and (grey == 128).all()


def test_bad_requests_say_what_to_change(tmp_path):
    frames = video.frames_to_uint8(solid_frames())
    with pytest.raises(BoundlessError, match="unsupported video format 'avi'"):
        video.write_video(frames, str(tmp_path / "x.avi"), fps=8)
    with pytest.raises(BoundlessError, match="fps must be positive"):
        video.write_video(frames, str(tmp_path / "x.gif"), fps=0)
    with pytest.raises(BoundlessError, match=r"IMAGE batch \[T,H,W,3\]"):
        video.frames_to_uint8(torch.zeros(4, 4, 3))
    with pytest.raises(BoundlessError, match="empty"):
        video.frames_to_uint8(torch.zeros(0, 4, 4, 3))


@pytest.mark.parametrize("quality", [1, 5, 9, 10, 100])
def test_mp4_accepts_every_declared_quality(tmp_path, quality):
    path = video.write_video(video.frames_to_uint8(solid_frames()), str(tmp_path / f"q{quality}.mp4"), fps=8,
                             quality=quality)
    assert read_frames(path).shape[0] == len(COLOURS)


def test_a_failed_or_clashing_write_is_an_error_and_loses_nothing(tmp_path):
    frames = video.frames_to_uint8(solid_frames())
    with pytest.raises(BoundlessError, match="shorter or different filename_prefix"):
        video.write_video(frames, str(tmp_path / ("x" * 306 + ".mp4")), fps=8)
    assert list(tmp_path.iterdir()) == []
    taken = tmp_path / "taken.gif"
    taken.write_bytes(b"earlier work")
    with pytest.raises(BoundlessError, match="already exists; nothing was overwritten"):
        video.write_video(frames, str(taken), fps=8)
    assert taken.read_bytes() == b"earlier work"
