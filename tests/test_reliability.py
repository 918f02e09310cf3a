"""Inputs that once crashed the server, lost work or surfaced a raw exception (the issue-18 audits),
checked at the module where each is now refused. The server-level cases live beside each system's
server test (test_var_server, test_infinity_server)."""
from __future__ import annotations

import pytest
import torch

from conftest import import_comfy_in_process
from infinity_tiny import one_thread, tiny_model  # noqa: F401  (one_thread: autouse fixture)
from packpath import pack_module

BoundlessError = pack_module("nodes.common.errors").BoundlessError
state_mod = pack_module("nodes.infinity.state")
tiling = pack_module("nodes.vq.tiling")
paella_conditioning = pack_module("nodes.paella.conditioning")
story_conditioning = pack_module("nodes.story.conditioning")
bank_mod = pack_module("nodes.story.bank")


def test_the_state_bound_counts_the_whole_batch(monkeypatch):
    """64 canvases of the per-image maximum once took 19 GB in NCP State (empty)."""
    model = tiny_model()                                   # 2x2-token patches
    monkeypatch.setattr(state_mod, "MAX_CANVAS_TOKENS", 4 * 8 * 4)
    state_mod.empty_state(model, 4, 2, batch=4)            # exactly at the bound
    with pytest.raises(BoundlessError, match=r"× batch 5 holds 160 tokens, over the 128-token bound"):
        state_mod.empty_state(model, 4, 2, batch=5)
    grown = state_mod.empty_state(model, 4, 1, batch=4)
    with pytest.raises(BoundlessError, match="over the 128-token bound"):
        state_mod.plan_outpaint(grown, [("right", 1), ("down", 1)])


def test_a_decoded_image_must_fit_where_it_lands():
    """Tiles bound the decoder, not the picture: NCP State → Image once asked for 824 GB."""
    tiling.check_output_fits(2, 512, 512, free_bytes=2 * 512 * 512 * 12, what="VQGAN Decode")
    with pytest.raises(BoundlessError, match=r"NCP State → Image: the decoded image would be 65536x4096 px x 16 "
                                             r"\(48.0 GiB .*Infinity Stream Canvas"):
        tiling.check_output_fits(16, 4096, 65536, free_bytes=8 << 30, what="NCP State → Image")


def test_clip_image_vectors_of_different_encoders_are_not_mixed():
    cond = paella_conditioning.from_sources({"clip_image": torch.randn(1, 16)})
    with pytest.raises(BoundlessError, match=r"different widths \[16, 1024\]"):
        paella_conditioning.add_images(cond, torch.randn(1, 1, 1024))
    with pytest.raises(BoundlessError, match="different widths"):
        paella_conditioning.from_sources({"clip_image": torch.randn(1, 16)}, image_embeds=torch.randn(1, 32))


def test_embeddings_with_nan_are_refused_before_sampling():
    """fp16 ByT5 states that overflowed reached torch.multinomial as 'probability tensor contains nan'."""
    states = torch.randn(1, 6, 24)
    states[0, 2, 5] = float("nan")
    with pytest.raises(BoundlessError, match="'byt5' holds NaN or inf"):
        paella_conditioning.from_sources({"byt5": states, "clip_text": torch.randn(1, 16)})


def test_prompts_whose_lengths_share_no_small_multiple_are_refused():
    """Panels of 5, 6, 7 and 8 CLIP chunks repeated to 840 chunks each: about 2 GB of SDXL conditioning."""
    def encoding(chunks):
        return {"cond": torch.zeros(1, 77 * chunks, 4)}
    [[cond, _]] = story_conditioning.stack_encodings([encoding(1), encoding(2), encoding(4)])
    assert cond.shape == (3, 77 * 4, 4)
    with pytest.raises(BoundlessError, match=r"encode to 5, 6, 7, 8 chunks of 77 tokens.*105x the longest"):
        story_conditioning.stack_encodings([encoding(n) for n in (5, 6, 7, 8)])


