"""The training stages: `prefbench prepare` (resolve the model, tokenize the data, fill the reference cache for
every unit, write the manifest) and `prefbench train` / `prefbench run` (prepare what is missing, then train
each (objective, seed) unit; evaluation: prefbench/eval/run.py). Each unit is resumable and skipped when already
done, so re-running the same command after a kill continues where it stopped. Units that run at the same time
(prefbench launch) share nothing they rewrite: the manifest is written once, and each invocation's timings go to
its own unit's timings.jsonl (results.record_timing)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import torch.distributed as dist
from filelock import FileLock  # a dependency of huggingface_hub

from prefbench import kernels, models
from prefbench.data.prepare import Prepared, prepare_data
from prefbench.device import autocast_for, init_distributed
from prefbench.errors import TrainingError
from prefbench.eval.run import evaluate
from prefbench.metric_table import METRICS
from prefbench.online import OnlineRounds
from prefbench.recipe import OnlineSpec, Recipe
from prefbench.reference import RefLogps, ref_cache_path, reference_keys
from prefbench.results import (
    SCHEMA_VERSION,
    Run,
    git_commit,
    hardware,
    jsonable,
    load_run,
    objective_dir,
    read_json,
    record_timing,
    run_dir,
    versions,
    write_json,
)
from prefbench.stats import expected_max
from prefbench.train import check_budget_and_fsdp, train_one


def _check_same_recipe(recipe: Recipe, manifest_path) -> None:
    if not manifest_path.exists():
        return
    stored = read_json(manifest_path)["recipe"]
    mine = jsonable(recipe.to_dict())
    # a setting added to prefbench since the run started is read at its default (a section's keys one level down)
    defaults = jsonable(Recipe(name=recipe.name).to_dict())
    stored = {
        k: {**defaults[k], **stored[k]}
        if isinstance(stored.get(k), dict) and isinstance(defaults.get(k), dict)
        else stored.get(k, defaults.get(k))
        for k in set(stored) | set(defaults)
    }
    online = jsonable(dataclasses.asdict(OnlineSpec()))  # and an objective's online entry's
    stored["objectives"] = [
        {**o, "online": {**online, **o["online"]}} if isinstance(o, dict) and o.get("online") else o
        for o in stored.get("objectives") or []
    ]
    differing = sorted(
        k
        for k in set(stored) | set(mine)
        if k not in ("eval", "claims", "report_dir", "output_dir") and stored.get(k) != mine.get(k)
    )
    if differing:
        raise TrainingError(
            f"{manifest_path.parent} holds a run of a different recipe (differs in: {', '.join(differing)}); "
            "use another output_dir or name (--set name=...) to start a new run"
        )


def prepare(
    recipe: Recipe, labels: list[str] | None = None, seeds: list[int] | None = None
) -> tuple[Prepared, RefLogps]:
    """The tokenized data and the reference log-probs every (objective, seed) unit asked for will read, computed
    where missing (under torchrun, each rank its share: reference.RefLogps.ensure); the manifest written if the run
    has none. The reference pass's time goes to <run>/reference/timings.jsonl."""
    started = time.time()
    # Build or convert the model before the process group exists: under torchrun, transformers'
    # save_pretrained writes nothing on ranks other than 0, and any rank may win the build lock.
    models.resolve(recipe.model.name)
    rank, world, device = init_distributed()
    check_budget_and_fsdp(recipe, world)  # before the reference pass, which can take long
    kernels.check(recipe.train.kernels, device)
    root = run_dir(recipe)
    manifest_path = root / "manifest.json"
    _check_same_recipe(recipe, manifest_path)
    tokenizer = models.load_tokenizer(recipe.model.name)
    prepared = prepare_data(recipe, tokenizer)
    if manifest_path.exists() and read_json(manifest_path)["data"]["fingerprint"] != prepared.fingerprint:
        raise TrainingError(
            f"{root}: the training data changed since this run started (token fingerprint differs); start a new run"
        )
    specs, seeds = _selected(recipe, labels, seeds)
    ref = RefLogps(ref_cache_path(recipe, prepared, device))
    keys = reference_keys(recipe, prepared, specs, seeds, world)
    autocast = autocast_for(recipe.train.dtype, device)
    ref_seconds, computed = ref.ensure(
        keys,
        recipe.model.name,
        prepared.train,
        tokenizer.pad_token_id,
        2 * recipe.train.micro_batch_size,
        device,
        autocast,
        recipe.train,
    )
    if world > 1:
        dist.barrier()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(manifest_path) + ".lock"):  # units started together: the first writes it, once
            if not manifest_path.exists():
                write_json(
                    manifest_path,
                    {
                        "schema_version": SCHEMA_VERSION,
                        "created": datetime.now(UTC).isoformat(timespec="seconds"),
                        "recipe": jsonable(recipe.to_dict()),
                        "versions": versions(),
                        "git_commit": git_commit(),
                        "hardware": {**hardware(), "world_size": world, "device": str(device)},
                        "model": models.describe(recipe.model.name),
                        "data": {
                            "format": prepared.fmt,
                            "fingerprint": prepared.fingerprint,
                            "train_examples": len(prepared.train),
                            "eval_examples": len(prepared.eval),
                            **prepared.report,
                        },
                    },
                )
        if computed:
            record_timing(
                root / "reference",
                "reference pass",
                time.time() - started,
                device,
                world,
                rows=computed,
                seconds_in_pass=ref_seconds,
            )
    return prepared, ref


