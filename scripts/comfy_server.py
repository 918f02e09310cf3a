"""Drive a real ComfyUI server from tests and scripts: start, queue graphs, read results.

The server runs the ComfyUI tree from ``$COMFYUI_DIR`` or ``.comfyui/`` (made by scripts/setup)
with the pack loaded through ``--extra-model-paths-config``: the yaml points ComfyUI's
``custom_nodes`` search at a folder of our own run directory that holds one link to this repo, so
nothing is linked or copied into the ComfyUI tree.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "boundless"


def comfyui_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui").resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptError(RuntimeError):
    """A prompt was rejected at validation (HTTP 400) or failed while executing."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


class ComfyServer:
    def __init__(self, run_dir: pathlib.Path, port: int | None = None, extra_env: dict | None = None,
                 model_dirs: dict[str, str] | None = None):
        self.run_dir = pathlib.Path(run_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.model_dirs = model_dirs or {}
        self.log_path = self.run_dir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self._object_info: dict | None = None

    # ----------------------------------------------------------------- lifecycle
    def _write_config(self) -> pathlib.Path:
        packs = self.run_dir / "packs"
        packs.mkdir(parents=True, exist_ok=True)
        link = packs / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        (self.run_dir / "custom_nodes").mkdir(exist_ok=True)   # --base-directory requires it
        lines = ["boundless_run:", f"    base_path: {self.run_dir}", "    custom_nodes: packs"]
        lines += [f"    {kind}: {path}" for kind, path in self.model_dirs.items()]
        config = self.run_dir / "extra_model_paths.yaml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        config = self._write_config()
        cmd = [sys.executable, str(comfyui_dir() / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.run_dir),
               "--extra-model-paths-config", str(config), "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--log-stdout"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **self.extra_env}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(comfyui_dir()), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ----------------------------------------------------------------- API
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = requests.get(f"{self.url}/object_info", timeout=60).json()
        return self._object_info

    def upload_image(self, png_bytes: bytes, name: str) -> str:
        r = requests.post(f"{self.url}/upload/image", files={"image": (name, io.BytesIO(png_bytes), "image/png")},
                          data={"overwrite": "true"}, timeout=30)
        r.raise_for_status()
        return r.json()["name"]

    def queue(self, graph: dict, client_id: str | None = None) -> str:
        # Serialised here rather than by requests, which refuses NaN: a prompt may carry one (the server takes it).
        body = json.dumps({"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
        r = requests.post(f"{self.url}/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        body = r.json()
        if r.status_code != 200:
            raise PromptError(f"prompt rejected: {json.dumps(body)[:2000]}", body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = requests.get(f"{self.url}/history/{prompt_id}", timeout=30).json()
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") == "success":
                    return entry
                errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                if errors or entry["status"].get("status_str") == "error":
                    data = errors[0][1] if errors else {}
                    raise PromptError(f"execution failed in {data.get('node_type')}: "
                                      f"{data.get('exception_type')}: {data.get('exception_message')}", entry)
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s")

    def queue_and_interrupt(self, graph: dict, after_progress: int = 1, timeout: float = 300.0) -> str:
        """Queue a graph and interrupt it once its progress bar reports ``after_progress``.

        Listens on the websocket (progress events go to the client that queued the prompt), so the
        interrupt lands inside the running node however fast or slow this machine is.
        """
        import asyncio

        import aiohttp

        client_id = uuid.uuid4().hex

        async def watch() -> str:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}") as ws:
                    prompt_id = self.queue(graph, client_id)
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        event = json.loads(message.data)
                        data = event.get("data", {})
                        if (event.get("type") == "progress" and data.get("prompt_id") == prompt_id
                                and data.get("value", 0) >= after_progress):
                            requests.post(f"{self.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)
                            return prompt_id
            raise RuntimeError("websocket closed before the prompt reported progress")

        return asyncio.run(asyncio.wait_for(watch(), timeout))

    def run(self, graph: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format graph, wait, and return ``{node_id: outputs}`` (raises PromptError)."""
        entry = self.wait(self.queue(graph), timeout)
        return entry["outputs"]

    def fetch(self, file_info: dict) -> bytes:
        r = requests.get(f"{self.url}/view", params={"filename": file_info["filename"],
                                                   "subfolder": file_info.get("subfolder", ""),
                                                   "type": file_info.get("type", "output")}, timeout=60)
        r.raise_for_status()
        return r.content

    def images(self, outputs: dict, node_id: str) -> list:
        """PIL images a SaveImage/PreviewImage node produced."""
        from PIL import Image
        return [Image.open(io.BytesIO(self.fetch(f))) for f in outputs[str(node_id)]["images"]]

    def run_workflow(self, ui_graph: dict, widget_overrides: dict | None = None, timeout: float = 900.0) -> dict:
        from workflow_convert import ui_to_api
        api = ui_to_api(ui_graph, self.object_info())
        for node_id, values in (widget_overrides or {}).items():
            api[str(node_id)]["inputs"].update(values)
        return self.run(api, timeout)
