"""Evaluation of a run, as stages. Each stage is a function of the recipe that reads the run directory,
writes its own files there, keeps what is already finished with the same settings, and can run alone;
`evaluate` runs the ones the recipe asks for, in this order:

  benchmarks  lm-eval tasks on every unit, then each checkpoint against the reference  <unit>/benchmarks/
              (paired tests, Holm-corrected across every checkpoint x task metric)
  preference  on the held-out split of the recipe's own data, no generation: implicit-reward accuracy,
              margin, log-likelihood per token, against the reference            <unit>/eval_preference.json
  generation  every unit's answers to the evaluation prompts (the task's, a file's, or the data's own
              held-out prompts; through the generation cache), then rewards, lengths,    <unit>/eval_generation.json,
              diversity, KL and entropy against the reference                           <unit>/answers.jsonl
  judge       pairwise verdicts on the sampled answers                                 <run>/eval_judge.json,
                                                                                       <run>/judge/verdicts.jsonl
  objectives  each metric per objective across seeds and prompts, objectives contrasted   <run>/eval_objectives.json
              with each other and with the reference (Holm within each family)
  claims      the recipe's claims, tested on the stored per-prompt values              <run>/eval_claims.json

A unit is "reference" (the recipe's model) or "<label>/seed<k>" (a trained checkpoint). The first three stages
are per unit: `prefbench evaluate RECIPE --unit U` runs them for U alone (its own files only, so units evaluate
at the same time under prefbench launch; a checkpoint's needs the reference's done first, which it is paired
with); the run-wide parts (benchmark tests across the grid, judge, objectives, claims) run without --unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from prefbench import models, stats
from prefbench.data.prepare import prepare_data
from prefbench.data.tokenize import fingerprint
from prefbench.errors import TrainingError
from prefbench.eval.benchmarks import compare, doc_metrics, finished, run_benchmarks
from prefbench.eval.generate import generate, prompt_ids, standard_samplings
from prefbench.eval.judge import JudgeBudgetError, judge_units
from prefbench.eval.metrics import (
    METRICS_VERSION,
    evaluate_checkpoint,
    preference_metrics,
    rewards_of,
    row_stats,
)
from prefbench.eval.prompts import load_prompt_records, prompt_text
from prefbench.eval.rewards import REWARDS, RewardModel, make_reward, score_all
from prefbench.metric_table import METRICS, PER_PROMPT, dig
from prefbench.recipe import Recipe
from prefbench.results import (
    exclusive,
    jsonable,
    missing_seeds,
    objective_tables,
    read_json,
    read_optional,
    record_timing,
    run_dir,
    write_json,
    write_jsonl,
)
from prefbench.tracking import log_evaluation

log = logging.getLogger(__name__)


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
    every = [f"{spec.label}/seed{seed}" for spec in recipe.objectives for seed in recipe.seeds]
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


def stages(recipe: Recipe) -> list[str]:
    """The stages the recipe asks for, in the order they run."""
    asked = {
        "benchmarks": recipe.eval.benchmarks is not None,
        "preference": recipe.data.eval_fraction > 0,
        "generation": recipe.eval.generation is not None,
        "judge": recipe.eval.judge is not None,
        "objectives": recipe.eval.generation is not None,
        "claims": bool(recipe.claims),
    }
    return [name for name, wanted in asked.items() if wanted]


UNIT_STAGES = ("benchmarks", "preference", "generation")  # the stages with per-unit work (evaluate --unit)


def evaluate(recipe: Recipe, only: list[str] | None = None, unit: str | None = None) -> dict[str, dict]:
    """The stages the recipe asks for (or the `only` ones of them), for every unit and across them, or for one
    `unit`'s own part of the per-unit stages; returns each evaluated unit's generation metrics (empty when the
    generation stage did not run)."""
    wanted = stages(recipe)
    if unknown := [s for s in only or [] if s not in wanted]:
        raise TrainingError(
            f"--stage {', '.join(unknown)}: not a stage this recipe asks for; it has {', '.join(wanted) or 'none'}"
        )
    started = time.perf_counter()
    if unit is None:
        with exclusive(run_dir(recipe), "evaluate", "evaluating this run"):
            outputs = {name: STAGES[name](recipe) for name in only or wanted}
        return outputs.get("generation", {})
    names = [unit]
    units = eval_units(recipe, names)  # refuses an unknown or untrained unit before any model loads
    with exclusive(run_dir(recipe), f"evaluate-{unit.replace('/', '-')}", f"evaluating {unit}"):
        outputs = {name: STAGES[name](recipe, names) for name in only or wanted if name in UNIT_STAGES}
    record_timing(units[unit].out, "evaluate", time.perf_counter() - started, stages=list(outputs))
    return {k: v for k, v in outputs.get("generation", {}).items() if k == unit}


def _reference_first(recipe: Recipe, names: list[str] | None, done: dict, stage: str) -> None:
    """A checkpoint's per-unit evaluation is paired with the reference's: refuse it before the reference's."""
    if names is not None and "reference" not in names and "reference" not in done:
        raise TrainingError(
            f"{stage}: the reference is not evaluated yet, and every checkpoint is paired with it; "
            f"run `prefbench evaluate RECIPE --unit reference` first"
        )


