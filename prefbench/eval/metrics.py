"""Per-checkpoint metrics on held-out prompts, each with its uncertainty.

The unit of resampling is the prompt: a prompt's samples are averaged first, and 95% intervals come
from a percentile bootstrap over prompts (seeded, so a report is reproducible). Comparisons with the
reference model are paired on the same prompts.

- reward: mean task reward of the sampled pass (and of the greedy pass), with its CI; win/tie/loss of
  each prompt's mean reward against the reference's on that prompt; the paired difference with its CI.
- KL(policy || reference): mean over the policy's own samples y of sum_t KL_t, KL_t the KL between the two
  next-token distributions at position t of the sample, estimated from what the engine kept with the sample
  (generate.Completion: the policy's log-probs of its k most likely tokens K_t and of the sampled token y_t)
  and the reference's log-probs of the same tokens (transformers: the reference is the only model run after
  generation):
      KL_t ~ sum_{v in K_t} pi(v) (log pi(v) - log pi_ref(v))  +  [y_t not in K_t] (log pi(y_t) - log pi_ref(y_t))
  The first term is exact; the second is an unbiased one-sample estimate of the rest of the sum, since y_t is a
  draw from pi(.|x, y<t). By the chain rule the sum's expectation over y ~ pi is the sequence KL, the same as the
  plain log pi(y|x) - log pi_ref(y|x) and the exact per-token KL over the whole vocabulary (which needs a forward of
  the policy too), with a variance between theirs (on the main job, standard errors 1.3-1.6 times the exact one's,
  the plain estimate's 2-2.4 times: docs/evaluation.md). Only unbiased when the samples are draws from the policy (temperature 1, top_p 1);
  otherwise it is left out, with the reason. Samples cut at max_tokens are scored as the prefixes they are: the
  estimate is then the KL between the two models' distributions over at-most-max_tokens continuations. On the
  reference's own samples the same sum (with its engine log-probs) is its KL to itself: the engine's
  disagreement with transformers, stored with the largest per-token log-prob difference ("engine_check").
- diversity: distinct-1/2 over all sampled answers (unique word n-grams / all word n-grams), mean
  per-token entropy of the policy's next-token distribution along its samples (the same way: exact over K_t,
  the sampled token's -log pi(y_t) for the rest; only for the policy's own samples), self-similarity
  (mean pairwise Jaccard similarity of the word sets of one prompt's samples); answer length in
  tokens and words, and the share cut at max_tokens.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from prefbench import models
from prefbench.data.batches import collate, prompt_totals
from prefbench.data.tokenize import Example
from prefbench.eval.engines import Completion, Sampling
from prefbench.eval.rewards import score_all
from prefbench.logprobs import completion_logps_at, completion_stats, shares_prompts
from prefbench.stats import estimate
from prefbench.task import words

# Bump when what evaluate_checkpoint stores changes: finished evaluations with another version are redone.
# 2: KL as the summed exact per-token KL along the samples; per-sample rewards stored.
# 3: KL and entropy from the engine's log-probs: exact over its top-k tokens, the rest sampled.
METRICS_VERSION = 3
KL_ESTIMATOR = (
    "per-token KL summed along the policy's own samples: exact over the engine's top-k tokens, the rest sampled"
)


def win_tie_loss(policy: np.ndarray, reference: np.ndarray, tol: float = 1e-9) -> dict:
    """Per prompt, policy's mean reward vs the reference's: counts, and the win rate (ties count half) with CI."""
    d = np.asarray(policy, float) - np.asarray(reference, float)
    win, loss = d > tol, d < -tol
    score = win + 0.5 * (~win & ~loss)
    return {
        "win": int(win.sum()),
        "tie": int((~win & ~loss).sum()),
        "loss": int(loss.sum()),
        "win_rate": estimate(score),
    }


def rewards_of(prompts: list, gens: list[list[Completion]], reward) -> np.ndarray:
    """[prompts, samples] rewards of the generated answers (rewards.score_all)."""
    return score_all(reward, prompts, [[c.text for c in comps] for comps in gens])


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(ws[i : i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_similarity(gens: list[list[Completion]]) -> float:
    """Mean over prompts (with >= 2 samples) of the mean pairwise Jaccard similarity of word sets."""
    per_prompt = []
    for comps in gens:
        sets = [set(words(c.text)) for c in comps]
        pairs = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in itertools.combinations(sets, 2)]
        if pairs:
            per_prompt.append(float(np.mean(pairs)))
    return float(np.mean(per_prompt)) if per_prompt else float("nan")


def _forwards(model, examples: list, rows: list[tuple[int, int, int]], batch_rows: int):
    """(row indices, Forward) batches of `rows` (prompt example, completion example, which completion), a prompt's
    rows in one batch so that its prompt is computed once."""
    device = next(model.parameters()).device
    layout = "shared" if shares_prompts(model) else "rows"
    totals = prompt_totals(rows, examples)
    order = sorted(
        range(len(rows)), key=lambda k: (totals[examples[rows[k][0]].prompt], examples[rows[k][0]].prompt, k)
    )
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    model.eval()
    for start in range(0, len(order), batch_rows):
        batch = order[start : start + batch_rows]
        yield batch, collate([rows[k] for k in batch], examples, pad, device, layout)


def row_stats(model, examples: list, rows: list[tuple[int, int, int]], batch_rows: int = 16) -> dict[str, np.ndarray]:
    """Per row (prompt example, completion example, which completion), in row order: the completion's summed
    log-probs ("logp"), summed per-token entropies ("entropy") and token count ("tokens") under `model`
    (logprobs.completion_stats)."""
    out: dict[str, np.ndarray] = {}
    for batch, fwd in _forwards(model, examples, rows, batch_rows):
        for name, values in completion_stats(model, fwd).items():
            out.setdefault(name, np.zeros(len(rows)))[batch] = values.tolist()
    return out


def _listed(c: Completion) -> tuple[np.ndarray, np.ndarray]:
    """A completion's engine log-probs as [tokens, k + 1] ids and values: each position's top-k, then the sampled token."""
    if not (len(c.logprobs) == len(c.top_ids) == len(c.top_logprobs) == len(c.token_ids)):
        raise ValueError("a completion without the engine's log-probs of each token (generate.Completion)")
    ids = np.concatenate(
        [np.array(c.top_ids, dtype=np.int64).reshape(len(c.token_ids), -1), np.array(c.token_ids)[:, None]], 1
    )
    values = np.concatenate(
        [np.array(c.top_logprobs, dtype=np.float64).reshape(len(c.token_ids), -1), np.array(c.logprobs)[:, None]], 1
    )
    return ids, values


def _top_and_tail(ids: np.ndarray, policy: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per position, sum_{v in top} pi(v) (policy(v) - other(v)) + [sampled not in top] (policy - other)(sampled):
    the KL from `policy` to `other` log-probs of the listed tokens (other = 0: minus the entropy), exact over the top-k,
    the rest of the vocabulary estimated by the sampled token (the last column)."""
    p = np.exp(policy[:, :-1])
    top = np.where(p > 0, p * (policy[:, :-1] - other[:, :-1]), 0.0).sum(1)
    tail = ~(ids[:, :-1] == ids[:, -1:]).any(1)
    return top + tail * (policy[:, -1] - other[:, -1])


