"""Shared pytest fixtures: the real ComfyUI server (once per session) and fixture locations."""
from __future__ import annotations

import importlib
import pathlib
import sys

import pytest

from comfy_server import ROOT, ComfyServer, comfyui_dir

SHARED = ROOT.parent / "shared"
WORKFLOWS = ROOT / "workflows"
WORKFLOW_INPUTS = WORKFLOWS / "inputs"


def fixture_dir(system: str) -> pathlib.Path:
    """``../shared/fixtures/<system>``, or skip when this checkout has no shared/ beside it."""
    path = SHARED / "fixtures" / system
    if not (path / "manifest.json").is_file():
        pytest.skip(f"conformance fixtures not found at {path} (shared/ lives beside the repo in CI)")
    return path


def import_comfy_in_process():
    """Make ComfyUI importable in this test process, forced to CPU before comfy.model_management
    loads (skip when there is no ComfyUI). Returns ``comfy.sample``."""
    root = comfyui_dir()
    if not (root / "comfy" / "model_management.py").is_file():
        pytest.skip(f"no ComfyUI at {root}: run scripts/setup (or set COMFYUI_DIR)")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sample
    return comfy.sample


def write_test_models(models_root: pathlib.Path) -> None:
    """Let every ``tests/*_tiny.py`` module write its small random-weight checkpoints.

    Each such module defines ``write_test_models(models_root)`` and writes files under
    ``models_root/<kind>/``; the server started below reads models from there.
    """
    for path in sorted(pathlib.Path(__file__).parent.glob("*_tiny.py")):
        module = importlib.import_module(path.stem)
        module.write_test_models(models_root)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI server with the pack loaded, test-only nodes enabled, tiny test models in place."""
    if not (comfyui_dir() / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {comfyui_dir()}: run scripts/setup (or set COMFYUI_DIR)")
    run_dir = tmp_path_factory.mktemp("comfyui")
    write_test_models(run_dir / "models")
    server = ComfyServer(run_dir, extra_env={"BOUNDLESS_TEST_NODES": "1"}).start()
    for image in sorted(WORKFLOW_INPUTS.glob("*.png")):
        server.upload_image(image.read_bytes(), image.name)
    yield server
    server.stop()
