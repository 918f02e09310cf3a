"""The shipped demo-world models: they belong to the world tokenizer, make new landscapes rather than
copies of training scenes, and the text model follows its prompt's time of day.

"Not a copy" is measured on tokens as for the first demo model: every generated 16×16-token patch is
compared with every 16×16 window of training token maps (here the first training seeds, rendered
and tokenized as the trainer does); a copied patch agrees in nearly all of its 256 tokens.
"""
import numpy as np
import pytest
import torch

from packpath import ROOT, pack_module
from train_infinity_world import TRAIN_SIZE, world_picture

WORLD_VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors"     # panorama and text models
VIDEO_VQGAN = ROOT / "models" / "vqgan" / "boundless_world_f16.safetensors"          # the video model's (1,024 codes)
WORLD_MODEL = ROOT / "models" / "infinity" / "boundless_world_panorama.safetensors"
WORLD_TEXT = ROOT / "models" / "infinity" / "boundless_world_text.safetensors"

pytestmark = pytest.mark.skipif(not (WORLD_VQGAN.is_file() and WORLD_MODEL.is_file() and WORLD_TEXT.is_file()),
                                reason="demo-world models not trained yet")
checkpoint = pack_module("nodes.infinity.checkpoint")
sampler = pack_module("nodes.infinity.sampler")
vq_loader = pack_module("nodes.vq.loader")
minilm = pack_module("nodes.text.minilm")
fingerprint = pack_module("nodes.common.tokens").fingerprint


@pytest.fixture(scope="module")
def vqgan():
    return vq_loader.load_vqgan(str(WORLD_VQGAN)).float().eval()


@pytest.fixture(scope="module")
def training_tokens(vqgan):
    maps = []
    for seed in range(4):
        picture = torch.from_numpy(world_picture(seed, *TRAIN_SIZE)).float().div(127.5).sub(1.0)
        with torch.no_grad():
            maps.append(vqgan.encode_indices(picture.permute(2, 0, 1)[None])[0])
    return maps


def decode(vqgan, tokens_hw: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((vqgan.decode_indices(tokens_hw[None]).clamp(-1, 1) + 1) / 2)[0]      # [3, H, W]


@pytest.fixture(scope="module")
def video_vqgan():
    return vq_loader.load_vqgan(str(VIDEO_VQGAN)).float().eval()


def test_world_tokenizer_is_the_video_tokenizer_with_its_twins_merged(vqgan, video_vqgan):
    """1,024 rows in the taming layout, 256 distinct codes (scripts/merge_codebook.py), the same
    encoder and decoder weights as the 1,024-code tokenizer it was merged from."""
    assert len(torch.unique(vqgan.quantize.embedding.weight, dim=0)) == 256
    merged, original = vqgan.state_dict(), video_vqgan.state_dict()
    assert merged.keys() == original.keys()
    assert all(torch.equal(merged[k], original[k]) for k in merged if k != "quantize.embedding.weight")


@pytest.mark.parametrize("path", [WORLD_MODEL, WORLD_TEXT], ids=["panorama", "text"])
def test_world_models_record_the_world_tokenizer(vqgan, path):
    model = checkpoint.load_infinity(str(path))
    assert model.tokenizer == fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight)
    assert model.factor == vqgan.factor == 16
    assert model.config.n_embed == vqgan.n_embed == 1024
    assert (model.config.patch_h * 16, model.config.patch_w * 16) == (256, 256)
    assert model.config.rope_base > 0                              # token geometry (the continuity fix)
    assert model.config.mirrored_scan                              # leftward / upward patches start at their neighbour


def test_world_panorama_model_makes_new_landscapes(training_tokens):
    model = checkpoint.load_infinity(str(WORLD_MODEL)).eval()
    state = sampler.generate_canvas(model, 4, 2, order="right", seed=7, temperature=1.0, top_k=64)
    canvas = state.tokens[0, 0]
    ph, pw = model.config.patch_h, model.config.patch_w
    windows = torch.cat([m.unfold(0, ph, 1).unfold(1, pw, 1).reshape(-1, ph * pw) for m in training_tokens])
    best = [float((windows == canvas[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw].reshape(1, -1)).float().mean(1).max())
            for r in range(2) for c in range(4)]
    assert max(best) < 0.9, f"a generated patch copies a training window ({max(best):.2f} of its tokens)"


def test_world_text_model_draws_night_darker_than_day(vqgan):
    """The plainest attribute a prompt controls: 'at night' canvases are darker than 'in bright daylight'
    ones of the same seeds (mean brightness over two seeds each)."""
    model = checkpoint.load_infinity(str(WORLD_TEXT)).eval()
    encoder = minilm.load_text_encoder(minilm.default_path())
    brightness = {}
    for prompt in ("snowy mountains above a calm lake at night", "snowy mountains above a calm lake in bright daylight"):
        states = encoder.encode([prompt]).states
        values = []
        for seed in (0, 1):
            state = sampler.generate_canvas(model, 2, 2, order="right", text=states, seed=seed, temperature=1.0,
                                            top_k=64)
            values.append(float(decode(vqgan, state.tokens[0, 0]).mean()))
        brightness[prompt] = np.mean(values)
    night, day = brightness.values()
    assert night + 0.1 < day, brightness


WORLD_VIDEO = ROOT / "models" / "infinity" / "boundless_world_video_text.safetensors"


@pytest.mark.skipif(not WORLD_VIDEO.is_file(), reason="demo-world video model not trained yet")
def test_world_video_model_is_a_text_conditioned_video_model_of_the_world_tokenizer(video_vqgan):
    model = checkpoint.load_infinity(str(WORLD_VIDEO))
    assert model.tokenizer == fingerprint(vq_loader.KIND, video_vqgan.quantize.embedding.weight)
    assert (model.config.patch_h, model.config.patch_w) == (8, 8) and model.config.frame_align
    assert model.config.trained_extents.as_tuple() == (1, 1, 1) and model.config.text_dim == 384


@pytest.mark.skipif(not WORLD_VIDEO.is_file(), reason="demo-world video model not trained yet")
def test_world_video_model_paints_a_night_clip_darker_than_a_day_clip(video_vqgan):
    """Three 256-px frames from each prompt, sampled as the text-to-video workflow does (temperature 0.7,
    top-k 16); the night clip is darker over all its frames (two seeds each)."""
    state_mod, config_mod = pack_module("nodes.infinity.state"), pack_module("nodes.infinity.config")
    model = checkpoint.load_infinity(str(WORLD_VIDEO)).eval()
    encoder = minilm.load_text_encoder(minilm.default_path())
    brightness = {}
    for prompt in ("a mountain range above a calm lake at night", "a mountain range above a calm lake in bright daylight"):
        values = []
        for seed in (0, 1):
            state = state_mod.plan_fill(state_mod.empty_state(model, 2, 2, 3, 1, config_mod.Extents(1, 1, 1)), "right")
            sampler.run(model, state, seed=seed, text=encoder.encode([prompt]).states, temperature=0.7, top_k=16)
            with torch.no_grad():
                values.append(float(video_vqgan.decode_indices(state.tokens[0]).clamp(-1, 1).mean()))
        brightness[prompt] = np.mean(values)
    night, day = brightness.values()
    assert night + 0.2 < day, brightness
