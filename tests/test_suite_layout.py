"""How `make test` lays the suite out on its workers: every test that uses the vLLM server runs on one worker in one
block, so one server starts, and it stops right after the block (an idle vLLM server busy-loops on a core:
tests/conftest.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_the_vllm_server_tests_share_one_worker_and_the_server_stops_after_them(tmp_path):
    log = tmp_path / "log"
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import importlib.util, os
        spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        # the suite's own fixture and hooks, as make test runs them
        vllm_server, pytest_runtest_teardown = suite.vllm_server, suite.pytest_runtest_teardown
        pytest_collection_modifyitems, pytest_sessionfinish = suite.pytest_collection_modifyitems, suite.pytest_sessionfinish

        def record(event):
            with open({str(log)!r}, "a") as f:
                f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + " " + event + "\\n")

        class Server:  # stands in for the real server: records when it starts and stops
            def stop(self):
                record("stop")

        def start():
            record("start")
            return Server()

        suite._SERVER_START["start"] = start
    """)
    )
    for name in "ab":  # server tests take longer, as real ones do: the other worker keeps busy meanwhile
        (tmp_path / f"test_{name}.py").write_text(
            "import os, time\n\n"
            + "".join(
                f"def test_{name}{i}({'vllm_server' if i % 2 else ''}):\n"
                f"    time.sleep({0.3 if i % 2 else 0.1})\n"
                f"    open({str(log)!r}, 'a').write(os.environ['PYTEST_XDIST_WORKER'] + ' {name}{i}\\n')\n"
                for i in range(6)
            )
        )
    # make test's options (Makefile): 2 workers, --dist loadgroup
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))},
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    events = [line.split() for line in log.read_text().splitlines()]
    starts = [w for w, e in events if e == "start"]
    assert len(starts) == 1 and [w for w, e in events if e == "stop"] == starts  # one server, started and stopped once
    on_server_worker = [e for w, e in events if w == starts[0]]
    block = on_server_worker[on_server_worker.index("start") + 1 : on_server_worker.index("stop")]
    assert sorted(block) == sorted(
        f"{n}{i}" for n in "ab" for i in (1, 3, 5)
    )  # every server test, and only those, while it ran
    assert len([e for w, e in events if e[0] in "ab"]) == 12
    assert on_server_worker.index("start") == 0  # the block goes first (largest group), not after the rest of the suite
