"""Unit tests of the VQGAN tokenizer modules (no ComfyUI needed)."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from packpath import ROOT, pack_module
from vq_tiny import tiny_vqgan

loader = pack_module("nodes.vq.loader")
tiling = pack_module("nodes.vq.tiling")
BoundlessError = pack_module("nodes.common.errors").BoundlessError


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_roundtrip_through_file_keeps_config_and_numbers(tmp_path):
    model = tiny_vqgan(seed=3)
    _save(model, tmp_path / "m.safetensors")
    loaded = loader.load_vqgan(str(tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode_indices(x), model.encode_indices(x))
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_indices_are_row_major_and_decode_shape(tmp_path):
    model = tiny_vqgan()
    x = torch.rand(1, 3, 128, 256) * 2 - 1
    with torch.no_grad():
        z_q, idx, z = model.encode(x)
        assert idx.shape == (1, 8, 16) and idx.dtype == torch.int64
        # brute-force nearest code at one position, row 5 column 7
        d = ((z[0, :, 5, 7][None] - model.quantize.embedding.weight) ** 2).sum(1)
        assert int(d.argmin()) == int(idx[0, 5, 7])
        assert model.decode_indices(idx).shape == (1, 3, 128, 256)


def test_lightning_checkpoint_drops_loss_keys(tmp_path):
    model = tiny_vqgan()
    # (the fixture set's Lightning file covers the allow-listed callback class key)
    ckpt = {"epoch": 3, "pytorch-lightning_version": "1.0.8", "optimizer_states": [{"step": 2}],
            "state_dict": {**model.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2)}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = loader.load_vqgan(str(tmp_path / "last.ckpt"))
    assert torch.equal(loaded.quantize.embedding.weight, model.quantize.embedding.weight)


class Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_arbitrary_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.ckpt", "wb") as f:
        torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Evil()}, f)
    with pytest.raises(BoundlessError, match="refers to the Python object exec, which Boundless does not "
                                             "load: it never runs code stored in a weight file") as refused:
        loader.load_vqgan(str(tmp_path / "evil.ckpt"))
    assert "weights_only" not in str(refused.value)          # torch's unsafe hint never reaches the user
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(BoundlessError):
        loader.load_vqgan(str(tmp_path / "raw.pt"))
    assert not (tmp_path / "PWNED").exists()


def test_random_bytes_are_not_a_weight_file(tmp_path):
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(BoundlessError, match="noise.ckpt is not a PyTorch weight file") as refused:
        loader.load_vqgan(str(tmp_path / "noise.ckpt"))
    assert "weights_only" not in str(refused.value) and "Python object" not in str(refused.value)


@pytest.mark.parametrize("content", [b"hello world, not a checkpoint", b"Repository not found", b"Moved Permanently",
                                     "caf\u00e9 \u2603".encode("utf-8") * 20, b"\x80\x02}q\x00X"])
def test_text_or_a_saved_error_page_is_not_a_weight_file(tmp_path, content):
    """Bytes that are no pickle at all once surfaced as KeyError / IndexError / UnicodeDecodeError."""
    (tmp_path / "download.ckpt").write_bytes(content)
    with pytest.raises(BoundlessError, match="download.ckpt is .*(not a PyTorch weight file|truncated or corrupt)"):
        loader.load_vqgan(str(tmp_path / "download.ckpt"))


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(BoundlessError, match="not a readable .safetensors"):
        loader.load_vqgan(str(tmp_path / "bad.safetensors"))
    model = tiny_vqgan()
    torch.save(model.state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    with pytest.raises(BoundlessError, match="truncated or corrupt"):
        loader.load_vqgan(str(tmp_path / "cut.pt"))
    save_file({"quantize.quant_resi.qresi_ls.0.weight": torch.zeros(2), **{
        k: torch.zeros(2) for k in loader.REQUIRED_KEYS}}, str(tmp_path / "var.safetensors"))
    save_file({k: torch.zeros(2) for k in loader.REQUIRED_KEYS}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(BoundlessError, match="incomplete or damaged"):
        loader.load_vqgan(str(tmp_path / "flat.safetensors"))
    with pytest.raises(BoundlessError, match="VAR multi-scale VQVAE"):
        loader.load_vqgan(str(tmp_path / "var.safetensors"))
    sd = dict(model.state_dict())
    sd.pop("decoder.norm_out.bias")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(BoundlessError, match="missing decoder.norm_out.bias"):
        loader.load_vqgan(str(tmp_path / "missing.safetensors"))
    with pytest.raises(BoundlessError, match="not found"):
        loader.load_vqgan(str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("policy,expected", [("pad", (48, 64)), ("crop", (32, 48))])
def test_size_policy(policy, expected):
    x = torch.rand(1, 3, 40, 50)
    out = tiling.fit_to_factor(x, 16, policy)
    assert tuple(out.shape[-2:]) == expected
    assert torch.equal(out[:, :, :32, :48], x[:, :, :32, :48])   # no pixel moves
    if policy == "pad":
        assert torch.equal(out[:, :, 45, 60], x[:, :, 39, 49])    # replicated edge


def test_size_policy_errors():
    with pytest.raises(BoundlessError, match="not a multiple"):
        tiling.fit_to_factor(torch.rand(1, 3, 40, 50), 16, "error")
    with pytest.raises(BoundlessError, match="larger than"):
        tiling.fit_to_factor(torch.empty(1, 3, 16, tiling.MAX_SIDE + 16, device="meta"), 16, "pad")


def test_tiling_equals_single_pass_when_one_tile_and_covers_canvas():
    model = tiny_vqgan()
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        whole = model.encode_indices(x)
        assert torch.equal(tiling.encode_tiled(model, x, tile_px=128), whole)
        steps = []
        tiled = tiling.encode_tiled(model, x, tile_px=32, margin_px=16,
                                    progress=lambda d, t, p=None: steps.append((d, t)))
        assert tiled.shape == whole.shape and steps[-1] == (6, 6)
        # tiles with a margin as large as the canvas see all context: identical to one pass
        assert torch.equal(tiling.encode_tiled(model, x, tile_px=32, margin_px=96), whole)
        img = tiling.decode_tiled(model, whole, tile_px=32, margin_px=96)
        assert torch.allclose(img, model.decode_indices(whole), atol=1e-5)
        assert tiling.decode_tiled(model, whole, tile_px=32, margin_px=0).shape == (1, 3, 64, 96)


@pytest.fixture(scope="module")
def world_panoramas():
    """The 256-code world tokenizer and three world panoramas (1024×256, seamless 360°)."""
    from train_infinity_world import world_picture
    vqgan = loader.load_vqgan(str(ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors")).eval()
    pictures = [torch.from_numpy(world_picture(seed, 1024, 256)).float().div(127.5).sub(1).permute(2, 0, 1)[None]
                for seed in range(3)]
    return vqgan, pictures


def test_a_360_encode_is_the_middle_of_the_picture_with_its_other_ends_beside_it(world_panoramas):
    vqgan, pictures = world_panoramas
    x = pictures[0][..., :128, :512]
    padded = torch.cat([x[..., -32:], x, x[..., :32]], dim=-1)
    with torch.no_grad():
        tokens = tiling.encode_tiled(vqgan, x, wrap_px=32)
        assert torch.equal(tokens, vqgan.encode_indices(padded)[..., 2:-2])
        assert not torch.equal(tokens, vqgan.encode_indices(x))              # the ends do change
        # with tiles too (margins covering the padded picture: the same as one pass)
        assert torch.equal(tiling.encode_tiled(vqgan, x, tile_px=256, margin_px=576, wrap_px=32), tokens)
        wide = vqgan.decode_indices(torch.cat([tokens[..., -2:], tokens, tokens[..., :2]], dim=-1))
        assert torch.allclose(tiling.decode_tiled(vqgan, tokens, wrap_px=32), wide[..., 32:-32], atol=1e-5)
        # a margin wider than the picture is cut to the picture; one below a token is no margin
        assert torch.equal(tiling.encode_tiled(vqgan, x, wrap_px=4096),
                           vqgan.encode_indices(torch.cat([x, x, x], dim=-1))[..., 32:64])
        assert torch.equal(tiling.encode_tiled(vqgan, x, wrap_px=8), vqgan.encode_indices(x))
    with pytest.raises(BoundlessError, match="360° margin must be >= 0"):
        tiling.encode_tiled(vqgan, x, wrap_px=-16)


def test_encoded_round_a_panoramas_ends_get_the_codes_they_get_inside(world_panoramas):
    """Plainly encoded, the first and last token columns of a panorama are frame codes; encoded round
    they match what the same columns get when the panorama is rolled so they sit in the middle."""
    vqgan, pictures = world_panoramas
    ends, middle = [0, 1, 61, 62, 63], list(range(8, 24))
    plain_ends, round_ends, round_middle = [], [], []
    with torch.no_grad():
        for picture in pictures:
            inside = vqgan.encode_indices(picture.roll(512, -1))[0].roll(-32, -1)
            plain = vqgan.encode_indices(picture)[0]
            round_ = tiling.encode_tiled(vqgan, picture, wrap_px=tiling.PANORAMA_MARGIN_PX)[0]
            plain_ends.append((plain[:, ends] == inside[:, ends]).float().mean().item())
            round_ends.append((round_[:, ends] == inside[:, ends]).float().mean().item())
            round_middle.append((round_[:, middle] == inside[:, middle]).float().mean().item())
    mean = lambda values: sum(values) / len(values)
    assert mean(round_ends) > mean(plain_ends) + 0.3, (plain_ends, round_ends)
    assert mean(round_ends) > mean(round_middle) - 0.1, (round_ends, round_middle)    # ends like the inside


def test_decoded_round_a_panoramas_ends_join(world_panoramas):
    """Decoded plainly, the decoder draws a border at both ends, so they step far more than a token
    boundary where they meet; decoded round they step like one."""
    vqgan, pictures = world_panoramas
    with torch.no_grad():
        for picture in pictures:
            tokens = tiling.encode_tiled(vqgan, picture, wrap_px=tiling.PANORAMA_MARGIN_PX)
            ratios = []
            for image in (vqgan.decode_indices(tokens), tiling.decode_tiled(vqgan, tokens,
                                                                             wrap_px=tiling.PANORAMA_MARGIN_PX)):
                image = image[0].clamp(-1, 1)
                token_steps = (image[..., 16::16] - image[..., 15:-1:16]).abs().mean()
                ratios.append(((image[..., 0] - image[..., -1]).abs().mean() / token_steps).item())
            plain, round_ = ratios
            assert round_ < 5 and plain > 3 * round_, ratios


def test_a_mirrored_edge_is_the_middle_of_the_picture_with_its_mirror_image_beside_it(world_panoramas):
    vqgan, pictures = world_panoramas
    x = pictures[0][..., :128, :512]
    with torch.no_grad():
        right = tiling.encode_tiled(vqgan, x, mirror_px=32, mirror_sides=("right",))
        assert torch.equal(right, vqgan.encode_indices(F.pad(x, (0, 32, 0, 0), mode="reflect"))[..., :-2])
        every = tiling.encode_tiled(vqgan, x, mirror_px=32, mirror_sides=tiling.SIDES)
        assert torch.equal(every, vqgan.encode_indices(F.pad(x, (32, 32, 32, 32), mode="reflect"))[..., 2:-2, 2:-2])
        assert torch.equal(tiling.encode_tiled(vqgan, x, tile_px=256, margin_px=576, mirror_px=32,
                                               mirror_sides=("right",)), right)
        # a 360° encode mirrors only up and down; below one token there is no margin
        assert torch.equal(tiling.encode_tiled(vqgan, x, wrap_px=32, mirror_px=32, mirror_sides=tiling.SIDES),
                           vqgan.encode_indices(F.pad(tiling.pad_round(x, 32), (0, 0, 32, 32), mode="reflect"))
                           [..., 2:-2, 2:-2])
        assert torch.equal(tiling.encode_tiled(vqgan, x, mirror_px=8, mirror_sides=("right",)),
                           vqgan.encode_indices(x))
    assert tiling.mirror_pads(64, 512, 16, 128, ("up", "left")) == (128, 0, 48, 0)     # at most the picture
    with pytest.raises(BoundlessError, match="mirrored margin must be >= 0"):
        tiling.encode_tiled(vqgan, x, mirror_px=-16, mirror_sides=("right",))
    with pytest.raises(BoundlessError, match="unknown side"):
        tiling.encode_tiled(vqgan, x, mirror_px=32, mirror_sides=("top",))


def test_a_context_encoded_with_a_mirrored_edge_joins_its_true_continuation(world_panoramas):
    """Encoded alone, the left half of a picture ends in border codes: decoded next to the rest of the
    picture's tokens, the cut steps 2.8-5.1x a token boundary (6 world panoramas). With a mirrored
    right edge it steps like a token boundary (0.5-1.1x)."""
    vqgan, pictures = world_panoramas
    with torch.no_grad():
        for picture in pictures:
            rest = vqgan.encode_indices(picture)[..., 32:]
            ratios = []
            for mirror_px in (0, tiling.OUTPAINT_MARGIN_PX):
                context = tiling.encode_tiled(vqgan, picture[..., :512], mirror_px=mirror_px, mirror_sides=("right",))
                image = vqgan.decode_indices(torch.cat([context, rest], dim=-1))[0].clamp(-1, 1)
                steps = (image[..., 1:] - image[..., :-1]).abs().mean((0, 1))        # steps[x - 1]: at column x
                boundaries = steps[15::16]
                others = torch.cat([boundaries[:31], boundaries[32:]])
                ratios.append((boundaries[31] / others.mean()).item())
            plain, mirrored = ratios
            assert plain > 2.5 and mirrored < 1.5, ratios


def test_memory_check_refuses_absurd_single_pass_and_suggests_tiles():
    cfg = tiny_vqgan().config
    tiling.check_fits(cfg, 1, 256, 256, 4 << 30, 0, 64)
    with pytest.raises(BoundlessError, match="set tile_size to"):
        tiling.check_fits(cfg, 1, 16384, 16384, 8 << 30, 0, 64)
    tiling.check_fits(cfg, 1, 16384, 16384, 8 << 30, 128, 64)   # tiles bound the memory
