"""The benchmark task names prefbench knows without loading anything: its offline lm-eval task packs
(packs.py) and lm-eval's own task index. Recipe checks read this; running tasks is eval/benchmarks.py."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from prefbench.errors import did_you_mean
from prefbench.eval.tasks import packs


def lm_eval_version() -> str:
    return importlib.metadata.version("lm-eval")


def task_problems(names: list[str], at: str = "benchmarks.tasks") -> list[str]:
    """One line per name that is neither a prefbench offline pack nor a task, group or tag lm-eval knows.
    Reads lm-eval's task index only (nothing is materialised, loaded or downloaded)."""
    unknown = [(i, name) for i, name in enumerate(names) if name not in packs.PACKS]
    if not unknown:
        return []
    known = lm_eval_task_names()
    return [f"{at}[{i}].task: {name!r} is {not_a_task(name, known)}" for i, name in unknown if name not in known]


def not_a_task(name: str, known) -> str:
    return (f"neither an lm-eval {lm_eval_version()} task, group or tag nor a prefbench offline pack "
            f"({', '.join(packs.PACKS)}){did_you_mean(name, [*known, *packs.PACKS])}")


@functools.lru_cache(maxsize=1)
def lm_eval_task_names() -> frozenset[str]:
    """The task, group and tag names of lm-eval's own task directory: TaskManager(include_defaults=True)'s
    index, built the same way (lm-eval's YAML loader and TaskIndex.process_cfg) in about half the time,
    because each included template is parsed once instead of once per file that includes it (~5 s instead
    of ~10 s for ~15k YAML files on a 2-core machine). tests/test_recipe.py checks it against TaskManager."""
    import lm_eval.tasks
    from lm_eval.tasks._index import _IGNORE_DIRS, TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

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
    root = Path(lm_eval.tasks.__file__).parent
    for path in sorted(root.glob("**/*.yaml"), key=lambda p: p.as_posix()):
        if _IGNORE_DIRS.isdisjoint(path.parts):
            try:
                TaskIndex.process_cfg(merged(path), path, index)
            except Exception:  # lm-eval skips a file it cannot read in the same way
                continue
    return frozenset(index)
