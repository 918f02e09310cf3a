#!/usr/bin/env python3
"""Write the template-browser thumbnail beside each shipped workflow (``workflows/<name>.jpg``).

ComfyUI's template browser shows ``/api/workflow_templates/<pack>/<name>.jpg`` for every
``workflows/<name>.json`` of a custom node pack. Each thumbnail is the workflow's own graph drawn
small (nodes where the workflow places them, coloured by system, links coloured by socket type)
so a user sees what the template does before opening it. Workflows whose models all ship with the
pack (``models/``) are also run through a real ComfyUI and their last saved image fills the top of
the card: the picture is what the template makes on the demo models, never a stand-in. The
workflow's sha256 is stored as the JPEG comment, so the suite can tell a thumbnail that no longer
matches its workflow.

    .venv/bin/python scripts/make_thumbnails.py            # all workflows
    .venv/bin/python scripts/make_thumbnails.py var_inpaint --no-run
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pathlib
import re
import sys

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from comfy_server import ROOT, ComfyServer  # noqa: E402

WORKFLOWS = ROOT / "workflows"
MODELS = ROOT / "models"
SIZE = (512, 384)
COMMENT_PREFIX = b"boundless-workflow-sha256:"
SYSTEM_COLOURS = {  # node fill by the system its class belongs to
    "BoundlessInfinity": (54, 96, 156), "BoundlessPaella": (176, 104, 40),
    "BoundlessVAR": (56, 130, 78), "BoundlessStory": (120, 74, 150), "BoundlessSMP": (120, 74, 150),
    "BoundlessVQGAN": (40, 128, 128), "Boundless": (70, 90, 110),
}
CORE_COLOUR = (78, 78, 82)
BACKGROUND = (30, 30, 32)
FRONTEND_TITLES = {"MarkdownNote": "Note", "Note": "Note"}  # nodes only the browser knows
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def workflow_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamped_digest(jpg: pathlib.Path) -> str | None:
    """The workflow sha256 a thumbnail was made from (None for a file this script did not write)."""
    comment = Image.open(jpg).info.get("comment", b"")
    return comment[len(COMMENT_PREFIX):].decode() if comment.startswith(COMMENT_PREFIX) else None


def node_colour(class_type: str) -> tuple[int, int, int]:
    for prefix, colour in sorted(SYSTEM_COLOURS.items(), key=lambda kv: -len(kv[0])):
        if class_type.startswith(prefix):
            return colour
    return CORE_COLOUR


def link_colour(socket_type: str) -> tuple[int, int, int]:
    """A stable, fairly bright colour per socket type, so one type reads as one colour."""
    h = hashlib.md5(socket_type.encode()).digest()
    return tuple(110 + b % 146 for b in h[:3])


def weight_files(workflow: dict) -> list[str]:
    return [v for node in workflow["nodes"] for v in node.get("widgets_values") or []
            if isinstance(v, str) and v.endswith(WEIGHT_SUFFIXES)]


def models_ship_with_pack(workflow: dict) -> bool:
    """True when every weight file the workflow names is one of the pack's bundled demo models."""
    names = weight_files(workflow)
    bundled = {p.name for p in MODELS.rglob("*") if p.is_file()}
    return bool(names) and all(name in bundled for name in names)


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def split_into_rows(nodes: list[dict], rows: int) -> list[list[dict]]:
    """Cut a wide graph into ``rows`` bands of equal x range (by node centre), left to right."""
    centre = {n["id"]: n["pos"][0] + n["size"][0] / 2 for n in nodes}
    lo, hi = min(centre.values()), max(centre.values()) + 1e-6
    bands = [[n for n in nodes if lo + (hi - lo) * i / rows <= centre[n["id"]] < lo + (hi - lo) * (i + 1) / rows]
             for i in range(rows)]
    return [band for band in bands if band]


def extent(band: list[dict]) -> tuple[float, float, float, float]:
    return (min(n["pos"][0] for n in band), min(n["pos"][1] for n in band),
            max(n["pos"][0] + n["size"][0] for n in band), max(n["pos"][1] + n["size"][1] for n in band))


