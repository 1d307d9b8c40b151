"""curve: every unit's snapshots (<unit>/snapshots/step-<k>, kept every train.snapshot_every steps) evaluated as its
final checkpoint is, on the same prompts against the same reference (the generation stage's scoring), so that
reward, KL, entropy and diversity can be read as curves over training: where an objective starts to overfit
(<unit>/snapshots/step-<k>/eval_generation.json); and, where the data holds examples out, the held-out preference
accuracy and margin as the preference stage measures them (<unit>/snapshots/step-<k>/eval_preference.json). Runs
after the generation and preference stages, whose reference results it reads."""

from __future__ import annotations

from collections.abc import Callable

from prefbench.eval.rewards import REWARDS
from prefbench.eval.stages import preference
from prefbench.eval.stages.base import (
    EvalUnit,
    Stage,
    finished_result,
    generation_settings,
    pending,
    prompt_records,
)
from prefbench.eval.stages.generation import score_units
from prefbench.recipe import Recipe

FILE = "eval_generation.json"


def snapshots(unit: EvalUnit) -> list[EvalUnit]:
    """A trained unit's complete snapshots in step order, each named <unit>@<step>."""
    found = [d for d in (unit.out / "snapshots").glob("step-*") if (d / "COMPLETE").is_file()]
    return [
        EvalUnit(f"{unit.name}@{d.name.removeprefix('step-')}", d, d)
        for d in sorted(found, key=lambda d: int(d.name.removeprefix("step-")))
    ]


def curve(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """Generation metrics of every snapshot of every unit (or of the `names` ones), written beside each snapshot;
    finished ones with the same settings are kept."""
    prompts = [r["prompt"] for r in prompt_records(recipe)]
    REWARDS[recipe.eval.reward].check_prompts(prompts)
    settings = generation_settings(recipe, prompts)
    units, done, _ = pending(recipe, names, FILE, settings, "curve")
    snaps = [s for name, u in units.items() if name != "reference" for s in snapshots(u)]
    for s in snaps:
        if result := finished_result(s.out / FILE, settings):
            done[s.name] = result
    if todo := [s for s in snaps if s.name not in done]:
        score_units(recipe, prompts, settings, units["reference"], done, todo, track=False)
    if snaps and recipe.data.eval_fraction > 0:  # the held-out examples are prepared only where there is work
        examples, kept_by = preference.held_out(recipe)
        if todo := [s for s in snaps if examples and finished_result(s.out / preference.FILE, kept_by) is None]:
            preference.score_preferences(recipe, examples, kept_by, units["reference"], {}, todo, track=False)
    return {s.name: done[s.name] for s in snaps}


def _done(recipe: Recipe) -> Callable[[EvalUnit], bool]:
    files = [(FILE, generation_settings(recipe, [r["prompt"] for r in prompt_records(recipe)]))]
    if recipe.data.eval_fraction > 0 and (held := preference.held_out(recipe))[0]:
        files.append((preference.FILE, held[1]))
    return lambda u: all(finished_result(s.out / f, kept) is not None for s in snapshots(u) for f, kept in files)


STAGE = Stage(
    "curve",
    "<unit>/snapshots/step-<k>/eval_generation.json",
    lambda recipe: recipe.eval.generation is not None and recipe.train.snapshot_every > 0,
    curve,
    per_unit=True,
    done=_done,
)
