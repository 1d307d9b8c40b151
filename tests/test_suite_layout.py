"""How `make test` lays the suite out on its workers: every test that uses the session's vLLM server runs on one
worker, so one server starts (an idle vLLM server busy-loops on a core: tests/conftest.py)."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_the_vllm_server_tests_share_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, os
        import pytest
        spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_collection_modifyitems = suite.pytest_collection_modifyitems  # the hook make test relies on

        @pytest.fixture(scope="session")
        def vllm_server():  # stands in for the real server: records which worker starts one
            with open(os.path.join({str(tmp_path)!r}, "starts"), "a") as f:
                f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
            yield None
    """))
    for name in "ab":
        (tmp_path / f"test_{name}.py").write_text("".join(
            f"def test_{name}{i}({'vllm_server' if i % 2 else ''}):\n    pass\n" for i in range(6)))
    # make test's options (Makefile): 2 workers, --dist loadgroup
    out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))})
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    workers = {test: worker for worker, test in re.findall(r"\[(gw\d)\].*PASSED \S+::(test_\w+)", out.stdout)}
    assert len(workers) == 12
    server_tests = {t for t in workers if int(t[-1]) % 2}
    assert len({workers[t] for t in server_tests}) == 1, workers
    assert (tmp_path / "starts").read_text().splitlines() == [workers[next(iter(server_tests))]]
