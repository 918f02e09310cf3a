#!/usr/bin/env python3
"""Run shipped workflows headless through a real ComfyUI and copy their images to ``output/``.

``scripts/demo`` calls this with no arguments (the demo workflows); pass workflow names or paths
to run others, e.g. ``.venv/bin/python scripts/run_workflows.py vqgan_roundtrip``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from comfy_server import ROOT, ComfyServer

DEMO_WORKFLOWS = ["infinity_panorama", "infinity_text_panorama", "infinity_outpaint_4dir", "infinity_animate",
                  "infinity_text_to_video", "vqgan_roundtrip"]
WORKFLOWS = ROOT / "workflows"


def resolve(name: str) -> pathlib.Path:
    path = pathlib.Path(name)
    if path.suffix != ".json":
        path = WORKFLOWS / f"{name}.json"
    if not path.is_file():
        sys.exit(f"no workflow {name!r}; shipped: {', '.join(p.stem for p in sorted(WORKFLOWS.glob('*.json')))}")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", default=DEMO_WORKFLOWS)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "output")
    args = parser.parse_args()
    paths = [resolve(w) for w in args.workflows]
    run_dir = ROOT / ".run" / "demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print("[demo] starting ComfyUI (CPU, headless) ...", flush=True)
    server = ComfyServer(run_dir).start()
    written = []
    try:
        for image in sorted((WORKFLOWS / "inputs").glob("*.png")):
            server.upload_image(image.read_bytes(), image.name)
        for path in paths:
            t0 = time.time()
            print(f"[demo] running {path.name} ...", flush=True)
            outputs = server.run_workflow(json.loads(path.read_text()), timeout=3600)
            for node_outputs in outputs.values():
                for info in node_outputs.get("images", []):
                    target = args.out / f"{path.stem}_{info['filename']}"
                    target.write_bytes(server.fetch(info))
                    written.append(target)
            print(f"[demo] {path.name} done in {time.time() - t0:.0f}s", flush=True)
    finally:
        server.stop()
    for target in written:
        print(target)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
