"""`prefbench run` / `prefbench train`: prepare the data once, fill the reference cache once, then train
every (objective, seed) unit. Each unit is resumable and skipped when already done, so re-running
the same command after a kill continues where it stopped."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch.distributed as dist
from tqdm.auto import tqdm

from prefbench import models
from prefbench.errors import TrainingError
from prefbench.recipe import Recipe
from prefbench.results import SCHEMA_VERSION, git_commit, hardware, read_json, run_dir, versions, write_json
from prefbench.train import RefLogps, autocast_for, check_budget_and_fsdp, init_distributed, prepare_data, ref_cache_path, reference_keys, train_one


def _check_same_recipe(recipe: Recipe, manifest_path) -> None:
    if not manifest_path.exists():
        return
    stored = read_json(manifest_path)["recipe"]
    mine = _jsonable(recipe.to_dict())
    differing = sorted(k for k in set(stored) | set(mine) if k not in ("eval", "claims", "report_dir") and stored.get(k) != mine.get(k))
    if differing:
        raise TrainingError(
            f"{manifest_path.parent} holds a run of a different recipe (differs in: {', '.join(differing)}); "
            "use another output_dir or name (--set name=...) to start a new run"
        )


def _jsonable(value):
    import json

    return json.loads(json.dumps(value, default=str))


def train_units(recipe: Recipe, labels: list[str] | None = None, seeds: list[int] | None = None) -> list[dict]:
    started = time.time()
    # Build or convert the model before the process group exists: under torchrun, transformers'
    # save_pretrained writes nothing on ranks other than 0, and any rank may win the build lock.
    models.resolve(recipe.model.name)
    rank, world, device = init_distributed()
    check_budget_and_fsdp(recipe, world)  # before the reference pass, which can take long
    root = run_dir(recipe)
    manifest_path = root / "manifest.json"
    _check_same_recipe(recipe, manifest_path)
    tokenizer = models.load_tokenizer(recipe.model.name)
    prepared = prepare_data(recipe, tokenizer)
    if manifest_path.exists() and read_json(manifest_path)["data"]["fingerprint"] != prepared.fingerprint:
        raise TrainingError(f"{root}: the training data changed since this run started (token fingerprint differs); start a new run")
    specs = [s for s in recipe.objectives if labels is None or s.label in labels]
    seeds = list(recipe.seeds if seeds is None else seeds)

    ref = RefLogps(ref_cache_path(recipe, prepared, device))
    keys = reference_keys(recipe, prepared, specs, seeds, world)
    ref_seconds = 0.0
    if rank == 0:
        autocast = autocast_for(recipe.train.dtype, device)
        ref_seconds = ref.ensure(keys, recipe.model.name, prepared.train, tokenizer.pad_token_id, 2 * recipe.train.micro_batch_size, device, autocast)
    if world > 1:
        dist.barrier()
        ref = RefLogps(ref.path)

    if rank == 0:
        previous = read_json(manifest_path) if manifest_path.exists() else {}
        write_json(
            manifest_path,
            {
                "schema_version": SCHEMA_VERSION,
                "recipe": _jsonable(recipe.to_dict()),
                "versions": versions(),
                "git_commit": git_commit(),
                "hardware": {**hardware(), "world_size": world, "device": str(device)},
                "model": models.describe(recipe.model.name),
                "data": {"format": prepared.fmt, "fingerprint": prepared.fingerprint, "train_examples": len(prepared.train), "eval_examples": len(prepared.eval), **prepared.report},
                "reference_cache": str(ref.path),
                "timings": {**previous.get("timings", {}), "reference_seconds": previous.get("timings", {}).get("reference_seconds", 0.0) + ref_seconds},
            },
        )
    summaries = [train_one(recipe, spec, seed, prepared, ref) for spec in specs for seed in seeds]
    if rank == 0:
        manifest = read_json(manifest_path)
        manifest["timings"]["last_invocation_seconds"] = time.time() - started
        write_json(manifest_path, manifest)
    return summaries


def evaluate_units(recipe: Recipe) -> dict[str, dict]:
    """Generation metrics for the reference and every trained objective x seed, on the same prompts.

    Writes <run>/reference/eval_generation.json and <run>/<label>/seed<k>/eval_generation.json. A file
    whose settings match is kept (re-running only re-reads); generations come from the generation cache.
    """
    from prefbench.data.onpolicy import load_prompts
    from prefbench.eval.generate import generate, prompt_ids, standard_samplings
    from prefbench.eval.metrics import METRICS_VERSION, evaluate_checkpoint, load_for_eval
    from prefbench.eval.rewards import REWARDS

    root = run_dir(recipe)
    if recipe.eval.benchmarks is not None:
        benchmark_units(recipe, root)
    g = recipe.eval.generation
    if g is None:
        return {}
    prompts = load_prompts(g.prompts)
    sp = g.sampling
    samplings = standard_samplings(sp.n, sp.max_tokens, sp.temperature, sp.top_p, sp.seed, greedy=g.greedy)
    reward_cls = REWARDS[recipe.eval.reward]
    generation = dataclasses.asdict(g)
    if g.greedy:  # the default, as before the switch existed: earlier results stay comparable
        del generation["greedy"]
    settings = _jsonable({"metrics_version": METRICS_VERSION, "generation": generation, "reward": recipe.eval.reward, "reward_version": getattr(reward_cls, "version", None),
                          "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()})
    reference = models.resolve(recipe.model.name)
    units = _eval_units(recipe, root)
    done = {name: read_json(d / "eval_generation.json") for name, (_, d) in units.items()
            if (d / "eval_generation.json").is_file() and read_json(d / "eval_generation.json").get("settings") == settings}
    todo = {name: u for name, u in units.items() if name not in done}
    if not todo and recipe.eval.judge is None:
        return done
    # Everything the judge needs too; what is cached costs no engine start.
    paths = [path for path, _ in units.values()] if recipe.eval.judge else [reference] + [p for n, (p, _) in todo.items() if n != "reference"]
    vllm_options = {k: v for k, v in (("tensor_parallel_size", g.tensor_parallel_size), ("gpu_memory_utilization", g.gpu_memory_utilization)) if v}
    gens, stats = generate(paths, prompts, samplings, engine=g.engine, max_model_len=g.max_model_len, vllm_options=vllm_options)
    reward = reward_cls()
    if todo:
        ids = prompt_ids(models.load_tokenizer(recipe.model.name), prompts)
        ref_model = load_for_eval(reference)
        # the policy's and the reference's log-probs of the policy's samples (KL, entropy): minutes on a CPU
        for name, (path, out) in tqdm(todo.items(), desc="KL and entropy", unit="checkpoint"):
            metrics = evaluate_checkpoint(path, reference, prompts, ids, gens[str(path)], gens[str(reference)], samplings, reward, ref_model)
            done[name] = {"settings": settings, "unit": name, "engine": stats.engine, "fallback_reason": stats.fallback_reason, **metrics}
            write_json(out / "eval_generation.json", done[name])
    if recipe.eval.judge is not None:
        judge_run(recipe, root, prompts, {name: gens[str(path)]["sampled"] for name, (path, _) in units.items()}, reward, settings)
    return done


def _eval_units(recipe: Recipe, root: Path) -> dict[str, tuple[Path, Path]]:
    """{"reference" | "<label>/seed<k>": (checkpoint, directory for its evaluation results)}."""
    units = {"reference": (models.resolve(recipe.model.name), root / "reference")}
    for spec in recipe.objectives:
        for seed in recipe.seeds:
            final = root / spec.label / f"seed{seed}" / "final"
            if not (final / "config.json").is_file():
                raise TrainingError(f"{final}: no trained checkpoint to evaluate (run `prefbench run` to train it)")
            units[f"{spec.label}/seed{seed}"] = (final, final.parent)
    return units


def benchmark_units(recipe: Recipe, root: Path) -> dict[str, dict]:
    """lm-eval tasks on the reference and every checkpoint (<unit dir>/benchmarks/), then each checkpoint
    against the reference on the same documents (<unit dir>/benchmarks/vs_reference.json: paired tests)."""
    from prefbench.eval.benchmarks import compare, doc_metrics, result_name, run_benchmarks

    spec = recipe.eval.benchmarks
    units = _eval_units(recipe, root)
    for name, (path, out) in units.items():
        run_benchmarks(spec, path, out / "benchmarks")
    ref_dir = units["reference"][1] / "benchmarks"
    paired = {}
    for name, (_, out) in units.items():
        if name == "reference":
            continue
        paired[name] = {f"{result_name(t)} {metric}": compare(out / "benchmarks", ref_dir, result_name(t), metric)
                        for t in spec.tasks for metric in doc_metrics(ref_dir, result_name(t))}
        write_json(out / "benchmarks" / "vs_reference.json", paired[name])
    return paired


def judge_run(recipe: Recipe, root, prompts: list[str], sampled: dict, reward, generation_settings: dict) -> dict:
    """Judge the units' sampled answers as recipe.eval.judge asks; writes <run>/eval_judge.json.

    Verdicts come from the judge's cache when known, so re-running costs only new pairs. A budget stop is
    recorded in the file (with the comparisons it could not finish left out) rather than failing the run.
    """
    from prefbench.eval.judge import JudgeBudgetError, judge_units

    spec = recipe.eval.judge
    answers = {name: [[c.text for c in comps] for comps in per_prompt] for name, per_prompt in sampled.items()}
    rewards = None
    if recipe.eval.reward == "instructions":  # ground truth exists: measure the judge against it
        rewards = {name: [[reward(p, t) for t in texts] for p, texts in zip(prompts, per_prompt)] for name, per_prompt in answers.items()}
    chosen = None
    if recipe.eval.generation.prompts.file:  # prompts from a file may carry the dataset's chosen response
        records = [json.loads(line) for line in Path(recipe.eval.generation.prompts.file).read_text().splitlines() if line.strip()]
        chosen = [r.get("chosen") for r in records[: len(prompts)]]
        chosen = chosen if all(isinstance(c, str) for c in chosen) else None
    out = {"settings": _jsonable({"judge": dataclasses.asdict(spec), "generation": generation_settings})}
    try:
        result = judge_units(spec, prompts, answers, "reference", chosen, rewards)
        out["dry_run" if "dry_run" in result else "comparisons"] = result.get("dry_run", result)
    except JudgeBudgetError as stop:
        out["stopped"] = str(stop)
    if "dry_run" in out:
        d = out["dry_run"]
        print(f"judge dry run: {d['to_make']} calls to make ({d['cached']} cached), ~{d['prompt_tokens_est']} prompt tokens, "
              f"<= {d['completion_tokens_max']} completion tokens, estimated cost ${d['cost_usd_est']:.4f}")
    write_json(root / "eval_judge.json", out)
    return out
