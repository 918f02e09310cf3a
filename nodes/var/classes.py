"""ImageNet-1k class names for VAR's class-conditional models (pure Python).

``imagenet_classes.txt`` holds one short English name per line; line i (0-based) is class id i,
the order of the ImageNet-1k synset list used by every released VAR transformer. The names are
the widely used short labels (as listed by torchvision's ImageNet metadata), one per class and
unique as written; only case tells some apart (264 ``Cardigan``, the corgi, and 474 ``cardigan``,
the sweater), so an exact-case name wins and a case-insensitive one must be unambiguous.
"""
from __future__ import annotations

import functools
import pathlib
import re

from ..common.errors import BoundlessError

CLASS_FILE = pathlib.Path(__file__).with_name("imagenet_classes.txt")
RANDOM = "random"
UNCONDITIONAL = "unconditional"


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    names = tuple(line.strip() for line in CLASS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != 1000:
        raise BoundlessError(f"{CLASS_FILE.name} lists {len(names)} classes instead of 1000; reinstall the pack")
    return names


def class_choices() -> list[str]:
    """Combo entries: ``random``, ``unconditional``, then ``"<id>: <name>"`` for every class."""
    return [RANDOM, UNCONDITIONAL] + [f"{i}: {name}" for i, name in enumerate(class_names())]


def parse_class(text: str, num_classes: int = 1000) -> int | None:
    """One class from ``"207"``, ``"207: golden retriever"``, ``"golden retriever"`` (any case; an
    exact-case name wins), ``"unconditional"`` (-> ``num_classes``) or ``"random"`` (-> None, drawn by the sampler)."""
    item = text.strip()
    lowered = item.lower()
    if lowered == RANDOM:
        return None
    if lowered == UNCONDITIONAL:
        return num_classes
    head = item.split(":", 1)[0].strip()
    if re.fullmatch(r"-?[0-9]+", head):             # ASCII digits only: "²" or "--5" are no ids
        class_id = int(head)
        if not 0 <= class_id < num_classes:
            raise BoundlessError(f"class id {class_id} is out of range: this model knows classes 0..{num_classes - 1}")
        return class_id
    class_id = _class_id_by_name(item)
    if class_id >= num_classes:
        raise BoundlessError(f"class {item!r} is id {class_id}, outside this model's 0..{num_classes - 1}")
    return class_id


def _class_id_by_name(item: str) -> int:
    """The id of a name: the exact-case name first, else the one name equal ignoring case; several
    names that differ only in case (``cardigan``) are refused with their ids rather than guessed."""
    names = class_names()
    if item in names:
        return names.index(item)
    lowered = item.lower()
    matches = [i for i, name in enumerate(names) if name.lower() == lowered]
    if len(matches) > 1:
        options = ", ".join(f"{i} ({names[i]!r})" for i in matches)
        raise BoundlessError(f"ImageNet class {item!r} matches several classes that differ only in case: {options}; "
                             "type the name with its exact case or give the class id")
    if not matches:
        close = [name for name in names if lowered and lowered in name.lower()][:5]
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise BoundlessError(f"unknown ImageNet class {item!r}{hint}; give a class id 0..999 or an exact name")
    return matches[0]


def parse_class_list(text: str, num_classes: int = 1000) -> list[int | None]:
    """Classes separated by commas, semicolons or new lines (names may contain spaces)."""
    items = [part for chunk in text.replace(";", "\n").splitlines() for part in chunk.split(",")]
    parsed = [parse_class(item, num_classes) for item in items if item.strip()]
    if not parsed:
        raise BoundlessError("no class given; write class ids or ImageNet names separated by commas")
    return parsed
