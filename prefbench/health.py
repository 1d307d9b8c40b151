"""Training health: what in a unit's training and evaluation says that its numbers should not be read as the
objective's, found from the stored records and stored with the unit's results (summary.json and
eval_generation.json, under "health"), printed at the end of training and listed in the report's first lines.

Each finding is {"code", "step" (or None), "text"}: one line in words, its numbers in it. The thresholds are far from
what healthy runs show; the figures beside each are from this project's stored runs (results/*, 16 steps, SmolLM2-135M):

  reference_is_policy     every step after the second has policy log-probs equal to the reference's, to 1e-6 nats a
                          token: the reference log-probs are not the reference model's but the policy's own, and the
                          loss cannot move from its value at initialisation (trl#1962).
  diverged                the chosen (desirable) answers' log-prob a token fell more than 1 nat below the
                          reference's (each token e times less likely), and the rejected ones' too: the policy no
                          longer models its own training text (a learning rate of 1e-1 on the tiny model: 6 to 26
                          nats in 12 steps; stored runs: about 0.1, from DPO's rewards at beta 0.1).
  likelihood_displacement the chosen answers' log-prob a token fell more than 0.5 nats below the reference's while
                          the margin over the rejected grew: the objective pushes both down and wins by the rejected
                          falling faster (Razin et al. 2024, arXiv:2410.08847).
  grad_spike              a step's gradient norm above 10 times the median of the steps before it (stored runs: at
                          most 7.6 times, KTO with 10x class weights).
  kl_exploded             the held-out KL to the reference above 1 nat a token (stored runs: below 0.1).
  kl_negative             the held-out KL estimate's whole 95% interval below 0: a KL cannot be negative, so policy
                          and reference log-probs were computed differently (template, tokenizer, precision).
  truncated               more than half of the held-out answers stopped at the length cap: rewards, judges and
                          lengths read cut-off answers.

A non-finite loss or gradient norm is not a finding: training stops before that update with the step and the last
good checkpoint named (prefbench.train)."""

from __future__ import annotations

import math
import statistics

COLLAPSED_NATS = 1.0
DISPLACED_NATS = 0.5
SPIKE = 10.0
KL_PER_TOKEN = 1.0
TRUNCATED = 0.5


def _finding(code: str, step: int | None, text: str) -> dict:
    return {"code": code, "step": step, "text": text}


def _late(records: list[dict], key: str) -> float | None:
    """The mean of `key` over the last three steps that logged it (one step's batch is a handful of examples)."""
    values = [r[key] for r in records if key in r][-3:]
    return sum(values) / len(values) if values else None


def training_findings(records: list[dict]) -> list[dict]:
    """The findings in one unit's metrics.jsonl records (one per step). Per-token log-ratios to the reference are
    logged for objectives with a reference (logratio_per_token/chosen, /rejected; unpaired: /desirable,
    /undesirable); without one only the gradient is read."""
    out = []
    chosen, rejected = next(
        ((f"logratio_per_token/{a}", f"logratio_per_token/{b}") for a, b in (("chosen", "rejected"), ("desirable", "undesirable"))
         if any(f"logratio_per_token/{a}" in r for r in records)),
        (None, None),
    )  # fmt: skip
    later = [r for r in records if r["step"] > 2]
    if chosen and later and all(abs(r.get(k, 0.0)) < 1e-6 for r in later for k in (chosen, rejected)):
        out.append(
            _finding(
                "reference_is_policy",
                later[0]["step"],
                f"policy log-probs equal the reference's at every step from step {later[0]['step']} on: the reference "
                "log-probs are the policy's own, and the loss cannot move from its initial value",
            )
        )
    elif chosen and (c := _late(records, chosen)) is not None:
        r = _late(records, rejected)
        margins = _late(records, "rewards/margins")
        if c < -COLLAPSED_NATS and r is not None and r < -COLLAPSED_NATS:
            out.append(
                _finding(
                    "diverged",
                    records[-1]["step"],
                    f"diverged: chosen answers' log-prob fell {-c:.1f} nats a token below the reference's, rejected "
                    f"{-r:.1f}: the policy no longer models its training text (learning rate too high?)",
                )
            )
        elif c < -DISPLACED_NATS and margins is not None and margins > max(records[0].get("rewards/margins", 0.0), 0.0):
            out.append(
                _finding(
                    "likelihood_displacement",
                    records[-1]["step"],
                    f"likelihood displacement: chosen answers' log-prob fell {-c:.2f} nats a token below the "
                    f"reference's while the margin grew to {margins:.3f}",
                )
            )
    norms = [r["grad_norm"] for r in records]
    for i in range(3, len(norms)):
        if (median := statistics.median(norms[:i])) > 0 and norms[i] > SPIKE * median:
            out.append(
                _finding(
                    "grad_spike",
                    records[i]["step"],
                    f"gradient norm {norms[i]:.3g} at step {records[i]['step']}, {norms[i] / median:.0f} times the "
                    f"median of the steps before ({median:.3g})",
                )
            )
            break  # the first spike; the metrics show the rest
    return out


def generation_findings(generation: dict, max_tokens: int) -> list[dict]:
    """The findings in one unit's held-out generation results (eval_generation.json's metrics)."""
    out = []
    kl, sampled = generation.get("kl"), generation.get("sampled") or {}
    length = (sampled.get("length_tokens") or {}).get("mean")
    if kl and kl.get("mean") is not None and length:
        if kl["mean"] / length > KL_PER_TOKEN:
            out.append(
                _finding(
                    "kl_exploded",
                    None,
                    f"KL to the reference {kl['mean']:.1f} nats over {length:.0f}-token answers "
                    f"({kl['mean'] / length:.2f} a token): the policy left the reference far behind",
                )
            )
        if kl.get("ci") and kl["ci"][1] is not None and kl["ci"][1] < 0:
            out.append(
                _finding(
                    "kl_negative",
                    None,
                    f"KL estimate {kl['mean']:.3f} with its 95% interval below 0: policy and reference log-probs "
                    "were computed differently (chat template, tokenizer or precision)",
                )
            )
    share = sampled.get("truncated_share")
    if share is not None and not math.isnan(share) and share > TRUNCATED:
        out.append(
            _finding(
                "truncated",
                None,
                f"{share:.0%} of answers stopped at the length cap ({max_tokens} tokens): rewards and judges read "
                "cut-off answers (raise eval.generation.sampling.max_tokens)",
            )
        )
    return out
