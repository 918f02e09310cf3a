#!/usr/bin/env python3
"""Conformance runner: ``python tests/conformance.py FIXTURE_DIR``.

Runs every case of a fixture set in the format of ``shared/fixtures/FORMAT.md`` through the
project's own loaders and ops (registered in ``tests/conformance_ops/``), prints one line per
case (and per ``shapes/*.json`` file) with its worst error, and ends with ``N passed, M failed``.
Exit status 0 only when every check passes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import sys
import time
import traceback

import torch
from safetensors.torch import load_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "scripts")]   # conformance_ops, packpath
import conformance_ops  # noqa: E402  (tests/ is on sys.path for the runner and for pytest)


@contextlib.contextmanager
def weights_only_guard():
    """Make any ``torch.load`` without ``weights_only=True`` raise, and hide pytorch_lightning."""
    real_load = torch.load
    had_pl = "pytorch_lightning" in sys.modules
    saved_pl = sys.modules.get("pytorch_lightning")

    def guarded_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load called without weights_only=True")
        return real_load(*args, **kwargs)

    torch.load = guarded_load
    sys.modules["pytorch_lightning"] = None  # import now raises ImportError
    try:
        yield
    finally:
        torch.load = real_load
        if had_pl:
            sys.modules["pytorch_lightning"] = saved_pl
        else:
            sys.modules.pop("pytorch_lightning", None)


def compare(name: str, got, want: torch.Tensor, rule) -> tuple[bool, float, str]:
    """Return (ok, worst error, message) for one expected output."""
    if got is None:
        return False, math.inf, f"{name}: missing"
    if not isinstance(got, torch.Tensor):
        got = torch.as_tensor(got)
    got = got.detach().cpu()
    if tuple(got.shape) != tuple(want.shape):
        return False, math.inf, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if rule == "exact":
        diff = (got.to(torch.int64) != want.to(torch.int64)) if not want.is_floating_point() \
            else (got != want)
        bad = int(diff.sum())
        return bad == 0, float(bad), f"{name}: {bad} mismatches"
    got64, want64 = got.double(), want.double()
    if torch.isnan(got64).any():
        return False, math.inf, f"{name}: NaN"
    err = (got64 - want64).abs()
    limit = rule["atol"] + rule["rtol"] * want64.abs()
    worst = float(err.max()) if err.numel() else 0.0
    ok = bool((err <= limit).all())
    return ok, worst, f"{name}: max abs {worst:.3g}"


class Runner:
    def __init__(self, fixture_dir: pathlib.Path):
        self.dir = fixture_dir
        self.manifest = json.loads((fixture_dir / "manifest.json").read_text())
        self.tensors = load_file(str(fixture_dir / "tensors.safetensors"))
        self.kinds, self.ops, self.import_errors = conformance_ops.collect()
        self._models: dict[str, object] = {}
        self.passed = 0
        self.failed = 0

    def report(self, ok: bool, label: str, detail: str, seconds: float):
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {label:<34} {detail}  ({seconds:.1f}s)", flush=True)

    def kind_of(self, kind_name: str):
        if kind_name not in self.kinds:
            hint = "; ".join(f"{m}: {e}" for m, e in self.import_errors.items())
            raise KeyError(f"no loader registered for kind {kind_name!r}"
                           + (f" (import errors: {hint})" if hint else ""))
        return self.kinds[kind_name]

    def model(self, model_id: str, fresh: bool = False):
        if fresh or model_id not in self._models:
            entry = self.manifest["models"][model_id]
            loaded = self.kind_of(entry["kind"]).load(str(self.dir / entry["file"]))
            if fresh:
                return loaded
            self._models[model_id] = loaded
        return self._models[model_id]

    def run_case(self, case: dict):
        t0 = time.perf_counter()
        try:
            op = self.ops.get(case["op"])
            if op is None:
                hint = "; ".join(f"{m}: {e}" for m, e in self.import_errors.items())
                raise KeyError(f"no op registered for {case['op']!r}" + (f" ({hint})" if hint else ""))
            params = case.get("params", {})
            if params.get("require_weights_only"):
                with weights_only_guard():
                    models = [self.model(m, fresh=True) for m in case.get("models", [])]
            else:
                models = [self.model(m) for m in case.get("models", [])]
            inputs = {k: self.tensors[v].clone() for k, v in case.get("inputs", {}).items()}
            with torch.inference_mode():
                outputs = op(models, inputs, params)
            details, ok_all = [], True
            for name, key in case["expected"].items():
                ok, _, msg = compare(name, outputs.get(name), self.tensors[key], case["compare"][name])
                ok_all &= ok
                details.append(msg)
            self.report(ok_all, case["id"], "; ".join(details), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - one failing case must not stop the set
            last = traceback.format_exc(limit=-2).strip().splitlines()
            self.report(False, case["id"], f"error: {type(exc).__name__}: {exc} [{last[-3] if len(last) > 2 else ''}]",
                        time.perf_counter() - t0)

    def shape_files(self) -> list[tuple[pathlib.Path, str | None]]:
        listed = {entry["file"]: entry["kind"] for entry in self.manifest.get("shapes", [])}
        files = sorted((self.dir / "shapes").glob("*.json")) if (self.dir / "shapes").is_dir() else []
        return [(path, listed.get(f"shapes/{path.name}")) for path in files]

    def run_shapes(self, path: pathlib.Path, kind_name: str | None):
        t0 = time.perf_counter()
        label = f"shapes/{path.name}"
        try:
            shapes = json.loads(path.read_text())
            if kind_name is None:
                system_kinds = {e["kind"] for e in self.manifest["models"].values()}
                matches = [k for k in sorted(system_kinds) if self.kind_of(k).detect(shapes)]
                if len(matches) != 1:
                    raise ValueError(f"cannot tell the kind of these keys (candidates {matches})")
                kind_name = matches[0]
            problem = self.kind_of(kind_name).check_shapes(shapes)
            self.report(problem is None, label, problem or f"{kind_name}: {len(shapes)} keys match",
                        time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            self.report(False, label, f"error: {type(exc).__name__}: {exc}", time.perf_counter() - t0)

    def run(self, only: list[str] | None = None) -> bool:
        for case in self.manifest["cases"]:
            if not only or case["id"] in only:
                self.run_case(case)
        if not only:
            for path, kind in self.shape_files():
                self.run_shapes(path, kind)
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return self.failed == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixture_dir", type=pathlib.Path)
    parser.add_argument("--case", action="append", help="run only this case id (repeatable)")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return 0 if Runner(args.fixture_dir).run(args.case) else 1


if __name__ == "__main__":
    sys.exit(main())
