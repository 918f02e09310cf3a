"""NUWA-Infinity training: chain loss, overfitting one canvas, the command-line trainer."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from infinity_tiny import one_thread, tiny_model  # noqa: F401 (autouse fixture)
from packpath import pack_module

adc = pack_module("nodes.infinity.adc")
checkpoint = pack_module("nodes.infinity.checkpoint")
config = pack_module("nodes.infinity.config")
sampler = pack_module("nodes.infinity.sampler")
training = pack_module("nodes.infinity.training")
train = pack_module("nodes.infinity.train")
errors = pack_module("nodes.common.errors")


def test_a_few_steps_reduce_the_loss():
    model = tiny_model(0, n_embed=32).train()
    torch.manual_seed(0)
    canvas = torch.randint(0, 32, (2, 1, 4, 6))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        losses.append(training.chain_loss(model, canvas, adc.ORDERS[step % 4], config.Extents(1, 1, 1),
                                          patch_h=2, patch_w=2))
        opt.step()
    with torch.no_grad():
        after = training.chain_loss(model, canvas, "down", config.Extents(1, 1, 1), patch_h=2, patch_w=2,
                                    backward=False)
    assert after < losses[0] - 0.1
    assert all(p.grad is not None for p in model.parameters())


def test_overfit_one_canvas_reproduces_it_greedily():
    model = tiny_model(1, n_embed=16, trained_extents=config.Extents(1, 1, 0)).train()
    torch.manual_seed(1)
    canvas = torch.randint(0, 16, (1, 1, 4, 6))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = training.chain_loss(model, canvas, "down", model.extents, patch_h=2, patch_w=2)
        opt.step()
    assert loss < 0.05
    state = sampler.generate_canvas(model.eval(), 3, 2, order="down", temperature=0)
    assert torch.equal(state.tokens, canvas)


def test_canvas_sampler_crops_and_orders():
    grids = [torch.randint(0, 8, (1, 6, 8)), torch.randint(0, 8, (1, 2, 2))]
    crops = training.CanvasSampler(grids, cols=2, rows=2, patch_h=2, patch_w=2, orders=["up", "left"], seed=3)
    assert crops.items == [0]                          # the 2×2-token map cannot hold a 4×4 crop
    canvas, order, text = crops.batch(3)
    assert canvas.shape == (3, 1, 4, 4) and order in ("up", "left") and text is None
    with pytest.raises(errors.BoundlessError, match="smaller --canvas"):
        training.CanvasSampler(grids, cols=5, rows=5, patch_h=2, patch_w=2)


def test_wrap_training_uses_whole_rolled_panoramas():
    panorama = torch.arange(4 * 8).view(1, 4, 8)
    crops = training.CanvasSampler([panorama, torch.zeros(1, 4, 6, dtype=torch.int64)], cols=4, rows=1,
                                   patch_h=2, patch_w=2, seed=0, wrap=True)
    assert crops.items == [0]
    canvas, _, _ = crops.batch(8)
    for crop in canvas:
        shift = int(crop[0, 0, 0]) % 8
        rows = [r for r in range(3) if torch.equal(crop[0, 0], panorama[0, r].roll(-shift))]
        assert rows and torch.equal(crop[0], panorama[0, rows[0]:rows[0] + 2].roll(-shift, dims=-1))
    with pytest.raises(errors.BoundlessError, match="whole panorama"):
        training.CanvasSampler([panorama], cols=3, rows=1, patch_h=2, patch_w=2, wrap=True)


def test_wrap_every_mixes_whole_wrapped_panoramas_into_crop_training(tmp_path, monkeypatch):
    """--wrap-every N: every Nth step is one whole-width panorama trained with wrap-around, the other
    steps ordinary crops, so one model learns both canvases and the 360° seam."""
    data = str(tmp_path / "tokens.safetensors")
    save_file({"tokens": torch.randint(0, 12, (3, 4, 8))}, data)
    seen = []
    real_loss = train.chain_loss

    def spy(net, canvas, *args, wrap=False, **kwargs):
        seen.append((tuple(canvas.shape), wrap))
        return real_loss(net, canvas, *args, wrap=wrap, **kwargs)

    monkeypatch.setattr(train, "chain_loss", spy)
    common = ["--tokens", data, "--out", str(tmp_path / "m.safetensors"), "--dim", "16", "--depth", "1",
              "--heads", "2", "--patch", "2", "2", "--extents", "1", "1", "0", "--canvas", "2", "2",
              "--batch", "2", "--threads", "1"]
    train.main([*common, "--steps", "6", "--wrap-every", "3"])
    crop, whole = ((2, 1, 4, 4), False), ((1, 1, 4, 8), True)
    assert seen == [crop, crop, whole, crop, crop, whole]
    with pytest.raises(errors.BoundlessError, match="give one of the two"):
        train.main([*common, "--steps", "1", "--wrap-every", "3", "--wrap"])


def test_command_line_trainer_on_token_file(tmp_path):
    tokens = torch.randint(0, 20, (3, 6, 6))
    text = torch.randn(3, 4, 10)
    data = str(tmp_path / "tokens.safetensors")
    save_file({"tokens": tokens, "text": text}, data, metadata={"tokenizer": "taming.vqgan:x", "factor": "16"})
    out = str(tmp_path / "model.safetensors")
    trained = train.main(["--tokens", data, "--out", out, "--dim", "16", "--depth", "1", "--heads", "2",
                          "--patch", "2", "2", "--extents", "1", "1", "0", "--canvas", "2", "2",
                          "--batch", "2", "--steps", "3", "--threads", "1"])
    loaded = checkpoint.load_infinity(out)
    assert loaded.config == trained.config
    assert (loaded.config.n_embed, loaded.config.text_dim, loaded.extents) == (20, 10, config.Extents(1, 1, 0))
    assert (loaded.tokenizer, loaded.factor) == ("taming.vqgan:x", 16)
    resumed = train.main(["--tokens", data, "--out", out, "--resume", out, "--steps", "1", "--threads", "1",
                          "--canvas", "2", "2"])
    assert resumed.config == loaded.config
    with pytest.raises(errors.BoundlessError, match="training data"):
        train.main(["--out", out])


def test_command_line_trainer_adds_and_widens_frame_alignment(tmp_path):
    data = str(tmp_path / "clips.safetensors")
    save_file({"tokens": torch.randint(0, 12, (2, 2, 4, 4))}, data)          # 2 clips of 2 frames
    out = str(tmp_path / "video.safetensors")
    common = ["--tokens", data, "--out", out, "--canvas", "2", "2", "--batch", "1", "--steps", "1", "--threads", "1"]
    train.main([*common, "--dim", "16", "--depth", "1", "--heads", "2", "--patch", "2", "2", "--rope-base", "0"])
    assert not checkpoint.load_infinity(out).config.frame_align
    train.main([*common, "--resume", out, "--frame-align"])
    assert checkpoint.load_infinity(out).config.align_radius == 0
    widened = train.main([*common, "--resume", out, "--frame-align", "--align-radius", "1"])
    assert checkpoint.load_infinity(out).config == widened.config and widened.config.align_radius == 1
    with pytest.raises(errors.BoundlessError, match="give --frame-align too"):
        train.main([*common, "--align-radius", "1"])


def test_token_file_captions_bring_their_empty_caption_and_encoder(tmp_path, monkeypatch):
    """A token file with ``null_text`` trains caption dropout on exactly that state, and the model
    records the file's text encoder."""
    tokens = torch.randint(0, 20, (3, 6, 6))
    text, null_text = torch.randn(3, 4, 10), torch.full((4, 10), 7.0)
    data = str(tmp_path / "captioned.safetensors")
    save_file({"tokens": tokens, "text": text, "null_text": null_text}, data,
              metadata={"tokenizer": "taming.vqgan:x", "factor": "16", "text_encoder": "minilm:abc"})
    seen = []
    real_loss = train.chain_loss

    def spy(*args, text=None, **kwargs):
        seen.append(text.clone())
        return real_loss(*args, text=text, **kwargs)

    monkeypatch.setattr(train, "chain_loss", spy)
    out = str(tmp_path / "model.safetensors")
    trained = train.main(["--tokens", data, "--out", out, "--dim", "16", "--depth", "1", "--heads", "2",
                          "--patch", "2", "2", "--extents", "1", "1", "0", "--canvas", "2", "2", "--batch", "2",
                          "--steps", "2", "--threads", "1", "--drop-text", "1.0"])
    assert trained.text_encoder == "minilm:abc"
    assert all(torch.equal(batch, null_text.expand_as(batch)) for batch in seen)


