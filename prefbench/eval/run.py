"""Evaluation of a run, as stages (prefbench.eval.stages.STAGES, each in its own module): `evaluate` runs the ones
the recipe asks for, in their order, for every unit and across them, or one unit's own part of the per-unit
stages (`prefbench evaluate RECIPE --unit U`: its own files only, so units evaluate at the same time under
prefbench launch; a checkpoint's needs the reference's done first, which it is paired with). The run-wide parts
(benchmark tests across the grid, judge, objectives, claims) run without --unit.
"""

from __future__ import annotations

import time

from prefbench.errors import TrainingError
from prefbench.eval.stages import STAGES
from prefbench.eval.stages.base import Stage, eval_units
from prefbench.recipe import Recipe
from prefbench.results import exclusive, record_timing, run_dir


def stages(recipe: Recipe) -> list[Stage]:
    """The stages the recipe asks for, in the order they run."""
    return [stage for stage in STAGES if stage.wanted(recipe)]


def evaluate(recipe: Recipe, only: list[str] | None = None, unit: str | None = None) -> dict[str, dict]:
    """The stages the recipe asks for (or the `only` ones of them), for every unit and across them, or for one
    `unit`'s own part of the per-unit stages; returns each evaluated unit's generation metrics (empty when the
    generation stage did not run)."""
    wanted = stages(recipe)
    if unknown := [s for s in only or [] if s not in [stage.name for stage in wanted]]:
        raise TrainingError(
            f"--stage {', '.join(unknown)}: not a stage this recipe asks for; it has "
            f"{', '.join(stage.name for stage in wanted) or 'none'}"
        )
    chosen = [stage for stage in wanted if only is None or stage.name in only]
    started = time.perf_counter()
    if unit is None:
        with exclusive(run_dir(recipe), "evaluate", "evaluating this run"):
            outputs = {stage.name: stage.run(recipe) for stage in chosen}
        return outputs.get("generation", {})
    units = eval_units(recipe, [unit])  # refuses an unknown or untrained unit before any model loads
    with exclusive(run_dir(recipe), f"evaluate-{unit.replace('/', '-')}", f"evaluating {unit}"):
        outputs = {stage.name: stage.run(recipe, [unit]) for stage in chosen if stage.per_unit}
    record_timing(units[unit].out, "evaluate", time.perf_counter() - started, stages=list(outputs))
    return {k: v for k, v in outputs.get("generation", {}).items() if k == unit}


def finished_units(recipe: Recipe, names: list[str]) -> list[str]:
    """The units among `names` whose every per-unit stage the recipe asks for finds their results stored with the
    settings it would use (each stage's own check, Stage.done), so `prefbench evaluate --unit` would only re-read
    them: what `prefbench launch` does not queue again. An untrained checkpoint is not finished."""
    root = run_dir(recipe)
    present = [
        n for n in names if (root / n).is_dir() and (n == "reference" or (root / n / "final" / "config.json").is_file())
    ]
    if not present:
        return []
    checks = [stage.done(recipe) for stage in stages(recipe) if stage.per_unit]
    units = eval_units(recipe, present)
    return [n for n in present if all(done(units[n]) for done in checks)]
