"""`prefbench export`: a hand-built run's answers in AlpacaEval's and Arena-Hard's layouts, read back with json
and pandas as those tools would read them; the chosen pass and sample; the one-line refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_report import REF, make_run

from prefbench.cli import main

PROMPTS = [
    "Name a prime number.",
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Define entropy."}],
]
TEXTS = ["Name a prime number.", "Write a haiku about rain.", "system: Be brief.\n\nuser: Define entropy."]


def answer(unit: str, sampling: str, i: int, j: int) -> str:
    return f"{unit} {sampling} prompt {i} sample {j}"


def add_answers(root, unit: str, passes: dict[str, int], prompts: list = PROMPTS) -> None:
    """<unit>/answers.jsonl as evaluation writes it: every prompt x sample of each pass ({pass: samples})."""
    lines = [
        {
            "prompt_index": i,
            "prompt": p,
            "sampling": sampling,
            "sample": j,
            "answer": answer(unit, sampling, i, j),
            "tokens": 5,
            "finish_reason": "stop",
            "reward": 0.5,
        }
        for sampling, n in passes.items()
        for i, p in enumerate(prompts)
        for j in range(n)
    ]
    (root / unit / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def run(tmp_path):
    """Run kto_vs_dpo: reference and dpo/seed0 evaluated (4 sampled answers and a greedy one per prompt); kto/seed0
    trained but not evaluated."""
    root = make_run(tmp_path / "kto_vs_dpo", {"dpo": REF, "kto": REF}, REF, name="kto_vs_dpo")
    for unit in ("reference", "dpo/seed0"):
        add_answers(root, unit, {"sampled": 4, "greedy": 1})
    return root


def test_alpaca_eval_takes_the_greedy_answer_per_prompt_per_unit(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "alpaca_eval", "--out", str(out)]) == 0
    assert "not exported (no answers.jsonl): kto/seed0" in capsys.readouterr().out
    for unit, generator in (("reference", "kto_vs_dpo-reference"), ("dpo/seed0", "kto_vs_dpo-dpo-seed0")):
        df = pd.read_json(out / "alpaca_eval" / generator / "model_outputs.json")
        assert sorted(df.columns) == ["dataset", "generator", "instruction", "output"]
        assert df["instruction"].tolist() == TEXTS  # each prompt once; chat messages as one text
        assert df["output"].tolist() == [answer(unit, "greedy", i, 0) for i in range(3)]
        assert set(df["generator"]) == {generator} and set(df["dataset"]) == {"kto_vs_dpo"}
    manifest = json.loads((out / "alpaca_eval" / "export.json").read_text())
    assert manifest["run"] == "kto_vs_dpo" and manifest["format"] == "alpaca_eval" and manifest["prefbench"] == "0.1.0"
    assert (manifest["sampling"], manifest["sample"], manifest["prompts"]) == ("greedy", 0, 3)
    assert manifest["units"] == ["reference", "dpo/seed0"] and manifest["units_without_answers"] == ["kto/seed0"]
    assert manifest["files"] == ["kto_vs_dpo-reference/model_outputs.json", "kto_vs_dpo-dpo-seed0/model_outputs.json"]


@pytest.mark.parametrize(
    "flags, sampling, sample",
    [
        (["--sampling", "sampled"], "sampled", 0),
        (["--sample", "3"], "sampled", 3),
        (["--sampling", "greedy", "--sample", "0"], "greedy", 0),
    ],
)
def test_the_pass_and_sample_can_be_chosen(run, tmp_path, flags, sampling, sample):
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "alpaca_eval", "--out", str(out), *flags]) == 0
    df = pd.read_json(out / "alpaca_eval" / "kto_vs_dpo-dpo-seed0" / "model_outputs.json")
    assert df["output"].tolist() == [answer("dpo/seed0", sampling, i, sample) for i in range(3)]
    manifest = json.loads((out / "alpaca_eval" / "export.json").read_text())
    assert (manifest["sampling"], manifest["sample"]) == (sampling, sample)


def test_a_run_without_a_greedy_pass_exports_sample_0_and_a_repeated_prompt_once(tmp_path):
    root = make_run(tmp_path / "run", {"dpo": REF}, REF)
    for unit in ("reference", "dpo/seed0"):
        add_answers(root, unit, {"sampled": 2}, PROMPTS + [PROMPTS[0]])
    out = tmp_path / "out"
    assert main(["export", str(root), "--format", "alpaca_eval", "--out", str(out)]) == 0
    df = pd.read_json(out / "alpaca_eval" / "fixture-dpo-seed0" / "model_outputs.json")
    assert df["instruction"].tolist() == TEXTS
    assert df["output"].tolist() == [
        answer("dpo/seed0", "sampled", i, 0) for i in range(3)
    ]  # prompt 0, not its repeat (3)
    assert json.loads((out / "alpaca_eval" / "export.json").read_text())["sampling"] == "sampled"


def test_arena_hard_questions_and_answers_share_stable_ids(run, tmp_path):
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "arena_hard", "--out", str(out), "--sample", "2"]) == 0
    bench = out / "arena_hard" / "kto_vs_dpo"
    questions = pd.read_json(bench / "question.jsonl", lines=True)
    assert sorted(questions.columns) == ["category", "prompt", "uid"]
    assert questions["prompt"].tolist() == TEXTS and set(questions["category"]) == {"kto_vs_dpo"}
    assert questions["uid"].is_unique and questions["uid"].str.fullmatch("[0-9a-f]{16}").all()
    assert sorted(p.name for p in (bench / "model_answer").iterdir()) == [
        "kto_vs_dpo-dpo-seed0.jsonl",
        "kto_vs_dpo-reference.jsonl",
    ]
    for unit, model in (("reference", "kto_vs_dpo-reference"), ("dpo/seed0", "kto_vs_dpo-dpo-seed0")):
        answers = pd.read_json(bench / "model_answer" / f"{model}.jsonl", lines=True)
        assert sorted(answers.columns) == ["messages", "model", "uid"] and set(answers["model"]) == {model}
        assert answers["uid"].tolist() == questions["uid"].tolist()
        # what gen_judgment shows the judge: messages[-1]["content"]["answer"]
        assert [m[-1] for m in answers["messages"]] == [
            {"role": "assistant", "content": {"answer": answer(unit, "sampled", i, 2)}} for i in range(3)
        ]
        assert [m[:-1] for m in answers["messages"]] == [
            [{"role": "user", "content": PROMPTS[0]}],
            PROMPTS[1],
            PROMPTS[2],
        ]
    # the id is the prompt text's: another run (other order, other name) gives each prompt the same id
    other = make_run(tmp_path / "other", {"dpo": REF}, REF, name="other")
    for unit in ("reference", "dpo/seed0"):
        add_answers(other, unit, {"greedy": 1}, PROMPTS[::-1])
    assert main(["export", str(other), "--format", "arena_hard", "--out", str(out)]) == 0
    again = pd.read_json(out / "arena_hard" / "other" / "question.jsonl", lines=True)
    assert dict(zip(again["prompt"], again["uid"])) == dict(zip(questions["prompt"], questions["uid"]))
    assert json.loads((out / "arena_hard" / "export.json").read_text())["files"][0] == "other/question.jsonl"


def test_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys):
    only_sampled = make_run(tmp_path / "sampled_only", {"dpo": REF}, REF)
    for unit in ("reference", "dpo/seed0"):
        add_answers(only_sampled, unit, {"sampled": 4})
    unevaluated = make_run(tmp_path / "unevaluated", {"dpo": REF}, REF)
    cases = [
        ([str(tmp_path)], "not a run directory (no manifest.json)"),
        ([str(unevaluated)], "no unit has answers.jsonl; run `prefbench evaluate"),
        ([str(only_sampled), "--sampling", "greedy"], "reference: no greedy answers in answers.jsonl"),
        ([str(run), "--sample", "4"], "--sample 4: out of range; reference's sampled pass has 4 answer(s) per prompt"),
        (
            [str(run), "--sampling", "greedy", "--sample", "1"],
            "--sample 1: out of range; reference's greedy pass has 1",
        ),
        ([str(run), "--sample", "-1"], "--sample -1: out of range"),
    ]
    out = tmp_path / "out"
    for args, message in cases:
        assert main(["export", *args, "--format", "arena_hard", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("prefbench: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
