"""Template-browser thumbnails: one per workflow, made from that very workflow, drawing its graph."""
from __future__ import annotations

import numpy as np
from PIL import Image

import make_thumbnails
from conftest import WORKFLOWS


def test_every_workflow_has_its_thumbnail_and_no_thumbnail_is_orphaned():
    workflows = {p.stem for p in WORKFLOWS.glob("*.json")}
    thumbnails = {p.stem for p in WORKFLOWS.glob("*.jpg")}
    assert workflows == thumbnails


def test_thumbnails_were_made_from_the_current_workflow():
    """A workflow edited after its thumbnail was drawn fails here: rerun scripts/make_thumbnails.py."""
    stale = [p.name for p in sorted(WORKFLOWS.glob("*.json"))
             if make_thumbnails.stamped_digest(p.with_suffix(".jpg")) != make_thumbnails.workflow_digest(p)]
    assert not stale, f"thumbnails older than their workflow: {stale} (run scripts/make_thumbnails.py)"
    for jpg in WORKFLOWS.glob("*.jpg"):
        assert Image.open(jpg).size == make_thumbnails.SIZE


def tiny_workflow() -> dict:
    return {"nodes": [
        {"id": 1, "type": "BoundlessInfinityModelLoader", "pos": [0, 0], "size": [300, 100]},
        {"id": 2, "type": "BoundlessVARLoader", "pos": [0, 200], "size": [300, 100]},
        {"id": 3, "type": "SaveImage", "pos": [500, 100], "size": [300, 200]},
        {"id": 4, "type": "BoundlessPaellaLoader", "pos": [900, 0], "size": [100, 100], "mode": 4},
    ], "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"]]}


def test_graph_draws_each_active_node_in_its_system_colour_where_the_workflow_places_it():
    canvas = Image.new("RGB", (400, 200), make_thumbnails.BACKGROUND)
    make_thumbnails.draw_graph(tiny_workflow(), {}, (0, 0, 400, 200), canvas)
    pixels = np.asarray(canvas)
    # graph extent 800 x 300 (the bypassed node is not drawn) fits 380 x 180 at scale 0.475
    scale, off_x, off_y = 0.475, 10, 10 + (180 - 300 * 0.475) / 2

    def colour_at(x, y):  # a point inside the node, below its title
        return tuple(int(v) for v in pixels[int(off_y + y * scale), int(off_x + x * scale)])

    assert colour_at(250, 80) == make_thumbnails.node_colour("BoundlessInfinityModelLoader")
    assert colour_at(250, 280) == make_thumbnails.node_colour("BoundlessVARLoader")
    assert colour_at(750, 280) == make_thumbnails.CORE_COLOUR
    assert make_thumbnails.node_colour("BoundlessInfinityModelLoader") != make_thumbnails.node_colour("BoundlessVARLoader")
    assert not (pixels[:, 395:] != make_thumbnails.BACKGROUND).any(), "the bypassed node was drawn"


def test_a_long_chain_is_folded_into_rows():
    chain = {"nodes": [{"id": i, "type": "SaveImage", "pos": [i * 400, 0], "size": [300, 100]} for i in range(12)],
             "links": []}
    rows = make_thumbnails.split_into_rows(chain["nodes"], 3)
    assert [[n["id"] for n in row] for row in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    canvas = Image.new("RGB", (512, 300), make_thumbnails.BACKGROUND)
    make_thumbnails.draw_graph(chain, {}, (0, 0, 512, 300), canvas)
    drawn_rows = (np.asarray(canvas) == make_thumbnails.CORE_COLOUR).all(axis=2).any(axis=1)
    starts = np.flatnonzero(drawn_rows[1:] & ~drawn_rows[:-1])
    assert len(starts) > 1, "a 12-node chain was drawn as one thin row"


def test_only_workflows_whose_models_all_ship_are_run_for_a_picture():
    import json
    shipped = {p.stem for p in WORKFLOWS.glob("*.json")
               if make_thumbnails.models_ship_with_pack(json.loads(p.read_text()))}
    assert {"infinity_panorama", "vqgan_roundtrip"} <= shipped
    assert not any(name.startswith(("paella_", "story_sd", "var_")) for name in shipped)
