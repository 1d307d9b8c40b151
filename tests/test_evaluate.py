"""`prefbench run` trains and then evaluates every checkpoint and the reference the same way; `prefbench
evaluate` re-reads finished results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefbench import models
from prefbench.cli import main
from prefbench.eval.engines import Sampling, prompt_ids
from prefbench.eval.generate import GenerationCache
from prefbench.eval.rewards import InstructionReward
from prefbench.models import checkpoint_id
from prefbench.task import make_prompts

pytestmark = pytest.mark.integration  # whole recipes trained and evaluated through the CLI


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    overrides = [
        "--set",
        f"output_dir={out}",
        "--set",
        f"report_dir={out / 'reports'}",
        "--set",
        "eval.generation.engine=hf",
        "--set",
        "objectives=[{name: dpo, beta: 0.1}]",
    ]
    assert main(["run", "recipes/tiny_smoke.yaml", *overrides]) == 0
    return out / "tiny_smoke", overrides


def test_run_writes_generation_metrics_for_reference_and_checkpoints(run):
    root, _ = run
    ref = json.loads((root / "reference" / "eval_generation.json").read_text())
    dpo = json.loads((root / "dpo" / "seed0" / "eval_generation.json").read_text())
    assert ref["kl"]["mean"] == 0.0 and ref["sampled"]["reward_minus_reference"]["mean"] == 0.0
    assert ref["sampled"]["vs_reference"]["tie"] == 8
    assert dpo["prompts"] == 8 and dpo["settings"] == ref["settings"] and dpo["engine"].startswith("hf-")
    entropy = dpo["sampled"]["entropy_per_token"]  # per prompt too, for the statistics and claims
    assert len(entropy["per_prompt"]) == 8 and entropy["mean"] == pytest.approx(np.mean(entropy["per_prompt"]))
    # The stored reward is the mean over prompts of the per-prompt mean reward of the cached samples.
    prompts = [p.prompt for p in make_prompts(8, "heldout")]
    reward = InstructionReward()
    ckpt = root / "dpo" / "seed0" / "final"
    cache = GenerationCache()
    entries = cache.read(cache.path(checkpoint_id(ckpt), dpo["engine"], Sampling("sampled", 2, 1.0, 1.0, 16, 0)))
    ids = prompt_ids(models.load_tokenizer("tiny:small"), prompts)
    per_prompt = [np.mean([reward(p, c.text) for c in entries[cache.prompt_key(i)]]) for p, i in zip(prompts, ids)]
    assert dpo["sampled"]["reward"]["mean"] == pytest.approx(np.mean(per_prompt), abs=1e-12)
    lo, hi = dpo["sampled"]["reward"]["ci"]
    assert lo <= dpo["sampled"]["reward"]["mean"] <= hi
    d = dpo["sampled"]["reward_minus_reference"]["mean"]
    assert d == pytest.approx(dpo["sampled"]["reward"]["mean"] - ref["sampled"]["reward"]["mean"], abs=1e-12)
    w = dpo["sampled"]["vs_reference"]
    assert w["win"] + w["tie"] + w["loss"] == 8
    assert np.isfinite(dpo["kl"]["mean"]) and dpo["sampled"]["entropy_per_token"]["mean"] > 0
    # the engine's log-probs, on the reference's own samples, agree with transformers': its KL to itself ~ 0
    check = ref["kl"]["engine_check"]
    assert check["max_token_logp_diff"] < 1e-4 and abs(check["kl_to_itself"]["mean"]) < 1e-5
    assert all(0 <= dpo["sampled"][k] <= 1 for k in ("distinct_1", "distinct_2", "self_similarity"))
    # every answer is in the run directory, readable without prefbench, and its rewards make up the stored ones
    lines = [json.loads(line) for line in (root / "dpo" / "seed0" / "answers.jsonl").read_text().splitlines()]
    answers = [a for a in lines if a["sampling"] == "sampled"]
    assert (
        len(lines) == 8 * (1 + 2)
        and len(answers) == 8 * 2
        and {a["finish_reason"] for a in answers} <= {"stop", "length"}
    )
    by_prompt = [np.mean([a["reward"] for a in answers if a["prompt_index"] == i]) for i in range(8)]
    assert by_prompt == pytest.approx(dpo["sampled"]["per_prompt_reward"], abs=1e-12)
    assert [a["prompt"] for a in answers[::2]] == prompts and all(a["tokens"] <= 16 for a in answers)
    assert dpo["checkpoint_sha256"] == checkpoint_id(ckpt)  # compare tells a re-evaluation from a retrain by it
    assert np.mean(dpo["sampled"]["per_sample_reward"], axis=1) == pytest.approx(
        dpo["sampled"]["per_prompt_reward"], abs=1e-12
    )
    objectives = json.loads((root / "eval_objectives.json").read_text())  # the objective level, even with one seed
    assert objectives["metrics"]["reward"]["objectives"]["dpo"]["mean"] == pytest.approx(
        dpo["sampled"]["reward"]["mean"]
    )
    assert objectives["metrics"]["reward"]["objectives"]["dpo"]["seed_variance"] is False


def test_evaluate_again_keeps_finished_results(run, capsys):
    root, overrides = run
    f = root / "dpo" / "seed0" / "eval_generation.json"
    before = f.stat().st_mtime_ns
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *overrides]) == 0
    assert f.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "reference" in out and "dpo/seed0" in out and "vs ref" in out


def test_one_stage_runs_alone_and_a_stage_the_recipe_lacks_is_refused(run, capsys):
    root, overrides = run
    f = root / "dpo" / "seed0" / "eval_generation.json"
    before = f.stat().st_mtime_ns
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *overrides, "--stage", "generation"]) == 0
    assert f.stat().st_mtime_ns == before and "dpo/seed0" in capsys.readouterr().out
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *overrides, "--stage", "judge"]) == 2
    assert (
        "--stage judge: not a stage this recipe asks for; it has preference, generation, objectives"
        in capsys.readouterr().err
    )


def test_held_out_preferences_on_the_data_own_split(run):
    """The preference stage, recomputed by hand with the trainer's own log-prob code on the same held-out pairs."""
    import torch

    from prefbench.check import load_recipe
    from prefbench.data.batches import collate
    from prefbench.data.prepare import prepare_data
    from prefbench.logprobs import SequenceLogps

    root, overrides = run
    ref = json.loads((root / "reference" / "eval_preference.json").read_text())
    dpo = json.loads((root / "dpo" / "seed0" / "eval_preference.json").read_text())
    # the reference against itself: every margin 0, every pair a tie
    assert ref["accuracy"]["mean"] == 0.5 and ref["margin"]["mean"] == 0.0 and ref["pairs"] == dpo["pairs"] > 0
    recipe = load_recipe("recipes/tiny_smoke.yaml", overrides[1::2])
    examples = prepare_data(recipe, models.load_tokenizer("tiny:small")).eval
    rows = [(i, i, 0) for i in range(len(examples))] + [(i, i, 1) for i in range(len(examples))]

    def sums(path):
        with torch.no_grad():
            return (
                SequenceLogps(models.load_model(path))(*collate(rows, examples, 0, "cpu"))[0]
                .double()
                .numpy()
                .reshape(2, -1)
            )

    (pc, pr), (rc, rr) = sums(root / "dpo" / "seed0" / "final"), sums(models.resolve("tiny:small"))
    margin = (pc - rc) - (pr - rr)
    assert dpo["per_pair"]["margin"] == pytest.approx(margin.tolist(), abs=1e-4)
    accuracy = np.mean((margin > 0) + 0.5 * (margin == 0))
    assert dpo["accuracy"]["mean"] == pytest.approx(accuracy)
    assert dpo["vs_reference"]["accuracy"]["difference"] == pytest.approx(accuracy - 0.5)


