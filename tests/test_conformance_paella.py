"""The Paella conformance set (../shared/fixtures/paella) through tests/conformance.py."""
import json
import subprocess
import sys

from conftest import ROOT, fixture_dir


def test_paella_fixture_set_passes():
    fixtures = fixture_dir("paella")
    manifest = json.loads((fixtures / "manifest.json").read_text())
    expected = len(manifest["cases"]) + len(list((fixtures / "shapes").glob("*.json")))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "conformance.py"), str(fixtures)],
                            capture_output=True, text=True, timeout=1800)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    assert out.strip().splitlines()[-1] == f"{expected} passed, 0 failed", out[-4000:]
    for case in manifest["cases"]:
        assert f"PASS  {case['id']}" in out, case["id"]
