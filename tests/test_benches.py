"""Every bench script runs: each in its smoke mode (a tiny model, a few steps, seconds), as a user would start it,
so a change that breaks a bench fails the suite instead of waiting for the next measurement. The figures a smoke
run prints mean nothing; what is checked is that each script reaches its table and that the numbers it compares
are the ones it trained (the loss at the first step is ln 2 for DPO at policy = reference). Not run here: the vLLM
studies (bench_generate.py, vllm_logprobs.py, kl_estimators.py) start vLLM engines for minutes each; the paths they
time are those tests/test_generate.py and tests/test_metrics.py run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, timeout: int = 300) -> str:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout


def test_bench_vs_trl_smoke_trains_both_trainers_and_prints_the_ratios(tmp_path):
    out = _bench("bench/bench_vs_trl.py", "--smoke", "--out", str(tmp_path / "figures.json"))
    assert "throughput / TRL default" in out
    cells = json.loads((tmp_path / "figures.json").read_text())["cells"]["head"]
    assert set(cells) == {"prefbench", "TRL"}
    assert cells["prefbench"]["ref_seconds"] > 0  # its reference pass runs before the steps (TRL's inside them here)
    for cell in cells.values():
        assert cell["loop_seconds"] > 0 and cell["real_tokens"] == cells["prefbench"]["real_tokens"]
        assert math.isclose(cell["step1_loss"], math.log(2), abs_tol=1e-5)


def test_bench_gpu_smoke_runs_a_tiny_prefbench_cell_on_the_cpu(tmp_path):
    """Its JSON carries what a committed figure needs (device, commit, date, versions), and --table renders it as
    docs/performance.md shows it: the row's tokens/s, peak memory and step-1 loss are the JSON's. --profile leaves
    each cell's table of where its steps' time went (the matrix products among its operators)."""
    _bench("bench/bench_gpu.py", "--smoke", "--profile", "--out", str(tmp_path / "figures.json"))
    profile = (tmp_path / "profile-tiny-2" / "profile-dpo-seed0.txt").read_text()
    assert "Self CPU" in profile and "aten::mm" in profile
    figures = json.loads((tmp_path / "figures.json").read_text())
    (row,) = figures["results"]
    assert "error" not in row, row.get("error")
    assert row["trainer"] == "prefbench" and row["reference_seconds"] > 0 and len(row["losses"]) == 3
    assert math.isclose(row["losses"][0], math.log(2), abs_tol=1e-5)
    assert figures["device"] == "cpu" and len(figures["commit"]) >= 40 and "torch" in figures["versions"]
    table = _bench("bench/bench_gpu.py", "--table", str(tmp_path / "figures.json")).splitlines()
    cells = [c.strip() for c in table[-1].strip("|").split("|")]
    assert cells[:4] == ["tiny:2", "prefbench", "shared", f"{row['tokens_per_s']:,.0f}"]
    assert cells[6] == f"{row['peak_memory_gib']:.1f}" and float(cells[-1]) == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("figures", sorted((ROOT / "bench" / "results").glob("bench_gpu-*.json")), ids=lambda p: p.name)
def test_performance_docs_show_each_committed_gpu_bench_as_measured(figures):
    """docs/performance.md holds each committed GPU bench JSON's table as --table renders it (no figure retyped)."""
    table = _bench("bench/bench_gpu.py", "--table", str(figures))
    assert table in (ROOT / "docs" / "performance.md").read_text(), (
        f"re-render: python bench/bench_gpu.py --table {figures}"
    )


def test_gpu_reward_model_dry_run_scores_on_the_cpu():
    out = _bench("bench/gpu_reward_model.py", "--dry")
    assert json.loads(out[out.index("{") :])["device"] == "cpu (dry run)"


def test_gpu_run_script_parses_and_every_script_it_calls_exists():
    """bench/gpu_run.sh runs only on a device machine; here: bash reads it, and what it calls is in the repo."""
    script = (ROOT / "bench" / "gpu_run.sh").read_text()
    assert subprocess.run(["bash", "-n", "bench/gpu_run.sh"], cwd=ROOT).returncode == 0
    for called in ("tests/test_gpu_paths.py", "bench/bench_gpu.py"):
        assert called in script and (ROOT / called).is_file()


def test_gpu_e2e_recipes_pass_check_and_its_device_script_parses(tmp_path):
    """bench/gpu_e2e.py's recipes (the whole pipeline on one GPU), built on tiny shapes, pass `prefbench check`;
    bench/gpu_e2e.sh (the device call) parses. Its whole dry run (`--dry`: three runs on the CPU, 4-11 minutes) is
    run by hand before a device call, not in the suite."""
    out = _bench("bench/gpu_e2e.py", "--dry", "--check", "--out", str(tmp_path))
    assert [line for line in out.splitlines() if line.endswith("recipe ok")] == [
        "gpu_e2e: recipe ok", "gpu_e2e_lora: recipe ok", "gpu_e2e_launch: recipe ok",
    ]  # fmt: skip
    assert subprocess.run(["bash", "-n", "bench/gpu_e2e.sh"], cwd=ROOT).returncode == 0
    assert "bench/gpu_e2e.py" in (ROOT / "bench" / "gpu_e2e.sh").read_text()
