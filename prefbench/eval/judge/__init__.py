"""Pairwise LLM judge: each checkpoint's answers against another unit's (the reference model, another
objective, the dataset's chosen response), in both answer orders, through any OpenAI-compatible endpoint.

  prompts.py   what is asked: the prompt template and its version, the request forms, a request's cache key
  verdicts.py  what a reply means: strict verdict parsing, verdict probabilities, pair scores, statistics
  client.py    how it is asked: endpoint and API key, retries, concurrency, budget, the verdict cache
  here         what is judged: the comparisons and pairs (judge_units), and each comparison's result

Pairs
  spec.against names the comparisons: each unit against the reference, every two objectives (round_robin),
  each unit against the dataset's chosen response (dataset_chosen). A pair is (prompt, sample j of unit X,
  sample j of unit Y) for the first samples_per_prompt samples of the first spec.prompts prompts (all when
  None), judged twice: X shown as A, and X shown as B. Identical answers are a tie without a call; a request
  shared by two comparisons is asked once.

Verdict lines
  judge_units also returns one line per call of each comparison, cached or not, for <run>/judge/verdicts.jsonl:
  the prompt, the units and answers shown as A and B, the judge, template and request form, the raw reply, the
  parsed verdict and the unit it prefers, the verdict probabilities (fields: docs/evaluation.md), so that every
  verdict can be audited and exported without prefbench.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from prefbench import models
from prefbench.eval.judge.client import (
    JudgeBudgetError,
    JudgeError,
    VerdictCache,
    dry_run,
    judge_calls,
    judge_model,
    to_ask,
)
from prefbench.eval.judge.prompts import (
    TEMPERATURE,
    Call,
    Template,
    load_template,
    template_problems,
)
from prefbench.eval.judge.verdicts import (
    PairResult,
    distrust,
    pair_stats,
    parse_verdict,
    verdict_probs,
)
from prefbench.recipe import JudgeSpec

__all__ = [
    "CHOSEN",
    "Call",
    "JudgeBudgetError",
    "JudgeError",
    "PairResult",
    "Template",
    "VerdictCache",
    "judge_model",
    "judge_units",
    "load_template",
    "pair_stats",
    "parse_verdict",
    "verdict_probs",
]


CHOSEN = "chosen"  # the dataset's chosen responses, as a unit

# A pair to judge: (prompt index, sample index, X's answer, Y's answer, X's reward, Y's reward).
Pair = tuple[int, int, str, str, float | None, float | None]


def judge_units(
    spec: JudgeSpec,
    prompts: list[str],
    answers: dict[str, list[list[str]]],
    reference: str = "reference",
    chosen: list[str] | None = None,
    rewards: dict[str, list[list[float]]] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Judge each comparison that spec.against asks for: {"comparisons": {"X vs Y": statistics (verdicts.py)},
    "verdicts": the verdict lines (module docstring), "transport": the faults retried and answers re-asked}.
    Cached parse failures are asked again with spec.retry_failed.

    answers[unit][i]: the unit's sampled answers to prompts[i] (the first spec.samples_per_prompt are judged,
    sample j against sample j). chosen[i]: the dataset's chosen response, the unit "chosen". rewards: the same
    shape as answers (rewards["chosen"][i] may hold one value), for the judge's agreement with them.
    With spec.dry_run: {"dry_run": the calls not in the cache, their estimated tokens and cost}; nothing is asked.
    Raises JudgeBudgetError when the budget stops the run (what was judged stays cached), JudgeError otherwise.
    """
    _check(spec)
    template = load_template(spec.template)
    cache = VerdictCache(Path(cache_dir or models.cache_dir() / "judge") / "verdicts.jsonl")
    plan = _plan(spec, prompts, answers, reference, chosen, rewards)
    calls = {
        Call(prompts[i], a, b, template): None
        for pairs in plan.values()
        for i, _, ax, ay, _, _ in pairs
        if ax != ay
        for a, b in ((ax, ay), (ay, ax))
    }
    needed = to_ask(spec, list(calls), cache)
    if spec.dry_run:
        return {"dry_run": dry_run(spec, len(calls), needed) | {"comparisons": [f"{x} vs {y}" for x, y in plan]}}
    made, transport = judge_calls(spec, needed, cache)
    out: dict = {"comparisons": {}, "verdicts": [], "transport": transport}
    for (x, y), pairs in plan.items():
        comparison, lines = _comparison(spec, template, cache, made, prompts, x, y, pairs)
        # whether its diagnostics let the win rate be read, stored with it: the report only formats
        out["comparisons"][f"{x} vs {y}"] = comparison | {"distrust": distrust(comparison)}
        out["verdicts"] += lines
    return out


def _check(spec: JudgeSpec) -> None:
    if not spec.base_url and not spec.local_model:
        raise JudgeError(
            "judge: set base_url (an OpenAI-compatible endpoint) or local_model (served locally by prefbench)"
        )
    if spec.base_url and not spec.model:
        raise JudgeError(f"judge.model: the judge model's name at {spec.base_url} is required")
    if spec.template and (problems := template_problems(spec.template, "judge.template")):
        raise JudgeError(problems[0])