def train_units(recipe: Recipe, labels: list[str] | None = None, seeds: list[int] | None = None) -> list[dict]:
    """Train the asked (objective, seed) units of the recipe (every one by default) after prepare; returns their
    summaries."""
    prepared, ref = prepare(recipe, labels, seeds)
    specs, seeds = _selected(recipe, labels, seeds)
    return [_train_one(recipe, spec, seed, prepared, ref) for spec in specs for seed in seeds]


def _train_one(recipe: Recipe, spec, seed: int, prepared: Prepared, ref: RefLogps | None) -> dict:
    """One unit; a semi-online one with its rounds (and their vLLM engine, if any, stopped after it)."""
    if spec.online is None:
        return train_one(recipe, spec, seed, prepared, ref)
    rounds = OnlineRounds(recipe, spec, seed, prepared, objective_dir(recipe, spec.label, seed))
    try:
        return train_one(recipe, spec, seed, prepared, ref, rounds)
    finally:
        rounds.close()


def _selected(recipe: Recipe, labels: list[str] | None, seeds: list[int] | None) -> tuple[list, list[int]]:
    """The recipe's objectives with the asked labels and the asked seeds (every one where None)."""
    return [s for s in recipe.objectives if labels is None or s.label in labels], list(
        recipe.seeds if seeds is None else seeds
    )


# ---- tuning: each objective's settings chosen on validation prompts, on one budget ----------------------------------


def tune(recipe: Recipe) -> Recipe:
    """The recipe's trials (Recipe.trials_recipe: every objective's, one seed, the validation prompts) trained and
    evaluated as a run of their own, <name>-tune, resumable and cached like any run; the choice of each objective's
    settings by the recipe's rule, written to the run's tuning.json (the report's tuning section reads it); returns
    the recipe with each objective at its chosen settings, to train with the recipe's seeds and compare on the test
    prompts."""
    trials = recipe.trials_recipe()
    train_units(trials)
    evaluate(trials)
    tuning = select(recipe, load_run(run_dir(trials)))
    root = run_dir(recipe)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "tuning.json", tuning)
    return recipe.with_choice(tuning)


def select(recipe: Recipe, trials: Run) -> dict:
    """Each objective's trials with their validation reward and KL, and the one the rule picks: the highest reward
    (select: reward) or the highest reward among trials at KL <= kl_cap (reward_at_kl); ties go to the earlier
    trial. With the expected best validation reward after 1..N trials (stats.expected_max)."""
    t, reward, kl = recipe.tune, METRICS["reward"], METRICS["kl"]
    units = {u.label: u for u in trials.units if u.name != "reference"}
    out = {
        "rule": t.select, "kl_cap": t.kl_cap, "search": t.search, "seed": t.seed, "unequal_budgets": t.unequal_budgets,
        "prompts": jsonable(dataclasses.asdict(t.prompts)), "trial_run": str(trials.root), "objectives": {},
    }  # fmt: skip
    for spec in recipe.objectives:
        rows = []
        for trial, point in zip(recipe.trials(spec), t.points(spec.label)):
            u = units.get(trial.label)
            if u is None or u.generation is None:
                raise TrainingError(
                    f"tuning: trial {trial.label} has no evaluation in {trials.root}; run the recipe again"
                )
            rows.append(
                {
                    "label": trial.label, "settings": point, "reward": reward.estimate(u.generation),
                    "kl": kl.mean(u.generation), "health": [f["code"] for f in u.summary.get("health", [])],
                }
            )  # fmt: skip
        eligible = [r for r in rows if t.select == "reward" or (r["kl"] is not None and r["kl"] <= t.kl_cap)]
        if not eligible:
            raise TrainingError(
                f"tuning: no trial of {spec.label} stays within tune.kl_cap {t.kl_cap} (its lowest KL: "
                f"{min((r['kl'] for r in rows if r['kl'] is not None), default=float('nan')):.3f}); raise the cap or "
                "search lower learning rates"
            )
        chosen = max(eligible, key=lambda r: r["reward"]["mean"])  # max keeps the first of equal ones
        out["objectives"][spec.label] = {
            "trials": rows,
            "chosen": chosen["label"],
            "settings": chosen["settings"],
            "expected_best": expected_max([r["reward"]["mean"] for r in rows]),
        }
    return out


def chosen(recipe: Recipe) -> Recipe:
    """A recipe with a tune section at the settings its tuning chose (`prefbench train` and `evaluate` of one of its
    units); refused before the tuning has run."""
    if recipe.tune is None:
        return recipe
    path = run_dir(recipe) / "tuning.json"
    if not path.is_file():
        raise TrainingError(
            f"{recipe.name}: tune first (`prefbench tune` or `prefbench run` on the recipe): no {path} holds its choice"
        )
    return recipe.with_choice(read_json(path))
