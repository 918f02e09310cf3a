"""Checks every node runs on its inputs before ``execute``: choices in their lists, numbers finite,
text valid Unicode.

ComfyUI 0.3.75 validates the choices of V1 nodes but not of V3 ``Combo`` inputs (their type is the
string "COMBO", which its validator does not compare against the options), and it never checks
floats for NaN or infinity. A value outside a list would otherwise surface deep inside a node as
``KeyError: 'RIGHT'``, and a NaN temperature as torch's "probability tensor contains inf, nan".
``guard`` wraps a node class's ``execute`` so such a prompt fails at once with one message that
names the node, the input and the valid values. Glue: imports ComfyUI's API.
"""
from __future__ import annotations

import functools
import inspect
import math

from comfy_api.latest import io

from .errors import BoundlessError

SHOWN_CHOICES = 20   # a model folder can list hundreds of files; name the first few


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
