"""bench/gpu.py's dry run: every system and draw mode runs and reports numbers (CPU, tiny sizes)."""
from __future__ import annotations

import json
import sys

from packpath import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu  # noqa: E402


def run(capsys, *args) -> dict:
    assert gpu.main(["--dry-run", "--repeats", "1", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_gpu_benchmark_runs_end_to_end_at_tiny_sizes(capsys):
    report = run(capsys, "--dtypes", "fp32")
    assert report["dry_run"] is True
    for row in (report["var"]["fp32"]["d2"], report["paella_v3"]["fp32"]["64px"]):
        rates = {k: v for k, v in row.items() if "_draws_" in k}
        assert len(rates) == 2 and all(v > 0 for v in rates.values()), row
    for mode in ("draws_model_device", "draws_cpu"):
        row = report["infinity"]["fp32"][mode]
        assert row["tokens_per_s"] > 0 and abs(row["patches_per_s"] * 16 - row["tokens_per_s"]) < 1
    assert all(report["infinity"]["fp32"][f"wrap_close_candidates_{n}"]["seconds_per_canvas"] > 0 for n in (1, 8))
    assert report["csa"]["fp32"]["tiny"]["overhead"] > 0
    half = run(capsys, "--dtypes", "bf16", "--systems", "infinity,csa")
    assert half["infinity"]["bf16"]["draws_model_device"]["tokens_per_s"] > 0
