"""Motion nodes inside a real ComfyUI (in-process, CPU): cross-attention layouts of real UNets, the
patch during sampling of the tiny SD1.5-shaped UNet, Semantic Motion Predict and Save Video."""
from __future__ import annotations


import imageio.v3 as iio
import numpy as np
import pytest
import torch

import smp_tiny
from conftest import import_comfy_in_process
from packpath import pack_module
from test_story_comfy import SD15, SDXL, meta_unet

STEPS = 3


@pytest.fixture(scope="module")
def env():
    sample = import_comfy_in_process()
    testing = pack_module("nodes.story.testing")
    nodes = pack_module("nodes.story.motion_nodes")
    glue = pack_module("nodes.common.comfy_glue")
    smp = nodes.MotionModels(glue.managed(smp_tiny.tiny_predictor()), glue.managed(smp_tiny.tiny_conditioner()),
                             smp_tiny.EMBED_DIM, "tiny")
    clip = testing.tiny_clip(0)
    cond = clip.encode_from_tokens(clip.tokenize("a robot walking"), return_dict=True)
    uncond = clip.encode_from_tokens(clip.tokenize(""), return_dict=True)
    return {"sample": sample, "nodes": nodes, "model": testing.tiny_model(0), "smp": smp,
            "positive": [[cond.pop("cond"), cond]], "negative": [[uncond.pop("cond"), uncond]]}


