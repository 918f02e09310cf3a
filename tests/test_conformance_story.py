"""The StoryDiffusion CSA conformance set (../shared/fixtures/story) through tests/conformance.py."""
import subprocess
import sys

from conftest import ROOT, fixture_dir


def test_story_fixture_set_passes():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "conformance.py"), str(fixture_dir("story"))],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    passed, failed = int(last.split()[0]), int(last.split()[2])
    assert failed == 0 and passed >= 25, result.stdout
    for case in ("write_read_sequence", "sample_tokens_sdxl_size", "panel_two_characters", "identity_mask_variant"):
        assert f"PASS  {case}" in result.stdout
