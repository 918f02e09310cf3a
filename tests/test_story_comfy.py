"""Story nodes inside a real ComfyUI (in-process, CPU): patches on real UNet layouts, sampling a tiny
random-weight SD1.5-shaped UNet with ComfyUI's samplers, errors users can hit."""
from __future__ import annotations


import pytest
import torch

from conftest import import_comfy_in_process
from packpath import pack_module

STORY_CHARACTERS = "[Ann] a woman with a red hat\n[Ben] a man with a blue coat"
STORY_PANELS = ("[Ann] in the kitchen\n[Ben] at the station\n[Ann] on a boat at sea\n[Ann] in a forest\n"
                "[Ann] and [Ben] reading a book\n[Ben] in the rain")
UP = "up blocks (reference)"
STEPS = 4


@pytest.fixture(scope="module")
def comfy_env():
    """ComfyUI importable in this process, forced to CPU before comfy.model_management loads."""
    sample = import_comfy_in_process()
    testing = pack_module("nodes.story.testing")
    nodes = pack_module("nodes.story.nodes")
    return {"sample": sample, "testing": testing, "nodes": nodes,
            "model": testing.tiny_model(0), "clip": testing.tiny_clip(0)}


@pytest.fixture(scope="module")
def story(comfy_env):
    nodes = comfy_env["nodes"]
    return nodes.StoryPrompt.execute(comfy_env["clip"], STORY_CHARACTERS, STORY_PANELS, "{prompt}", "", 1).result


def sample(env, model, positive, negative, batch, seed, sampler="euler", scheduler="normal", steps=STEPS, spy=None):
    latent = torch.zeros(batch, 4, 8, 8)
    if spy is not None:
        model = model.clone()
        model.set_model_attn1_output_patch(spy)
    return env["sample"].sample(model, env["sample"].prepare_noise(latent, seed), steps, 4.0, sampler, scheduler,
                                positive, negative, latent, disable_pbar=True, seed=seed)


def csa_node(env, story_value=None, blocks=UP, model=None, **overrides):
    values = dict(selection_seed=0, rate_h32=0.5, rate_h16=0.5, rate_h8=0.5, blocks=blocks, start_step=1, skip_prob_early=0.3,
                  skip_prob_late=0.1, late_from_step=20)
    values.update(overrides)
    return env["nodes"].ConsistentSelfAttention.execute(model or env["model"], story=story_value, **values).result


# ------------------------------------------------------------------ real UNet layouts (meta device)
SD15 = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
        "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False, "adm_in_channels": None,
        "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
        "use_temporal_resblock": False}
SDXL = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
        "context_dim": 2048, "num_head_channels": 64, "use_linear_in_transformer": True, "adm_in_channels": 2816,
        "num_classes": "sequential", "use_spatial_transformer": True, "legacy": False,
        "use_temporal_attention": False, "use_temporal_resblock": False}


def meta_unet(config):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**config, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)


def test_sdxl_up_blocks_are_the_references_36_layers(comfy_env):
    layers = pack_module("nodes.story.layers")
    up = layers.choose_layers(layers.unet_attention_layers(meta_unet(SDXL)), UP)
    assert [layer.key for layer in up] == ([("output", n, i) for n in range(3) for i in range(10)]
                                           + [("output", n, i) for n in range(3, 6) for i in range(2)])
    assert [layer.level for layer in up] == ["h32"] * 30 + ["h16"] * 6
    assert {(layer.heads, layer.dim_head) for layer in up[:30]} == {(20, 64)}
    assert {(layer.heads, layer.dim_head) for layer in up[30:]} == {(10, 64)}


def test_sd15_up_blocks_cover_three_levels(comfy_env):
    layers = pack_module("nodes.story.layers")
    found = layers.unet_attention_layers(meta_unet(SD15))
    up = layers.choose_layers(found, UP)
    assert [layer.key for layer in up] == [("output", n, 0) for n in range(3, 12)]
    assert [layer.level for layer in up] == ["h32"] * 3 + ["h16"] * 3 + ["h8"] * 3
    assert [layer.dim_head for layer in up] == [160] * 3 + [80] * 3 + [40] * 3
    assert len(layers.choose_layers(found, "all blocks")) == 16 and ("middle", 0, 0) in [l.key for l in found]