def entropy_sums(gens: list[list[Completion]]) -> np.ndarray:
    """[prompts, samples] summed per-token entropy of the policy along its own samples, from the engine's log-probs."""

    def entropy(c: Completion) -> float:
        ids, policy = _listed(c)
        return -_top_and_tail(ids, policy, np.zeros_like(policy)).sum()

    return np.array([[entropy(c) for c in comps] for comps in gens])


def kl_sums(
    reference, prompt_ids: list[list[int]], gens: list[list[Completion]], batch_rows: int = 16
) -> dict[str, np.ndarray]:
    """[prompts, samples] arrays: "kl", the summed per-token KL(policy || reference) along each sample, from the
    engine's log-probs of the policy and `reference` run on the tokens they list (logprobs.completion_logps_at);
    "max_diff", the largest |engine - reference| log-prob of a listed token (the engine's disagreement with
    transformers, where the policy is the reference)."""
    import torch  # deferred: torch: a second to import; prefbench check and report do without

    flat = [(i, j) for i, comps in enumerate(gens) for j in range(len(comps))]
    listed = [_listed(gens[i][j]) for i, j in flat]
    examples = [Example(tuple(prompt_ids[i]), (tuple(gens[i][j].token_ids),)) for i, j in flat]
    shape = (len(gens), max(len(c) for c in gens))
    out = {"kl": np.zeros(shape), "max_diff": np.zeros(shape)}
    device = next(reference.parameters()).device
    for batch, fwd in _forwards(reference, examples, [(k, k, 0) for k in range(len(flat))], batch_rows):
        ids, policy = (
            np.concatenate([listed[k][part] for k in batch]) for part in (0, 1)
        )  # by row, positions in order
        row = np.concatenate([np.full(len(listed[k][0]), r) for r, k in enumerate(batch)])
        order = torch.argsort(fwd.rows.cpu(), stable=True)  # the forward's targets in that order
        at = torch.empty((len(order), ids.shape[1]), dtype=torch.long)
        at[order] = torch.from_numpy(ids)
        theirs = completion_logps_at(reference, fwd, at.to(device)).double().cpu()[order].numpy()
        sums, worst = np.bincount(row, _top_and_tail(ids, policy, theirs), len(batch)), np.zeros(len(batch))
        np.maximum.at(worst, row, np.abs(policy - theirs).max(1))
        for r, k in enumerate(batch):
            out["kl"][flat[k]], out["max_diff"][flat[k]] = sums[r], worst[r]
    return out


