"""Checks every node runs on its inputs before ``execute``: choices in their lists, numbers finite,
text valid Unicode.

ComfyUI 0.3.75 validates the choices of V1 nodes but not of V3 ``Combo`` inputs (their type is the
string "COMBO", which its validator does not compare against the options), and it never checks
floats for NaN or infinity. A value outside a list would otherwise surface deep inside a node as
``KeyError: 'RIGHT'``, and a NaN temperature as torch's "probability tensor contains inf, nan".
``guard`` wraps a node class's ``execute`` so such a prompt fails at once with one message that
names the node, the input and the valid values. Every ``filename_prefix`` must name a file inside
ComfyUI's output folder. Glue: imports ComfyUI's API.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
import re

from comfy_api.latest import io

from .errors import BoundlessError

SHOWN_CHOICES = 20   # a model folder can list hundreds of files; name the first few
MAX_NAME_BYTES = 200     # per file or folder name; the counter and extension need the rest of 255
MAX_PREFIX_BYTES = 400


def check_inputs(schema: io.Schema, values: dict) -> None:
    """Raise a BoundlessError for the first choice not among its options, float that is not finite, or
    string that is not valid Unicode (a lone surrogate, which tokenizers reject with a TypeError)."""
    for item in schema.inputs:
        if item.id not in values or values[item.id] is None:
            continue
        value = values[item.id]
        if isinstance(item, io.Combo.Input):
            options = list(item.options or [])
            if value not in options:
                shown = ", ".join(repr(o) for o in options[:SHOWN_CHOICES])
                more = f" (and {len(options) - SHOWN_CHOICES} more)" if len(options) > SHOWN_CHOICES else ""
                hint = shown + more if options else "none are available; put a file in the folder the tooltip names"
                raise BoundlessError(f"{schema.display_name}: {item.id} = {value!r} is not one of the choices: "
                                     f"{hint}")
        elif isinstance(item, io.Float.Input):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BoundlessError(f"{schema.display_name}: {item.id} must be a finite number, got {value!r}")
        elif isinstance(item, io.String.Input) and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BoundlessError(f"{schema.display_name}: {item.id} holds a character that is not valid text "
                                     f"(at position {exc.start}, e.g. half of an emoji pair); retype or paste it "
                                     "again") from None
            if item.id == "filename_prefix":
                check_filename_prefix(schema.display_name, value)


def check_filename_prefix(node: str, prefix: str) -> None:
    """A prefix must name a file inside ComfyUI's output folder: relative, no '..', a real file name,
    short enough for the file system (255 bytes per name, with room for the counter and extension)."""
    parts = re.split(r"[\\/]", prefix.strip())
    problem = None
    if not prefix.strip():
        problem = "is empty"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        problem = "holds a control character (a line break, tab or NUL)"
    elif os.path.isabs(prefix) or re.match(r"^[a-zA-Z]:([\\/]|$)", prefix) or prefix.startswith(("/", "\\")):
        problem = "is an absolute path"
    elif ".." in parts:
        problem = "climbs out of the output folder with '..'"
    elif parts[-1] in ("", "."):
        problem = "ends with a folder, not a file name"
    elif len(prefix.encode("utf-8")) > MAX_PREFIX_BYTES or any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts):
        problem = f"is too long (at most {MAX_NAME_BYTES} bytes per name, {MAX_PREFIX_BYTES} in all)"
    if problem:
        raise BoundlessError(f"{node}: filename_prefix {prefix[:80]!r} {problem}; give a name inside ComfyUI's "
                             "output folder, such as 'Boundless/my_canvas'")


def guard(node_cls: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """Make ``node_cls.execute`` check its inputs against the node's schema first (in place)."""
    execute = node_cls.execute.__func__
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def checked(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs)
        check_inputs(cls.define_schema(), {**bound.arguments, **bound.arguments.get("kwargs", {})})
        return execute(cls, *args, **kwargs)

    node_cls.execute = classmethod(checked)
    return node_cls
