"""The metric table (prefbench/metric_table.py): one declaration per metric, read by the report, compare, plan,
the trackers and the statistics stage, and no other module spells a path into a unit's results."""

import ast
import json
from pathlib import Path

import numpy as np

from prefbench import compare
from prefbench.metric_table import GENERATION, METRICS, PER_PROMPT, RANKED
from prefbench.report import unit_table
from prefbench.results import load_run

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "results" / "kto_vs_dpo"


def test_every_declared_generation_metric_is_found_in_the_stored_main_job():
    run = load_run(STORED)
    for m in GENERATION:
        if m.name == "greedy_reward":  # the main job runs no greedy pass
            continue
        assert all(
            m.estimate(u.generation) is not None for u in run.units if u.name != "reference" or m.shape != "counts"
        )
    for m in PER_PROMPT.values():
        # entropy's per-prompt values are kept since 2026-12-06, after the main job was stored (test_evaluate: a new run)
        if m.name not in ("greedy_reward", "entropy_per_token"):
            assert len(m.values(run.units[1].generation)) == 96  # one value per held-out prompt


def test_the_answer_length_in_tokens_is_one_declaration_and_its_column_is_the_mean_over_prompts():
    """The tokens column added by one line of the table: per prompt, the mean token count of its sampled answers
    (answers.jsonl, written with them), then the mean over the 96 prompts."""
    run = load_run(STORED)
    table = unit_table(run)
    for unit in ("reference", "dpo/seed0", "kto/seed2"):
        rows = [json.loads(line) for line in (STORED / unit / "answers.jsonl").read_text().splitlines()]
        per_prompt = {}
        for r in rows:
            if r["sampling"] == "sampled":
                per_prompt.setdefault(r["prompt_index"], []).append(r["tokens"])
        by_hand = np.mean([np.mean(t) for t in per_prompt.values()])
        assert len(per_prompt) == 96
        assert table.loc[unit, "tokens"].startswith(f"{by_hand:.1f} [")
    assert list(table.columns).index("tokens") == list(table.columns).index("words") + 1


def test_compare_plan_and_the_trackers_take_their_defaults_from_the_table():
    assert compare.DEFAULT_THRESHOLDS == {"reward": 0.02, "greedy_reward": 0.02}
    assert compare.DEFAULT_TOLERANCES == {"reward": 1e-3, "greedy_reward": 1e-3, "kl": 1e-2}
    assert RANKED == ["reward", "greedy_reward"]  # KL has no better side: never ranked or planned for
    tracked = {m.track for m in METRICS.values() if m.track}
    assert {"reward", "kl", "length_words", "length_tokens", "preference_accuracy"} <= tracked


def test_no_module_but_the_table_spells_a_metric_path():
    """Result paths are tuples of the table's keys: a literal one anywhere else (a tuple of 2+ strings whose first
    is a pass name, or that names a per-prompt field) is a second declaration of a metric."""
    keys = {
        "per_prompt_reward",
        "per_prompt",
        "reward_minus_reference",
        "length_words",
        "length_tokens",
        "vs_reference",
    }
    found = []
    for path in (ROOT / "prefbench").rglob("*.py"):
        if path.name == "metric_table.py" or path.parts[-2:] == ("eval", "metrics.py"):  # declares / computes them
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple) and len(node.elts) >= 2:
                strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if len(strings) == len(node.elts) and (strings[0] in ("sampled", "greedy") or keys & set(strings)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {tuple(strings)}")
    assert found == []