def evaluate_checkpoint(
    policy_path: Path,
    reference_path: Path,
    prompts: list,
    prompt_ids: list[list[int]],
    gens: dict[str, list[list[Completion]]],
    rewards: dict[str, np.ndarray] | None,
    ref_rewards: dict[str, np.ndarray] | None,
    samplings: list[Sampling],
    ref_model=None,
) -> dict:
    """Metrics of one checkpoint against the reference, from its generations and both models' rewards on the
    same prompts.

    gens: {sampling name: [per prompt: completions]}; rewards / ref_rewards: {sampling name: [prompts, samples]
    rewards (rewards_of)} of this checkpoint's and the reference's answers, scored once by the caller, or None
    (no reward: the reward fields are left out). The
    reference's own row is this function with policy_path == reference_path (its KL is 0 and is not computed).
    """
    by_name = {s.name: s for s in samplings}
    out: dict = {"prompts": len(prompts)}
    for name, comps in gens.items():
        n_tokens = np.array([[len(c.token_ids) for c in cs] for cs in comps], float)
        n_words = np.array([[len(words(c.text)) for c in cs] for cs in comps], float)
        out[name] = {
            "length_tokens": estimate(n_tokens.mean(1)),
            "length_words": estimate(n_words.mean(1)),
            "truncated_share": float(np.mean([c.finish_reason == "length" for cs in comps for c in cs])),
        }
        if rewards is not None:  # eval.reward: none leaves every reward field out
            r, r_ref = rewards[name].mean(1), ref_rewards[name].mean(1)
            out[name] |= {
                "reward": estimate(r),
                "reward_minus_reference": estimate(r - r_ref),
                "vs_reference": win_tie_loss(r, r_ref),
                "per_prompt_reward": [float(v) for v in r],  # for paired comparisons between runs (prefbench compare)
                "per_sample_reward": rewards[name].tolist(),  # [prompts][samples]
            }
        if by_name[name].n > 1:
            texts = [c.text for cs in comps for c in cs]
            out[name]["distinct_1"] = distinct_n(texts, 1)
            out[name]["distinct_2"] = distinct_n(texts, 2)
            out[name]["self_similarity"] = self_similarity(comps)
    sampled = [s for s in samplings if s.n > 1 or s.temperature > 0]
    if sampled:
        s = sampled[0]
        comps = gens[s.name]
        itself = Path(policy_path).resolve() == Path(reference_path).resolve()
        if not s.from_policy:
            reason = (
                f"sampling {s.name!r} is not the policy's own distribution (temperature {s.temperature}, top_p {s.top_p}); "
                f"KL and entropy need temperature 1, top_p 1"
            )
            out[s.name]["entropy_per_token"] = {"mean": None, "reason": reason}
            out["kl"] = {"mean": None, "reason": reason}
            return out
        tokens = np.array([[len(c.token_ids) for c in cs] for cs in comps], float)
        entropy = entropy_sums(comps).sum(1) / np.maximum(tokens.sum(1), 1)
        # per prompt too: the objective-level statistics and claims read it (does the policy turn deterministic?)
        out[s.name]["entropy_per_token"] = estimate(entropy) | {"per_prompt": [float(v) for v in entropy]}
        stats = kl_sums(ref_model or models.load_model(reference_path), prompt_ids, comps)
        per_prompt_kl = stats["kl"].mean(1)
        if itself:  # 0 by definition; the estimate on its own samples is the engine's disagreement with transformers
            out["kl"] = {
                "mean": 0.0,
                "ci": [0.0, 0.0],
                "n": len(prompts),
                "sampling": s.name,
                "per_prompt": [0.0] * len(prompts),
                "engine_check": {
                    "kl_to_itself": estimate(per_prompt_kl),
                    "max_token_logp_diff": float(stats["max_diff"].max()),
                },
            }
        else:
            out["kl"] = estimate(per_prompt_kl) | {
                "sampling": s.name,
                "estimator": KL_ESTIMATOR,
                "per_prompt": [float(v) for v in per_prompt_kl],
            }
    return out


