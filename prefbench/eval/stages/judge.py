"""judge: verdicts on the sampled answers (<run>/eval_judge.json, <run>/judge/verdicts.jsonl)."""

from __future__ import annotations

import dataclasses
import logging

from prefbench.eval.judge import JudgeBudgetError
from prefbench.eval.judge.protocols import PROTOCOLS
from prefbench.eval.prompts import prompt_text
from prefbench.eval.rewards import REWARDS, make_reward, score_all
from prefbench.eval.stages.base import (
    Stage,
    eval_units,
    generate_all,
    generation_settings,
    prompt_records,
)
from prefbench.recipe import Recipe
from prefbench.results import (
    jsonable,
    run_dir,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)


def judge(recipe: Recipe) -> dict:
    """Judge the units' sampled answers as recipe.eval.judge asks; writes <run>/eval_judge.json and every
    verdict to <run>/judge/verdicts.jsonl (prefbench.eval.judge: verdict lines).

    Verdicts come from the judge's cache when known, so re-running costs only new pairs. A budget stop is
    recorded in the file (the comparisons it could not finish left out) rather than failing the run; it and
    a dry run leave verdicts.jsonl empty."""
    spec = recipe.eval.judge
    records = prompt_records(recipe)
    prompts = [r["prompt"] for r in records]
    units = eval_units(recipe)
    gens, _ = generate_all(recipe, list(units.values()), prompts)
    answers = {
        name: [[c.text for c in comps] for comps in gens[str(u.checkpoint)]["sampled"]] for name, u in units.items()
    }
    rewards = None
    if REWARDS[recipe.eval.reward].ground_truth:  # measure the judge against the reward
        reward = make_reward(recipe.eval.reward, recipe.eval.reward_model)
        rewards = {name: score_all(reward, prompts, per_prompt).tolist() for name, per_prompt in answers.items()}
    chosen = [r["chosen"] for r in records] if all("chosen" in r for r in records) else None
    out = {
        "protocol": spec.protocol,
        "settings": jsonable({"judge": dataclasses.asdict(spec), "generation": generation_settings(recipe, prompts)}),
    }
    verdicts = []
    try:
        judge_with = PROTOCOLS[spec.protocol].judge
        result = judge_with(spec, [prompt_text(p) for p in prompts], answers, "reference", chosen, rewards)
        verdicts = result.pop("verdicts", [])
        out |= result
    except JudgeBudgetError as stop:
        out["stopped"] = str(stop)
    if "dry_run" in out:
        d = out["dry_run"]
        log.warning(
            "judge dry run: %d calls to make (%d cached), ~%d prompt tokens, <= %d completion tokens, estimated cost $%.4f",
            d["to_make"],
            d["cached"],
            d["prompt_tokens_est"],
            d["completion_tokens_max"],
            d["cost_usd_est"],
        )
    write_json(run_dir(recipe) / "eval_judge.json", out)
    write_jsonl(run_dir(recipe) / "judge" / "verdicts.jsonl", verdicts)
    return out


STAGE = Stage("judge", "<run>/eval_judge.json", lambda recipe: recipe.eval.judge is not None, judge)
