"""objectives: each metric per objective across seeds and prompts, objectives contrasted with each other and with
the reference (Holm within each family), and the comparison at matched KL (<run>/eval_objectives.json)."""

from __future__ import annotations

import logging

import numpy as np

from prefbench import stats
from prefbench.eval.stages.base import (
    Stage,
    generations,
)
from prefbench.metric_table import PER_PROMPT
from prefbench.recipe import Recipe
from prefbench.results import (
    missing_seeds,
    objective_tables,
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
    write_json(root / "eval_objectives.json", out)
    return out


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
