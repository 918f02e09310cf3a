"""The shipped text-conditioned demo model: the prompt decides which of the learnt styles it paints."""
import pytest
import torch

from infinity_tiny import one_thread  # noqa: F401 (autouse fixture)
from packpath import pack_module
from train_infinity_demo import VQGAN as DEMO_VQGAN
from train_infinity_text_demo import CAPTIONS, OUT as TEXT_MODEL

pytestmark = pytest.mark.skipif(not TEXT_MODEL.is_file(), reason="demo text model not trained yet")
checkpoint = pack_module("nodes.infinity.checkpoint")
conditioning = pack_module("nodes.infinity.conditioning")
sampler = pack_module("nodes.infinity.sampler")
minilm = pack_module("nodes.text.minilm")
prompts_mod = pack_module("nodes.text.prompts")
vq_loader = pack_module("nodes.vq.loader")
fingerprint = pack_module("nodes.common.tokens").fingerprint


@pytest.fixture(scope="module")
def setup():
    vqgan = vq_loader.load_vqgan(str(DEMO_VQGAN)).eval()
    return checkpoint.load_infinity(str(TEXT_MODEL)), vqgan, minilm.load_text_encoder(minilm.default_path())


def test_text_model_records_its_tokenizer_and_text_encoder(setup):
    model, vqgan, encoder = setup
    assert model.tokenizer == fingerprint(vq_loader.KIND, vqgan.quantize.embedding.weight)
    assert model.text_encoder == encoder.name and model.config.text_dim == encoder.dim == 384


def test_day_prompt_paints_a_brighter_bluer_sky_than_the_sunset_prompt(setup):
    """bench/infinity_text.py: by mean colour, 5 of 6 canvases from the training captions are nearest
    to their caption's picture. Here: seed 0, day vs sunset caption, 1024x512 px each."""
    model, vqgan, encoder = setup

    def mean_rgb(caption):
        prompts = prompts_mod.PromptMap(encoder.encode([caption]))
        state = sampler.generate_canvas(model, 4, 2, text=conditioning.text_condition(model, prompts), seed=0,
                                        temperature=1.0, top_k=64)
        with torch.no_grad():
            return vqgan.decode_indices(state.tokens[:, 0]).clamp(-1, 1)[0].mean(dim=(1, 2))
    day, dusk = mean_rgb(CAPTIONS["sky_default"]), mean_rgb(CAPTIONS["sky_sunset"])
    assert float(day.mean()) > float(dusk.mean()) + 0.1                  # measured 0.35 vs 0.11
    assert float(day[2] - day[0]) > float(dusk[2] - dusk[0]) + 0.1       # blue minus red: 0.23 vs -0.05