def test_evaluate_before_training_names_the_missing_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "recipes/tiny_smoke.yaml", "--set", f"output_dir={tmp_path}"]) == 2
    assert "no trained checkpoint to evaluate" in capsys.readouterr().err


def test_report_and_compare_from_the_real_run(run, tmp_path, capsys):
    """The end of the main path: the run's own results render, and a run compared with itself passes."""
    from prefbench.report import unit_table
    from prefbench.results import load_run

    root, _ = run
    assert (root.parent / "reports" / "tiny_smoke" / "report.html").is_file()  # `prefbench run` rendered it
    assert main(["report", str(root), "--out", str(tmp_path)]) == 0
    out = tmp_path / "tiny_smoke"
    assert (out / "report.html").is_file() and (out / "plots" / "reward_vs_kl.png").is_file()
    table = unit_table(load_run(root))
    assert list(table.index) == ["reference", "dpo/seed0"]
    assert main(["compare", str(root), str(root)]) == 0
    said = capsys.readouterr().out
    assert "0 regression(s)" in said and "one seed per side" not in said  # the same weights: the regeneration null
    assert "describe this training run only" in (out / "report.md").read_text()


def test_evaluate_with_a_judge_writes_comparisons_and_the_report_shows_them(run, tmp_path, monkeypatch):
    """The judge step of the evaluation, against a real local HTTP endpoint (tests/judge_fault_server.py)."""
    from judge_fault_server import FaultServer

    from prefbench.report import judge_table
    from prefbench.results import load_run

    root, overrides = run
    monkeypatch.setenv("PREFBENCH_TEST_JUDGE_KEY", "sk-test-never-written")
    with FaultServer() as server:
        judge = [
            "--set",
            f"eval.judge={{base_url: '{server.base_url}', model: fake-judge, api_key_env: PREFBENCH_TEST_JUDGE_KEY}}",
        ]
        assert main(["evaluate", "recipes/tiny_smoke.yaml", *overrides, *judge]) == 0
        calls = sum(len(v) for v in server.requests.values())
    result = json.loads((root / "eval_judge.json").read_text())
    c = result["comparisons"]["dpo/seed0 vs reference"]
    assert c["wins"] + c["ties"] + c["losses"] + c["unscored"] == 8  # 8 prompts, 1 sample each
    assert c["diagnostics"]["calls"] == calls <= 16  # both orders of each non-identical pair, nothing twice
    assert "sk-test-never-written" not in (root / "eval_judge.json").read_text()
    assert list(judge_table(load_run(root)).index) == ["dpo/seed0 vs reference"]
    # every verdict is in the run directory, one line per call, and the lines give the comparison's counts
    lines = [json.loads(line) for line in (root / "judge" / "verdicts.jsonl").read_text().splitlines()]
    assert len(lines) == calls and {x["comparison"] for x in lines} == {"dpo/seed0 vs reference"}
    assert {x["template_sha256"] for x in lines} == {c["judge"]["template_sha256"]} and {x["judge"] for x in lines} == {
        "fake-judge"
    }
    winners = {}
    for x in lines:
        winners.setdefault(x["prompt_index"], []).append(x["winner"])
    pairs = list(winners.values())  # judged pairs; identical answers are ties without a call
    wins, losses, unscored = (
        pairs.count(["dpo/seed0"] * 2),
        pairs.count(["reference"] * 2),
        sum(None in w for w in pairs),
    )
    ties = len(pairs) - wins - losses - unscored + c["diagnostics"]["identical_pairs"]
    assert all(len(w) == 2 for w in pairs) and (wins, ties, losses, unscored) == (
        c["wins"],
        c["ties"],
        c["losses"],
        c["unscored"],
    )


