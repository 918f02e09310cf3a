"""The CSA attn1 patch, character bank and layer discovery without ComfyUI (fake extra_options)."""
import copy

import pytest
import torch

from packpath import pack_module

csa = pack_module("nodes.story.csa")
patch_mod = pack_module("nodes.story.patch")
bank_mod = pack_module("nodes.story.bank")
layers_mod = pack_module("nodes.story.layers")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

HEADS, DIM = 2, 8
C = HEADS * DIM
LATENT = (8, 8)                                     # h16 level = 4x4 = 16 tokens, h8 = 64 tokens
LAYERS = [layers_mod.LayerSpec("output", 0, 0, 2, HEADS, DIM), layers_mod.LayerSpec("output", 1, 0, 2, HEADS, DIM),
          layers_mod.LayerSpec("output", 2, 0, 1, HEADS, DIM)]
SCHEDULE = torch.tensor([14.6, 8.0, 4.0, 2.0, 1.0, 0.0])
ALWAYS = csa.Gating(start_step=0, skip_prob_early=0.0, skip_prob_late=0.0)


def options(layer, kinds, batch, step, schedule=SCHEDULE, sigma=None):
    spec = LAYERS[layer]
    value = schedule[step] if sigma is None else torch.tensor(sigma)
    return {"n_heads": HEADS, "dim_head": DIM, "cond_or_uncond": list(kinds), "block": (spec.block, spec.number),
            "block_index": spec.block_index, "original_shape": [batch // len(kinds), 4, *LATENT],
            "sigmas": value.repeat(batch // len(kinds)), "sample_sigmas": schedule}


def tokens(layer):
    return layers_mod.level_tokens(*LATENT, LAYERS[layer].factor)


def qkv(batch, layer, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens(layer), C, generator=g) for _ in range(3)]


def run_pass(attention, n, kinds=(1, 0), seed=0, steps=5):
    """Every (step, layer) call of one sampling run; returns {(step, layer): out}."""
    outs = {}
    for s in range(steps):
        for layer in range(len(LAYERS)):
            q, k, v = qkv(n * len(kinds), layer, seed + 100 * s + layer)
            outs[s, layer] = attention(q, k, v, options(layer, kinds, n * len(kinds), s))
    return outs


def settings(**kw):
    return patch_mod.CSASettings(seed=3, rate_h32=0.5, rate_h16=0.5, rate_h8=0.5, gating=kw.pop("gating", ALWAYS), **kw)


def test_write_pass_shares_tokens_and_banks_applied_calls_only():
    bank = bank_mod.CharacterBank()
    gating = csa.Gating()                                  # reference skipping
    write = patch_mod.StoryAttention(LAYERS, settings(gating=gating), bank, "write", [("A",), ("A",)])
    outs = run_pass(write, 2)
    table = csa.gating_table(3, 5, len(LAYERS), gating)
    written = {(s, layer) for (_, s, layer, _) in bank.entries}
    assert written == {(s, layer) for s in range(5) for layer in range(3) if table[s, layer]}
    assert {kind for (*_, kind) in bank.entries} == {0, 1}
    s, layer = next(iter(sorted(written)))
    q, k, v = qkv(4, layer, 100 * s + layer)
    assert not torch.allclose(outs[s, layer], csa.plain_attention(q, k, v, HEADS))
    unapplied = [(s, layer) for s in range(5) for layer in range(3) if not table[s, layer]]
    s, layer = unapplied[0]
    q, k, v = qkv(4, layer, 100 * s + layer)
    torch.testing.assert_close(outs[s, layer], csa.plain_attention(q, k, v, HEADS))


def test_bank_entry_is_the_selected_keys_and_values_of_every_identity_image():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("A",)])
    q, k, v = qkv(4, 0, 5)
    write(q, k, v, options(0, (1, 0), 4, 2))
    select = csa.TokenDraws(3, 3, [(16, 0.5), (64, 0.5)]).draw(2)[0][:2]    # levels coarse first
    bank_k, bank_v = bank.entries[("A", 2, 0, 0)]                           # cond = chunk 1
    torch.testing.assert_close(bank_k, torch.cat([k[2][select[0]], k[3][select[1]]]))
    torch.testing.assert_close(bank_v, torch.cat([v[2][select[0]], v[3][select[1]]]))


