"""What a user sees when hovering in the ComfyUI UI: every output and every input explains itself.

Read from the real server's /object_info, so it checks what the frontend actually receives. For a
V3 node ComfyUI (``comfy_api.latest._io.Schema.get_v1_info``) serialises ``output_tooltips`` as a
list parallel to ``output``, with ``None`` where an output has no tooltip; an input's tooltip sits
in the options dict, the second item of its ``[type, options]`` spec.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

MIN_INPUT_TOOLTIP = 30      # shorter texts ('Steps T.', 'Grid rows.') do not tell a user what a value does
TEST_ONLY_CATEGORY = "Boundless/testing"   # listed only with BOUNDLESS_TEST_NODES=1, never shown to users


def user_nodes(comfy) -> dict[str, dict]:
    """The pack's nodes as /object_info serves them, without the test-only stand-ins."""
    nodes = {node_id: entry for node_id, entry in comfy.object_info().items()
             if str(entry.get("category", "")).startswith("Boundless")
             and not str(entry["category"]).startswith(TEST_ONLY_CATEGORY)}
    assert "BoundlessNCPStateEmpty" in nodes and "BoundlessVQGANEncode" in nodes, sorted(nodes)
    return nodes


def test_every_output_has_a_tooltip(comfy):
    missing = []
    for node_id, entry in sorted(user_nodes(comfy).items()):
        outputs = entry.get("output", [])
        tooltips = entry.get("output_tooltips") or [None] * len(outputs)
        assert len(tooltips) == len(outputs), (node_id, outputs, tooltips)
        names = entry.get("output_name") or outputs
        for name, tooltip in zip(names, tooltips):
            if not (isinstance(tooltip, str) and tooltip.strip()):
                missing.append(f"{node_id} -> {name}")
    assert not missing, "outputs without a tooltip:\n" + "\n".join(missing)


def test_every_input_tooltip_explains_the_value(comfy):
    too_short = []
    for node_id, entry in sorted(user_nodes(comfy).items()):
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                tooltip = (options.get("tooltip") or "").strip()
                if len(tooltip) < MIN_INPUT_TOOLTIP:
                    too_short.append(f"{node_id}.{name}: {tooltip!r}")
    assert not too_short, (f"input tooltips shorter than {MIN_INPUT_TOOLTIP} characters:\n" + "\n".join(too_short))