# ------------------------------------------------------------------ the node and sampling
def test_node_clones_the_model_and_patches_the_chosen_blocks(comfy_env, story):
    model = comfy_env["model"]
    identity_model, bank = csa_node(comfy_env, story[0])
    replaced = identity_model.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert set(replaced) == {("output", n, 0) for n in range(4)}
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert identity_model is not model and identity_model.model is model.model
    with_middle, _ = csa_node(comfy_env, story[0], blocks="up + middle blocks")
    assert ("middle", 0, 0) in with_middle.model_options["transformer_options"]["patches_replace"]["attn1"]


def test_story_identity_then_panels(comfy_env, story):
    story_value, identity, panels, negative, n_identity, n_panels = story
    identity_model, bank = csa_node(comfy_env, story_value)
    with pytest.raises(pack_module("nodes.common.errors").BoundlessError, match="bank is empty"):
        comfy_env["nodes"].ReadCharacterBank.execute(bank, {"samples": torch.zeros(n_identity, 4, 8, 8)})
    latents = sample(comfy_env, identity_model, identity, negative, n_identity, seed=42)
    plain = sample(comfy_env, comfy_env["model"], identity, negative, n_identity, seed=42)
    # one identity image per character: nothing to share, so the identity images equal plain sampling
    torch.testing.assert_close(latents, plain)
    written_layers = {key[2] for key in bank.bank.entries}
    assert written_layers == {0, 1, 2, 3} and {key[0] for key in bank.bank.entries} == {"Ann", "Ben"}
    assert [layer.block for layer in bank.layers] == ["output"] * 4
    assert {key[1] for key in bank.bank.entries} <= set(range(1, STEPS))
    size = bank.bank.nbytes

    panel_model, report = comfy_env["nodes"].ReadCharacterBank.execute(bank, {"samples": latents}).result
    assert "Ann (1 identity image)" in report and "MiB" in report

    def spy_into(store):
        def spy(n, extra):
            if extra["block"][0] == "output":
                kinds = extra["cond_or_uncond"]
                b = n.shape[0] // len(kinds)
                c = kinds.index(0)
                store.setdefault(tuple(extra["block"]), []).append(n[c * b:(c + 1) * b].clone())
            return n
        return spy

    on, off = {}, {}
    with_csa = sample(comfy_env, panel_model, panels, negative, n_panels, seed=7, spy=spy_into(on))
    without = sample(comfy_env, comfy_env["model"], panels, negative, n_panels, seed=7, spy=spy_into(off))
    assert not torch.allclose(with_csa, without)
    assert bank.bank.nbytes == size                                  # reading never grows the bank

    ann_panels = [row for row, names in enumerate(story_value.panel_rows) if "Ann" in names]

    def cross_panel_similarity(features):
        sims = []
        for calls in features.values():
            for x in calls:
                f = torch.nn.functional.normalize(x[ann_panels].flatten(1), dim=1)
                s = f @ f.T
                k = len(ann_panels)
                sims.append(float((s.sum() - k) / (k * (k - 1))))
        return sum(sims) / len(sims)

    assert cross_panel_similarity(on) > cross_panel_similarity(off) + 0.02


def test_identity_images_of_one_character_become_more_alike(comfy_env):
    nodes = comfy_env["nodes"]
    story_value, identity, panels, negative, n_identity, _ = nodes.StoryPrompt.execute(
        comfy_env["clip"], "[Ann] a woman with a red hat", "[Ann] cooking\n[Ann] sailing\n[Ann] hiking\n[Ann] resting",
        "{prompt}", "", 3).result
    identity_model, _ = csa_node(comfy_env, story_value, rate_h16=1.0, rate_h8=1.0)
    store_on, store_off = [], []

    def spy_into(store):
        def spy(n, extra):
            if extra["block"][0] == "output":
                store.append(n.clone())
            return n
        return spy

    sample(comfy_env, identity_model, identity, negative, n_identity, seed=3, spy=spy_into(store_on))
    sample(comfy_env, comfy_env["model"], identity, negative, n_identity, seed=3, spy=spy_into(store_off))

    def similarity(store):
        sims = []
        for x in store:
            f = torch.nn.functional.normalize(x.flatten(1), dim=1)
            s = f @ f.T
            sims.append(float((s.sum() - s.diagonal().sum()) / (s.numel() - s.shape[0])))
        return sum(sims) / len(sims)

    assert similarity(store_on) > similarity(store_off) + 0.02