def test_separate_cond_and_uncond_calls_equal_one_batched_call():
    batched_bank, split_bank = bank_mod.CharacterBank(), bank_mod.CharacterBank()
    batched = patch_mod.StoryAttention(LAYERS, settings(), batched_bank, "write", [("A",)] * 3)
    split = patch_mod.StoryAttention(LAYERS, settings(), split_bank, "write", [("A",)] * 3)
    q, k, v = qkv(6, 1, 9)
    out = batched(q, k, v, options(1, (1, 0), 6, 3))
    out_uncond = split(q[:3], k[:3], v[:3], options(1, (1,), 3, 3))
    out_cond = split(q[3:], k[3:], v[3:], options(1, (0,), 3, 3))
    torch.testing.assert_close(torch.cat([out_uncond, out_cond]), out)
    assert batched_bank.entries.keys() == split_bank.entries.keys()
    reader = patch_mod.StoryAttention(LAYERS, settings(), batched_bank, "read", [("A",)] * 2)
    q, k, v = qkv(4, 1, 10)
    both = reader(q, k, v, options(1, (0, 1), 4, 3))                        # other chunk order than the write
    cond_only = reader(q[:2], k[:2], v[:2], options(1, (0,), 2, 3))
    torch.testing.assert_close(both[:2], cond_only)


def test_panels_read_the_bank_of_the_characters_they_name():
    bank = bank_mod.CharacterBank()
    patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("B",)])(*qkv(4, 0, 1), options(0, (1, 0), 4, 2))
    reader = patch_mod.StoryAttention(LAYERS, settings(), bank, "read", [("A",), ("A", "B"), ()])
    q, k, v = qkv(6, 0, 2)
    out = reader(q, k, v, options(0, (1, 0), 6, 2))
    for row, names in enumerate([("A",), ("A", "B"), ()]):
        for chunk, kind in enumerate((1, 0)):
            r = chunk * 3 + row
            entry = bank.get(names, 2, 0, kind)
            want = csa.panel_attention(q[r:r + 1], k[r:r + 1], v[r:r + 1], [entry], HEADS)
            torch.testing.assert_close(out[r:r + 1], want)
    torch.testing.assert_close(out[2], csa.plain_attention(q[2:3], k[2:3], v[2:3], HEADS)[0])


def test_one_pass_with_two_characters_equals_one_pass_per_character():
    together, apart = bank_mod.CharacterBank(), bank_mod.CharacterBank()
    both = patch_mod.StoryAttention(LAYERS, settings(), together, "write", [("A",), ("A",), ("B",), ("B",)])
    only_a = patch_mod.StoryAttention(LAYERS, settings(), apart, "write", [("A",), ("A",)])
    only_b = patch_mod.StoryAttention(LAYERS, settings(), apart, "write", [("B",), ("B",)])
    q, k, v = qkv(8, 2, 4)                          # chunks [1, 0] of rows A A B B
    out = both(q, k, v, options(2, (1, 0), 8, 1))
    pick = lambda t, rows: t[rows]                  # noqa: E731
    a_rows, b_rows = [0, 1, 4, 5], [2, 3, 6, 7]
    out_a = only_a(pick(q, a_rows), pick(k, a_rows), pick(v, a_rows), options(2, (1, 0), 4, 1))
    out_b = only_b(pick(q, b_rows), pick(k, b_rows), pick(v, b_rows), options(2, (1, 0), 4, 1))
    torch.testing.assert_close(out[a_rows], out_a)
    torch.testing.assert_close(out[b_rows], out_b)
    for key, (bk, bv) in together.entries.items():
        torch.testing.assert_close(apart.entries[key][0], bk)


