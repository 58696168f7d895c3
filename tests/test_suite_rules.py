"""Rules of the suite itself: where fixtures are expected, their absence fails the run instead of skipping."""

import os
import subprocess
import sys

from conftest import REPO


def run_pytest(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TOKZOO_REQUIRE_FIXTURES")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_missing_fixtures_fail_under_ci(tmp_path):
    target = "tests/test_flextok.py::test_fsq_matches_the_official_formula"
    for env in ({"CI": "true"}, {"TOKZOO_REQUIRE_FIXTURES": "1"}):
        result = run_pytest({"TOKZOO_SHARED": str(tmp_path / "nowhere"), **env}, target)
        assert result.returncode != 0 and "parity fixtures required" in result.stdout + result.stderr, env
    # elsewhere (a user's clone without ../shared) the parity tests skip cleanly
    result = run_pytest({"TOKZOO_SHARED": str(tmp_path / "nowhere")}, target, "-rs")
    assert result.returncode == 0 and "parity fixtures not present" in result.stdout
