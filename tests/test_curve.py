"""Evaluation over training (train.snapshot_every, the curve stage): the weights kept at a step are those a run
that stops at that step ends with, they are evaluated as a final checkpoint is, and the report draws the curves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefbench.cli import main
from prefbench.results import load_run

pytestmark = pytest.mark.integration  # whole recipes trained and evaluated through the CLI


def _run(tmp_path, name: str, steps: int, snapshot_every: int = 0):
    overrides = [
        "--set", f"output_dir={tmp_path}", "--set", f"report_dir={tmp_path / 'reports'}", "--set", f"name={name}",
        "--set", "eval.generation.engine=hf", "--set", "objectives=[{name: dpo}]", "--set", "train.schedule=constant",
        "--set", f"train.steps={steps}", "--set", f"train.snapshot_every={snapshot_every}",
    ]  # fmt: skip
    assert main(["run", "recipes/tiny_smoke.yaml", *overrides]) == 0
    return tmp_path / name


def test_snapshots_are_the_weights_of_a_shorter_run_and_are_evaluated_like_it(tmp_path):
    """At a constant learning rate a 4-step run's step-2 snapshot is the 2-step run's final checkpoint, to the bit,
    and the curve stage's evaluation of it is the generation stage's of that checkpoint."""
    long, short = _run(tmp_path, "long", 4, snapshot_every=2), _run(tmp_path, "short", 2)
    snapshot = long / "dpo" / "seed0" / "snapshots" / "step-2"
    assert sorted(p.name for p in snapshot.parent.iterdir()) == ["step-2"]  # step 4 is the final checkpoint
    mine, theirs = (
        load_file(snapshot / "model.safetensors"),
        load_file(short / "dpo" / "seed0" / "final" / "model.safetensors"),
    )
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    curve = json.loads((snapshot / "eval_generation.json").read_text())
    final = json.loads((short / "dpo" / "seed0" / "eval_generation.json").read_text())
    assert curve["settings"] == final["settings"] and curve["unit"] == "dpo/seed0@2"
    for key in ("kl", "entropy_per_token"):
        got, want = curve.get(key) or curve["sampled"][key], final.get(key) or final["sampled"][key]
        assert got["mean"] == pytest.approx(want["mean"], abs=1e-9)
    assert curve["sampled"]["reward"]["mean"] == final["sampled"]["reward"]["mean"]
    # held-out preferences over training: the snapshot's are the shorter run's final checkpoint's
    held = json.loads((snapshot / "eval_preference.json").read_text())
    want = json.loads((short / "dpo" / "seed0" / "eval_preference.json").read_text())
    assert held["settings"] == want["settings"] and held["pairs"] == want["pairs"] >= 1
    for key in ("accuracy", "margin"):
        assert held[key]["mean"] == pytest.approx(want[key]["mean"], abs=1e-6)
    unit = next(u for u in load_run(long).units if u.name == "dpo/seed0")
    assert sorted(unit.snapshots) == [2]
    assert unit.snapshots[2]["preference"]["accuracy"] == held["accuracy"]
    assert (tmp_path / "reports" / "long" / "plots" / "over_training.png").is_file()
    # the objectives stage estimates each step's metrics across seeds (one seed here: over prompts), the report shows
    over = json.loads((long / "eval_objectives.json").read_text())["over_training"]["dpo"]
    assert list(over) == ["2", "4"] and over["2"]["reward"]["difference"] == curve["sampled"]["reward"]["mean"]
    assert "## Over training" in (tmp_path / "reports" / "long" / "report.md").read_text()
    assert "over_training" not in [p.stem for p in (tmp_path / "reports" / "short" / "plots").iterdir()]
    # the stage alone, again: everything is stored, nothing is generated twice
    args = ["--set", f"output_dir={tmp_path}", "--set", "name=long", "--set", "eval.generation.engine=hf",
            "--set", "objectives=[{name: dpo}]", "--set", "train.schedule=constant", "--set", "train.steps=4",
            "--set", "train.snapshot_every=2"]  # fmt: skip
    before = [(snapshot / f).stat().st_mtime_ns for f in ("eval_generation.json", "eval_preference.json")]
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *args, "--stage", "curve"]) == 0
    assert [(snapshot / f).stat().st_mtime_ns for f in ("eval_generation.json", "eval_preference.json")] == before
