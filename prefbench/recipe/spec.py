"""The Recipe: every section together, and the checks that span sections (objective labels, claims, the judge's
needs, held-out prompts)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prefbench.errors import TrainingError
from prefbench.recipe.choices import EMBEDDED_REWARD
from prefbench.recipe.sections import ClaimSpec, DataSpec, EvalSpec, ModelSpec, ObjectiveSpec, TrainSpec, TuneSpec


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    objectives: tuple[ObjectiveSpec, ...] = ()
    train: TrainSpec = field(default_factory=TrainSpec)
    seeds: tuple[int, ...] = (0,)
    output_dir: str = "runs"
    report_dir: str = "reports"  # `prefbench run` renders <report_dir>/<name>/ at the end
    eval: EvalSpec = field(default_factory=EvalSpec)
    claims: tuple[ClaimSpec, ...] = ()  # stated in the report with their paired 95% CI
    tune: TuneSpec | None = None  # each objective's settings chosen on validation prompts first (runner.tune)

    def objective(self, label: str) -> ObjectiveSpec:
        for spec in self.objectives:
            if spec.label == label:
                return spec
        raise KeyError(
            f"no objective labelled {label!r} in recipe {self.name!r}; labels: {[o.label for o in self.objectives]}"
        )

    def train_for(self, spec: ObjectiveSpec) -> TrainSpec:
        """The training settings of one objective: the run's, with the objective's own (its entry's `train`)."""
        return dataclasses.replace(self.train, **spec.train)

    def trials(self, spec: ObjectiveSpec) -> list[ObjectiveSpec]:
        """The tuning trials of one objective: its entry at each point of its search space (TuneSpec.points), the
        training settings of a point in its `train`, the rest among its hyperparameters; labelled <label>.t<k>."""
        out = []
        for k, point in enumerate(self.tune.points(spec.label) if self.tune else []):
            train = {key: v for key, v in point.items() if key in TrainSpec.PER_OBJECTIVE}
            hp = {key: v for key, v in point.items() if key not in train}
            out.append(
                dataclasses.replace(
                    spec,
                    label=f"{spec.label}.t{k}",
                    hyperparameters={**spec.hyperparameters, **hp},
                    train={**spec.train, **train},
                )  # (its online training, if any, kept)
            )
        return out

    def trials_recipe(self) -> Recipe:
        """What the trials run as: every objective's trials at the tuning seed, scored on the validation prompts only
        (no judge, benchmarks or claims), in a run of their own, <name>-tune."""
        generation = dataclasses.replace(self.eval.generation, prompts=self.tune.prompts)
        return dataclasses.replace(
            self,
            name=f"{self.name}-tune",
            objectives=tuple(trial for spec in self.objectives for trial in self.trials(spec)),
            seeds=(self.tune.seed,),
            train=dataclasses.replace(self.train, snapshot_every=0),  # a trial is scored at its end only
            eval=dataclasses.replace(self.eval, generation=generation, judge=None, benchmarks=None),
            claims=(),
            tune=None,
        )

    def with_choice(self, tuning: dict) -> Recipe:
        """The recipe with each objective at the settings its tuning chose (tuning.json: runner.tune), label kept."""
        specs = []
        for spec in self.objectives:
            stored = tuning["objectives"].get(spec.label, {})
            trials = {t.label: (t, point) for t, point in zip(self.trials(spec), self.tune.points(spec.label))}
            if stored.get("chosen") not in trials or trials[stored["chosen"]][1] != stored.get("settings"):
                raise TrainingError(
                    f"{self.name}: its tuning.json chose {stored.get('chosen')} = {stored.get('settings')} for "
                    f"{spec.label}, not a trial of the recipe's tune section now; run `prefbench tune` again"
                )
            specs.append(dataclasses.replace(trials[stored["chosen"]][0], label=spec.label))
        return dataclasses.replace(self, objectives=tuple(specs))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["objectives"] = [
            {"name": o.name, "label": o.label, **o.hyperparameters, **({"train": dict(o.train)} if o.train else {})}
            | ({"online": dataclasses.asdict(o.online)} if o.online else {})  # (so a run's manifest says it)
            for o in self.objectives
        ]
        return out

    def warnings(self) -> list[str]:
        """What is valid but weak, one line each (`prefbench check` prints them; nothing is refused)."""
        if len(self.seeds) == 2:
            return [
                "seeds: two seeds give the run-to-run term few degrees of freedom, so intervals are wide and a regression gate "
                "reads little; 3 or more are recommended (`prefbench plan RUN_DIR --effect E` says how many)"
            ]
        return []

    def problems(self) -> list[str]:
        """Every section's own problems, then those that span sections (prefbench.check adds what needs a
        registry, the disk or the environment)."""
        out = self.data.problems("data") + self.model.problems("model") + self._objective_problems()
        out += self.train.problems("train") + self.eval.problems("eval")
        if not self.seeds:
            out.append("seeds: at least one seed")
        if self.train.snapshot_every and self.model.lora:
            out.append("train.snapshot_every: not with model.lora (a snapshot would need its adapters merged mid-run)")
        if self.train.snapshot_every and self.eval.generation is None:
            out.append("train.snapshot_every: needs eval.generation (the curve stage evaluates the snapshots)")
        if self.train.fsdp and self.model.lora:
            out.append(
                "train.fsdp: not supported with model.lora (merging sharded adapters is not implemented); LoRA fits one device anyway"
            )
        out += self._claim_problems() + self._judge_problems()
        return out + self._prompt_problems() + self._tune_problems()

    def _tune_problems(self) -> list[str]:
        """Trials are scored on validation prompts that the test prompts never share, by a reward."""
        if self.tune is None:
            return []
        out = self.tune.problems([o.label for o in self.objectives])
        generation, mine = self.eval.generation, self.tune.prompts
        if generation is None or self.eval.reward == "none":
            return out + [
                "tune: needs eval.generation and a reward (trials are scored by the reward on validation prompts)"
            ]
        test = generation.prompts
        if mine.file and mine.file == test.file:
            out.append(f"tune.prompts.file: {mine.file} is also the test prompts' file (eval.generation.prompts.file)")
        elif not mine.file and not test.file and mine.source == test.source and mine.split == test.split:
            out.append(
                f"tune.prompts.split: {mine.split} is the test prompts' split (eval.generation.prompts.split); tune on "
                + (
                    "validation, whose topics the test prompts never share"
                    if mine.source == "task"
                    else "validation (data.validation_fraction), which shares no prompt with the held-out split"
                )
            )
        return out

    def _objective_problems(self) -> list[str]:
        out, labels = [], [s.label for s in self.objectives]
        for dup in sorted({lab for lab in labels if labels.count(lab) > 1}):
            out.append(f"objectives: label {dup!r} is used twice; give each entry a distinct `label`")
        for i, spec in enumerate(self.objectives):  # its own settings' problems, not the run's again
            own = tuple(f"objectives[{i}].train.{key}" for key in spec.train)
            out += (
                [p for p in self.train_for(spec).problems(f"objectives[{i}].train") if p.startswith(own)] if own else []
            )
            if spec.online is not None:
                out += spec.online.problems(f"objectives[{i}].online")
                if spec.online.sampling.n < 2:
                    out.append(
                        f"objectives[{i}].online.sampling.n: at least 2 (a pair is two answers), got {spec.online.sampling.n}"
                    )
                if self.eval.reward == "none":
                    out.append(f"objectives[{i}].online: needs eval.reward (it scores the policy's answers)")
                if self.model.lora or self.train.fsdp:
                    out.append(f"objectives[{i}].online: not with model.lora or train.fsdp (one full model samples)")
        return out

    def _claim_problems(self) -> list[str]:
        out, labels, generation = [], [o.label for o in self.objectives], self.eval.generation
        for i, claim in enumerate(self.claims):
            out += claim.problems(f"claims[{i}]")
            for side in ("better", "worse"):
                value = getattr(claim, side)
                if labels and value not in labels and not (side == "worse" and value == "reference"):
                    out.append(f"claims[{i}].{side}: {value!r} is not an objective label of this recipe ({labels})")
            if generation is None:
                out.append(f"claims[{i}]: needs eval.generation (claims are tested on held-out task rewards)")
            elif self.eval.reward == "none":
                out.append(f"claims[{i}]: needs a reward (claims are tested on rewards; eval.reward is none)")
            elif claim.metric == "greedy_reward" and not generation.greedy:
                out.append(f"claims[{i}].metric: greedy_reward needs eval.generation.greedy: true")
        return out

    def _prompt_problems(self) -> list[str]:
        """Prompts from the data (the test prompts, the tuning prompts) need the split they name, held-out or
        validation, and a reward that can score them."""
        generation, tune = self.eval.generation, self.tune
        out = []
        for at, spec in (
            ("eval.generation.prompts", generation and generation.prompts),
            ("tune.prompts", tune and tune.prompts),
        ):
            if not spec or spec.source != "data":
                continue
            if spec.split == "validation" and not self.data.validation_fraction:
                out.append(
                    f"{at}.split: validation takes the data's validation prompts, but data.validation_fraction is 0"
                )
            elif spec.split == "heldout" and not self.data.eval_fraction:
                out.append(
                    f"{at}.source: data takes the data's held-out prompts, but data.eval_fraction is 0 (none held out)"
                )
            elif self.eval.reward == EMBEDDED_REWARD and not self.data.source.startswith("embedded:"):
                out.append(
                    f"eval.reward: {EMBEDDED_REWARD} scores only the embedded task's prompts, not those of "
                    f"{self.data.source or 'data.mix'}; use eval.reward: reward_model or none"
                )
        return list(dict.fromkeys(out))

    def _judge_problems(self) -> list[str]:
        """The judge compares the generation pass's sampled answers, so it needs that pass and its samples."""
        judge, generation = self.eval.judge, self.eval.generation
        if judge is None:
            return []
        if generation is None:
            return ["eval.judge: needs eval.generation (the judge compares the generation pass's sampled answers)"]
        out = []
        if "dataset_chosen" in judge.against and not generation.prompts.has_chosen():
            i = judge.against.index("dataset_chosen")
            out.append(
                f"eval.judge.against[{i}]: dataset_chosen needs the data's answers: eval.generation.prompts.source: data, "
                "or prompts.file (JSONL records with a 'chosen' response)"
            )
        if judge.samples_per_prompt > generation.sampling.n:
            out.append(
                f"eval.judge.samples_per_prompt: {judge.samples_per_prompt} is more than eval.generation.sampling.n {generation.sampling.n}"
            )
        if judge.prompts is not None and judge.prompts > generation.prompts.n:
            out.append(
                f"eval.judge.prompts: {judge.prompts} is more than eval.generation.prompts.n {generation.prompts.n}"
            )
        return out
