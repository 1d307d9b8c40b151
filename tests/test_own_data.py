"""Issue 12's acceptance: the whole flow on a user's own preference file (not the embedded task), with every
evaluation a user brings: held-out preference metrics, a reward model, a real local vLLM judge against the
reference and the data's chosen answers, and a benchmark from the user's own lm-eval task directory; the
report shows each, and `prefbench export` writes files the field's own readers load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prefbench.cli import main
from prefbench.data.load import load_records, train_eval_split
from prefbench.eval.rewards import RewardModel
from prefbench.recipe import RewardModelSpec

pytestmark = pytest.mark.integration  # a whole run on the user's own data, with a vLLM server

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "prefbench" / "data" / "embedded" / "smoke.jsonl"  # 24 question/answer pairs: the user's own data
EVAL_FRACTION = 0.25
ARITHMETIC = [(2, 3), (4, 1), (3, 3), (5, 2)]


def _task_directory(tmp_path: Path) -> Path:
    """A user's lm-eval task directory: one multiple-choice task over a JSONL file beside it."""
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    data = tmp_path / "sums.jsonl"
    data.write_text(
        "".join(
            json.dumps({"a": a, "b": b, "choices": [str(a + b), str(a + b + 1)], "answer": 0}) + "\n"
            for a, b in ARITHMETIC
        )
    )
    (tasks / "sums.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "my_sums",
                "dataset_path": "json",
                "test_split": "test",
                "output_type": "multiple_choice",
                "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf-datasets")},
                "doc_to_text": "{{a}} + {{b}} =",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "answer",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1},
            }
        )
    )
    return tasks


