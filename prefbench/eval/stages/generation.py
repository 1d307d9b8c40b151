"""generation: every unit's answers to the evaluation prompts (the task's, a file's, or the data's own held-out
prompts; through the generation cache), then rewards, lengths, diversity, KL and entropy against the reference
(<unit>/eval_generation.json, <unit>/answers.jsonl)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prefbench import models
from prefbench.eval.engines import prompt_ids
from prefbench.eval.metrics import evaluate_checkpoint, rewards_of
from prefbench.eval.rewards import REWARDS, make_reward
from prefbench.eval.stages.base import (
    EvalUnit,
    Stage,
    finished_result,
    generate_all,
    generation_settings,
    pending,
    prompt_records,
    samplings,
    tracked,
)
from prefbench.health import generation_findings
from prefbench.recipe import Recipe
from prefbench.results import (
    write_json,
    write_jsonl,
)
from prefbench.tracking import log_evaluation

log = logging.getLogger(__name__)


def generation(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """Generation metrics of every unit (or the `names` ones) against the reference on the same prompts
    (eval/metrics.py), written to <unit>/eval_generation.json. A file whose settings match is kept: re-running only
    re-reads. A checkpoint is paired with the reference's rewards: its answers, generated with the checkpoints', or
    the per-sample rewards its finished evaluation stored."""
    prompts = [r["prompt"] for r in prompt_records(recipe)]
    REWARDS[recipe.eval.reward].check_prompts(prompts)  # before anything is generated for prompts it cannot score
    settings = generation_settings(recipe, prompts)
    units, done, todo = pending(recipe, names, "eval_generation.json", settings, "generation")
    if todo:
        score_units(recipe, prompts, settings, units["reference"], done, todo)
    return {name: done[name] for name in units if name in done}


def score_units(
    recipe: Recipe,
    prompts: list,
    settings: dict,
    reference: EvalUnit,
    done: dict[str, dict],
    todo: list[EvalUnit],
    track: bool = True,
) -> None:
    """Generate, score and measure the `todo` units against the reference (generated first when its result is not
    in `done`), writing each unit's eval_generation.json and answers.jsonl and adding its result to `done`;
    `track`: log the numbers to the unit's trackers at its last training step (not for intermediate snapshots)."""
    generated = todo if "reference" in done else [reference] + [u for u in todo if u.name != "reference"]
    gens, gen_stats = generate_all(recipe, generated, prompts)
    # every answer scored once: the metrics and answers.jsonl read the same scores. A reward model loads only
    # now, after the generation engine is gone (both want the GPU), and goes before the KL pass.
    reward = make_reward(recipe.eval.reward, recipe.eval.reward_model)
    scores = (
        {
            u.name: {p: rewards_of(prompts, comps, reward) for p, comps in gens[str(u.checkpoint)].items()}
            for u in tqdm(generated, desc=f"reward {recipe.eval.reward}", unit="checkpoint")
        }
        if reward
        else None
    )
    if scores is not None and "reference" not in scores:
        scores["reference"] = {
            p: np.array(done["reference"][p]["per_sample_reward"]) for p in gens[str(generated[0].checkpoint)]
        }
    del reward
    models.free_accelerator_memory()
    ids = prompt_ids(models.load_tokenizer(recipe.model.name), prompts)
    passes, ref_model = samplings(recipe), models.load_model(reference.checkpoint)
    # KL and entropy from the engine's log-probs kept with each sample, and the reference's log-probs of the tokens
    # they list (the only model run again: once per checkpoint's samples, and once on its own as the engine check)
    for u in tqdm(todo, desc="KL and entropy", unit="checkpoint"):
        metrics = evaluate_checkpoint(
            u.checkpoint,
            reference.checkpoint,
            prompts,
            ids,
            gens[str(u.checkpoint)],
            scores and scores[u.name],
            scores and scores["reference"],
            passes,
            ref_model,
        )
        done[u.name] = {
            "settings": settings,
            "unit": u.name,
            "checkpoint_sha256": models.checkpoint_id(u.checkpoint),  # compare: same weights?
            "engine": gen_stats.engine,
            "fallback_reason": gen_stats.fallback_reason,
            **metrics,
            "health": generation_findings(metrics, recipe.eval.generation.sampling.max_tokens),
        }
        write_answers(u.out / "answers.jsonl", prompts, gens[str(u.checkpoint)], scores and scores[u.name])
        write_json(u.out / "eval_generation.json", done[u.name])
        if track:
            log_evaluation(recipe, u.name, u.out, tracked(done[u.name], "generation"))


def write_answers(path: Path, prompts: list, gens: dict, scores: dict[str, np.ndarray] | None) -> None:
    """A unit's generated answers, one line per answer, readable without prefbench: prompt (text, or chat
    messages), sampling pass, sample number, answer text, token count, finish reason ("stop", or "length": cut
    at max_tokens), reward (null with eval.reward: none)."""
    write_jsonl(
        path,
        [
            {
                "prompt_index": i,
                "prompt": prompt,
                "sampling": name,
                "sample": j,
                "answer": c.text,
                "tokens": len(c.token_ids),
                "finish_reason": c.finish_reason,
                "reward": float(scores[name][i, j]) if scores else None,
            }
            for name, per_prompt in gens.items()
            for i, (prompt, comps) in enumerate(zip(prompts, per_prompt))
            for j, c in enumerate(comps)
        ],
    )


def _done(recipe: Recipe) -> Callable[[EvalUnit], bool]:
    settings = generation_settings(recipe, [r["prompt"] for r in prompt_records(recipe)])
    return lambda u: finished_result(u.out / "eval_generation.json", settings) is not None


STAGE = Stage(
    "generation",
    "<unit>/eval_generation.json",
    lambda recipe: recipe.eval.generation is not None,
    generation,
    per_unit=True,
    done=_done,
)
