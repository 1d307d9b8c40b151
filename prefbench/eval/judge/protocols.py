"""Judging protocols: how the judge is asked about a run's answers and what its replies become. PROTOCOLS is the
registry recipes name (eval.judge.protocol); each entry brings its own requests (calls the client asks the same
way: messages, cache key, request options, how a reply reads), its statistics and diagnostics, its template
checks and the report's table of its results.

  pairwise  two answers side by side, both orders (prefbench.eval.judge: win rates, swap consistency)
  single    one answer graded 1-10 with a rubric, as MT-Bench grades (single.py: mean scores, paired differences)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefbench.eval.judge import judge_units, single
from prefbench.eval.judge.prompts import template_problems


@dataclass(frozen=True)
class Protocol:
    name: str
    # judge(spec, prompts, answers, reference, chosen, rewards) -> the results ({"comparisons"} or a protocol's own
    # key, "verdicts": one line per call, "transport"), or {"dry_run": ...}; raises JudgeBudgetError on a budget stop
    judge: Callable[..., dict]
    template_problems: Callable[[str, str], list[str]]  # a user template file's problems (path, recipe key)
    title: str  # the report's section title: what its numbers are
    # the report's table of its stored results (eval_judge.json), or None: the report's own pairwise table
    table: Callable[[dict], Any] | None = None


PROTOCOLS = {
    "pairwise": Protocol(
        "pairwise", judge_units, template_problems, "LLM judge (both answer orders; inconsistent orders count as ties)"
    ),
    "single": Protocol(
        "single",
        single.grade_units,
        single.template_problems,
        "LLM judge, single-answer grading (1-10 per answer; prompts' samples averaged)",
        single.table,
    ),
}