def finished_units(recipe: Recipe, names: list[str]) -> list[str]:
    """The units among `names` whose every per-unit stage the recipe asks for finds their results stored with the
    settings it would use (the same checks the stages make before they do anything), so `prefbench evaluate --unit`
    would only re-read them: what `prefbench launch` does not queue again. An untrained checkpoint is not finished.
    The settings every unit shares (held-out data, prompts) are computed once."""
    root, wanted = run_dir(recipe), stages(recipe)
    present = [
        n for n in names if (root / n).is_dir() and (n == "reference" or (root / n / "final" / "config.json").is_file())
    ]
    if not present:
        return []
    examples, preference_settings = _held_out(recipe) if "preference" in wanted else ([], None)
    generation = (
        generation_settings(recipe, [r["prompt"] for r in prompt_records(recipe)]) if "generation" in wanted else None
    )
    units = eval_units(recipe, present)

    def done(u: EvalUnit) -> bool:
        return (
            ("benchmarks" not in wanted or finished(recipe.eval.benchmarks, u.checkpoint, u.out / "benchmarks"))
            and (not examples or _finished(u.out / "eval_preference.json", preference_settings) is not None)
            and (generation is None or _finished(u.out / "eval_generation.json", generation) is not None)
        )

    return [n for n in present if done(units[n])]


# ---- benchmarks -----------------------------------------------------------------------------------


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


# ---- held-out preferences ------------------------------------------------------------------------------


