"""The VAR conformance set (../shared/fixtures/var) through tests/conformance.py."""
import subprocess
import sys

from conftest import ROOT, fixture_dir


def test_var_fixture_set_passes():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "conformance.py"), str(fixture_dir("var"))],
                            capture_output=True, text=True, timeout=1800)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-4000:]
    passed, failed = (int(word) for word in out.strip().splitlines()[-1].split()[::2][:2])
    assert failed == 0 and passed >= 9 + 6, out    # 9 cases + 6 shapes files in this set
    for case in ("sample_cfg", "sample_smooth", "inpaint", "logits", "shapes/var_d36.json"):
        assert f"PASS  {case}" in out
