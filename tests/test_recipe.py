"""Recipe validation: every problem is one clear line, all are reported at once, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prefbench.cli import main as cli_main
from prefbench.recipe import RecipeError, load_datagen, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def base(tmp_path: Path, **changes) -> dict:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    body = {"name": "t", "model": {"name": "tiny:small"}, "data": {"source": str(data)}, "objectives": [{"name": "dpo"}], "train": {"steps": 2}}
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
    assert problems(tmp_path, train__gradient_checkpointing="yes") == ["train.gradient_checkpointing: expected bool, got str 'yes'"]
    assert problems(tmp_path, seeds=3) == ["seeds: expected a list, got int 3"]


def test_objective_errors(tmp_path):
    assert problems(tmp_path, objectives=[{"name": "kot"}]) == [
        "objectives[0] (kot): unknown objective 'kot' (did you mean 'kto'?); `prefbench objectives` lists them"
    ]
    assert problems(tmp_path, objectives=[{"name": "cdpo", "epsilon": 0.7}]) == ["objectives[0] (cdpo): CDPO: epsilon must be in [0.0, 0.5], got 0.7"]
    assert problems(tmp_path, objectives=[{"name": "dpo", "beta": 0}]) == ["objectives[0] (dpo): DPO: beta must be > 0, got 0.0"]
    assert problems(tmp_path, objectives=[{"name": "dpo", "label": "a"}, {"name": "ipo", "label": "a"}]) == [
        "objectives: label 'a' is used twice; give each entry a distinct `label`"
    ]


def test_paired_objective_on_unpaired_data(tmp_path):
    assert problems(tmp_path, data__format="unpaired") == [
        "objectives[0] (dpo): needs paired data, but data.format is unpaired; pairs cannot be rebuilt from unpaired feedback"
    ]
    out = problems(tmp_path, data__transforms=[{"name": "paired_to_unpaired"}], objectives=[{"name": "kto"}, {"name": "ipo"}])
    assert out == ["objectives[1] (ipo): needs paired data, but the transforms make it unpaired; pairs cannot be rebuilt from unpaired feedback"]
    # an unpaired objective on paired data is fine: it sees the recorded unpaired view
    load_recipe(write(tmp_path, base(tmp_path, objectives=[{"name": "kto"}, {"name": "dpo"}])))


def test_transform_order_and_ranges(tmp_path):
    out = problems(tmp_path, data__transforms=[{"name": "drop_fraction", "fraction": 1.5}], objectives=[{"name": "kto"}])
    assert out == [
        "data.transforms[0] (drop_fraction): needs unpaired data, but the data is paired at that point",
        "data.transforms[0].fraction: must be in [0, 1], got 1.5",
    ]


def test_missing_files(tmp_path):
    assert problems(tmp_path, data__source=str(tmp_path / "nope.jsonl")) == [f"data.source: file not found: {tmp_path / 'nope.jsonl'}"]
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_all_problems_are_reported_together(tmp_path):
    out = problems(tmp_path, ["train.warmup_ratio=2"], train__steps=0, train__batch_size=6, train__micro_batch_size=4, objectives=[{"name": "dpo", "beta": -1}])
    assert len(out) == 4, out
    assert "train.steps: must be >= 1, got 0" in out
    assert "train.batch_size: 6 is not a multiple of train.micro_batch_size 4" in out
    assert "train.warmup_ratio: must be in [0, 1), got 2.0" in out


def test_every_shipped_recipe_validates():
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        first = path.read_text().splitlines()[0]
        if first.startswith("# prefbench generate-data"):
            load_datagen(path)
            continue
        assert first.startswith("#") and "prefbench run" in first, f"{path}: the header comment must give its command"
        load_recipe(path)


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
    body = base(tmp_path, objectives=[{"name": "sppo_hard", "beta": "1e-3"}, {"name": "simpo", "gamma_beta_ratio": "5e-1"}])
    path.write_text(yaml.safe_dump(body).replace("'1e-3'", "1e-3").replace("'5e-1'", "5e-1"))
    assert yaml.safe_load(path.read_text())["objectives"][0]["beta"] == "1e-3"  # what YAML 1.1 does
    r = load_recipe(path)
    assert r.objectives[0].hyperparameters == {"beta": 0.001} and r.objectives[1].hyperparameters == {"gamma_beta_ratio": 0.5}
    assert problems(tmp_path, objectives=[{"name": "dpo", "beta": "abc"}]) == ["objectives[0] (dpo): objective 'dpo': beta must be a number, got 'abc'"]
    out = problems(tmp_path, model={"name": "tiny:small", "lora": {"r": 4}}, train__fsdp=True)
    assert out == ["train.fsdp: not supported with model.lora (merging sharded adapters is not implemented); LoRA fits one device anyway"]


def test_eval_section_is_validated(tmp_path):
    found = problems(tmp_path, eval={"reward": "instruction", "generation": {"engine": "vlm", "prompts": {"split": "test", "n": 0},
                                                                            "sampling": {"temperature": 0.0, "top_p": 1.5}}})
    text = "\n".join(found)
    assert "eval.reward: unknown reward 'instruction'" in text and "did you mean 'instructions'" in text
    assert "eval.generation.engine: must be one of ['auto', 'vllm', 'hf'], got 'vlm'" in text
    assert "eval.generation.prompts.split" in text and "eval.generation.prompts.n: must be >= 1, got 0" in text
    assert "eval.generation.sampling.temperature: must be > 0" in text and "eval.generation.sampling.top_p" in text
    assert "eval.generation.sampl: unknown key (did you mean 'sampling'?)" in problems(tmp_path, eval={"generation": {"sampl": {}}})
    assert "eval.generation.prompts.file: file not found: nope.jsonl" in problems(tmp_path, eval={"generation": {"prompts": {"file": "nope.jsonl"}}})


def test_shipped_data_sources(tmp_path):
    assert "data.source: unknown shipped dataset 'embedded:pairs'" in "\n".join(problems(tmp_path, data={"source": "embedded:pairs"}))


def test_claims_name_labels_of_the_recipe(tmp_path):
    found = problems(tmp_path, claims=[{"text": "x", "better": "dpo", "worse": "ipo", "metric": "loss"}])
    assert "claims[0].worse: 'ipo' is not an objective label of this recipe (['dpo'])" in found
    assert "claims[0].metric: must be one of ['reward', 'greedy_reward'], got 'loss'" in found
    assert "claims[0]: needs eval.generation (claims are tested on held-out task rewards)" in found


def test_greedy_pass_can_be_left_out_but_not_under_a_greedy_claim(tmp_path):
    from prefbench.eval.generate import standard_samplings

    assert [s.name for s in standard_samplings(2, 48)] == ["greedy", "sampled"]
    assert [(s.name, s.n, s.temperature) for s in standard_samplings(2, 48, greedy=False)] == [("sampled", 2, 1.0)]
    found = problems(tmp_path, eval={"reward": "instructions", "generation": {"greedy": False}},
                     claims=[{"text": "x", "better": "dpo", "worse": "reference", "metric": "greedy_reward"}])
    assert found == ["claims[0].metric: greedy_reward needs eval.generation.greedy: true"]
    assert "eval.generation.greedy: expected bool" in "\n".join(problems(tmp_path, eval={"generation": {"greedy": "no"}}))