def preference(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """Held-out preference metrics (metrics.preference_metrics) of every unit (or the `names` ones) on the
    held-out examples of the recipe's own data (the split the trainer made, data.eval_fraction), paired against
    the reference's on the same examples; <unit>/eval_preference.json. One forward of each checkpoint over the
    held-out set; the reference's log-probs are kept in its file, so checkpoints evaluated later read them."""
    examples, settings = _held_out(recipe)
    if not examples:
        log.warning(
            "preference: the held-out split is empty (data.eval_fraction %s); nothing to measure",
            recipe.data.eval_fraction,
        )
        return {}
    units = eval_units(recipe, names)
    done = {
        name: result for name, u in units.items() if (result := _finished(u.out / "eval_preference.json", settings))
    }
    todo = [u for name, u in units.items() if name not in done and (names is None or name in names)]
    if not todo:
        return {name: done[name] for name in units if name in done}
    _reference_first(recipe, names, done, "preference")
    rows = [(i, i, j) for i, e in enumerate(examples) for j in range(len(e.completions))]
    width = len(examples[0].completions)

    def logps(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
        stats = row_stats(models.load_model(checkpoint), examples, rows)
        return stats["logp"].reshape(-1, width), stats["tokens"].reshape(-1, width)

    if kept := dig(done.get("reference"), ("per_example",)):
        ref, counts = np.array(kept["logp"]), np.array(kept["tokens"])
    else:
        ref, counts = logps(units["reference"].checkpoint)
    ref_metrics = preference_metrics(examples, ref, ref, counts)
    for u in tqdm(todo, desc="held-out preferences", unit="checkpoint"):
        result = preference_metrics(examples, ref if u.name == "reference" else logps(u.checkpoint)[0], ref, counts)
        if result["data"] == "paired":
            result["vs_reference"] = {
                key: stats.paired_difference(result["per_pair"][key], ref_metrics["per_pair"][key])
                for key in ("accuracy", "chosen_logp_per_token")
            }
        if u.name == "reference":  # summed log-probs and token counts, [examples, completions]
            result["per_example"] = {"logp": ref.tolist(), "tokens": counts.tolist()}
        done[u.name] = {"settings": settings, "unit": u.name, **result}
        write_json(u.out / "eval_preference.json", done[u.name])
        log_evaluation(recipe, u.name, u.out, _tracked(result, "preference"))
    return {name: done[name] for name in units if name in done}


def _held_out(recipe: Recipe) -> tuple[list, dict]:
    """The held-out examples of the recipe's data and the settings a unit's eval_preference.json is kept by."""
    examples = prepare_data(recipe, models.load_tokenizer(recipe.model.name)).eval
    return examples, {
        "metrics_version": METRICS_VERSION,
        "held_out_fingerprint": fingerprint(examples) if examples else None,
    }


# ---- generation and its metrics ---------------------------------------------------------------------


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


def generation(recipe: Recipe, names: list[str] | None = None) -> dict[str, dict]:
    """Generation metrics of every unit (or the `names` ones) against the reference on the same prompts
    (eval/metrics.py), written to <unit>/eval_generation.json. A file whose settings match is kept: re-running only
    re-reads. A checkpoint is paired with the reference's rewards: its answers, generated with the checkpoints', or
    the per-sample rewards its finished evaluation stored."""
    prompts = [r["prompt"] for r in prompt_records(recipe)]
    REWARDS[recipe.eval.reward].check_prompts(prompts)  # before anything is generated for prompts it cannot score
    settings = generation_settings(recipe, prompts)
    units = eval_units(recipe, names)
    done = {
        name: result for name, u in units.items() if (result := _finished(u.out / "eval_generation.json", settings))
    }
    todo = [u for name, u in units.items() if name not in done and (names is None or name in names)]
    if not todo:
        return {name: done[name] for name in units if name in done}
    _reference_first(recipe, names, done, "generation")
    reference = units["reference"]
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
        }
        write_answers(u.out / "answers.jsonl", prompts, gens[str(u.checkpoint)], scores and scores[u.name])
        write_json(u.out / "eval_generation.json", done[u.name])
        log_evaluation(recipe, u.name, u.out, _tracked(done[u.name], "generation"))
    return {name: done[name] for name in units if name in done}


def _tracked(result: dict, file: str) -> dict[str, float | None]:
    """A unit's numbers for the trackers: the mean of each metric of the table kept in `file` that it tracks."""
    return {m.track: m.mean(result) for m in METRICS.values() if m.track and m.file == file}


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


def _finished(path: Path, settings: dict) -> dict | None:
    if path.is_file() and (result := read_json(path)).get("settings") == settings:
        return result
    return None


# ---- judge --------------------------------------------------------------------------------------------


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
        "settings": jsonable({"judge": dataclasses.asdict(spec), "generation": generation_settings(recipe, prompts)})
    }
    verdicts = []
    try:
        result = judge_units(spec, [prompt_text(p) for p in prompts], answers, "reference", chosen, rewards)
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


