"""The recipe's choices, each declared once as a `Literal` (validation and messages read it from there:
`ENGINES = get_args(Engine)` for other modules), and the one-line problem messages every spec writes."""

from __future__ import annotations

import functools
import re
import typing
from typing import Any, Literal, get_args

from prefbench.errors import did_you_mean

# ---- choices, each declared once ---------------------------------------------------------------

Format = Literal["paired", "unpaired"]  # paired (prompt, chosen, rejected) | unpaired (prompt, completion, label)
Truncation = Literal["truncate", "drop"]  # too-long records: cut, or drop (counted as bad)
OnBad = Literal["fail", "drop"]  # bad records are always reported by index
Schedule = Literal["cosine", "linear", "constant"]  # after warmup
Dtype = Literal["auto", "fp32", "bf16"]  # auto: fp32 on CPU, bf16 autocast on GPU
# The trained weights' own dtype: fp32, or bf16 (weights and gradients at half the memory, AdamW's moments in fp32:
# prefbench/optimizer.py; with LoRA, the frozen base in bf16 and the adapters in fp32)
Weights = Literal["fp32", "bf16"]
# AdamW with fp32 moments (8 bytes a parameter), or bitsandbytes' 8-bit AdamW (about 2: pip install prefbench[optim])
Optimizer = Literal["adamw", "adamw_8bit"]
Kernels = Literal["auto", "liger", "compile", "none"]  # fused elementwise work on a GPU (prefbench/kernels.py)
Engine = Literal["auto", "vllm", "hf"]  # auto: vLLM where it imports, else transformers
PromptSplit = Literal[
    "train", "validation", "heldout"
]  # the embedded task's disjoint prompt sets (heldout: the test prompts)
PromptSource = Literal[
    "task", "data"
]  # the embedded task's prompts, or a split (heldout, validation) of the recipe's data
JudgeAgainst = Literal["reference", "round_robin", "dataset_chosen"]  # what prefbench.eval.judge compares with
Backend = Literal["auto", "vllm", "local-completions", "hf"]  # lm-eval backends (prefbench/eval/benchmarks.py)
ClaimMetric = Literal["reward", "greedy_reward", "entropy_per_token"]  # better's exceeds worse's
Search = Literal["grid", "random"]  # tune: every point of the space, or seeded draws from it
Select = Literal["reward", "reward_at_kl"]  # tune: the highest validation reward (at KL <= kl_cap)
UnpairedView = Literal["both", "one_per_prompt"]  # both halves of each pair | one completion per prompt (KTO paper)
DropWhich = Literal["desirable", "undesirable"]  # drop_fraction: which class loses examples
FIELDS = {  # each format's prefbench fields (data.columns maps them to the data's own column names)
    "paired": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}

FORMATS, SCHEDULES, DTYPES = get_args(Format), get_args(Schedule), get_args(Dtype)
ENGINES, PROMPT_SPLITS, JUDGE_AGAINST = get_args(Engine), get_args(PromptSplit), get_args(JudgeAgainst)
PROMPT_SOURCES = get_args(PromptSource)
BACKENDS, CLAIM_METRICS = get_args(Backend), get_args(ClaimMetric)
TRANSFORMS = {
    # name -> (format it needs, format it produces); None = either, unchanged
    "paired_to_unpaired": ("paired", "unpaired"),
    "drop_fraction": ("unpaired", "unpaired"),
    "flip_labels": (None, None),
}
EMBEDDED_REWARD = "instructions"  # the embedded task's reward (prefbench.eval.rewards.InstructionReward): the default
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # a judge here needs no API key
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---- messages ------------------------------------------------------------------------------------


def _not_one_of(path: str, value: Any, choices: tuple) -> str:
    return f"{path}: must be one of {list(choices)}, got {value!r}{did_you_mean(value, choices)}"


def _unknown(path: str, what: str, value: Any, known: typing.Iterable) -> str:
    return f"{path}: unknown {what} {value!r}{did_you_mean(value, known)}; known: {', '.join(map(str, known))}"


def _unknown_key(path: str, key: str, known: list[str]) -> str:
    return f"{path}{key}: unknown key{did_you_mean(key, known)}"


def _at_least(path: str, value: float | None, low: float, note: str = "") -> list[str]:
    return [f"{path}: must be >= {low}{note}, got {value}"] if value is not None and value < low else []


def _fraction(path: str, value: float, *, upper_open: bool = True) -> list[str]:
    ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
    return [] if ok else [f"{path}: must be in [0, 1{')' if upper_open else ']'}, got {value}"]


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, bool, tuple], ...]:
    """(field, is a tuple of choices, the choices) for each field typed Literal or tuple[Literal, ...]."""
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        many = typing.get_origin(tp) is tuple
        inner = get_args(tp)[0] if many else tp
        if typing.get_origin(inner) is Literal:
            out.append((name, many, get_args(inner)))
    return tuple(out)


def _choice_problems(spec: Any, at: str) -> list[str]:
    """Every Literal-typed field of `spec` against its declared choices."""
    out = []
    for name, many, choices in _literal_fields(type(spec)):
        value = getattr(spec, name)
        items = [(f"{at}.{name}[{i}]", v) for i, v in enumerate(value)] if many else [(f"{at}.{name}", value)]
        out += [_not_one_of(path, v, choices) for path, v in items if v not in choices]
    return out
