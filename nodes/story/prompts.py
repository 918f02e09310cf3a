"""The StoryDiffusion story format: characters, one line per panel, captions (pure Python).

Characters, one per line::

    [Bob] a man in his thirties, short black hair, wearing a black suit
    [Alice] a young woman with curly red hair, green dress

Panels, one per line (text after ``#`` is the caption)::

    [Bob] at home, reading the newspaper #Bob reads the news
    [Bob] and [Alice] have a picnic in the park #A sunny afternoon
    [NC] a city skyline at sunset #The end

``[Name]`` in a panel is replaced by that character's description in the prompt; ``[NC]`` (no
character) marks a panel that reads no character bank, as does a line without tags. The first
``identity_images`` lines that name only one character become that character's identity images
(sampled first, sharing tokens, writing the character bank); every other line is a panel that reads
the banks of the characters it names. Differences from the reference demo: any number of
characters, tags become names (not ``[Bob]``) in captions, and errors say how to fix the story.
"""
from __future__ import annotations

import dataclasses
import re

from ..common.errors import BoundlessError

NO_CHARACTER = "NC"
TAG = re.compile(r"\[([^\[\]]+)\]")
PROMPT_SLOT = "{prompt}"


@dataclasses.dataclass(frozen=True)
class Character:
    name: str
    description: str


@dataclasses.dataclass(frozen=True)
class StoryLine:
    prompt: str                      # text for CLIP: tags replaced by descriptions, style applied
    characters: tuple[str, ...]      # named characters in order of first appearance
    caption: str


@dataclasses.dataclass(frozen=True)
class Story:
    """A parsed story: ``lines`` in reading order, split into identity lines and panel lines."""

    characters: tuple[Character, ...]
    lines: tuple[StoryLine, ...]
    identity: tuple[int, ...]        # line indices of the identity images, grouped by character
    panels: tuple[int, ...]          # line indices of the panels, in reading order

    @property
    def identity_rows(self) -> list[tuple[str]]:
        """The character of each identity image, in identity batch order."""
        return [(self.lines[i].characters[0],) for i in self.identity]

    @property
    def panel_rows(self) -> list[tuple[str, ...]]:
        """The characters each panel reads, in panel batch order."""
        return [self.lines[i].characters for i in self.panels]

    def reading_order(self) -> list[tuple[str, int]]:
        """For each line in reading order: ``("identity", row)`` or ``("panel", row)`` of its image."""
        where = {line: ("identity", row) for row, line in enumerate(self.identity)}
        where.update({line: ("panel", row) for row, line in enumerate(self.panels)})
        return [where[i] for i in range(len(self.lines))]


def _text_lines(text: str) -> list[tuple[int, str, str]]:
    """Non-empty lines as (line number, body, caption); the caption is the text after the first '#'."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        body, _, caption = raw.partition("#")
        if body.strip() or caption.strip():
            out.append((number, body.strip(), caption.strip()))
    return out


def _squash(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", text)


def parse_characters(text: str) -> tuple[Character, ...]:
    """``[Name] description`` per line; text after '#' is ignored."""
    characters: dict[str, Character] = {}
    for number, body, _ in _text_lines(text):
        match = re.fullmatch(r"\[([^\[\]]+)\]\s*(.*)", body)
        if not match:
            raise BoundlessError(f"character line {number} ({body!r}) must start with the name in brackets, "
                                 "e.g. '[Bob] a man with short black hair, wearing a black suit'")
        name, description = match.group(1).strip(), _squash(match.group(2))
        if name == NO_CHARACTER:
            raise BoundlessError(f"character line {number}: [{NO_CHARACTER}] is reserved for panels without a "
                                 "character; give the character another name")
        if name in characters:
            raise BoundlessError(f"character [{name}] is defined twice (line {number}); keep one description per name")
        if not description:
            raise BoundlessError(f"character line {number}: [{name}] has no description; describe how "
                                 f"{name} looks after the tag")
        characters[name] = Character(name, description)
    if not characters:
        raise BoundlessError("the story has no characters: add lines like '[Bob] a man wearing a black suit'")
    return tuple(characters.values())


def parse_story(characters_text: str, panels_text: str, identity_images: int = 1,
                style: str = PROMPT_SLOT) -> Story:
    """Parse characters and panel lines (see module docstring) into a :class:`Story`."""
    if PROMPT_SLOT not in style:
        raise BoundlessError(f"the style template must contain {PROMPT_SLOT} where the panel text goes, "
                             f"e.g. 'comic book illustration, {PROMPT_SLOT}, bold ink lines'")
    if identity_images < 1:
        raise BoundlessError("identity_images must be at least 1")
    characters = parse_characters(characters_text)
    known = {c.name: c for c in characters}
    lines = []
    for number, body, caption in _text_lines(panels_text):
        names = []
        for tag in TAG.findall(body):
            tag = tag.strip()
            if tag != NO_CHARACTER and tag not in known:
                raise BoundlessError(f"panel line {number} names an unknown character [{tag}]; the characters are "
                                     f"{', '.join('[' + n + ']' for n in known)} (or [{NO_CHARACTER}] for none). "
                                     "Fix the name or add the character.")
            if tag not in names:
                names.append(tag)
        if NO_CHARACTER in names and len(names) > 1:
            raise BoundlessError(f"panel line {number} mixes [{NO_CHARACTER}] (no character) with named characters")
        names = [n for n in names if n != NO_CHARACTER]

        def describe(match: re.Match) -> str:
            tag = match.group(1).strip()
            return "" if tag == NO_CHARACTER else known[tag].description

        prompt = _squash(TAG.sub(describe, body))
        default_caption = _squash(TAG.sub(lambda m: "" if m.group(1).strip() == NO_CHARACTER
                                          else m.group(1).strip(), body))
        lines.append(StoryLine(style.replace(PROMPT_SLOT, prompt), tuple(names), caption or default_caption))
    if not lines:
        raise BoundlessError("the story has no panel lines: write one line per panel, e.g. '[Bob] at home, reading'")

    identity: list[int] = []
    for character in characters:
        solo = [i for i, line in enumerate(lines) if line.characters == (character.name,)]
        if len(solo) < identity_images:
            raise BoundlessError(
                f"[{character.name}] needs {identity_images} identity line(s) (lines naming only "
                f"[{character.name}]) but the story has {len(solo)}; add such lines or lower identity_images")
        identity += solo[:identity_images]
    panels = [i for i in range(len(lines)) if i not in set(identity)]
    if not panels:
        raise BoundlessError(f"all {len(lines)} lines are identity images ({identity_images} per character), so no "
                             "panel reads the character bank; add panel lines or lower identity_images")
    return Story(characters, tuple(lines), tuple(identity), tuple(panels))
