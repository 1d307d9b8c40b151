"""What the judge's replies mean: a verdict read from a reply, its probability, a pair's score, and the
statistics of a comparison's pairs (every interval and test through prefbench.stats).

Reading a reply
  A JSON reply must parse as exactly {"verdict": "A" | "B" | "tie"}; a text reply's last line must be
  exactly `Verdict: A`, `Verdict: B` or `Verdict: tie`. Anything else is a parse failure: counted and
  cached, never guessed. Where the reply carries log-probabilities, the probabilities of A / B / tie at
  the verdict's token are kept with the verdict.

Scoring a pair (judged twice: X shown as A, and X shown as B)
  X wins when both orders prefer X and loses when both prefer Y; when both parse but the orders disagree,
  or both say tie, the pair is a tie. A pair with a parse failure in either order is left out of the
  scores (and counted). Identical answers are a tie without a call.

Statistics, per comparison "X vs Y"
  - win_rate: ties count half. A prompt's pairs (all its samples, both orders) are averaged first, and the
    95% CI is a percentile bootstrap over prompts (stats.estimate).
  - clopper_pearson: exact binomial 95% CI of wins / scored pairs, ties counting as non-wins (a binomial
    winrate as the KTO paper reported its GPT-4 judgments). An approximation that treats pairs as
    independent, which a prompt's samples are not (stored and shown with that label): prefer win_rate's.
  - length_adjusted_win_rate: a logistic fit of the pair score on tanh(d / sd(d)), d = X's answer length
    minus Y's in characters, read at d = 0 (stats.length_adjusted_win_rate: prompts weigh 1 each, as in the
    win rate; a convergence flag). The score is soft where both orders carry verdict probabilities
    (PairResult.soft_score), else the hard score (ties 0.5). Not AlpacaEval's length-controlled win rate.
  - diagnostics: swap consistency, tie rate, parse-failure rate, position bias (here); verdict
    probability, calls made and from cache, tokens and cost of the comparison's verdicts (judge_units).
  - reward_agreement (with ground-truth rewards): among pairs whose rewards differ, the share where the
    judge prefers the higher-reward answer, ties half, with a bootstrap CI over prompts.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from prefbench.stats import binomial_ci, estimate, length_adjusted_win_rate

VERDICTS = ("A", "B", "tie")  # what a pairwise judge may answer: A better, B better, or a tie


def parse_verdict(content: str, form: str) -> str | None:
    """The verdict in a reply of the given form, or None: nothing is guessed."""
    if form == "json":
        try:
            obj = json.loads(content)
        except ValueError:
            return None
        ok = isinstance(obj, dict) and obj.keys() == {"verdict"} and obj["verdict"] in VERDICTS
        return obj["verdict"] if ok else None
    lines = content.strip().splitlines()
    match = re.fullmatch(r"Verdict: (A|B|tie)", lines[-1].strip()) if lines else None
    return match.group(1) if match else None


def verdict_probs(content: str, verdict: str, tokens) -> dict[str, float] | None:
    """P(A), P(B), P(tie) at the verdict's token, from its top log-probabilities (normalized over the three).

    The verdict is the last thing in either form, so its first character is content.rfind(verdict);
    alternatives are read from that character on (a token may start before it, e.g. ` "A`).
    """
    pos, start = content.rfind(verdict), 0
    for token in tokens:
        end = start + len(token.token)
        if start <= pos < end:
            cut, probs = pos - start, dict.fromkeys(VERDICTS, 0.0)
            for alt in token.top_logprobs or []:
                rest = alt.token[cut:] if alt.token[:cut] == token.token[:cut] else ""
                label = next((v for v in VERDICTS if rest and v.startswith(rest[:1])), None)
                if label:
                    probs[label] += math.exp(alt.logprob)
            total = sum(probs.values())
            return {v: p / total for v, p in probs.items()} if total > 0 else None
        start = end
    return None


@dataclass(frozen=True)
class PairResult:
    """One pair's two verdicts, as the judge gave them (first: X shown as A; second: X shown as B)."""

    prompt: int
    first: str | None
    second: str | None
    len_x: int
    len_y: int
    reward_x: float | None = None
    reward_y: float | None = None
    identical: bool = False
    probs_first: dict | None = None  # P(A), P(B), P(tie) of each order's verdict, where the judge gave them
    probs_second: dict | None = None

    def order_scores(self) -> tuple[float, float] | None:
        """X's score (1 win, 0.5 tie, 0 loss) in each order; None when a verdict failed to parse."""
        if self.first is None or self.second is None:
            return None
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[self.first], {"A": 0.0, "B": 1.0, "tie": 0.5}[self.second]

    def score(self) -> float | None:
        """X's score for the pair: the orders' common score, a tie where they disagree."""
        if self.identical:
            return 0.5
        orders = self.order_scores()
        return None if orders is None else orders[0] if orders[0] == orders[1] else 0.5

    def soft_score(self) -> float | None:
        """X's expected score over both orders from the verdict probabilities (P(X preferred) + P(tie) / 2, averaged
        over the orders) where both orders have them; otherwise score()."""
        if self.identical or self.score() is None or not (self.probs_first and self.probs_second):
            return self.score()
        first = self.probs_first["A"] + 0.5 * self.probs_first["tie"]
        second = self.probs_second["B"] + 0.5 * self.probs_second["tie"]
        return (first + second) / 2


