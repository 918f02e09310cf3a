"""Story format parsing, batched conditioning and comic pages (pure modules of nodes/story)."""
import pytest
import torch

from packpath import pack_module

prompts = pack_module("nodes.story.prompts")
conditioning = pack_module("nodes.story.conditioning")
comic = pack_module("nodes.story.comic")
BoundlessError = pack_module("nodes.common.errors").BoundlessError

CHARACTERS = "[Bob] a man in a black suit  # the hero\n\n[Alice] a woman with red hair"
PANELS = """[Bob] at home, reading the paper #Bob reads
[Alice] in the garden
[Bob] and [Alice] have a picnic #Lunch
[NC] a city at night
[Bob] walking the dog
a quiet street"""


def test_characters_ignore_comments_and_blank_lines():
    chars = prompts.parse_characters(CHARACTERS)
    assert [(c.name, c.description) for c in chars] == [("Bob", "a man in a black suit"),
                                                        ("Alice", "a woman with red hair")]


def test_story_lines_prompts_characters_and_captions():
    story = prompts.parse_story(CHARACTERS, PANELS, identity_images=1, style="comic, {prompt}, ink")
    assert [line.characters for line in story.lines] == [("Bob",), ("Alice",), ("Bob", "Alice"), (), ("Bob",), ()]
    assert story.lines[0].prompt == "comic, a man in a black suit at home, reading the paper, ink"
    assert story.lines[2].prompt == "comic, a man in a black suit and a woman with red hair have a picnic, ink"
    assert story.lines[3].prompt == "comic, a city at night, ink"
    assert [line.caption for line in story.lines] == ["Bob reads", "Alice in the garden", "Lunch", "a city at night",
                                                      "Bob walking the dog", "a quiet street"]


def test_identity_lines_are_the_first_solo_lines_of_each_character():
    story = prompts.parse_story(CHARACTERS, PANELS, identity_images=1)
    assert story.identity == (0, 1) and story.panels == (2, 3, 4, 5)
    assert story.identity_rows == [("Bob",), ("Alice",)]
    assert story.panel_rows == [("Bob", "Alice"), (), ("Bob",), ()]
    assert story.reading_order() == [("identity", 0), ("identity", 1), ("panel", 0), ("panel", 1), ("panel", 2),
                                     ("panel", 3)]
    two = prompts.parse_story("[Bob] a man", "[Bob] a\n[NC] b\n[Bob] c\n[Bob] d", identity_images=2)
    assert two.identity == (0, 2) and two.panels == (1, 3)


@pytest.mark.parametrize("characters,panels,identity,message", [
    (CHARACTERS, "[Bob] home\n[Alice] garden\n[Carol] at work", 1, r"unknown character \[Carol\].*\[Bob\], \[Alice\]"),
    ("[Bob] a\n[Bob] b", "[Bob] x", 1, "defined twice"),
    ("[NC] nobody", "x", 1, "reserved"),
    ("Bob a man", "x", 1, "must start with the name in brackets"),
    ("[Bob]", "x", 1, "has no description"),
    ("", "x", 1, "no characters"),
    (CHARACTERS, "[Bob] a\n[Alice] b\n[Bob] c", 2, r"\[Alice\] needs 2 identity line"),
    (CHARACTERS, "[Bob] a\n[Alice] b", 1, "no panel reads the character bank"),
    (CHARACTERS, "  \n", 1, "no panel lines"),
    (CHARACTERS, "[Bob] a\n[Alice] b\n[NC] and [Bob] c", 1, "mixes"),
])
def test_bad_stories_fail_with_a_fix(characters, panels, identity, message):
    with pytest.raises(BoundlessError, match=message):
        prompts.parse_story(characters, panels, identity_images=identity)


def test_style_must_have_a_prompt_slot():
    with pytest.raises(BoundlessError, match=r"\{prompt\}"):
        prompts.parse_story(CHARACTERS, PANELS, style="comic style")


def test_stack_encodings_repeats_to_a_common_length_and_batches_pooled():
    short = {"cond": torch.randn(1, 77, 8), "pooled_output": torch.randn(1, 4)}
    long = {"cond": torch.randn(1, 154, 8), "pooled_output": torch.randn(1, 4)}
    [[cond, opts]] = conditioning.stack_encodings([short, long, short])
    assert cond.shape == (3, 154, 8)
    torch.testing.assert_close(cond[0], short["cond"][0].repeat(2, 1))
    torch.testing.assert_close(cond[1], long["cond"][0])
    torch.testing.assert_close(opts["pooled_output"], torch.cat([short["pooled_output"], long["pooled_output"],
                                                                 short["pooled_output"]]))
    with pytest.raises(BoundlessError):
        conditioning.stack_encodings([{"cond": torch.randn(1, 77, 8)}, {"cond": torch.randn(1, 77, 16)}])


def test_comic_pages_grid_size_and_page_count():
    images = torch.rand(5, 30, 40, 3)
    pages = comic.comic_pages(images, [""] * 5, columns=2, rows=2, border=10)
    assert pages.shape == (2, 2 * 30 + 3 * 10, 2 * 40 + 3 * 10, 3)
    torch.testing.assert_close(pages[0, 10:40, 10:50], (images[0] * 255).round() / 255)
    torch.testing.assert_close(pages[0, 10:40, 60:100], (images[1] * 255).round() / 255)
    torch.testing.assert_close(pages[1, 10:40, 10:50], (images[4] * 255).round() / 255)
    assert bool((pages[1, 10:40, 60:100] == 1.0).all())          # empty cells of the last page stay white
    assert bool((pages[1, 50:, :] == 1.0).all())


def test_captions_are_drawn_at_the_bottom_of_the_panel_only():
    images = torch.zeros(1, 64, 64, 3)
    plain = comic.comic_pages(images, ["hello world"], 1, 1, border=0, show_captions=False)
    captioned = comic.comic_pages(images, ["hello world"], 1, 1, border=0)
    changed = (captioned != plain).any(dim=-1)[0]                 # [H, W]
    rows = changed.any(dim=1).nonzero().flatten()
    assert rows.numel() > 0 and int(rows.min()) > 32             # only the lower half carries the caption
    box = captioned[0, 63, 32]
    assert float(box.min()) > 0.7                                  # translucent white box over black


def test_wrap_text_respects_the_width():
    font = comic._font(12)
    lines = comic.wrap_text("one two three four five six seven", font, 60)
    assert len(lines) > 1 and " ".join(lines) == "one two three four five six seven"
    assert all(font.getlength(line) <= 60 for line in lines if " " in line)


def test_in_reading_order_interleaves_and_resizes_panels():
    story = prompts.parse_story(CHARACTERS, PANELS, identity_images=1)
    identity = torch.stack([torch.full((8, 8, 3), float(i)) for i in range(2)])
    panels = torch.stack([torch.full((4, 4, 3), 10.0 + i) for i in range(4)])
    ordered = comic.in_reading_order(story.reading_order(), identity, panels)
    assert ordered.shape == (6, 8, 8, 3)
    assert [float(x[0, 0, 0]) for x in ordered] == [0.0, 1.0, 10.0, 11.0, 12.0, 13.0]
    with pytest.raises(BoundlessError, match="4 panel images but 3 were given"):
        comic.in_reading_order(story.reading_order(), identity, panels[:3])