def _comparisons(spec: JudgeSpec, units: list[str], reference: str, chosen: bool) -> list[tuple[str, str]]:
    others = [u for u in units if u not in (reference, CHOSEN)]
    out: list[tuple[str, str]] = []
    for kind in spec.against:
        if kind == "reference":
            if reference not in units:
                raise JudgeError(f"judge.against has reference, but there are no answers of {reference!r}")
            out += [(u, reference) for u in others]
        elif kind == "round_robin":
            out += list(itertools.combinations(others, 2))
        else:  # dataset_chosen (recipe.JudgeAgainst: the recipe check refuses anything else)
            if not chosen:
                raise JudgeError("judge.against has dataset_chosen, but the data has no chosen responses")
            out += [(u, CHOSEN) for u in units if u != CHOSEN]
    return list(dict.fromkeys(out))


def _plan(
    spec: JudgeSpec,
    prompts: list[str],
    answers: dict[str, list[list[str]]],
    reference: str,
    chosen: list[str] | None,
    rewards: dict[str, list[list[float]]] | None,
) -> dict[tuple[str, str], list[Pair]]:
    """The pairs of each comparison: sample j of X against sample j of Y, for the first samples_per_prompt of
    the first spec.prompts prompts."""
    k, n = spec.samples_per_prompt, min(len(prompts), spec.prompts or len(prompts))
    answers = dict(answers) | ({CHOSEN: [[c] * k for c in chosen]} if chosen is not None else {})
    rewards = dict(rewards or {})
    if CHOSEN in rewards:
        rewards[CHOSEN] = [list(r) * k if len(r) == 1 else list(r) for r in rewards[CHOSEN]]
    for unit, per_prompt in answers.items():
        if len(per_prompt) != len(prompts):
            raise ValueError(f"answers[{unit!r}] has {len(per_prompt)} prompts, not {len(prompts)}")
    return {
        (x, y): [
            (i, j, ax, ay, rewards[x][i][j] if x in rewards else None, rewards[y][i][j] if y in rewards else None)
            for i in range(n)
            for j, (ax, ay) in enumerate(zip(answers[x][i][:k], answers[y][i][:k]))
        ]
        for x, y in _comparisons(spec, list(answers), reference, chosen is not None)
    }


def _comparison(
    spec: JudgeSpec,
    template: Template,
    cache: VerdictCache,
    made: set[str],
    prompts: list[str],
    x: str,
    y: str,
    pairs: list[Pair],
) -> tuple[dict, list[dict]]:
    """One comparison's result (its pairs' statistics; the calls, tokens and cost of its verdicts) and its verdict lines."""
    model, name = judge_model(spec), f"{x} vs {y}"
    records, results, lines = [], [], []
    for i, j, ax, ay, rx, ry in pairs:
        first, second = (
            (None, None)
            if ax == ay
            else (
                cache.find(Call(prompts[i], ax, ay, template), model, spec.max_tokens),
                cache.find(Call(prompts[i], ay, ax, template), model, spec.max_tokens),
            )
        )
        records += [r for r in (first, second) if r]
        results.append(
            PairResult(
                i,
                first and first["verdict"],
                second and second["verdict"],
                len(ax),
                len(ay),
                rx,
                ry,
                identical=ax == ay,
                probs_first=first and first["probs"],
                probs_second=second and second["probs"],
            )
        )
        shown = (((x, ax), (y, ay), first), ((y, ay), (x, ax), second))  # X as A, then X as B
        lines += [_line(name, i, j, prompts[i], a, b, record, made) for a, b, record in shown if record]
    stats = pair_stats(results)
    probs = [r["probs"][r["verdict"]] for r in records if r["probs"]]
    stats["diagnostics"] |= {
        "calls": len(records),
        "calls_made": sum(r["key"] in made for r in records),
        "calls_cached": sum(r["key"] not in made for r in records),
        "rejected": sum(
            r["error"] is not None for r in records
        ),  # 400s after the first call, counted as parse failures
        "mean_verdict_prob": float(np.mean(probs)) if probs else float("nan"),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cost_usd": sum(r["cost_usd"] for r in records),
    }
    result = {
        "unit": x,
        "opponent": y,
        "judge": {
            "model": model,
            "template_sha256": template.sha256,
            "temperature": TEMPERATURE,
            "max_tokens": spec.max_tokens,
            "forms": sorted({r["form"] for r in records}),
            "samples_per_prompt": spec.samples_per_prompt,
            "prompts": len({i for i, *_ in pairs}),
        },
    } | stats
    return result, lines


def _line(
    comparison: str, i: int, j: int, prompt: str, a: tuple[str, str], b: tuple[str, str], record: dict, made: set[str]
) -> dict:
    """One call's verdict line; a, b: (unit, answer) shown as A and as B."""
    (unit_a, answer_a), (unit_b, answer_b) = a, b
    return {
        "comparison": comparison,
        "prompt_index": i,
        "sample": j,
        "prompt": prompt,
        "unit_a": unit_a,
        "unit_b": unit_b,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "judge": record["model"],
        "template_sha256": record["template_sha256"],
        "form": record["form"],
        "output": record["content"],
        "verdict": record["verdict"],
        "winner": {"A": unit_a, "B": unit_b, "tie": "tie"}.get(record["verdict"]),
        "verdict_probs": record["probs"],
        "finish_reason": record["finish_reason"],
        "error": record["error"],
        "cached": record["key"] not in made,
    }