def preference_metrics(examples: list, policy: np.ndarray, reference: np.ndarray, counts: np.ndarray) -> dict:
    """Held-out preference metrics of a checkpoint from the summed log-probs of each held-out example's
    completions under it (`policy`) and under the reference, [examples, completions] (paired: chosen,
    rejected; unpaired: the one completion), and their token counts. Needs no generation.

    Paired: the implicit-reward margin of each pair, (log pi/pi_ref)(chosen) - (log pi/pi_ref)(rejected), in
    nats (beta times it is the DPO reward margin, so its sign does not depend on beta); accuracy, the share of
    pairs whose margin is above 0 (a tie counts half: the reference itself scores 0.5); chosen and rejected
    log-likelihood per token. Unpaired: per label (desirable, undesirable) the log-ratio per example and the
    log-likelihood per token. Every estimate with its bootstrap interval over held-out examples."""
    ratio = policy - reference
    per_token = policy / np.maximum(counts, 1)
    if policy.shape[1] == 2:
        margin = ratio[:, 0] - ratio[:, 1]
        accuracy = (margin > 0) + 0.5 * (margin == 0)
        return {
            "data": "paired",
            "pairs": len(margin),
            "accuracy": estimate(accuracy),
            "margin": estimate(margin),
            "logp_per_token": {"chosen": estimate(per_token[:, 0]), "rejected": estimate(per_token[:, 1])},
            "per_pair": {
                "accuracy": accuracy.tolist(),
                "margin": margin.tolist(),
                "chosen_logp_per_token": per_token[:, 0].tolist(),
            },
        }
    labels = np.array([bool(e.label) for e in examples])
    out: dict = {"data": "unpaired", "examples": len(labels)}
    for name, mask in (("desirable", labels), ("undesirable", ~labels)):
        out[name] = {
            "n": int(mask.sum()),
            "log_ratio": estimate(ratio[mask, 0]),
            "logp_per_token": estimate(per_token[mask, 0]),
        }
    return out
