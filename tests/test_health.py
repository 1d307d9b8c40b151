"""Training health (prefbench/health.py): runs made to show each finding, on the tiny model, and the thresholds
on records built by hand (a likelihood displacement, a gradient spike, a KL that explodes or reads negative)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import prefbench.train
from prefbench.check import parse_recipe
from prefbench.cli import main
from prefbench.health import generation_findings, training_findings
from prefbench.runner import train_units

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "prefbench" / "data" / "embedded" / "smoke.jsonl"


def recipe(out: Path, objectives, **train) -> dict:
    return {
        "name": "h",
        "output_dir": str(out),
        "model": {"name": "tiny:small"},
        "data": {"source": str(DATA), "eval_fraction": 0.1, "max_length": 128, "max_prompt_length": 64},
        "objectives": objectives,
        "train": {"steps": 6, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, **train},
        "seeds": [0],
    }


def health(out: Path, label: str) -> list[dict]:
    return json.loads((out / "h" / label / "seed0" / "summary.json").read_text())["health"]


def test_a_healthy_run_has_no_findings_and_a_broken_reference_is_named(tmp_path, monkeypatch, capsys):
    """The reference log-probs replaced by the policy's own at every step (trl#1962: the reference computed from the
    model being trained): DPO's loss stays at ln 2 and its rewards at 0; the same run with the real reference is
    healthy."""
    train_units(parse_recipe(recipe(tmp_path / "ok", [{"name": "dpo"}, {"name": "kto"}])))
    assert health(tmp_path / "ok", "dpo") == health(tmp_path / "ok", "kto") == []

    real = prefbench.train._objective_batch

    class FollowsThePolicy:
        def __init__(self, logps):
            self.logps = logps

        def tensor(self, rows):
            return self.logps.detach()[: len(rows)]

    monkeypatch.setattr(
        prefbench.train,
        "_objective_batch",
        lambda u, mb, logps, counts, ref, *rest: real(u, mb, logps, counts, FollowsThePolicy(logps), *rest),
    )
    train_units(parse_recipe(recipe(tmp_path / "broken", [{"name": "dpo"}])))
    rows = [json.loads(line) for line in (tmp_path / "broken" / "h" / "dpo" / "seed0" / "metrics.jsonl").open()]
    assert all(abs(r["loss"] - 0.6931471805599453) < 1e-9 for r in rows)  # the symptom users report
    (finding,) = health(tmp_path / "broken", "dpo")
    assert finding["code"] == "reference_is_policy" and finding["step"] == 3
    assert (
        "prefbench: dpo/seed0: policy log-probs equal the reference's at every step from step 3"
        in capsys.readouterr().err
    )


@pytest.mark.integration
def test_a_learning_rate_of_1e_1_is_named_diverged_in_the_reports_first_lines(tmp_path):
    """The tiny smoke recipe at lr 1e-1 with answers capped at 4 tokens: training ends with the divergence found,
    the held-out answers are cut at the cap, and the report opens with both, before the results."""
    overrides = [
        "--set", f"output_dir={tmp_path}", "--set", f"report_dir={tmp_path / 'reports'}",
        "--set", "eval.generation.engine=hf", "--set", "objectives=[{name: dpo}, {name: kto}]",
        "--set", "train.lr=1e-1", "--set", "train.steps=12", "--set", "train.schedule=constant",
        "--set", "eval.generation.sampling.max_tokens=4",
    ]  # fmt: skip
    assert main(["run", "recipes/tiny_smoke.yaml", *overrides]) == 0
    root = tmp_path / "tiny_smoke"
    for label in ("dpo", "kto"):
        codes = [f["code"] for f in json.loads((root / label / "seed0" / "summary.json").read_text())["health"]]
        assert "diverged" in codes, (label, codes)
    generation = json.loads((root / "reference" / "eval_generation.json").read_text())
    assert [f["code"] for f in generation["health"]] == ["truncated"]
    report = (tmp_path / "reports" / "tiny_smoke" / "report.md").read_text()
    first = report.split("\n\n")[1]
    assert first.startswith(
        "Health of training and evaluation, read before the results: 2 units (dpo/seed0, kto/seed0); in dpo/seed0: diverged"
    )
    assert "100% of answers stopped at the length cap (4 tokens)" in first


def _records(chosen: list[float], rejected: list[float], margins: list[float], norms: list[float] | None = None):
    return [
        {"step": i + 1, "logratio_per_token/chosen": c, "logratio_per_token/rejected": r, "rewards/margins": m,
         "grad_norm": (norms or [1.0] * len(chosen))[i]}
        for i, (c, r, m) in enumerate(zip(chosen, rejected, margins))
    ]  # fmt: skip


def test_the_training_thresholds_by_hand():
    # chosen -0.6 a token (mean of the last three: -0.6), margins grown: displacement; -0.4 is not
    displaced = _records([0, -0.3, -0.6, -0.6, -0.6], [0, -0.5, -1.0, -1.0, -1.0], [0, 0.1, 0.2, 0.3, 0.4])
    assert [f["code"] for f in training_findings(displaced)] == ["likelihood_displacement"]
    assert "fell 0.60 nats a token" in training_findings(displaced)[0]["text"]
    assert training_findings(_records([0, -0.4, -0.4, -0.4], [0, -0.9, -0.9, -0.9], [0, 0.1, 0.2, 0.3])) == []
    # the margin shrank: both fell, but not in the objective's favour (not displacement)
    assert training_findings(_records([0, -0.6, -0.6, -0.6], [0, -0.5, -0.5, -0.5], [0, -0.1, -0.1, -0.1])) == []
    # norms 1, 1, 2, then 10.1 > 10 x median(1, 1, 2) = 10; 9.9 is not
    flat = [0.0] * 5
    spike = training_findings(_records(flat[:4], flat[:4], flat[:4], [1, 1, 2, 10.1]))
    assert [(f["code"], f["step"]) for f in spike] == [("reference_is_policy", 3), ("grad_spike", 4)]
    assert [
        f["code"] for f in training_findings(_records([0, 1e-3, 1e-3, 1e-3], flat[:4], flat[:4], [1, 1, 2, 9.9]))
    ] == []


def test_the_generation_thresholds_by_hand():
    def gen(kl, ci, length, truncated):
        return {
            "kl": {"mean": kl, "ci": ci},
            "sampled": {"length_tokens": {"mean": length}, "truncated_share": truncated},
        }

    assert generation_findings(gen(1.8, [1.5, 2.1], 40.0, 0.4), 48) == []  # the main job's DPO: 0.045 a token
    assert [f["code"] for f in generation_findings(gen(41.0, [30, 50], 40.0, 0.4), 48)] == ["kl_exploded"]
    assert [f["code"] for f in generation_findings(gen(-0.5, [-0.8, -0.2], 40.0, 0.51), 48)] == [
        "kl_negative",
        "truncated",
    ]
    assert generation_findings(gen(-0.1, [-0.3, 0.1], 40.0, 0.5), 48) == []  # an interval reaching 0 is noise