def draw_graph(workflow: dict, titles: dict[str, str], box: tuple[int, int, int, int],
               canvas: Image.Image) -> None:
    """Draw the workflow's nodes and links into ``box`` of ``canvas``.

    A long chain (the outpainting workflows are one row of 17 nodes) is cut into up to four rows
    stacked top to bottom, whichever draws the nodes largest; a link between rows is drawn to the
    edge of its row.
    """
    x0, y0, x1, y1 = box
    pad, gap = 10, 12
    nodes = [n for n in workflow["nodes"] if n.get("mode", 0) == 0]

    def layout(rows: int):
        bands = split_into_rows(nodes, rows)
        extents = [extent(b) for b in bands]
        width = max(e[2] - e[0] for e in extents)
        height = sum(e[3] - e[1] for e in extents)
        scale = min((x1 - x0 - 2 * pad) / width, (y1 - y0 - 2 * pad - gap * (len(bands) - 1)) / height)
        return scale, bands, extents

    scale, bands, extents = layout(1)
    for rows in range(2, 5):  # another row only when it draws the nodes clearly larger
        candidate = layout(rows)
        if candidate[0] > 1.25 * scale:
            scale, bands, extents = candidate
    total_h = sum(e[3] - e[1] for e in extents) * scale + gap * (len(bands) - 1)
    rects, row_of = {}, {}
    top = y0 + (y1 - y0 - total_h) / 2
    for row, (band, (left, btop, right, bbottom)) in enumerate(zip(bands, extents)):
        off_x = x0 + ((x1 - x0) - (right - left) * scale) / 2
        for n in band:
            nx, ny = n["pos"]
            w, h = n["size"]
            rects[n["id"]] = (off_x + (nx - left) * scale, top + (ny - btop) * scale,
                              off_x + (nx - left + w) * scale, top + (ny - btop + h) * scale)
            row_of[n["id"]] = row
        top += (bbottom - btop) * scale + gap

    draw = ImageDraw.Draw(canvas)
    slot = 8 * max(scale, 0.5)
    for _, src, src_slot, dst, dst_slot, socket_type in workflow["links"]:
        if src not in rects or dst not in rects:
            continue
        sx0, sy0, sx1, sy1 = rects[src]
        dx0, dy0, dx1, dy1 = rects[dst]
        start = (sx1, sy0 + min(sy1 - sy0, (src_slot + 1) * slot))
        end = (dx0, dy0 + min(dy1 - dy0, (dst_slot + 1) * slot))
        colour = link_colour(str(socket_type))
        if row_of[src] == row_of[dst]:
            mid = (start[0] + end[0]) / 2
            draw.line([start, (mid, start[1]), (mid, end[1]), end], fill=colour, width=2)
        else:  # continues on another row: a stub out of the source, a stub into the target
            draw.line([start, (x1 - 2, start[1])], fill=colour, width=2)
            draw.line([(x0 + 2, end[1]), end], fill=colour, width=2)
    font_size = max(8, min(14, int(22 * scale)))
    font = ImageFont.load_default(size=font_size)
    for node in nodes:
        r = rects[node["id"]]
        draw.rounded_rectangle(r, radius=4, fill=node_colour(node["type"]), outline=(200, 200, 205))
        title = node.get("title") or titles.get(node["type"], FRONTEND_TITLES.get(node["type"], node["type"]))
        title = title.replace("→", "->")  # the bundled font has no arrow glyph
        label = fit_text(draw, title, font, r[2] - r[0] - 6)
        if label and r[3] - r[1] > font_size + 2:
            draw.text((r[0] + 3, r[1] + 2), label, font=font, fill=(240, 240, 240))


def render(workflow_path: pathlib.Path, titles: dict[str, str], picture: Image.Image | None) -> Image.Image:
    workflow = json.loads(workflow_path.read_text())
    canvas = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    heading = ImageFont.load_default(size=18)
    draw.text((10, 8), fit_text(draw, workflow_path.stem.replace("_", " "), heading, SIZE[0] - 20), font=heading, fill=(235, 235, 240))
    graph_top = 36
    if picture is not None:
        band = (0, 36, SIZE[0], 250)
        shown = picture.convert("RGB")
        shown.thumbnail((band[2] - band[0] - 20, band[3] - band[1]), Image.Resampling.LANCZOS)
        canvas.paste(shown, ((SIZE[0] - shown.width) // 2, band[1] + (band[3] - band[1] - shown.height) // 2))
        graph_top = band[3] + 4
    draw_graph(workflow, titles, (0, graph_top, SIZE[0], SIZE[1]), canvas)
    return canvas


def save(canvas: Image.Image, workflow_path: pathlib.Path) -> pathlib.Path:
    target = workflow_path.with_suffix(".jpg")
    canvas.save(target, "JPEG", quality=82, optimize=True,
                comment=COMMENT_PREFIX + workflow_digest(workflow_path).encode())
    return target


def last_saved_image(server: ComfyServer, workflow: dict, outputs: dict) -> Image.Image | None:
    """The last image of the workflow's last SaveImage/PreviewImage node that produced one."""
    savers = [str(n["id"]) for n in workflow["nodes"] if n["type"] in ("SaveImage", "PreviewImage")]
    for node_id in reversed(savers):
        images = outputs.get(node_id, {}).get("images", [])
        if images:
            return Image.open(io.BytesIO(server.fetch(images[-1])))
    return None


def display_titles(object_info: dict) -> dict[str, str]:
    return {name: info.get("display_name") or re.sub(r"(?<!^)(?=[A-Z])", " ", name)
            for name, info in object_info.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", help="workflow names (default: every shipped workflow)")
    parser.add_argument("--no-run", action="store_true", help="draw graphs only, run nothing")
    args = parser.parse_args()
    paths = [WORKFLOWS / f"{w}.json" for w in args.workflows] or sorted(WORKFLOWS.glob("*.json"))
    run_dir = ROOT / ".run" / "thumbnails"
    run_dir.mkdir(parents=True, exist_ok=True)
    server = ComfyServer(run_dir).start()
    try:
        titles = display_titles(server.object_info())
        for path in paths:
            workflow = json.loads(path.read_text())
            picture = None
            if not args.no_run and models_ship_with_pack(workflow):
                print(f"[thumbnails] running {path.name} on the bundled models ...", flush=True)
                picture = last_saved_image(server, workflow, server.run_workflow(workflow, timeout=3600))
            print(save(render(path, titles, picture), path), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
