"""`prefbench run` / `prefbench train`: prepare the data once, fill the reference cache once, then train
every (objective, seed) unit (evaluation: prefbench/eval/run.py). Each unit is resumable and skipped when already done, so re-running
the same command after a kill continues where it stopped."""

from __future__ import annotations

import time

import torch.distributed as dist

from prefbench import kernels, models
from prefbench.errors import TrainingError
from prefbench.recipe import Recipe
from prefbench.results import SCHEMA_VERSION, git_commit, hardware, jsonable, read_json, run_dir, versions, write_json
from prefbench.data.prepare import prepare_data
from prefbench.train import RefLogps, autocast_for, check_budget_and_fsdp, init_distributed, ref_cache_path, reference_keys, train_one


def _check_same_recipe(recipe: Recipe, manifest_path) -> None:
    if not manifest_path.exists():
        return
    stored = read_json(manifest_path)["recipe"]
    mine = jsonable(recipe.to_dict())
    differing = sorted(k for k in set(stored) | set(mine) if k not in ("eval", "claims", "report_dir") and stored.get(k) != mine.get(k))
    if differing:
        raise TrainingError(
            f"{manifest_path.parent} holds a run of a different recipe (differs in: {', '.join(differing)}); "
            "use another output_dir or name (--set name=...) to start a new run"
        )


def train_units(recipe: Recipe, labels: list[str] | None = None, seeds: list[int] | None = None) -> list[dict]:
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
        raise TrainingError(f"{root}: the training data changed since this run started (token fingerprint differs); start a new run")
    specs = [s for s in recipe.objectives if labels is None or s.label in labels]
    seeds = list(recipe.seeds if seeds is None else seeds)

    ref = RefLogps(ref_cache_path(recipe, prepared, device))
    keys = reference_keys(recipe, prepared, specs, seeds, world, device)
    ref_seconds = 0.0
    if rank == 0:
        autocast = autocast_for(recipe.train.dtype, device)
        ref_seconds = ref.ensure(keys, recipe.model.name, prepared.train, tokenizer.pad_token_id, 2 * recipe.train.micro_batch_size, device, autocast, recipe.train)
    if world > 1:
        dist.barrier()
        ref = RefLogps(ref.path)

    if rank == 0:
        previous = read_json(manifest_path) if manifest_path.exists() else {}
        write_json(
            manifest_path,
            {
                "schema_version": SCHEMA_VERSION,
                "recipe": jsonable(recipe.to_dict()),
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
