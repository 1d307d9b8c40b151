"""Tuning each objective on validation prompts with one budget (recipe `tune:`, prefbench.runner.tune): the search
spaces, the checks that refuse an unfair or leaking protocol before any model loads, the expected best of n trials,
and a tuned run end to end on the tiny model, killed mid-tuning and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prefbench.check import parse_recipe
from prefbench.errors import RecipeError
from prefbench.stats import expected_max

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def recipe(out: Path, space: dict, **tune) -> dict:
    return {
        "name": "tuned",
        "output_dir": str(out),
        "report_dir": str(out / "reports"),
        "model": {"name": "tiny:small"},
        "data": {
            "source": str(REPO / "prefbench" / "data" / "embedded" / "smoke.jsonl"),
            "max_length": 128,
            "max_prompt_length": 64,
        },
        "objectives": [{"name": "dpo"}, {"name": "ipo"}],
        "train": {"steps": 3, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "save_every": 2},
        "seeds": [0],
        "eval": {
            "reward": "instructions",
            "generation": {
                "engine": "hf",
                "prompts": {"split": "heldout", "n": 6},
                "greedy": False,
                "sampling": {"n": 2, "max_tokens": 8},
                "max_model_len": 256,
            },
        },  # fmt: skip
        "tune": {"space": space, "prompts": {"split": "validation", "n": 6}, **tune},
    }


def problems(raw: dict) -> list[str]:
    with pytest.raises(RecipeError) as e:
        parse_recipe(raw)
    return e.value.problems


def test_expected_best_of_n_trials_by_hand_and_by_simulation():
    """Scores 1, 2, 3: the best of 2 draws with replacement is 1 with probability 1/9, 2 with 3/9, 3 with 5/9, so
    22/9; of 3 draws: (1 + 2 x 7 + 3 x 19) / 27 = 72/27. A simulation of the draws agrees."""
    assert expected_max([3.0, 1.0, 2.0]) == pytest.approx([2.0, 22 / 9, 72 / 27])
    scores = np.random.default_rng(0).normal(size=6)
    draws = np.random.default_rng(1).choice(scores, size=(200_000, 6))
    simulated = [draws[:, :n].max(axis=1).mean() for n in range(1, 7)]
    assert expected_max(scores) == pytest.approx(simulated, abs=0.01)
    assert np.all(np.diff(expected_max(scores)) >= 0)  # more trials never expect less


def test_the_search_space_as_trials(tmp_path):
    grid = parse_recipe(
        recipe(tmp_path, {"dpo": {"lr": ["1e-3", 2e-3], "beta": [0.1, 0.3]}, "ipo": {"lr": [1, 2, 3, 4]}})
    )
    assert grid.tune.points("dpo") == [
        {"lr": 1e-3, "beta": 0.1}, {"lr": 1e-3, "beta": 0.3}, {"lr": 2e-3, "beta": 0.1}, {"lr": 2e-3, "beta": 0.3},
    ]  # fmt: skip
    trial = grid.trials(grid.objective("dpo"))[1]
    assert (trial.label, trial.hyperparameters, trial.train) == ("dpo.t1", {"beta": 0.3}, {"lr": 1e-3})
    trials = grid.trials_recipe()
    assert trials.name == "tuned-tune" and trials.seeds == (0,) and len(trials.objectives) == 8
    assert trials.eval.generation.prompts.split == "validation" and trials.tune is None
    space = {"lr": {"low": 1e-5, "high": 1e-3, "log": True}, "beta": [0.1, 0.2]}
    drawn = parse_recipe(recipe(tmp_path, {"dpo": space, "ipo": space}, search="random", trials=5, seed=3))
    points = drawn.tune.points("dpo")
    assert len(points) == 5 and points == drawn.tune.points("dpo")  # seeded
    assert all(1e-5 <= p["lr"] <= 1e-3 and float(f"{p['lr']:.3g}") == p["lr"] for p in points)
    assert points != drawn.tune.points("ipo")  # each objective its own draws, as many of them
    counted = parse_recipe(
        recipe(tmp_path, {o: {"steps": {"low": 2, "high": 9}} for o in ("dpo", "ipo")}, search="random", trials=4)
    )
    assert all(isinstance(p["steps"], int) and 2 <= p["steps"] <= 9 for p in counted.tune.points("dpo"))


def test_a_choice_made_for_another_search_space_is_refused(tmp_path):
    from prefbench.errors import TrainingError
    from prefbench.runner import chosen

    space = {"dpo": {"lr": [1e-3, 2e-3]}, "ipo": {"lr": [1e-3, 2e-3]}}
    r = parse_recipe(recipe(tmp_path, space))
    (tmp_path / "tuned").mkdir()
    choice = {o: {"chosen": f"{o}.t1", "settings": {"lr": 2e-3}} for o in ("dpo", "ipo")}
    (tmp_path / "tuned" / "tuning.json").write_text(json.dumps({"objectives": choice}))
    assert [o.train for o in chosen(r).objectives] == [{"lr": 2e-3}, {"lr": 2e-3}]
    moved = parse_recipe(recipe(tmp_path, {"dpo": {"lr": [1e-3, 5e-3]}, "ipo": {"lr": [1e-3, 2e-3]}}))
    with pytest.raises(
        TrainingError, match=r"chose dpo.t1 = \{'lr': 0.002\} for dpo, not a trial of the recipe's tune"
    ):
        chosen(moved)


def test_check_refuses_leaking_or_unequal_tuning_in_one_line_each(tmp_path, capsys):
    from prefbench.cli import main

    space = {"dpo": {"lr": [1e-3, 2e-3]}, "ipo": {"lr": [1e-3, 2e-3]}}
    leak = recipe(tmp_path, space, prompts={"split": "heldout", "n": 6})
    assert problems(leak) == [
        "tune.prompts.split: heldout is the test prompts' split (eval.generation.prompts.split); tune on validation, "
        "whose topics the test prompts never share"
    ]
    unequal = recipe(tmp_path, {"dpo": {"lr": [1e-3, 2e-3], "beta": [0.1, 0.2]}, "ipo": {"lr": [1e-3, 2e-3]}})
    assert problems(unequal) == [
        "tune.space: unequal budgets (dpo 4 trials, ipo 2 trials): give every objective as many trials, or set "
        "tune.unequal_budgets: true (the report then says so)"
    ]
    parse_recipe({**unequal, "tune": {**unequal["tune"], "unequal_budgets": True}})  # said so: allowed
    files = []
    for name, lines in (("val", ["a", "b", "c"]), ("test", ["c", "d"])):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in lines))
    overlap = recipe(tmp_path, space, prompts={"file": str(files[0]), "n": 3})
    overlap["eval"]["generation"]["prompts"] = {"file": str(files[1]), "n": 2}
    overlap["eval"]["reward"] = "none"
    assert any(p.startswith("tune: needs eval.generation and a reward") for p in problems(overlap))
    overlap["eval"]["reward"] = "instructions"
    (path := tmp_path / "r.yaml").write_text(yaml.safe_dump(overlap))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.prompts.file: 1 of its prompts are also test prompts (eval.generation.prompts.file), e.g. 'c'" in err
    assert "import torch" not in err and "Loading" not in err  # refused before any model loads


@pytest.mark.integration
def test_a_tuned_run_chooses_on_validation_and_resumes_a_killed_tuning_without_repeating_trials(tmp_path):
    """dpo and ipo, two trials each (lr x steps): the tuning is killed in its last trial's last step, run again, and
    finishes that trial from its checkpoint without training the finished ones again; the choice is each
    objective's highest validation reward; `prefbench launch` of the recipe then makes the same choice from trials
    run as tasks, trains the chosen settings, and its report shows the trials and says how they were chosen."""
    space = {"dpo": {"lr": [1e-3], "steps": [2, 3]}, "ipo": {"lr": [1e-3], "steps": [2, 3]}}
    (path := tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(tmp_path, space)))

    def cli(*args, **env):
        out = subprocess.run(
            [str(BIN / "prefbench"), *args, str(path)], cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "TQDM_DISABLE": "1", **env}, timeout=900,
        )  # fmt: skip
        return out

    killed = cli("tune", PREFBENCH_FAULT_KILL_AT_STEP="3")  # dpo.t0 ends at step 2; dpo.t1 dies after step 3
    assert killed.returncode == -9, killed.stderr[-2000:]
    trials = tmp_path / "tuned-tune"
    assert (trials / "dpo.t0" / "seed0" / "summary.json").is_file()
    assert not (trials / "dpo.t1" / "seed0" / "summary.json").exists()
    first = (trials / "dpo.t0" / "seed0" / "summary.json").stat().st_mtime_ns
    tuned = cli("tune")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert (trials / "dpo.t0" / "seed0" / "summary.json").stat().st_mtime_ns == first  # not trained again
    assert json.loads((trials / "dpo.t1" / "seed0" / "summary.json").read_text())["resumed_from"] == "checkpoint-2"
    tuning = json.loads((tmp_path / "tuned" / "tuning.json").read_text())
    for label in ("dpo", "ipo"):
        rewards = [
            json.loads((trials / f"{label}.t{k}" / "seed0" / "eval_generation.json").read_text())["sampled"]["reward"][
                "mean"
            ]
            for k in (0, 1)
        ]
        best = f"{label}.t{int(rewards[1] > rewards[0])}"
        assert tuning["objectives"][label]["chosen"] == best
        assert f"{label:<20} chose " in tuned.stdout
    settings = json.loads((trials / "reference" / "eval_generation.json").read_text())["settings"]
    assert settings["generation"]["prompts"]["split"] == "validation"
    # the same recipe through `prefbench launch` (local processes) in a directory of its own: the trials as tasks,
    # then the choice (the one `prefbench tune` made), then the chosen units on the test prompts, and the report
    launched = tmp_path / "launched"
    (path := tmp_path / "launched.yaml").write_text(yaml.safe_dump(recipe(launched, space)))
    out = cli("launch", "--executor", "local", "--parallel", "2")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    root = launched / "tuned"
    assert json.loads((root / "tuning.json").read_text())["objectives"] == tuning["objectives"]
    for label in ("dpo", "ipo"):
        steps = tuning["objectives"][label]["settings"]["steps"]
        assert json.loads((root / label / "seed0" / "summary.json").read_text())["steps"] == steps
    test = json.loads((root / "reference" / "eval_generation.json").read_text())["settings"]["generation"]["prompts"]
    assert test["split"] == "heldout"
    report = (launched / "reports" / "tuned" / "report.md").read_text()
    assert "## Tuning trials" in report and "## Settings per objective" in report
    assert (
        "chosen by the highest validation reward among its trials (grid search, 2 trials each, one seed, 6 prompts "
        "from the task's validation split); the test prompts never informed a choice" in report
    )
    assert (launched / "reports" / "tuned" / "plots" / "expected_best.png").is_file()


def test_a_launch_plans_the_trials_then_the_choice_then_the_chosen_units(tmp_path):
    from prefbench import launch

    space = {"dpo": {"lr": [1e-3, 2e-3]}, "ipo": {"lr": [1e-3, 2e-3]}}
    (path := tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(tmp_path, space)))
    r = parse_recipe(recipe(tmp_path, space))
    waves = [[t.name for t in wave] for wave in launch.plan(str(path), [], r)]
    assert waves[:4] == [
        ["prepare trials"],
        [
            "train dpo.t0/seed0",
            "train dpo.t1/seed0",
            "train ipo.t0/seed0",
            "train ipo.t1/seed0",
            "evaluate trials reference",
        ],
        ["evaluate dpo.t0/seed0", "evaluate dpo.t1/seed0", "evaluate ipo.t0/seed0", "evaluate ipo.t1/seed0"],
        ["tune"],
    ]
    assert waves[4:6] == [["prepare"], ["train dpo/seed0", "train ipo/seed0", "evaluate reference"]]
    assert "--trials" in launch.plan(str(path), [], r)[1][0].argv


def test_own_data_tunes_on_a_validation_split_carved_by_prompt(tmp_path):
    """data.validation_fraction carves validation prompts out of what the held-out split leaves: training, validation
    and held-out (test) prompts are three disjoint sets, the held-out split is the one the recipe had without
    validation, and the trials generate from the validation prompts. check refuses the data's held-out split as
    tuning prompts, and a validation split the data does not carve."""
    from prefbench.data.load import prompt_key
    from prefbench.data.prepare import split_records
    from prefbench.eval.prompts import load_prompt_records

    space = {"dpo": {"lr": [1e-3, 2e-3]}, "ipo": {"lr": [1e-3, 2e-3]}}
    raw = recipe(tmp_path, space, prompts={"source": "data", "split": "validation", "n": 500})
    raw["data"] = {"source": "embedded:paired", "eval_fraction": 0.1, "validation_fraction": 0.2, "limit": 400}
    raw["eval"]["generation"]["prompts"] = {"source": "data", "n": 500}
    r = parse_recipe(raw)
    parts = split_records(r.data)
    keys = [{prompt_key(x["prompt"]) for x in side} for side in (parts.train, parts.held_out, parts.validation)]
    n = len(set().union(*keys))
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert (len(keys[1]), len(keys[2])) == (round(0.1 * n), round(0.2 * (n - round(0.1 * n))))
    untuned = {k: v for k, v in raw.items() if k != "tune"}
    without = split_records(parse_recipe({**untuned, "data": {**raw["data"], "validation_fraction": 0.0}}).data)
    assert without.held_out == parts.held_out and without.validation == []
    assert without.train == [x for x in parts.records if prompt_key(x["prompt"]) not in keys[1]]
    trial_prompts = load_prompt_records(r.trials_recipe().eval.generation.prompts, r.data)
    assert {prompt_key(x["prompt"]) for x in trial_prompts} == keys[2]
    test_prompts = load_prompt_records(r.eval.generation.prompts, r.data)
    assert {prompt_key(x["prompt"]) for x in test_prompts} == keys[1]

    leak = {**raw, "tune": {**raw["tune"], "prompts": {"source": "data", "n": 6}}}
    assert problems(leak) == [
        "tune.prompts.split: heldout is the test prompts' split (eval.generation.prompts.split); tune on validation "
        "(data.validation_fraction), which shares no prompt with the held-out split"
    ]
    uncarved = {**raw, "data": {**raw["data"], "validation_fraction": 0.0}}
    assert problems(uncarved) == [
        "tune.prompts.split: validation takes the data's validation prompts, but data.validation_fraction is 0"
    ]
