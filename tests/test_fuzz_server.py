"""A bounded, seeded fuzz of the shipped workflows through the real server.

Each case takes one shipped workflow (in API form), puts one bad value into one of the pack's
widget inputs — a choice outside its list, a path, an empty string, NaN, a number past its range,
a value of the wrong type — and queues it. Every such prompt must be refused cleanly: a ComfyUI
validation error, or a pack error (BoundlessError) with a message; never a raw Python exception
(KeyError, AssertionError, TypeError...), never a reported success, never a dead server, and no
file left behind in the output folder.
"""
from __future__ import annotations

import json
import math
import pathlib
import random

import pytest
import requests

from comfy_server import PromptError
from conftest import WORKFLOWS
from workflow_convert import ui_to_api

CASES = 30
SEED = 20261206
# Workflows whose models ship with the pack (the others need weights a test server does not have).
FUZZED_WORKFLOWS = ("vqgan_roundtrip", "infinity_panorama", "infinity_text_panorama", "infinity_outpaint_4dir",
                    "infinity_outpaint_chained", "infinity_animate")
BAD_TEXT = ["RIGHT", "", "../inpaint", "/etc/passwd", "AUTO", "none.safetensors", 3]
MISSING = object()
# Nodes cheap enough to run before the fuzzed one (a bad value on a node behind a generation would
# first wait for it): loaders, example pictures, text encoding, empty states.
CHEAP = ("Loader", "ExampleImage", "EncodeText", "RegionalText", "NCPStateEmpty")


def bad_value(rng: random.Random, spec, required: bool) -> object:
    """A value ComfyUI or the pack must refuse (ComfyUI itself coerces bools and strings, so those
    are only fuzzed where the pack checks them)."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if kind == "COMBO" or isinstance(kind, list):
        choices = BAD_TEXT
    elif kind == "FLOAT":
        choices = [math.nan, "abc"]
    elif kind == "INT":
        choices = ["12x", options.get("min", 0) - 1] + ([options["max"] + 1] if "max" in options else [])
    elif kind == "STRING":
        choices = ["sky \ud800"]                              # not valid Unicode text
    else:
        return None
    return rng.choice(choices + ([MISSING] if required else []))


def ancestors(graph: dict, node_id: str) -> set[str]:
    found, todo = set(), [node_id]
    while todo:
        for value in graph[todo.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in found:
                found.add(value[0])
                todo.append(value[0])
    return found


def cases(object_info: dict) -> list[tuple[str, str, str, object, dict]]:
    rng = random.Random(SEED)
    graphs = {name: ui_to_api(json.loads((WORKFLOWS / f"{name}.json").read_text()), object_info)
              for name in FUZZED_WORKFLOWS}
    picked = []
    while len(picked) < CASES:
        name = rng.choice(FUZZED_WORKFLOWS)
        graph = json.loads(json.dumps(graphs[name]))
        pack_nodes = [nid for nid, node in graph.items() if node["class_type"].startswith("Boundless")
                      and all(any(c in graph[a]["class_type"] for c in CHEAP) for a in ancestors(graph, nid))]
        node_id = rng.choice(pack_nodes)
        info = object_info[graph[node_id]["class_type"]]["input"]
        specs = {**info.get("required", {}), **info.get("optional", {})}
        widgets = [key for key, value in graph[node_id]["inputs"].items()
                   if not isinstance(value, list) and key in specs]
        if not widgets:
            continue
        key = rng.choice(widgets)
        value = bad_value(rng, specs[key], key in info.get("required", {}))
        if value is None:
            continue
        if value is MISSING:
            del graph[node_id]["inputs"][key]                     # a required input left out
        else:
            graph[node_id]["inputs"][key] = value
        picked.append((name, node_id, key, value, graph))
    return picked


def test_bad_values_in_shipped_workflows_are_refused_cleanly(comfy):
    output = pathlib.Path(comfy.run_dir) / "output"
    before = {p for p in output.rglob("*") if p.is_file()}
    refused_by = {"validation": 0, "pack": 0}
    for name, node_id, key, value, graph in cases(comfy.object_info()):
        with pytest.raises(PromptError) as refused:
            comfy.run(graph, timeout=120)
        details = refused.value.details
        what = f"{name} node {node_id} {key}={value!r}"
        if "node_errors" in details or "error" in details:           # rejected at validation (HTTP 400)
            refused_by["validation"] += 1
            continue
        refused_by["pack"] += 1
        messages = [m[1] for m in details["status"]["messages"] if m[0] == "execution_error"]
        assert messages, f"{what}: failed without an execution error"
        error = messages[0]
        assert error["exception_type"].endswith("BoundlessError"), \
            f"{what}: {error['exception_type']}: {error['exception_message']}"
        assert len(error["exception_message"]) > 20
    assert refused_by["pack"] >= 8 and refused_by["validation"] >= 5, refused_by   # both lines of defence ran
    assert requests.get(f"{comfy.url}/system_stats", timeout=10).ok          # the server is still up
    assert {p for p in output.rglob("*") if p.is_file()} == before, "a refused prompt left a file behind"
