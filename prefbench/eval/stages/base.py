"""What every evaluation stage shares: the `Stage` protocol, the units a stage runs on, the prompts and samplings
of the generation pass, and the check that a stored result has the settings a stage would use now.

A unit is "reference" (the recipe's model) or "<label>/seed<k>" (a trained checkpoint)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefbench import models
from prefbench.errors import TrainingError
from prefbench.eval.engines import standard_samplings
from prefbench.eval.generate import generate
from prefbench.eval.metrics import METRICS_VERSION
from prefbench.eval.prompts import load_prompt_records
from prefbench.eval.rewards import REWARDS, RewardModel
from prefbench.metric_table import METRICS
from prefbench.recipe import Recipe
from prefbench.results import (
    jsonable,
    objective_dir,
    read_json,
    read_optional,
    run_dir,
    unit_ids,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One evaluation stage: what `evaluate`, `prefbench evaluate --stage`, `prefbench launch`'s plan and the
    finished-unit check know of it. A stage reads the run directory, writes its own files there, keeps what is
    already finished with the same settings, and can run alone."""

    name: str
    result: str  # where its result lives ("<unit>/..." per unit, "<run>/..." for the run)
    wanted: Callable[[Recipe], bool]  # whether the recipe asks for it
    # per unit: run(recipe, names=None) -> {unit: result}, only the `names` units' own part when given;
    # run-wide: run(recipe)
    run: Callable[..., Any]
    per_unit: bool = False  # has work per unit: `prefbench evaluate --unit U` runs it for U alone
    # per-unit stages: done(recipe) -> whether a unit's result is stored with the settings the stage would use
    # (the settings every unit shares computed once), so a launch does not queue the unit again
    done: Callable[[Recipe], Callable[[EvalUnit], bool]] | None = None


@dataclasses.dataclass(frozen=True)
class EvalUnit:
    name: str  # "reference" or "<label>/seed<k>"
    checkpoint: Path  # a Hugging Face checkpoint directory
    out: Path  # where its evaluation results go


def eval_units(recipe: Recipe, names: list[str] | None = None) -> dict[str, EvalUnit]:
    """The reference and every trained objective x seed of the recipe (or the reference and the `names` ones);
    refuses a checkpoint not trained yet and a name that is not a unit of the recipe."""
    root = run_dir(recipe)
    units = {"reference": EvalUnit("reference", models.resolve(recipe.model.name), root / "reference")}
    every = [str(uid) for uid in unit_ids(recipe)]
    if unknown := [n for n in names or [] if n != "reference" and n not in every]:
        raise TrainingError(
            f"--unit {', '.join(unknown)}: not a unit of this recipe; its units are reference, {', '.join(every)}"
        )
    for name in every:
        if names is not None and name not in names:
            continue
        final = root / name / "final"
        if not (final / "config.json").is_file():
            raise TrainingError(f"{final}: no trained checkpoint to evaluate (run `prefbench run` to train it)")
        units[name] = EvalUnit(name, final, final.parent)
    return units


def pending(
    recipe: Recipe, names: list[str] | None, file: str, settings: dict, stage: str
) -> tuple[dict[str, EvalUnit], dict[str, dict], list[EvalUnit]]:
    """A per-unit stage's work: (the units, the results already in <unit>/`file` with these settings, the asked
    units still to do). A checkpoint's evaluation is paired with the reference's: with work to do, a checkpoint
    asked for alone before the reference's result is stored is refused."""
    units = eval_units(recipe, names)
    done = {name: result for name, u in units.items() if (result := finished_result(u.out / file, settings))}
    todo = [u for name, u in units.items() if name not in done and (names is None or name in names)]
    if todo and names is not None and "reference" not in names and "reference" not in done:
        raise TrainingError(
            f"{stage}: the reference is not evaluated yet, and every checkpoint is paired with it; "
            f"run `prefbench evaluate RECIPE --unit reference` first"
        )
    return units, done, todo


def finished_result(path: Path, settings: dict) -> dict | None:
    if path.is_file() and (result := read_json(path)).get("settings") == settings:
        return result
    return None


def prompt_records(recipe: Recipe) -> list[dict]:
    """The evaluation prompts ({"prompt", and "chosen" where the data has it}), validated once: the embedded
    task's, a file's, or the held-out prompts of the recipe's own data (eval.generation.prompts.source; those
    with a chosen answer when the judge compares with the data's chosen answers)."""
    judge = recipe.eval.judge
    return load_prompt_records(
        recipe.eval.generation.prompts, recipe.data, need_chosen=bool(judge and "dataset_chosen" in judge.against)
    )


def samplings(recipe: Recipe):
    g = recipe.eval.generation
    sp = g.sampling
    return standard_samplings(sp.n, sp.max_tokens, sp.temperature, sp.top_p, sp.seed, greedy=g.greedy)


def generation_settings(recipe: Recipe, prompts: list) -> dict:
    """Everything that decides a unit's generation metrics: finished results with other settings are redone,
    and reports and `compare` refuse to put results with different settings side by side. A reward model
    counts by its checkpoint's content hash as well as its name."""
    settings = {
        "metrics_version": METRICS_VERSION,
        "generation": dataclasses.asdict(recipe.eval.generation),
        "reward": recipe.eval.reward,
        "reward_version": REWARDS[recipe.eval.reward].version,
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
    }
    if spec := recipe.eval.reward_model:
        settings["reward_model"] = RewardModel.identity(spec)
    return jsonable(settings)


def generate_all(recipe: Recipe, units: list[EvalUnit], prompts: list[str]):
    """({checkpoint: {sampling: [per prompt: completions]}}, stats) for `units`; cached answers cost no engine."""
    g = recipe.eval.generation
    vllm_options = {
        k: v
        for k, v in (
            ("tensor_parallel_size", g.tensor_parallel_size),
            ("gpu_memory_utilization", g.gpu_memory_utilization),
        )
        if v
    }
    return generate(
        [u.checkpoint for u in units],
        prompts,
        samplings(recipe),
        engine=g.engine,
        max_model_len=g.max_model_len,
        vllm_options=vllm_options,
    )


def generations(recipe: Recipe) -> tuple[dict | None, dict[str, list[dict | None]]]:
    """The reference's eval_generation.json and, per objective label, each of the recipe's seeds' (None where
    missing): each file read once, for every metric of the objectives and claims stages."""
    root = run_dir(recipe)
    return (
        read_optional(root / "reference" / "eval_generation.json"),
        {
            spec.label: [
                read_optional(objective_dir(recipe, spec.label, seed) / "eval_generation.json") for seed in recipe.seeds
            ]
            for spec in recipe.objectives
        },
    )


def tracked(result: dict, file: str) -> dict[str, float | None]:
    """A unit's numbers for the trackers: the mean of each metric of the table kept in `file` that it tracks."""
    return {m.track: m.mean(result) for m in METRICS.values() if m.track and m.file == file}
