"""The package's layers (pyproject.toml's [tool.importlinter]): each module imports only the layers below it. The
contract holds on the package as it is, and a planted upward import breaks it (so the check can fail)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--config", str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
    )


def test_the_layers_hold():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "prefbench layers KEPT" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(
        ROOT / "prefbench", tmp_path / "prefbench", ignore=shutil.ignore_patterns("__pycache__", "embedded")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    schema = tmp_path / "prefbench" / "recipe" / "sections.py"  # the bottom of the package reaching up for a registry
    schema.write_text(
        schema.read_text()
        + "\n\ndef _reward_names():\n    from prefbench.eval.rewards import REWARDS\n\n    return list(REWARDS)\n"
    )
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "prefbench layers BROKEN" in done.stdout
    assert "prefbench.recipe.sections -> prefbench.eval.rewards" in done.stdout
