"""The metrics of a unit's evaluation, one declaration each: where the value lives in the unit's
eval_generation.json, which way is better, how the report names and formats it, how `prefbench compare` gates it,
and what the trackers call it. The report, compare, the trackers, `prefbench plan` and the objectives stage read
this table; no other module spells a path into the results.

A metric with `per_prompt` values (one number per prompt) takes part in the statistics across seeds and prompts
(the objectives stage, compare, plan); the others are summaries shown per unit. Adding a metric is one line here
and, where the evaluation does not store it yet, its computation in prefbench/eval/metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str  # the key users type (compare --threshold reward=0.02, plan --metric reward) and results are keyed by
    column: str  # the report's column header
    summary: tuple[str, ...]  # path to its estimate ({"mean", "ci"}) in eval_generation.json
    per_prompt: tuple[str, ...] | None = None  # path to its per-prompt values, where the statistics use them
    higher: bool | None = True  # True: higher is better; None: neither (KL moves, it does not improve)
    digits: int = 3  # decimals in the report
    threshold: float | None = None  # compare's default regression threshold (None: ungated)
    tolerance: float | None = None  # compare: a smaller difference is numerical noise, whatever its p
    track: str | None = None  # its name among the trackers' "eval/..." numbers (None: not logged)
    file: str = "generation"  # the unit's file it lives in: eval_generation.json, or eval_preference.json
    shape: str = "estimate"  # what is stored: an estimate {"mean", "ci"}, a plain "number", or win/tie/loss "counts"

    def estimate(self, result: dict | None) -> Any:
        """Its estimate in a unit's result (the file `file` names): {"mean", "ci"}, or None."""
        return dig(result, self.summary)

    def mean(self, result: dict | None) -> float | None:
        return dig(result, (*self.summary, "mean"))

    def values(self, result: dict | None) -> Any:
        """Its per-prompt values in a unit's eval_generation.json, or None."""
        return dig(result, self.per_prompt) if self.per_prompt else None


METRICS = {
    m.name: m
    for m in (
        Metric(
            "reward",
            "reward",
            ("sampled", "reward"),
            ("sampled", "per_prompt_reward"),
            threshold=0.02,
            tolerance=1e-3,
            track="reward",
        ),
        Metric(
            "reward_minus_reference",
            "reward - ref",
            ("sampled", "reward_minus_reference"),
            track="reward_minus_reference",
        ),
        Metric("win_rate", "win rate vs ref", ("sampled", "vs_reference", "win_rate")),
        Metric(
            "greedy_reward",
            "greedy reward",
            ("greedy", "reward"),
            ("greedy", "per_prompt_reward"),
            threshold=0.02,
            tolerance=1e-3,
        ),
        Metric("kl", "KL to ref", ("kl",), ("kl", "per_prompt"), higher=None, tolerance=1e-2, track="kl"),
        Metric(
            "entropy_per_token",
            "entropy/token",
            ("sampled", "entropy_per_token"),
            ("sampled", "entropy_per_token", "per_prompt"),
            higher=None,
            track="entropy_per_token",
        ),
        Metric("length_words", "words", ("sampled", "length_words"), higher=None, track="length_words"),
        Metric("length_tokens", "tokens", ("sampled", "length_tokens"), higher=None, digits=1, track="length_tokens"),
        Metric("win_tie_loss", "win/tie/loss", ("sampled", "vs_reference"), shape="counts"),
        Metric("distinct_2", "distinct 2", ("sampled", "distinct_2"), shape="number"),
        Metric("self_similarity", "self similarity", ("sampled", "self_similarity"), higher=None, shape="number"),
        Metric("truncated_share", "truncated share", ("sampled", "truncated_share"), higher=None, shape="number"),
        Metric(
            "preference_accuracy", "held-out accuracy", ("accuracy",), file="preference", track="preference_accuracy"
        ),
        Metric(
            "preference_margin",
            "held-out margin",
            ("margin",),
            higher=None,
            file="preference",
            track="preference_margin",
        ),
    )
}  # fmt: skip  (one declaration a line, in the report's column order)

GENERATION = [m for m in METRICS.values() if m.file == "generation"]  # the report's per-unit columns, in order
PER_PROMPT = {name: m for name, m in METRICS.items() if m.per_prompt}  # the statistics' metrics
RANKED = [name for name, m in PER_PROMPT.items() if m.higher is not None]  # an objective can lead on these


def dig(d: Any, path: tuple[str, ...]) -> Any:
    """d[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d