def pair_stats(pairs: list[PairResult]) -> dict:
    """Win rates, CIs and judge diagnostics of one comparison's pairs (module docstring)."""
    scored = [(p, s) for p in pairs if (s := p.score()) is not None]
    scores = np.array([s for _, s in scored])
    prompts = np.array([p.prompt for p, _ in scored])
    per_prompt = [scores[prompts == g].mean() for g in np.unique(prompts)]
    wins, losses = int((scores == 1).sum()), int((scores == 0).sum())
    diffs = np.array([p.len_x - p.len_y for p, _ in scored], float)
    soft = np.array([p.soft_score() for p, _ in scored])
    out = {
        "prompts": len(per_prompt),
        "pairs": len(pairs),
        "wins": wins,
        "ties": len(scored) - wins - losses,
        "losses": losses,
        "unscored": len(pairs) - len(scored),
        "win_rate": estimate(per_prompt),
        "clopper_pearson": {
            "rate": wins / len(scored) if scored else float("nan"),
            "ci": list(binomial_ci(wins, len(scored))),
            "wins": wins,
            "n": len(scored),
            "counts": "wins / scored pairs; ties count as non-wins",
            "assumes": "pairs independent (a prompt's samples are not): an approximation",
        },
        "length_adjusted_win_rate": length_adjusted_win_rate(soft, diffs, prompts)
        | {
            "length": "characters",
            "labels": "soft" if any(p.probs_first and p.probs_second for p, _ in scored) else "hard",
        },
        "diagnostics": _diagnostics(pairs),
    }
    agreement = _reward_agreement(scored)
    if agreement is not None:
        out["reward_agreement"] = agreement
    return out


def _diagnostics(pairs: list[PairResult]) -> dict:
    """How the judge behaved on the pairs it was asked about (identical answers are not asked)."""
    judged = [p for p in pairs if not p.identical]
    both = [p for p in judged if p.first is not None and p.second is not None]
    verdicts = [v for p in judged for v in (p.first, p.second)]
    decided = [v for v in verdicts if v in ("A", "B")]
    return {
        "swap_consistency": _share([a == b for a, b in (p.order_scores() for p in both)]),
        "tie_rate": _share([p.score() == 0.5 for p in both]),
        "parse_failure_rate": _share([v is None for v in verdicts]),
        "first_position_rate": _share([v == "A" for v in decided]),  # 0.5: no position bias
        "identical_pairs": len(pairs) - len(judged),
    }


def _reward_agreement(scored: list[tuple[PairResult, float]]) -> dict | None:
    """The judge against ground-truth rewards, over the scored pairs whose rewards differ; None without any."""
    rated = [
        (p, s)
        for p, s in scored
        if p.reward_x is not None and p.reward_y is not None and abs(p.reward_x - p.reward_y) > 1e-9
    ]
    if not rated:
        return None
    agree = np.array([0.5 if s == 0.5 else float((s == 1) == (p.reward_x > p.reward_y)) for p, s in rated])
    groups = np.array([p.prompt for p, _ in rated])
    return {
        "agreement": estimate([agree[groups == g].mean() for g in np.unique(groups)]),
        "agree": int((agree == 1).sum()),
        "tie": int((agree == 0.5).sum()),
        "disagree": int((agree == 0).sum()),
        "pairs": len(rated),
        "counts": "pairs whose rewards differ; a judge tie counts half",
    }


# Below these a comparison's judge is not to be trusted (distrust). Swap consistency: the share of pairs whose
# verdict survives swapping the answers' places; a judge blind to content that always names one position keeps 0%,
# one that picks at random 50%. Parse failures: asks whose verdict could not be read.
MIN_SWAP_CONSISTENCY = 0.5
MAX_PARSE_FAILURES = 0.2


def distrust(comparison: dict) -> list[str]:
    """Why a judged comparison (`pair_stats`'s output) is not to be trusted, in words; empty when nothing in its
    diagnostics says so. Agreement with the task's reward counts against the judge only where its interval lies
    at or below chance (0.5); an interval that merely includes 0.5 is reported beside it, not held against it."""
    d, reasons = comparison["diagnostics"], []
    swap, first = d.get("swap_consistency"), d.get("first_position_rate")
    if swap is not None and not math.isnan(swap) and swap < MIN_SWAP_CONSISTENCY:
        bias = (
            f"; it named the first answer {first:.0%} of the time"
            if first is not None and not math.isnan(first)
            else ""
        )
        reasons.append(f"its verdict survived swapping the answers' places in {swap:.0%} of pairs{bias}")
    if d.get("parse_failure_rate", 0) > MAX_PARSE_FAILURES:
        reasons.append(f"{d['parse_failure_rate']:.0%} of its verdicts could not be read")
    agreement = (comparison.get("reward_agreement") or {}).get("agreement")
    if agreement and agreement["ci"][1] <= 0.5:
        reasons.append(
            f"it agreed with the task's reward on {agreement['mean']:.0%} of the pairs the reward separates "
            f"(95% CI [{agreement['ci'][0]:.2f}, {agreement['ci'][1]:.2f}]), no better than chance"
        )
    return reasons


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")
