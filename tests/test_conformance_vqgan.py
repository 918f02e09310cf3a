"""The taming VQGAN conformance set (../shared/fixtures/vqgan) through tests/conformance.py."""
import subprocess
import sys

from conftest import ROOT, fixture_dir


def run_set(system: str) -> str:
    """Run the conformance runner on one fixture set in a subprocess; return its output."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "conformance.py"), str(fixture_dir(system))],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_vqgan_fixture_set_passes():
    out = run_set("vqgan")
    last = out.strip().splitlines()[-1]
    passed, failed = int(last.split()[0]), int(last.split()[2])
    assert failed == 0 and passed >= 9 + 7, out   # 9 cases + 7 shapes files
    assert "PASS  load_checkpoint" in out
