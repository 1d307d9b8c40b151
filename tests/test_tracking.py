"""Experiment tracking (train.report_to): a tiny run logged to TensorBoard, Trackio and W&B (offline), all three
writing locally; what TensorBoard and Trackio hold is read back and must be every metrics.jsonl number and the
evaluation summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prefbench.check import parse_recipe
from prefbench.errors import RecipeError

DATA = Path(__file__).parent / "data" / "paired_text.jsonl"


def _recipe(out: Path, report_to: list[str]):
    return parse_recipe(
        {
            "name": "tracked",
            "output_dir": str(out),
            "model": {"name": "tiny:small"},
            "data": {"source": str(DATA), "eval_fraction": 0.2, "max_length": 128, "max_prompt_length": 64},
            "objectives": [{"name": "dpo"}],
            "train": {"steps": 3, "batch_size": 4, "micro_batch_size": 2, "report_to": report_to},
            "seeds": [0],
        }
    )


def test_every_logged_number_reaches_tensorboard_trackio_and_wandb(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    trackio = pytest.importorskip("trackio")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    project = (
        f"prefbench-test-{tmp_path.name}-{os.getpid()}"  # Trackio's directory is the session's (tests/conftest.py)
    )
    monkeypatch.setenv("PREFBENCH_PROJECT", project)
    from prefbench.eval.run import evaluate
    from prefbench.runner import train_units

    recipe = _recipe(tmp_path / "out", ["tensorboard", "trackio", "wandb"])
    train_units(recipe)
    evaluate(recipe, ["preference"])
    unit = tmp_path / "out" / "tracked" / "dpo" / "seed0"
    rows = [json.loads(line) for line in (unit / "metrics.jsonl").read_text().splitlines()]
    numbers = {k for k, v in rows[0].items() if k != "step" and isinstance(v, (int, float))}
    accuracy = json.loads((unit / "eval_preference.json").read_text())["accuracy"]["mean"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(unit / "tensorboard")).Reload()
    assert numbers <= set(events.Tags()["scalars"])
    for key in numbers:
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows
        ]
    assert [(e.step, e.value) for e in events.Scalars("eval/preference_accuracy")] == [(3, pytest.approx(accuracy))]

    from trackio.sqlite_storage import SQLiteStorage

    logged = SQLiteStorage.get_logs(project, "tracked/dpo/seed0")
    train_logs = [entry for entry in logged if "loss" in entry]
    assert [entry["step"] for entry in train_logs] == [1, 2, 3]
    for entry, row in zip(train_logs, rows):
        assert {k: entry[k] for k in numbers} == pytest.approx({k: row[k] for k in numbers})
    assert [entry["eval/preference_accuracy"] for entry in logged if "eval/preference_accuracy" in entry] == [
        pytest.approx(accuracy)
    ]
    assert SQLiteStorage.get_logs(project, "tracked/reference")  # the reference's evaluation is a run of its own
    del trackio

    # W&B offline: on disk, to `wandb sync` later; training and the evaluation summary resume one run (one id)
    runs = list((unit / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 3)[-3:] == ["tracked", "dpo", "seed0"] for r in runs} == {True}
    assert all(list(r.glob("*.wandb")) for r in runs)


def test_nothing_is_logged_without_report_to_and_an_unknown_tracker_is_one_line(tmp_path):
    from prefbench.runner import train_units

    train_units(_recipe(tmp_path / "out", []))
    unit = tmp_path / "out" / "tracked" / "dpo" / "seed0"
    assert not (unit / "tensorboard").exists() and not (unit / "wandb").exists()
    with pytest.raises(RecipeError, match=r"train.report_to\[0\]: unknown tracker 'mlflow'"):
        _recipe(tmp_path / "x", ["mlflow"])
