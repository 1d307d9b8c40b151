"""benchmarks: lm-eval tasks on every unit (<unit>/benchmarks/), then each checkpoint against the reference on the
same documents (paired tests, Holm-corrected across every checkpoint x task metric)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prefbench import stats
from prefbench.eval.benchmarks import compare, doc_metrics, finished, run_benchmarks
from prefbench.eval.stages.base import (
    EvalUnit,
    Stage,
    eval_units,
)
from prefbench.recipe import Recipe
from prefbench.results import (
    write_json,
)

log = logging.getLogger(__name__)


def benchmarks(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """lm-eval tasks on every unit (<unit>/benchmarks/), then each checkpoint against the reference on the
    same documents (<unit>/benchmarks/vs_reference.json: paired tests, Holm across the grid). With `names`,
    those units' tasks only (the paired tests wait for the whole grid)."""
    spec = recipe.eval.benchmarks
    units = eval_units(recipe, names)
    for u in units.values():
        if names is None or u.name in names:
            run_benchmarks(spec, u.checkpoint, u.out / "benchmarks")
    if names is not None:
        return {}
    ref_dir = units["reference"].out / "benchmarks"
    cells = sum(len(doc_metrics(ref_dir, t.result_name())) for t in spec.tasks) * (len(units) - 1)
    n_boot = stats.family_n_boot(cells)  # bootstrap p-values fine enough for Holm over the grid
    paired = {
        name: {
            f"{t.result_name()} {metric}": compare(u.out / "benchmarks", ref_dir, t.result_name(), metric, n_boot)
            for t in spec.tasks
            for metric in doc_metrics(ref_dir, t.result_name())
        }
        for name, u in units.items()
        if name != "reference"
    }
    # Holm across the whole grid (every checkpoint x task metric): one family of tests against the reference
    cells = [r for per_unit in paired.values() for r in per_unit.values()]
    for r, p_holm in zip(cells, stats.holm([r["p_value"] for r in cells])):
        r["p_holm"] = p_holm
    for name, per_unit in paired.items():
        write_json(units[name].out / "benchmarks" / "vs_reference.json", per_unit)
    return paired


def _done(recipe: Recipe) -> Callable[[EvalUnit], bool]:
    return lambda u: finished(recipe.eval.benchmarks, u.checkpoint, u.out / "benchmarks")


STAGE = Stage(
    "benchmarks",
    "<unit>/benchmarks/",
    lambda recipe: recipe.eval.benchmarks is not None,
    benchmarks,
    per_unit=True,
    done=_done,
)
