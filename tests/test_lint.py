"""The code is formatted and linted by ruff with the settings in pyproject.toml ([tool.ruff]); `make lint` fixes
what it can. Part of the fast lane, so CI fails on an unformatted change."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).parent / "ruff"
CODE = ["prefbench", "bench", "tests"]


def test_ruff_format_leaves_the_code_as_it_is():
    done = subprocess.run(
        [str(RUFF), "format", "--check", *CODE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_ruff_lint_finds_nothing():
    done = subprocess.run([str(RUFF), "check", *CODE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
