"""objectives: each metric per objective across seeds and prompts, objectives contrasted with each other and with
the reference (Holm within each family), the comparison at matched KL, and each objective's metrics over training
where snapshots were evaluated (<run>/eval_objectives.json)."""

from __future__ import annotations

import logging

import numpy as np

from prefbench import stats
from prefbench.eval.stages.base import (
    Stage,
    generations,
)
from prefbench.metric_table import METRICS, PER_PROMPT
from prefbench.recipe import Recipe
from prefbench.results import (
    missing_seeds,
    objective_dir,
    objective_tables,
    read_optional,
    run_dir,
    write_json,
)

log = logging.getLogger(__name__)


def objectives(recipe: Recipe) -> dict:
    """Each metric of metric_table.PER_PROMPT at objective level, over seeds and prompts (stats.objective_level; with one
    seed, that training run only): each objective's estimate, its difference from the reference, every pair of
    objectives contrasted, the leader and whether it is best. An objective not evaluated with every seed is left
    out and named with its missing seeds ("missing"), and then no leader is named: the best of the rest need not
    be the recipe's. Written to <run>/eval_objectives.json."""
    root = run_dir(recipe)
    reference, gens = generations(recipe)
    # the generation settings it was computed from: a report reading it beside re-evaluated units sees it is stale
    out: dict = {"seeds": list(recipe.seeds), "settings": reference and reference.get("settings"), "metrics": {}}
    tables = {name: objective_tables(gens, m) for name, m in PER_PROMPT.items()}
    for name, m in PER_PROMPT.items():
        if not tables[name]:
            continue  # e.g. no greedy pass
        ref = m.values(reference)
        entry = out["metrics"][name] = stats.objective_level(
            tables[name], None if ref is None else np.asarray(ref, dtype=float), m.higher
        )
        if missing := missing_seeds(gens, [label for label in gens if label not in tables[name]], m, recipe.seeds):
            entry["missing"] = missing  # left out of the grid: the best of the rest is not the best of the recipe
            if "best" in entry:
                entry["leader"], entry["best"] = None, None
    if {"kl", "reward"} <= set(out["metrics"]):
        groups = _matched_kl_points(recipe, strength_sweeps(recipe), tables["kl"], tables["reward"])
        if len(groups) >= 2 and all(len(pts) >= 2 for pts in groups.values()):
            out["matched_kl"] = stats.matched_kl(groups)
    if over := over_training(recipe, gens, reference and reference.get("settings")):
        out["over_training"] = over
    write_json(root / "eval_objectives.json", out)
    return out


OVER_TRAINING = ("reward", "kl", "entropy_per_token", "distinct_2")  # what overfitting moves (the curve stage's)


def over_training(recipe: Recipe, gens: dict[str, list[dict | None]], settings: dict | None) -> dict:
    """Per objective label, per step evaluated with every seed (each snapshot, train.snapshot_every, and the end of
    training), each of OVER_TRAINING across seeds: stats.across_seeds of its [seeds, prompts] table (a number per
    unit, distinct-2, as a [seeds, 1] one: the t interval over seeds), the interval one for a new training run.
    Snapshots evaluated under other generation settings than the run's are left out. {} without snapshots."""
    out: dict = {}
    for spec in recipe.objectives:
        dirs = [objective_dir(recipe, spec.label, seed) / "snapshots" for seed in recipe.seeds]
        steps = sorted({int(d.name.removeprefix("step-")) for root in dirs for d in root.glob("step-*")})
        if not steps:
            continue
        at = {
            step: [read_optional(root / f"step-{step}" / "eval_generation.json") for root in dirs] for step in steps
        } | {recipe.train_for(spec).steps: gens[spec.label]}
        per_step = {}
        for step, results in at.items():
            if any(r is None or r.get("settings") != settings for r in results):
                continue
            tables = {name: _seed_table(results, METRICS[name]) for name in OVER_TRAINING}
            per_step[str(step)] = {name: stats.across_seeds(t) for name, t in tables.items() if t is not None}
        if per_step:
            out[spec.label] = per_step
    return out


def _seed_table(results: list[dict], m) -> np.ndarray | None:
    """[seeds, prompts] of a metric's per-prompt values (results.objective_tables), or [seeds, 1] of its number per
    unit; None if any lacks it."""
    if m.per_prompt:
        return objective_tables({"": results}, m).get("")
    rows = [m.estimate(r) for r in results]
    return None if None in rows else np.array(rows, dtype=float)[:, None]


def strength_sweeps(recipe: Recipe) -> dict[str, tuple[str, list]]:
    """Objectives the recipe trains at several values of one hyperparameter (a strength knob such as beta), whose
    runs the matched-KL analysis pools under the objective's name: per objective name, (the knob, its specs in
    the recipe's order). Every entry must set the same hyperparameters
    and differ in exactly one of them: entries that differ in more, or where one leaves a value at its default
    (a variant such as KTO re-weighted against plain KTO), are not a sweep."""
    by_name: dict[str, list] = {}
    for spec in recipe.objectives:
        by_name.setdefault(spec.name, []).append(spec)
    out = {}
    for name, specs in by_name.items():
        keys = [set(spec.hyperparameters) for spec in specs]
        varying = [k for k in sorted(keys[0]) if len({repr(spec.hyperparameters[k]) for spec in specs}) > 1]
        if len(specs) >= 2 and all(k == keys[0] for k in keys) and len(varying) == 1:  # every entry names the knob
            out[name] = (varying[0], specs)
    return out


def _matched_kl_points(
    recipe: Recipe,
    sweeps: dict[str, tuple[str, list]],
    kl_tables: dict[str, np.ndarray],
    reward_tables: dict[str, np.ndarray],
) -> dict[str, list[tuple[int, float, float, str]]]:
    """Every evaluated training run as a (seed, mean KL, mean reward, label) point of its objective, for
    stats.matched_kl: a swept objective's runs at every setting (a sweep: strength_sweeps) under its name, any
    other entry under its label."""
    out: dict[str, list] = {}
    for spec in recipe.objectives:
        if spec.label in kl_tables and spec.label in reward_tables:
            group = spec.name if spec.name in sweeps else spec.label
            out.setdefault(group, []).extend(
                (seed, float(kl), float(r), spec.label)
                for seed, kl, r in zip(recipe.seeds, kl_tables[spec.label].mean(1), reward_tables[spec.label].mean(1))
            )
    return out


STAGE = Stage("objectives", "<run>/eval_objectives.json", lambda recipe: recipe.eval.generation is not None, objectives)
