"""The evaluation stages as one registry (prefbench.eval.stages.STAGES): the list alone decides what `evaluate`
runs and in which order, what `--stage` accepts, whether `prefbench launch` plans per-unit evaluation tasks, and
what the finished-unit check asks of each unit. A stage planted in the list reaches all four."""

import dataclasses
from pathlib import Path

import pytest

from prefbench import launch
from prefbench.check import parse_recipe
from prefbench.errors import TrainingError
from prefbench.eval import run, stages
from prefbench.eval.stages.base import Stage

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path, **eval_section):
    return parse_recipe({
        "name": "stages", "output_dir": str(tmp_path), "model": {"name": "tiny:small"},
        "data": {"source": str(ROOT / "prefbench/data/embedded/smoke.jsonl"), "eval_fraction": 0.0, "max_length": 128,
                 "max_prompt_length": 64},
        "objectives": [{"name": "dpo"}], "seeds": [0], "eval": eval_section,
    })  # fmt: skip


def test_the_list_orders_the_stages_and_each_declares_whether_the_recipe_wants_it(tmp_path):
    assert [s.name for s in stages.STAGES] == [
        "benchmarks",
        "preference",
        "generation",
        "curve",
        "judge",
        "objectives",
        "claims",
    ]
    assert [s.name for s in stages.STAGES if s.per_unit] == ["benchmarks", "preference", "generation", "curve"]
    assert all(s.done is not None for s in stages.STAGES if s.per_unit)
    assert run.stages(_recipe(tmp_path)) == []  # no generation, no held-out split, nothing else asked for
    with_generation = _recipe(tmp_path, generation={"prompts": {"n": 4}})
    assert [s.name for s in run.stages(with_generation)] == ["generation", "objectives"]
    with_snapshots = dataclasses.replace(
        with_generation, train=dataclasses.replace(with_generation.train, snapshot_every=4)
    )
    assert [s.name for s in run.stages(with_snapshots)] == ["generation", "curve", "objectives"]


def test_a_planted_stage_is_run_accepted_by_stage_planned_by_launch_and_checked_per_unit(tmp_path, monkeypatch):
    calls = []
    planted = Stage(
        "planted", "<run>/planted.json", wanted=lambda recipe: True,
        run=lambda recipe, names=None: calls.append(names) or {},
        per_unit=True, done=lambda recipe: lambda unit: unit.name == "reference",
    )  # fmt: skip
    monkeypatch.setattr(stages, "STAGES", [*stages.STAGES, planted])
    monkeypatch.setattr(run, "STAGES", stages.STAGES)
    recipe = _recipe(tmp_path)

    assert run.evaluate(recipe) == {} and calls == [None]  # the run-wide call
    assert run.evaluate(recipe, only=["planted"]) == {} and calls == [None, None]
    with pytest.raises(TrainingError, match="--stage generation: not a stage this recipe asks for; it has planted"):
        run.evaluate(recipe, only=["generation"])

    waves = launch.plan("recipe.yaml", [], recipe, done=set())
    assert [t.name for t in waves[1] + waves[2]] == ["train dpo/seed0", "evaluate reference", "evaluate dpo/seed0"]

    (tmp_path / "stages" / "reference").mkdir(parents=True)  # the reference is always present; dpo/seed0 untrained
    assert run.finished_units(recipe, ["reference", "dpo/seed0"]) == ["reference"]