def test_evaluate_with_benchmarks_pairs_each_checkpoint_with_the_reference(run):
    from prefbench.report import benchmark_table, benchmarks_in_words
    from prefbench.results import load_run

    root, overrides = run
    bench = ["--set", "eval.benchmarks={backend: hf, tasks: [{task: prefbench_mc, num_fewshot: 0, limit: 10}]}"]
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *overrides, *bench]) == 0
    paired = json.loads((root / "dpo" / "seed0" / "benchmarks" / "vs_reference.json").read_text())
    ((key, r),) = paired.items()
    assert key == "prefbench_mc.0shot acc,none" and r["n"] == 10 and r["test"] == "mcnemar_exact"
    mine = json.loads((root / "dpo" / "seed0" / "benchmarks" / "prefbench_mc.0shot.json").read_text())
    assert r["mean_a"] == pytest.approx(mine["metrics"]["acc,none"])  # the paired test sees the task's own accuracy
    table = benchmark_table(load_run(root))
    assert r["p_holm"] == r["p_value"]  # Holm over a family of one test (one checkpoint x one task metric)
    assert list(table.index) == ["reference", "dpo/seed0"] and f"Holm {r['p_holm']:.3f}" in table.loc["dpo/seed0", key]
    # the report's words: whether the one paired test holds after Holm
    words = benchmarks_in_words(load_run(root))
    assert words == (
        "Benchmarks: no checkpoint differs from the reference after Holm across every checkpoint and task (1 paired test on 10 documents)."
        if r["p_holm"] >= 0.05
        else f"Benchmarks: dpo/seed0 {key} {r['difference']:+.3f}"
    )