@pytest.mark.parametrize("sampler,scheduler", [("heun", "karras"), ("dpmpp_2m", "exponential"), ("dpmpp_sde", "normal")])
def test_any_sampler_and_scheduler(comfy_env, story, sampler, scheduler):
    story_value, identity, panels, negative, n_identity, n_panels = story
    identity_model, bank = csa_node(comfy_env, story_value)
    latents = sample(comfy_env, identity_model, identity, negative, n_identity, 1, sampler, scheduler, steps=3)
    steps_written = {key[1] for key in bank.bank.entries}
    gates = identity_model.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 0, 0)].gates(3)
    assert steps_written == {s for s in range(3) if any(gates[s])}
    panel_model, _ = comfy_env["nodes"].ReadCharacterBank.execute(bank, {"samples": latents}).result
    out = sample(comfy_env, panel_model, panels, negative, n_panels, 2, sampler, scheduler, steps=3)
    assert torch.isfinite(out).all()
    with pytest.raises(Exception, match="same steps, scheduler and denoise"):
        sample(comfy_env, panel_model, panels, negative, n_panels, 2, sampler, scheduler, steps=4)


def test_a_clone_of_the_patched_model_still_fills_the_same_bank(comfy_env, story):
    story_value, identity, _, negative, n_identity, _ = story
    identity_model, bank = csa_node(comfy_env, story_value)
    sample(comfy_env, identity_model.clone(), identity, negative, n_identity, seed=5, steps=3)
    assert bank.bank.entries


def test_bad_input_errors(comfy_env, story):
    import comfy.model_patcher
    errors = pack_module("nodes.common.errors")
    nodes = comfy_env["nodes"]
    story_value, identity, panels, negative, n_identity, n_panels = story

    class NotAUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(2, 2)

    dit = comfy.model_patcher.ModelPatcher(NotAUNet(), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(errors.BoundlessError, match="SD1.5/SDXL-style UNet"):
        csa_node(comfy_env, story_value, model=dit)
    with pytest.raises(errors.BoundlessError, match=r"unknown character \[Cat\]"):
        nodes.StoryPrompt.execute(comfy_env["clip"], STORY_CHARACTERS, "[Ann] a\n[Ben] b\n[Cat] c", "{prompt}", "", 1)
    identity_model, bank = csa_node(comfy_env, story_value)
    with pytest.raises(errors.BoundlessError, match="more identity images than the batch"):
        sample(comfy_env, identity_model, identity, negative, n_identity - 1, seed=1, steps=2)
    latents = sample(comfy_env, identity_model, identity, negative, n_identity, seed=1, steps=2)
    with pytest.raises(errors.BoundlessError, match="identity_latent has 1 images"):
        nodes.ReadCharacterBank.execute(bank, {"samples": latents[:1]})
    panel_model, _ = nodes.ReadCharacterBank.execute(bank, {"samples": latents}).result
    with pytest.raises(errors.BoundlessError, match=f"{n_panels} panels but the latent batch has 2"):
        sample(comfy_env, panel_model, panels, negative, 2, seed=1, steps=2)


def test_comic_page_node_lays_out_the_story(comfy_env, story):
    story_value = story[0]
    identity_images = torch.rand(2, 32, 32, 3)
    panel_images = torch.rand(4, 32, 32, 3)
    pages = comfy_env["nodes"].ComicPage.execute(story_value, identity_images, panel_images, 3, 1, 4, 0,
                                                 True).result[0]
    assert pages.shape == (2, 32 + 8, 3 * 32 + 16, 3)


def test_node_schemas_and_test_node_registration(comfy_env, monkeypatch):
    import importlib
    nodes = comfy_env["nodes"]
    ids = [cls.define_schema().node_id for cls in nodes.NODES]
    assert ids[:4] == ["BoundlessStoryPrompt", "BoundlessConsistentSelfAttention", "BoundlessStoryReadBank",
                       "BoundlessComicPage"]
    for cls in nodes.NODES:
        schema = cls.define_schema()
        assert all(i.tooltip for i in schema.inputs), schema.node_id
    monkeypatch.setenv("BOUNDLESS_TEST_NODES", "1")
    reloaded = importlib.reload(nodes)
    assert "BoundlessTinyUNetLoader" in [cls.define_schema().node_id for cls in reloaded.NODES]
    monkeypatch.delenv("BOUNDLESS_TEST_NODES")
    reloaded = importlib.reload(nodes)
    assert "BoundlessTinyUNetLoader" not in [cls.define_schema().node_id for cls in reloaded.NODES]