class FakeVision:
    """A CLIP_VISION stand-in: embedding = mean colour repeated (deterministic, cheap)."""

    def encode_image(self, image, crop=True):
        embeds = image[..., :3].mean(dim=(1, 2)).repeat(1, smp_tiny.EMBED_DIM // 3 + 1)[:, :smp_tiny.EMBED_DIM]
        return {"image_embeds": embeds}


def motion_for(env, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(frames, smp_tiny.EMBED_DIM, generator=g)
    return env["nodes"].Motion(embeds, 2, frames, "test")


def sample(env, model, noise):
    latent = torch.zeros_like(noise)
    return env["sample"].sample(model, noise, STEPS, 4.0, "euler", "normal", env["positive"], env["negative"],
                                latent, disable_pbar=True, seed=0)


# ------------------------------------------------------------------ layouts
def test_sd15_and_sdxl_cross_attention_layers_follow_ip_adapter_order(env):
    patch = pack_module("nodes.story.motion_patch")
    sd15 = patch.cross_attention_layers(meta_unet(SD15))
    assert [layer.inner_dim for layer in sd15] == [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 \
        + [320] * 3 + [1280]
    assert sd15[0].key == ("input", 1, 0) and sd15[6].key == ("output", 3, 0) and sd15[-1].key == ("middle", 0, 0)
    sdxl = patch.cross_attention_layers(meta_unet(SDXL))
    assert [layer.inner_dim for layer in sdxl] == [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
    assert sdxl[4].key == ("input", 7, 0) and sdxl[13].key == ("input", 7, 9) and sdxl[60].key == ("middle", 0, 0)


def test_tiny_unet_matches_the_test_ip_file(env):
    patch = pack_module("nodes.story.motion_patch")
    layers = patch.cross_attention_layers(env["model"].get_model_object("diffusion_model"))
    assert tuple(layer.inner_dim for layer in layers) == smp_tiny.TINY_INNER


# ------------------------------------------------------------------ Apply Motion Conditioning while sampling
def test_apply_clones_and_patches_every_cross_attention(env):
    model = env["model"]
    (patched,) = env["nodes"].ApplyMotionConditioning.execute(model, env["smp"], motion_for(env, 3), 1.0,
                                                              env["nodes"].UNCOND[0]).result
    replaced = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaced) == {("input", 1, 0), ("input", 3, 0), ("middle", 0, 0)} | {("output", n, 0) for n in range(4)}
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert patched.get_additional_models_with_key("boundless_motion") == [env["smp"].conditioner]


def test_frame_i_conditions_batch_item_i_while_sampling(env):
    nodes, frames = env["nodes"], 3
    motion = motion_for(env, frames)
    noise = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    apply = nodes.ApplyMotionConditioning.execute
    (patched,) = apply(env["model"], env["smp"], motion, 1.0, nodes.UNCOND[0]).result
    out = sample(env, patched, noise)
    plain = sample(env, env["model"], noise)
    tolerance = 1e-5 * float(out.abs().max())       # batched float arithmetic is not bit-stable across row orders
    assert (out - plain).abs().amax(dim=(1, 2, 3)).min() > 1e4 * tolerance  # every item is conditioned
    # swapping frames 0 and 1 changes items 0 and 1 and leaves item 2 as it was
    swapped = nodes.Motion(motion.embeds[[1, 0, 2]], 2, frames, "test")
    (patched_swap,) = apply(env["model"], env["smp"], swapped, 1.0, nodes.UNCOND[0]).result
    change = (sample(env, patched_swap, noise) - out).abs().amax(dim=(1, 2, 3))
    assert change[0] > 1e4 * tolerance and change[1] > 1e4 * tolerance and change[2] <= tolerance
    # reversing the frames and the noise reverses the video
    reversed_motion = nodes.Motion(motion.embeds.flip(0), 2, frames, "test")
    (patched_rev,) = apply(env["model"], env["smp"], reversed_motion, 1.0, nodes.UNCOND[0]).result
    torch.testing.assert_close(sample(env, patched_rev, noise.flip(0)), out.flip(0), atol=tolerance, rtol=0)
    (off,) = apply(env["model"], env["smp"], motion, 0.0, nodes.UNCOND[0]).result
    torch.testing.assert_close(sample(env, off, noise), plain)


def test_wrong_batch_size_stops_sampling_with_advice(env):
    BoundlessError = pack_module("nodes.common.errors").BoundlessError
    (patched,) = env["nodes"].ApplyMotionConditioning.execute(env["model"], env["smp"], motion_for(env, 5), 1.0,
                                                              env["nodes"].UNCOND[1]).result
    with pytest.raises(BoundlessError, match="batch_size to 5"):
        sample(env, patched, torch.randn(2, 4, 8, 8))


# ------------------------------------------------------------------ Semantic Motion Predict
def test_predict_encodes_start_and_end_and_counts_frames(env):
    nodes = env["nodes"]
    start = torch.full((1, 16, 16, 3), 0.2)
    ends = torch.stack([torch.full((16, 16, 3), 0.5), torch.full((16, 16, 3), 0.9)])
    motion, count = nodes.SemanticMotionPredict.execute(env["smp"], 5, nodes.MODES[0], FakeVision(), start, ends).result
    assert count == 9 and motion.embeds.shape == (9, smp_tiny.EMBED_DIM) and motion.keyframes == 3
    keyframes = FakeVision().encode_image(torch.cat([start, ends]))["image_embeds"]
    assert torch.equal(motion.embeds[[0, 4, 8]], keyframes)
    linear, _ = nodes.SemanticMotionPredict.execute(env["smp"], 5, nodes.MODES[1], FakeVision(), start, ends).result
    torch.testing.assert_close(linear.embeds[2], (keyframes[0] + keyframes[1]) / 2)
    assert (motion.embeds[1:4] - linear.embeds[1:4]).abs().max() > 1e-4   # the predictor is not linear


def test_predict_from_an_embeddings_file(env, tmp_path, monkeypatch):
    import folder_paths
    from safetensors.torch import save_file
    nodes = env["nodes"]
    BoundlessError = pack_module("nodes.common.errors").BoundlessError
    folder = tmp_path / "motion_embeddings"
    folder.mkdir()
    keyframes = torch.randn(2, smp_tiny.EMBED_DIM)
    save_file({"image_embeds": keyframes}, str(folder / "keys.safetensors"))
    save_file({"image_embeds": keyframes}, str(tmp_path / "outside.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, nodes.EMBEDDINGS_FOLDER, ([str(folder)], {".safetensors"}))
    motion, count = nodes.SemanticMotionPredict.execute(env["smp"], 4, nodes.MODES[1],
                                                        embeddings_file="keys.safetensors").result
    assert count == 4
    torch.testing.assert_close(motion.embeds[[0, 3]], keyframes)
    # only files of the folder's list are read: no absolute or ../ paths, no "does it exist" oracle
    for escape in (str(tmp_path / "outside.safetensors"), "../outside.safetensors", "/etc/shadow"):
        with pytest.raises(BoundlessError, match="is not a file in ComfyUI/models/motion_embeddings"):
            nodes.SemanticMotionPredict.execute(env["smp"], 4, nodes.MODES[1], embeddings_file=escape)


def test_predict_errors_name_the_fix(env, tmp_path):
    BoundlessError = pack_module("nodes.common.errors").BoundlessError
    nodes = env["nodes"]
    with pytest.raises(BoundlessError, match="needs keyframes"):
        nodes.SemanticMotionPredict.execute(env["smp"], 4, nodes.MODES[0])
    with pytest.raises(BoundlessError, match="single keyframe"):
        nodes.SemanticMotionPredict.execute(env["smp"], 4, nodes.MODES[0], FakeVision(), torch.rand(1, 8, 8, 3))

    class WideVision:
        def encode_image(self, image, crop=True):
            return {"image_embeds": torch.zeros(image.shape[0], 1024)}
    with pytest.raises(BoundlessError, match="1024-wide embeddings but the predictor tiny was trained on 1280"):
        nodes.SemanticMotionPredict.execute(env["smp"], 4, nodes.MODES[0], WideVision(), torch.rand(2, 8, 8, 3))


# ------------------------------------------------------------------ Save Video
def test_save_video_writes_into_the_output_folder(env, tmp_path):
    import folder_paths
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        frames = torch.rand(5, 24, 32, 3)
        result = env["nodes"].SaveVideo.execute(frames, "Boundless/clip", "gif", 10.0, 0, True, 90)
    finally:
        folder_paths.set_output_directory(old)
    [saved] = result.ui.as_dict()["images"]
    assert saved["subfolder"] == "Boundless" and saved["filename"].endswith(".gif") and saved["type"] == "output"
    written = np.stack(list(iio.imiter(tmp_path / "Boundless" / saved["filename"])))
    assert written.shape[:3] == (8, 24, 32)                                  # 5 frames ping-pong: 0 1 2 3 4 3 2 1
