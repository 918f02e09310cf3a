"""Op registry for the conformance runner (`tests/conformance.py`).

Each system contributes one module here (``vqgan.py``, ``var.py``, ``paella.py``, ``story.py``,
...) that defines two dicts:

``KINDS: dict[str, Kind]``
    model kind (the manifest's ``"kind"``) -> how to load a weight file of that kind, how to check
    a ``shapes/*.json`` key->shape map against the project's model, and how to recognise one.
``OPS: dict[str, Callable[[list, dict[str, Tensor], dict], dict[str, Tensor]]]``
    op name -> ``fn(models, inputs, params) -> outputs``. ``models`` are the loaded models in the
    order the case lists them; ``inputs`` maps the case's input names to tensors; ``params`` is
    the case's JSON params. The returned dict maps output names to tensors.

Modules import the pack through ``tests/packpath.py`` (never as top-level ``nodes``).
A module that fails to import only fails the cases that need its ops.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import traceback
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Kind:
    """How the runner treats one model kind.

    load: path -> model object handed to ops (must infer its config from keys and shapes).
    check_shapes: {key: shape} of a released checkpoint -> None when the project's model built
        from the inferred config (on the meta device) has exactly those keys and shapes, else a
        one-line description of the first differences.
    detect: {key: shape} -> True when the keys look like this kind; used for ``shapes/*.json``
        files that the manifest does not label.
    """

    load: Callable[[str], Any]
    check_shapes: Callable[[dict[str, list[int]]], str | None]
    detect: Callable[[dict[str, list[int]]], bool]


def collect() -> tuple[dict[str, Kind], dict[str, Callable], dict[str, str]]:
    """Import every system module; return (kinds, ops, import errors by module name)."""
    kinds: dict[str, Kind] = {}
    ops: dict[str, Callable] = {}
    errors: dict[str, str] = {}
    for info in pkgutil.iter_modules(__path__):
        name = info.name
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except Exception:  # noqa: BLE001 - reported per case by the runner
            errors[name] = traceback.format_exc(limit=3).strip().splitlines()[-1]
            continue
        kinds.update(getattr(mod, "KINDS", {}))
        ops.update(getattr(mod, "OPS", {}))
    return kinds, ops, errors
