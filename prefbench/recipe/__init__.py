"""Recipes: YAML -> frozen dataclasses, validated in full before any model loads (choices.py: the choices and
messages; sections.py: each section's spec; spec.py: the Recipe; loading.py: YAML and overrides).

Every problem is reported in one line naming its key (`objectives[1].epsilon: ...`), and all of
them are reported together, so a user fixes a recipe in one pass.

How validation is split:
  - `_convert` checks types while it builds the specs. A value of the wrong type is one problem and
    never reaches a spec: its field keeps the default (or, for a required field, the spec is not built).
    The checks below therefore read every field without guarding its type.
  - Each spec checks its own values in `problems(at)` (`at`: where the spec sits in the recipe).
  - Checks that span sections (objective labels, claims, the judge's needs) live in `Recipe.problems()`.
  - What needs a registry or the machine (objective, reward, task, template and tracker names, files, models,
    lm-eval's task index, the judge's API key variable) lives a layer up, in prefbench/check.py, which also
    loads recipes: this module is the bottom of the package and imports nothing of prefbench but errors.
A choice is declared once, as the `Literal` type of its field (`Engine`, `Schedule`, ...); validation and
messages read it from there (`ENGINES = get_args(Engine)` for other modules).
"""

from prefbench.recipe.choices import (
    BACKENDS,
    CLAIM_METRICS,
    DTYPES,
    EMBEDDED_REWARD,
    ENGINES,
    ENV_NAME,
    FIELDS,
    FORMATS,
    JUDGE_AGAINST,
    LOCAL_HOSTS,
    PROMPT_SOURCES,
    PROMPT_SPLITS,
    SCHEDULES,
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
    PromptSource,
    PromptSplit,
    Schedule,
    Truncation,
    UnpairedView,
)
from prefbench.recipe.loading import build_datagen, build_recipe, is_datagen, read_yaml
from prefbench.recipe.sections import (
    BenchmarksSpec,
    BenchmarkTask,
    ClaimSpec,
    DataGenSpec,
    DataSource,
    DataSpec,
    EvalSpec,
    GenerationSpec,
    JudgeSpec,
    LoraSpec,
    ModelSpec,
    ObjectiveSpec,
    OnlineSpec,
    PromptSpec,
    RewardModelSpec,
    SamplingSpec,
    TrainSpec,
    Transform,
    TuneSpec,
)
from prefbench.recipe.spec import Recipe

__all__ = [
    "FORMATS",
    "SCHEDULES",
    "DTYPES",
    "ENGINES",
    "PROMPT_SPLITS",
    "JUDGE_AGAINST",
    "BACKENDS",
    "CLAIM_METRICS",
    "Backend",
    "BenchmarkTask",
    "BenchmarksSpec",
    "ClaimMetric",
    "ClaimSpec",
    "DataGenSpec",
    "DataSource",
    "DataSpec",
    "DropWhich",
    "Dtype",
    "EMBEDDED_REWARD",
    "ENV_NAME",
    "Engine",
    "EvalSpec",
    "FIELDS",
    "Format",
    "GenerationSpec",
    "JudgeAgainst",
    "JudgeSpec",
    "Kernels",
    "LOCAL_HOSTS",
    "LoraSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "OnlineSpec",
    "OnBad",
    "PROMPT_SOURCES",
    "PromptSource",
    "PromptSpec",
    "PromptSplit",
    "Recipe",
    "RewardModelSpec",
    "SamplingSpec",
    "Schedule",
    "TRANSFORMS",
    "TrainSpec",
    "Transform",
    "Truncation",
    "TuneSpec",
    "UnpairedView",
    "build_datagen",
    "build_recipe",
    "is_datagen",
    "read_yaml",
]