def test_validation_keeps_the_best_checkpoint(tmp_path, capsys):
    """--val-tokens: the output is the checkpoint with the lowest held-out cross-entropy seen."""
    torch.manual_seed(3)
    data, val = str(tmp_path / "train.safetensors"), str(tmp_path / "val.safetensors")
    save_file({"tokens": torch.randint(0, 12, (4, 4, 4))}, data)
    save_file({"tokens": torch.randint(0, 12, (3, 4, 4))}, val)
    out = str(tmp_path / "model.safetensors")
    common = ["--tokens", data, "--out", out, "--dim", "16", "--depth", "1", "--heads", "2", "--patch", "2", "2",
              "--extents", "1", "1", "0", "--canvas", "2", "2", "--batch", "2", "--threads", "1", "--lr", "3e-2"]
    returned = train.main([*common, "--steps", "12", "--save-every", "3", "--val-tokens", val])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "val_nll" in line]
    assert [p["step"] for p in printed] == [3, 6, 9, 12]
    best = min(printed, key=lambda p: p["val_nll"])
    meta = checkpoint.read_metadata(out)
    assert meta["steps"] == str(best["step"]) and float(meta["val_nll"]) == pytest.approx(best["val_nll"], abs=1e-4)
    loaded = checkpoint.load_infinity(out)
    again = training.heldout_nll(loaded, load_file(val)["tokens"][:, None], config.Extents(1, 1, 0), batch=2)
    assert again == pytest.approx(best["val_nll"], abs=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(returned.state_dict().values(), loaded.state_dict().values()))

    save_file({"tokens": torch.randint(0, 12, (2, 4, 5))}, val)
    with pytest.raises(errors.BoundlessError, match="not whole 2×2-token patches"):
        train.main([*common, "--steps", "1", "--val-tokens", val])