def test_bank_size_does_not_depend_on_the_number_of_panels():
    bank = bank_mod.CharacterBank()
    run_pass(patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("A",)]), 2)
    size = bank.nbytes
    assert size > 0
    for panels in (1, 4, 9):
        run_pass(patch_mod.StoryAttention(LAYERS, settings(), bank, "read", [("A",)] * panels), panels)
        assert bank.nbytes == size
    assert "A (2 identity images)" in bank.describe() and "MiB" in bank.describe()


def test_step_is_identified_by_sigma_not_by_call_count():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("A",)])
    q, k, v = qkv(4, 0, 1)
    for _ in range(3):                                   # repeated calls at one sigma (e.g. Heun) stay step 3
        write(q, k, v, options(0, (1, 0), 4, 3))
    write(q, k, v, options(0, (1, 0), 4, 0, sigma=1.9))  # a sub-step sigma -> nearest scheduled step (3)
    assert {key[1] for key in bank.entries} == {3}


def test_reading_with_another_schedule_or_an_empty_bank_fails_clearly():
    bank = bank_mod.CharacterBank()
    reader = patch_mod.StoryAttention(LAYERS, settings(), bank, "read", [("A",)])
    with pytest.raises(BoundlessError, match="bank is empty"):
        reader(*qkv(2, 0, 1), options(0, (1, 0), 2, 1))
    patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",)])(*qkv(2, 0, 1), options(0, (1, 0), 2, 1))
    other = torch.tensor([14.6, 6.0, 3.0, 0.0])
    with pytest.raises(BoundlessError, match="same steps, scheduler and denoise"):
        reader(*qkv(2, 0, 1), options(0, (1, 0), 2, 1, schedule=other))
    stranger = patch_mod.StoryAttention(LAYERS, settings(), bank, "read", [("Zed",)])
    with pytest.raises(BoundlessError, match="no identity images of Zed"):
        stranger(*qkv(2, 0, 1), options(0, (1, 0), 2, 1))


def test_batch_size_mismatches_fail_clearly():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("A",), ("B",)])
    with pytest.raises(BoundlessError, match="more identity images than the batch.*batch_size to 3"):
        write(*qkv(4, 0, 1), options(0, (1, 0), 4, 1))
    reader = patch_mod.StoryAttention(LAYERS, settings(), bank, "read", [("A",)] * 3)
    with pytest.raises(BoundlessError, match="3 panels but the latent batch has 1"):
        reader(*qkv(2, 0, 1), options(0, (1, 0), 2, 1))


def test_whole_batch_mode_without_a_story():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write")
    write(*qkv(6, 0, 1), options(0, (1, 0), 6, 1))
    assert bank.images == {patch_mod.WHOLE_BATCH: 3}
    reader = patch_mod.StoryAttention(LAYERS, settings(), bank, "read")
    q, k, v = qkv(10, 0, 2)
    out = reader(q, k, v, options(0, (1, 0), 10, 1))
    assert not torch.allclose(out, csa.plain_attention(q, k, v, HEADS))


def test_unpatched_layers_and_cropped_areas_get_plain_attention():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",), ("A",)])
    q, k, v = qkv(4, 0, 1)
    foreign = dict(options(0, (1, 0), 4, 1), block=("input", 1))
    torch.testing.assert_close(write(q, k, v, foreign), csa.plain_attention(q, k, v, HEADS))
    q, k, v = [t[:, :9] for t in (q, k, v)]                                  # 9 tokens: not the 4x4 grid
    torch.testing.assert_close(write(q, k, v, options(0, (1, 0), 4, 1)), csa.plain_attention(q, k, v, HEADS))
    assert not bank.entries


