#!/usr/bin/env python3
"""StoryDiffusion CSA benchmark: panel sampling time and peak memory with CSA vs without.

``.venv/bin/python bench/story.py [--threads 1] [--repeats 3] [--panels 4 8 16] > story.json``

One run, one machine, ComfyUI in-process (CPU unless CUDA is available), the tiny random-weight
SD1.5-shaped UNet of ``nodes/story/testing.py`` (timings depend on shapes, not trained weights).
A two-character story (one identity image each) is sampled as the nodes do it: the identity pass
with the *Consistent Self-Attention* model (it fills the character bank), then the panels in one
batch with the *Read Character Bank* model. For 4, 8 and 16 panels (each reads one character's bank,
every fourth reads both) the same panels are also sampled with the unpatched model:

* ``time_ratio`` = panel sampling time with CSA / without (best of ``--repeats``, the two
  alternating; goal <= 1.3). On CPU the ratio uses the process's CPU seconds (``cpu_*_s``), which
  other jobs on a shared machine barely disturb; wall seconds are reported beside them. On CUDA it
  uses wall seconds;
* ``peak_*_mib``: peak memory while sampling the panels above what was resident just before
  (CPU: the process's peak resident size, reset through /proc/self/clear_refs, with glibc told to
  return freed blocks at once so that resident size follows live tensors; CUDA: peak allocation),
  and ``peak_ratio`` CSA / without (goal: flat in the panel count);
* ``bank_mib``: the character bank, written once by the identity pass and only read by panels, so
  the same for every panel count.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_server import comfyui_dir  # noqa: E402
from packpath import pack_module  # noqa: E402

CHARACTERS = "[Ann] a woman with a red hat and a yellow scarf\n[Ben] a tall man with a blue coat and a grey beard"
PLACES = ["in the kitchen", "at the station", "on a boat", "in a forest", "reading a book", "in the rain",
          "on a mountain", "at the market"]


def story_panels(panels: int) -> str:
    lines = ["[Ann] portrait in a park", "[Ben] portrait in a park"]           # the identity lines
    for i in range(panels):
        who = "[Ann] and [Ben]" if i % 4 == 3 else ("[Ann]" if i % 2 == 0 else "[Ben]")
        lines.append(f"{who} {PLACES[i % len(PLACES)]}, scene {i}")
    return "\n".join(lines)


def resident_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", pathlib.Path("/proc/self/status").read_text()).group(1))


class Peak:
    """Peak memory above the level at entry (CPU resident size or CUDA allocation), in MiB."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            pathlib.Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
            self.start = resident_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.mib = (resident_kib("VmHWM") * 1024 - self.start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panels", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--latent", type=int, default=32, help="latent side (image side / 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:       # glibc: big blocks via mmap, freed at once
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)

    sys.path.append(str(comfyui_dir()))
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = not torch.cuda.is_available()
    import comfy.model_management as mm
    import comfy.sample
    testing = pack_module("nodes.story.testing")
    nodes = pack_module("nodes.story.nodes")
    device = mm.get_torch_device()
    model, clip = testing.tiny_model(0), testing.tiny_clip(0)

    def sample(patched, positive, negative, batch):
        latent = torch.zeros(batch, 4, args.latent, args.latent)
        noise = comfy.sample.prepare_noise(latent, 7)
        return comfy.sample.sample(patched, noise, args.steps, 4.0, "euler", "normal", positive, negative, latent,
                                   disable_pbar=True, seed=7)

    def timed_pair(plain, patched, positive, negative, batch):
        """Best seconds of the plain and the patched model, measured alternately, then their peaks."""
        wall, cpu = [float("inf")] * 2, [float("inf")] * 2
        for _ in range(args.repeats):
            for which, m in enumerate((plain, patched)):
                started, started_cpu = time.perf_counter(), time.process_time()
                sample(m, positive, negative, batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall[which] = min(wall[which], time.perf_counter() - started)
                cpu[which] = min(cpu[which], time.process_time() - started_cpu)
        peaks = []
        for m in (plain, patched):
            with Peak(device) as peak:
                sample(m, positive, negative, batch)
            peaks.append(peak.mib)
        ratio = (wall[1] / wall[0]) if device.type == "cuda" else (cpu[1] / cpu[0])
        return {"time_plain_s": round(wall[0], 4), "time_csa_s": round(wall[1], 4), "cpu_plain_s": round(cpu[0], 4),
                "cpu_csa_s": round(cpu[1], 4), "time_ratio": round(ratio, 3)}, peaks

    runs, identity = [], None
    for panels in args.panels:
        story, id_cond, panel_cond, negative, n_identity, n_panels = nodes.StoryPrompt.execute(
            clip, CHARACTERS, story_panels(panels), "{prompt}", "", 1).result
        identity_model, bank = nodes.ConsistentSelfAttention.execute(
            model, selection_seed=0, rate_h32=0.5, rate_h16=0.5, rate_h8=0.5, blocks="up blocks (reference)", start_step=1,
            skip_prob_early=0.3, skip_prob_late=0.1, late_from_step=20, story=story).result
        if identity is None:
            sample(model, id_cond, negative, n_identity)                       # warm-up
            times, _ = timed_pair(model, identity_model, id_cond, negative, n_identity)
            identity = {"images": n_identity, **times}
        latents = sample(identity_model, id_cond, negative, n_identity)       # fills the bank
        panel_model, report = nodes.ReadCharacterBank.execute(bank, {"samples": latents}).result
        times, (m_plain, m_csa) = timed_pair(model, panel_model, panel_cond, negative, n_panels)
        runs.append({"panels": n_panels, **times, "peak_plain_mib": round(m_plain, 1),
                     "peak_csa_mib": round(m_csa, 1), "peak_ratio": round(m_csa / max(m_plain, 1e-6), 3),
                     "bank_mib": round(bank.bank.nbytes / 2**20, 2), "bank": report})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    print(json.dumps({
        "benchmark": "story", "device": str(device), "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "model": "tiny SD1.5-shaped UNet (nodes/story/testing.py), 7 attention layers, 4 patched (up blocks)",
        "latent": [args.latent, args.latent], "steps": args.steps, "sampler": "euler/normal, cfg 4",
        "repeats": args.repeats, "identity_pass": identity, "panels": runs,
        "max_time_ratio": max(r["time_ratio"] for r in runs),
        "peak_ratio_spread": round(max(r["peak_ratio"] for r in runs) - min(r["peak_ratio"] for r in runs), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
