"""Import the Boundless pack by path, under the package name ``boundless``.

ComfyUI owns the top-level module name ``nodes``; the pack's ``nodes/`` sub-package must only be
reached through the pack package, exactly as ComfyUI itself imports custom nodes (by file path).
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "boundless"


def load_pack():
    """Return the pack's root package module, importing it once."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def pack_module(dotted: str):
    """Import ``boundless.<dotted>``, e.g. ``pack_module("nodes.vq.vqgan")``."""
    load_pack()
    return importlib.import_module(f"{PACKAGE}.{dotted}")