def test_model_clones_share_the_patch_and_the_bank():
    bank = bank_mod.CharacterBank()
    write = patch_mod.StoryAttention(LAYERS, settings(), bank, "write")
    copied = copy.deepcopy({"attn1": {("output", 0, 0): write}})
    assert copied["attn1"][("output", 0, 0)] is write and copy.deepcopy(bank) is bank


def test_a_new_identity_run_replaces_only_that_characters_entries():
    bank = bank_mod.CharacterBank()
    patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",)])(*qkv(2, 0, 1), options(0, (1, 0), 2, 1))
    patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("B",)])(*qkv(2, 0, 2), options(0, (1, 0), 2, 1))
    other = torch.tensor([10.0, 5.0, 2.5, 1.0, 0.0])
    patch_mod.StoryAttention(LAYERS, settings(), bank, "write", [("A",)])(*qkv(2, 0, 3),
                                                                          options(0, (1, 0), 2, 2, schedule=other))
    assert {(key[0], key[1]) for key in bank.entries} == {("A", 2), ("B", 1)}
    assert len(bank.schedules["A"]) == 5 and len(bank.schedules["B"]) == 6


# ------------------------------------------------------------------ layer discovery on a fake UNet
class Downsample(torch.nn.Module):
    pass


class Upsample(torch.nn.Module):
    pass


class Attn(torch.nn.Module):
    def __init__(self, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head


class Transformer(torch.nn.Module):
    def __init__(self, depth, heads=2, dim_head=4):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Module() for _ in range(depth)])
        for block in self.transformer_blocks:
            block.attn1 = Attn(heads, dim_head)


def seq(*modules):
    return torch.nn.Sequential(*modules) if modules else torch.nn.Sequential(torch.nn.Identity())


class FakeUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([seq(), seq(Transformer(1)), seq(Downsample()), seq(Transformer(2))])
        self.middle_block = seq(Transformer(1))
        self.output_blocks = torch.nn.ModuleList([seq(Transformer(2)), seq(Transformer(1), Upsample()),
                                                  seq(Transformer(1)), seq()])


def test_layer_discovery_orders_layers_and_finds_resolution_levels():
    found = layers_mod.unet_attention_layers(FakeUNet())
    assert [(l.key, l.factor) for l in found] == [
        (("input", 1, 0), 1), (("input", 3, 0), 2), (("input", 3, 1), 2), (("middle", 0, 0), 2),
        (("output", 0, 0), 2), (("output", 0, 1), 2), (("output", 1, 0), 2), (("output", 2, 0), 1)]
    up = layers_mod.choose_layers(found, "up blocks (reference)")
    assert [l.key for l in up] == [("output", 0, 0), ("output", 0, 1), ("output", 1, 0), ("output", 2, 0)]
    assert [l.level for l in up] == ["h16", "h16", "h16", "h8"]
    assert len(layers_mod.choose_layers(found, "up + middle blocks")) == 5
    assert len(layers_mod.choose_layers(found, "all blocks")) == 8


def test_layer_discovery_rejects_models_that_are_not_sd_unets():
    with pytest.raises(BoundlessError, match="SD1.5/SDXL-style UNet"):
        layers_mod.unet_attention_layers(torch.nn.Linear(2, 2))
    unet = FakeUNet()
    unet.output_blocks = torch.nn.ModuleList([seq()])
    with pytest.raises(BoundlessError, match="no self-attention layers in this UNet's up"):
        layers_mod.choose_layers(layers_mod.unet_attention_layers(unet), "up blocks (reference)")


@pytest.mark.parametrize("latent,factor,count", [((96, 96), 4, 576), ((96, 96), 2, 2304), ((105, 64), 4, 27 * 16),
                                                  ((8, 8), 1, 64)])
def test_level_tokens_follow_stride_two_downsampling(latent, factor, count):
    assert layers_mod.level_tokens(*latent, factor) == count
