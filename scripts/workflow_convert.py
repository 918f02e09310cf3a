"""Convert a UI-format workflow (what ComfyUI saves and what ``workflows/`` ships) to API format.

The frontend does this with ``app.graphToPrompt()``; here we map each node's positional
``widgets_values`` onto input names through the server's ``/object_info`` ``input_order``, skip the
hidden "control after generate" value that follows seed-like widgets, follow links (through Reroute
nodes and bypassed nodes), substitute PrimitiveNode values, and drop notes and muted nodes.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def ui_to_api(ui: dict, object_info: dict) -> dict:
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {l[0]: l for l in ui["links"]}   # id -> [id, src, src_slot, dst, dst_slot, type]

    def source(link_id):
        """Follow a link back through Reroutes and bypassed nodes to a real output, or a primitive."""
        _, src, slot, _, _, ltype = links[link_id]
        node = nodes[src]
        if node["type"] == "Reroute":
            return source(node["inputs"][0]["link"])
        if node["type"] == "PrimitiveNode":
            return ("value", node["widgets_values"][0])
        if node.get("mode") == BYPASSED:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and inp["type"] == ltype:
                    return source(inp["link"])
            raise ValueError(f"bypassed node {src} has no input of type {ltype} to pass through")
        return ("link", [str(src), slot])

    api = {}
    for node_id, node in nodes.items():
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node_id}) is not installed on the server")
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        by_name = {inp["name"]: inp for inp in node.get("inputs", [])}
        values = node.get("widgets_values", [])
        inputs, pos = {}, 0
        for name in order:
            spec = specs[name]
            linked = by_name.get(name, {}).get("link")
            if _is_widget(spec):
                if isinstance(values, dict):
                    value = values.get(name)
                else:
                    value = values[pos] if pos < len(values) else None
                    pos += 1 + _has_control_value(name, spec)
                if linked is not None:
                    kind, ref = source(linked)
                    inputs[name] = ref
                elif value is not None:
                    inputs[name] = value
            elif linked is not None:
                kind, ref = source(linked)
                inputs[name] = ref
        api[str(node_id)] = {"class_type": node["type"], "inputs": inputs,
                             "_meta": {"title": node.get("title", node["type"])}}
    return api
