"""The streaming canvas writer: column-by-column TIFF output with bounded pixel memory."""
import numpy as np
import pytest
import tifffile
import torch

from infinity_tiny import one_thread, tiny_model  # noqa: F401  (fixture)
from packpath import pack_module
from vq_tiny import tiny_vqgan

stream = pack_module("nodes.infinity.stream")
sampler = pack_module("nodes.infinity.sampler")
BoundlessError = pack_module("nodes.common.errors").BoundlessError


def test_streamed_file_matches_the_sampler_and_column_decodes(tmp_path):
    model, vqgan = tiny_model(0), tiny_vqgan(0)
    path = tmp_path / "wide.tif"
    seen = []
    result = stream.stream_canvas(model, vqgan, str(path), cols=6, rows=2, seed=5, temperature=1.0,
                                  progress=lambda d, t, p=None: seen.append((d, t)))
    assert (result.width, result.height) == (6 * 32, 2 * 32)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.shape == (64, 192, 3) and page.tilewidth == 32 and page.tilelength == 64
        pixels = page.asarray()
    # same tokens as an ordinary generation with the same seed and order
    reference = sampler.generate_canvas(model, 6, 2, order="right", seed=5, temperature=1.0)
    assert torch.equal(result.state.tokens, reference.tokens)
    for col in range(6):
        assert np.array_equal(pixels[:, col * 32:(col + 1) * 32], stream.decode_column(vqgan, result.state, col))
    assert seen[-1] == (12, 12) and result.preview.shape == (1, 64, 192, 3)


def test_an_existing_file_is_never_replaced(tmp_path):
    path = tmp_path / "taken.tif"
    path.write_bytes(b"earlier work")
    with pytest.raises(BoundlessError, match="already exists; nothing was overwritten"):
        stream.stream_canvas(tiny_model(0), tiny_vqgan(0), str(path), cols=2, rows=1)
    assert path.read_bytes() == b"earlier work"


def test_interrupt_removes_the_partial_file(tmp_path):
    path = tmp_path / "cut.tif"

    def interrupt(done, total, preview=None):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream.stream_canvas(tiny_model(0), tiny_vqgan(0), str(path), cols=6, rows=2, progress=interrupt)
    assert not path.exists()