def test_a_bank_that_was_not_rewritten_for_new_identity_images_is_refused():
    """After the identity sampler was rewired to the plain model, the cached bank still held the
    previous run and the panels silently copied those characters."""
    bank = bank_mod.CharacterBank()
    bank.put("A", 1, 0, 1, torch.zeros(2, 4), torch.zeros(2, 4))
    first = bank_mod.tensor_digest(torch.ones(2, 4, 8, 8))
    bank.check_fresh(first)
    bank.check_fresh(first)                                   # the same images again (a cached sampler)
    with pytest.raises(BoundlessError, match="identity images changed but the character bank did not"):
        bank.check_fresh(bank_mod.tensor_digest(torch.zeros(2, 4, 8, 8)))
    bank.put("A", 1, 0, 1, torch.zeros(2, 4), torch.zeros(2, 4))    # a real new identity pass
    bank.check_fresh(bank_mod.tensor_digest(torch.zeros(2, 4, 8, 8)))


@pytest.fixture()
def validation():
    import_comfy_in_process()
    return pack_module("nodes.common.validation")


@pytest.mark.parametrize("prefix,problem", [
    ("../x", "climbs out"), ("a/../../b", "climbs out"), ("a\\..\\b", "climbs out"), ("/abs", "absolute"),
    ("C:\\x", "absolute"), ("a\x00b", "control character"), ("a\nb", "control character"),
    ("a" * 300 + "/x", "too long"), ("", "empty"), (".", "ends with a folder"),
    ("x/", "ends with a folder")])
def test_filename_prefixes_name_a_file_inside_the_output_folder(validation, prefix, problem):
    with pytest.raises(BoundlessError, match=f"Save Video: filename_prefix .* {problem}.*'Boundless/my_canvas'"):
        validation.check_filename_prefix("Save Video", prefix)


def test_ordinary_prefixes_pass(validation):
    for prefix in ("canvas", "Boundless/story_video", "a b/c-d_e", "élan/ümlaut"):
        validation.check_filename_prefix("Save Video", prefix)


def test_motion_files_that_hold_no_usable_embeddings_are_refused(tmp_path, monkeypatch):
    """A bare tensor in an SMP file gave AttributeError; a 0-d or NaN embeddings file IndexError or a
    'successful' video of noise."""
    import_comfy_in_process()
    import folder_paths
    from safetensors.torch import save_file
    nodes = pack_module("nodes.story.motion_nodes")
    torch.save(torch.zeros(3), tmp_path / "bare.pt")
    with pytest.raises(BoundlessError, match="bare.pt holds a Tensor, not named weights"):
        nodes.read_weights(str(tmp_path / "bare.pt"))
    folder = tmp_path / "motion_embeddings"
    folder.mkdir()
    save_file({"image_embeds": torch.tensor(1.0)}, str(folder / "scalar.safetensors"))
    save_file({"image_embeds": torch.randn(2, 3, 8)}, str(folder / "states.safetensors"))   # once 6 silent keyframes
    save_file({"image_embeds": torch.zeros(0, 8)}, str(folder / "empty.safetensors"))
    nan = torch.randn(2, 8)
    nan[1, 3] = float("nan")
    save_file({"image_embeds": nan}, str(folder / "nan.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, nodes.EMBEDDINGS_FOLDER, ([str(folder)], {".safetensors"}))
    with pytest.raises(BoundlessError, match=r"scalar.safetensors: the keyframe embeddings must be a float tensor "
                                             r"\[N, D\]"):
        nodes.embeddings_from_file("scalar.safetensors")
    for name in ("states.safetensors", "empty.safetensors"):
        with pytest.raises(BoundlessError, match=f"{name}: the keyframe embeddings must be a float tensor"):
            nodes.embeddings_from_file(name)
    with pytest.raises(BoundlessError, match="nan.safetensors: the keyframe embeddings hold NaN"):
        nodes.embeddings_from_file("nan.safetensors")