def test_teacher_forced_log_probs_score_what_heldout_nll_scores():
    """The per-token distributions of a true canvas: each sums to one, the true tokens' mean
    cross-entropy is heldout_nll's for the same scan, and their argmax is teacher_forced_argmax."""
    model = tiny_model(2, n_embed=32, trained_extents=config.Extents(1, 1, 0))
    canvases = torch.randint(0, 32, (3, 1, 4, 6), generator=torch.Generator().manual_seed(2))
    log_probs = training.teacher_forced_log_probs(model, canvases, "right")
    assert log_probs.shape == (3, 1, 4, 6, 32) and log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 1, 4, 6))
    nll = float(-log_probs.gather(-1, canvases[..., None]).mean())
    assert nll == pytest.approx(training.heldout_nll(model, canvases, config.Extents(1, 1, 0), order="right"), abs=1e-5)
    assert torch.equal(training.teacher_forced_argmax(model, canvases, "right"), log_probs.argmax(-1))


def test_video_training_learns_to_use_the_previous_frame():
    """Clips whose frames repeat a random first frame: only the NCP's frame axis (e_f = 1) can predict
    the later frames, so after training held-out clips cost far fewer nats with it than without."""
    torch.manual_seed(0)
    model = tiny_model(3, n_embed=16).train()

    def clips(n):
        first = torch.randint(0, 16, (n, 1, 2, 4))
        return first.expand(-1, 3, -1, -1).contiguous()           # [n, 3 frames, 2, 4]: 1x2 patches/frame

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        opt.zero_grad()
        training.chain_loss(model, clips(8), adc.ORDERS[step % 4], config.Extents(1, 1, 1), patch_h=2, patch_w=2)
        opt.step()
    held = clips(16)
    with_frames = training.heldout_nll(model, held, config.Extents(1, 1, 1), batch=8)
    without = training.heldout_nll(model, held, config.Extents(1, 1, 0), batch=8)
    assert model.training                                   # heldout_nll restores the mode
    assert all(p.grad is None or not p.grad.isnan().any() for p in model.parameters())
    # Frames 1 and 2 (2/3 of the tokens) become predictable: at least a third of ln(16) saved.
    assert with_frames < without - torch.log(torch.tensor(16.0)).item() / 3


def test_input_noise_corrupts_what_the_model_reads_not_what_it_must_predict():
    model = tiny_model(0, n_embed=64)
    canvas = torch.randint(0, 64, (4, 1, 8, 8))
    fed = []

    class Recorder(torch.nn.Module):
        config = model.config

        def forward(self, tokens, context, order, text):
            fed.append(tokens.clone())
            return model(tokens, context, order, text)

    clean = training.chain_loss(model, canvas, "down", config.Extents(1, 1, 0), patch_h=2, patch_w=2, backward=False)
    fed.clear()
    generator = torch.Generator().manual_seed(0)
    noisy = training.chain_loss(Recorder(), canvas, "down", config.Extents(1, 1, 0), patch_h=2, patch_w=2,
                                backward=False, input_noise=0.5, generator=generator)
    truth = torch.cat([canvas[:, 0, r * 2:r * 2 + 2, c * 2:c * 2 + 2].reshape(4, 4) for r in range(4) for c in range(4)])
    changed = float((torch.cat(fed) != truth).float().mean())
    assert 0.4 < changed < 0.55                    # half replaced, a few by the same code (1/64)
    assert noisy != clean                          # the loss is still taken against the true tokens
    with pytest.raises(errors.BoundlessError, match="input-noise"):
        train.main(["--tokens", "x.safetensors", "--out", "y.safetensors", "--input-noise", "1.5"])
