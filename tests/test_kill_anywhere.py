"""Kill anywhere: `prefbench run` of a tiny recipe with held-out preferences, generation, a judge and a benchmark
is killed (SIGKILL to its whole process group) at a point in each phase, re-run each time, and run to the end;
its results must equal an uninterrupted run's, and the paid work (generations, judge calls) must not be done
twice beyond what a kill cut off in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from judge_fault_server import FaultServer
from run_digest import digest

pytestmark = pytest.mark.integration  # kills whole runs in processes of their own

REPO = Path(__file__).resolve().parent.parent
# Kill points, in the order a run meets them: a line of the run's output that marks the phase (its progress
# bar or log), and how long after it the kill comes.
KILL_POINTS = [
    ("reference log-probs:", 0.0),
    ("dpo seed 0:", 0.1),  # training, between checkpoints
    ("kto seed 0:", 0.1),  # training, the second unit
    ("Running loglikelihood requests", 0.2),  # benchmarks (lm-eval)
    ("held-out preferences:", 0.0),
    ("generate:", 0.3),
    ("KL and entropy:", 0.0),
    ("judge fake-judge:", 0.3),
]


def _recipe(out: Path, judge_url: str) -> list[str]:
    return [
        "run",
        "recipes/tiny_smoke.yaml",
        "--set",
        f"output_dir={out}",
        "--set",
        f"report_dir={out / 'reports'}",
        "--set",
        "objectives=[{name: dpo, beta: 0.1}, {name: kto, beta: 0.1}]",
        "--set",
        "train.steps=8",
        "--set",
        "eval.generation.engine=hf",
        "--set",
        "eval.generation.greedy=false",
        "--set",
        "eval.benchmarks={backend: hf, tasks: [{task: prefbench_mc, num_fewshot: 0, limit: 12}]}",
        "--set",
        f"eval.judge={{base_url: '{judge_url}', model: fake-judge, max_concurrency: 2}}",
    ]


def _start(args: list[str], cache: Path) -> tuple[subprocess.Popen, list[str]]:
    run = subprocess.Popen(
        [sys.executable, "-m", "prefbench.cli", *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PREFBENCH_CACHE": str(cache), "PYTHONPATH": str(REPO)},
    )
    output: list[str] = []

    def read() -> None:
        for chunk in iter(lambda: run.stdout.read1(4096), b""):
            output.append(chunk.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return run, output


def _generations(cache: Path) -> int:
    """Answers in the generation cache: one line per (checkpoint, pass, prompt) ever generated."""
    return sum(len(f.read_text().splitlines()) for f in (cache / "generations").rglob("*.jsonl"))


@pytest.mark.integration
def test_a_run_killed_in_every_phase_ends_with_an_uninterrupted_runs_results(tmp_path):
    with FaultServer() as judge:
        clean, output = _start(_recipe(tmp_path / "clean", judge.base_url), tmp_path / "clean-cache")
        assert clean.wait(timeout=900) == 0, "".join(output)[-3000:]
        clean_calls = sum(len(v) for v in judge.requests.values())
        judge.requests.clear()

        hit, in_flight_judge = [], 0
        for marker, delay in KILL_POINTS:
            run, output = _start(_recipe(tmp_path / "killed", judge.base_url), tmp_path / "killed-cache")
            while run.poll() is None and marker not in "".join(output):
                time.sleep(0.05)
            if run.poll() is not None:  # this phase was done before the run reached it: nothing to kill
                continue
            time.sleep(delay)
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            text = "".join(output)
            hit.append((marker, max(KILL_POINTS, key=lambda p: text.rfind(p[0]))[0]))  # (aimed at, the last phase seen)
            in_flight_judge += marker.startswith("judge") * 2  # max_concurrency calls may be cut off
        final, output = _start(_recipe(tmp_path / "killed", judge.base_url), tmp_path / "killed-cache")
        assert final.wait(timeout=900) == 0, "".join(output)[-3000:]
        killed_calls = sum(len(v) for v in judge.requests.values())

    print(
        f"kills: {len(hit)}; (aimed at, phase hit): {hit}; judge calls {killed_calls} vs {clean_calls} uninterrupted; "
        f"generations {_generations(tmp_path / 'killed-cache')} vs {_generations(tmp_path / 'clean-cache')}"
    )
    assert len(hit) >= 8
    assert digest(tmp_path / "killed" / "tiny_smoke") == digest(tmp_path / "clean" / "tiny_smoke")
    assert _generations(tmp_path / "killed-cache") == _generations(
        tmp_path / "clean-cache"
    )  # no answer generated twice
    assert clean_calls <= killed_calls <= clean_calls + in_flight_judge  # only calls a kill cut off were asked again


def test_a_second_run_of_the_same_unit_stops_at_once_and_an_unusable_output_dir_is_one_line(tmp_path, capsys):
    """Two runs at once on one run directory: the second stops with one line naming the work the first holds,
    and the first ends as if alone. An output directory that cannot be made is one line too."""
    from prefbench.cli import main

    args = [
        "run",
        "recipes/tiny_smoke.yaml",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        "--set",
        f"report_dir={tmp_path / 'reports'}",
        "--set",
        "objectives=[{name: dpo, beta: 0.1}]",
        "--set",
        "train.steps=100",
        "--set",
        "train.save_every=0",
        "--set",
        "eval.generation=null",
    ]
    first, output = _start(args, tmp_path / "cache")
    while first.poll() is None and "dpo seed 0:" not in "".join(output):
        time.sleep(0.05)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the error, after the progress bars
    # the first holds the unit it trains (100 steps, ~35 s here: it is still at them when the second gets there,
    # a few seconds after it started training)
    assert err.startswith("prefbench: error: ") and "another prefbench process is training dpo/seed0" in err
    assert (
        first.wait(timeout=900) == 0 and (tmp_path / "out" / "tiny_smoke" / "dpo" / "seed0" / "summary.json").is_file()
    )

    (tmp_path / "a-file").write_text("")
    assert main([*args[:2], "--set", f"output_dir={tmp_path / 'a-file' / 'out'}", *args[4:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("prefbench: error: ") and "Not a directory" in err