def test_a_run_without_a_reward_keeps_every_other_metric(run, tmp_path, capsys):
    """eval.reward: none: the generation metrics leave every reward field out and keep lengths, diversity and
    KL (the same values as with a reward: the answers come from the cache); answers.jsonl has null rewards;
    the report and the CLI show the rest."""
    import shutil

    from prefbench.report import write_report

    root, overrides = run
    copy = tmp_path / "tiny_smoke"
    shutil.copytree(root, copy)
    mine = [*overrides, "--set", f"output_dir={tmp_path}", "--set", "eval.reward=none"]
    assert main(["evaluate", "recipes/tiny_smoke.yaml", *mine, "--stage", "generation"]) == 0
    assert "reward" not in capsys.readouterr().out.split("\n")[-2]
    with_reward = json.loads((root / "dpo" / "seed0" / "eval_generation.json").read_text())
    without = json.loads((copy / "dpo" / "seed0" / "eval_generation.json").read_text())
    assert without["settings"]["reward"] == "none"
    assert not {"reward", "reward_minus_reference", "vs_reference", "per_prompt_reward"} & set(without["sampled"])
    assert (
        without["kl"] == with_reward["kl"] and without["sampled"]["distinct_2"] == with_reward["sampled"]["distinct_2"]
    )
    answers = [json.loads(line) for line in (copy / "dpo" / "seed0" / "answers.jsonl").read_text().splitlines()]
    assert answers and all(a["reward"] is None for a in answers)
    report = (write_report(copy, tmp_path / "reports") / "report.md").read_text()
    assert "KL to ref" in report and "| reward " not in report and "reward none" in report
    assert "--stage objectives" in report  # its objective-level file predates the re-evaluation: named stale, not shown


def test_every_checkpoint_gets_a_model_card_with_the_reports_numbers(run, capsys):
    root, _ = run
    from prefbench.objectives import OBJECTIVES

    card = (root / "dpo" / "seed0" / "final" / "README.md").read_text()
    report = (root.parent / "reports" / "tiny_smoke" / "report.md").read_text()
    rows: dict[str, str] = {}
    for line in report.splitlines():  # the first table: one row per unit
        if line.startswith(("| dpo/seed0", "| reference")):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert (
        rows["dpo/seed0"] in card and rows["reference"] in card
    )  # the unit's row and the reference's, as the report shows them
    manifest = json.loads((root / "manifest.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: tiny:small\n")
    assert OBJECTIVES["dpo"].paper in card and "beta=0.1" in card and manifest["data"]["fingerprint"] in card
    assert (
        f"final loss {json.loads((root / 'dpo' / 'seed0' / 'summary.json').read_text())['final']['loss']:.4f}" in card
    )
    assert f"torch {manifest['versions']['torch']}" in card
    # pushing needs the Hub; what it checks first needs nothing
    assert main(["push", str(root / "reference"), "--repo-id", "me/x"]) == 2
    assert "no trained checkpoint (final/config.json) to push" in capsys.readouterr().err