# ---- objectives ------------------------------------------------------------------------------------


def _generations(recipe: Recipe) -> tuple[dict | None, dict[str, list[dict | None]]]:
    """The reference's eval_generation.json and, per objective label, each of the recipe's seeds' (None where
    missing): each file read once, for every metric of the objectives and claims stages."""
    root = run_dir(recipe)
    return (
        read_optional(root / "reference" / "eval_generation.json"),
        {
            spec.label: [
                read_optional(root / spec.label / f"seed{seed}" / "eval_generation.json") for seed in recipe.seeds
            ]
            for spec in recipe.objectives
        },
    )


def objectives(recipe: Recipe) -> dict:
    """Each metric of metric_table.PER_PROMPT at objective level, over seeds and prompts (stats.objective_level; with one
    seed, that training run only): each objective's estimate, its difference from the reference, every pair of
    objectives contrasted, the leader and whether it is best. An objective not evaluated with every seed is left
    out and named with its missing seeds ("missing"), and then no leader is named: the best of the rest need not
    be the recipe's. Written to <run>/eval_objectives.json."""
    root = run_dir(recipe)
    reference, gens = _generations(recipe)
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


# ---- claims ---------------------------------------------------------------------------------------------


def claims(recipe: Recipe) -> list[dict]:
    """Each claim of the recipe at objective level: the grid's own contrast (stats.objective_level over every
    objective of the run on the claim's metric: better minus worse on the same seeds and prompts, or better minus
    the reference, with the grid's run-to-run error term; with one seed, that training run only), its p
    Holm-adjusted across the recipe's claims, and the verdict: held (Holm p < 0.05, better above), contradicted
    (Holm p < 0.05, below), or not resolved. A claim on an objective missing a seed is "not evaluated", the
    seeds named. Each seed's own paired difference is kept as detail. Written to <run>/eval_claims.json."""
    root = run_dir(recipe)
    reference, gens = _generations(recipe)
    grids: dict[str, dict] = {}
    rows = []
    for claim in recipe.claims:
        m = PER_PROMPT[claim.metric]
        if claim.metric not in grids:
            ref = m.values(reference)
            tables = objective_tables(gens, m)
            grids[claim.metric] = (
                stats.objective_level(tables, None if ref is None else np.asarray(ref, dtype=float), True)
                if tables
                else {}
            )
        grid = grids[claim.metric]
        per_seed = []
        for seed, gen in zip(recipe.seeds, gens[claim.better]):
            worse = reference if claim.worse == "reference" else gens[claim.worse][recipe.seeds.index(seed)]
            if m.values(gen) is not None and m.values(worse) is not None:
                per_seed.append({"seed": seed, **stats.paired_difference(m.values(gen), m.values(worse))})
        row = {
            "claim": claim.text,
            "better": claim.better,
            "worse": claim.worse,
            "metric": claim.metric,
            "per_seed": per_seed,
        }
        rows.append(
            row
            | (
                stats.claim_contrast(grid, claim.better, claim.worse)
                or {
                    "n_seeds": 0,
                    "missing": missing_seeds(
                        gens, [claim.better] + ([] if claim.worse == "reference" else [claim.worse]), m, recipe.seeds
                    ),
                }
            )
        )
    stats.with_detectable(
        stats.holm_family([r for r in rows if "p_value" in r])
    )  # the claims are their own Holm family
    for r in rows:
        r["verdict"] = (
            "not evaluated"
            if not r["n_seeds"]
            else ("held" if r["difference"] > 0 else "contradicted")
            if r.get("resolved")
            else "not resolved"
        )
    write_json(root / "eval_claims.json", {"claims": rows})
    return rows


STAGES = {
    "benchmarks": benchmarks,
    "preference": preference,
    "generation": generation,
    "judge": judge,
    "objectives": objectives,
    "claims": claims,
}