def test_the_whole_flow_on_a_users_own_preference_file(vllm_server, toy_reward_model, tmp_path):
    recipe = {
        "name": "own_data",
        "output_dir": str(tmp_path / "results"),
        "report_dir": str(tmp_path / "reports"),
        "model": {"name": "tiny:small"},
        "data": {"source": str(DATA), "eval_fraction": EVAL_FRACTION, "max_length": 128, "max_prompt_length": 64},
        "objectives": [{"name": "dpo", "beta": 0.1}, {"name": "kto", "beta": 0.1}],
        "train": {"steps": 4, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0},
        "eval": {
            "reward": "reward_model",
            "reward_model": {"model": str(toy_reward_model), "batch_size": 4},
            "generation": {
                "engine": "hf",
                "prompts": {"source": "data", "n": 50},
                "sampling": {"n": 2, "max_tokens": 12},
                "greedy": False,
                "max_model_len": 256,
            },
            "judge": {
                "base_url": vllm_server.base_url,
                "model": vllm_server.name,
                "against": ["reference", "dataset_chosen"],
                "max_tokens": 24,
                "max_concurrency": 4,
                "timeout_s": 120,
            },
            "benchmarks": {
                "backend": "hf",
                "include_path": str(_task_directory(tmp_path)),
                "tasks": [{"task": "my_sums", "num_fewshot": 0}],
            },
        },
    }
    path = tmp_path / "own_data.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["check", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    root = tmp_path / "results" / "own_data"
    units = {"reference": root / "reference", "dpo/seed0": root / "dpo" / "seed0", "kto/seed0": root / "kto" / "seed0"}

    # the prompts are the data's own held-out split, by prompt, with the data's chosen answers
    _, held_out = train_eval_split(load_records(str(DATA)), EVAL_FRACTION, 0)
    prompts = list(dict.fromkeys(r["prompt"] for r in held_out))
    assert (len(held_out), len(prompts)) == (6, 5)  # one held-out prompt has two pairs

    # held-out preference metrics on the same 6 pairs; the reference ranks every pair as a tie (0.5)
    for _name, unit in units.items():
        pref = json.loads((unit / "eval_preference.json").read_text())
        assert pref["pairs"] == 6 and 0 <= pref["accuracy"]["mean"] <= 1
    assert json.loads((units["reference"] / "eval_preference.json").read_text())["accuracy"]["mean"] == 0.5

    # the reward model scored every answer; answers.jsonl holds the scores the metrics averaged
    rm = RewardModel(RewardModelSpec(model=str(toy_reward_model)))
    for _name, unit in units.items():
        gen = json.loads((unit / "eval_generation.json").read_text())
        assert gen["settings"]["reward"] == "reward_model" and gen["settings"]["reward_model"]["checkpoint"]
        answers = [json.loads(line) for line in (unit / "answers.jsonl").read_text().splitlines()]
        assert [a["prompt"] for a in answers[::2]] == prompts
        assert np.allclose(
            [a["reward"] for a in answers],
            rm.score([a["prompt"] for a in answers], [a["answer"] for a in answers]),
            atol=1e-4,
        )
        per_prompt = np.array([a["reward"] for a in answers]).reshape(len(prompts), 2).mean(1)
        assert gen["sampled"]["reward"]["mean"] == pytest.approx(per_prompt.mean())

    # the judge compared each checkpoint with the reference, and every unit with the data's chosen answers
    judge = json.loads((root / "eval_judge.json").read_text())["comparisons"]
    assert set(judge) == {
        "dpo/seed0 vs reference",
        "kto/seed0 vs reference",
        "reference vs chosen",
        "dpo/seed0 vs chosen",
        "kto/seed0 vs chosen",
    }
    verdicts = [json.loads(line) for line in (root / "judge" / "verdicts.jsonl").read_text().splitlines()]
    first_chosen = {p: next(r["chosen"] for r in held_out if r["prompt"] == p) for p in prompts}
    shown = {
        (v["prompt"], v["answer_b"] if v["unit_b"] == "chosen" else v["answer_a"])
        for v in verdicts
        if "chosen" in (v["unit_a"], v["unit_b"])
    }
    assert shown == set(first_chosen.items())  # each prompt's first chosen answer in the data
    assert sum(c["diagnostics"]["calls"] for c in judge.values()) >= len(
        {(v["comparison"], v["prompt_index"], v["unit_a"]) for v in verdicts}
    )

    # the user's own benchmark ran on every unit and was paired with the reference
    for _name, unit in units.items():
        assert json.loads((unit / "benchmarks" / "my_sums.0shot.json").read_text())["n_docs"] == len(ARITHMETIC)

    vs_reference = json.loads((units["dpo/seed0"] / "benchmarks" / "vs_reference.json").read_text())
    assert list(vs_reference) == ["my_sums.0shot acc,none"] and vs_reference["my_sums.0shot acc,none"]["n"] == len(
        ARITHMETIC
    )

    # the report shows every section, and the reward by its name
    reports = tmp_path / "reports" / "own_data"
    report = (reports / "report.md").read_text()
    for section in ("## Results", "## Held-out preferences", "## Benchmarks", "## LLM judge", "reward reward_model"):
        assert section in report, section
    assert {"reward_vs_kl.png", "reward_delta.png"} <= {p.name for p in (reports / "plots").iterdir()}

    # the answers in AlpacaEval's and Arena-Hard's input layouts, read back with plain pandas
    exported = tmp_path / "export"
    assert main(["export", str(root), "--format", "alpaca_eval", "--out", str(exported)]) == 0
    assert main(["export", str(root), "--format", "arena_hard", "--out", str(exported)]) == 0
    dpo_answers = [
        json.loads(line)["answer"] for line in (units["dpo/seed0"] / "answers.jsonl").read_text().splitlines()
    ][::2]
    outputs = pd.read_json(exported / "alpaca_eval" / "own_data-dpo-seed0" / "model_outputs.json")
    assert set(outputs.columns) == {"instruction", "output", "generator", "dataset"}
    assert (
        outputs["instruction"].tolist() == prompts and outputs["output"].tolist() == dpo_answers
    )  # sample 0 (no greedy pass)
    questions = pd.read_json(exported / "arena_hard" / "own_data" / "question.jsonl", lines=True)
    answers = pd.read_json(
        exported / "arena_hard" / "own_data" / "model_answer" / "own_data-dpo-seed0.jsonl", lines=True
    )
    assert questions["prompt"].tolist() == prompts and answers["uid"].tolist() == questions["uid"].tolist()
    assert [m[-1]["content"]["answer"] for m in answers["messages"]] == dpo_answers
