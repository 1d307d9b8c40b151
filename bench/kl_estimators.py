"""The KL and entropy phase two ways on the same samples: its time, and the standard errors of KL estimators.

    .venv/bin/python bench/kl_estimators.py RECIPE [--set KEY=VALUE ...]

Takes the recipe's reference and trained checkpoints (as `prefbench run RECIPE` left them), reads their sampled
pass from the generation cache (the engine starts only for what is missing) and times, alternating, what the
evaluation's "KL and entropy" phase does per unit:

    engine       prefbench's (eval/metrics.py): KL and entropy from the log-probs the engine kept with each sample,
                 the reference run once over the tokens they list (on the reference's own samples too: the
                 engine check)
    transformers what prefbench did before (metrics version 2): each checkpoint loaded again in transformers, it and
                 the reference run over its samples for the exact per-token KL and entropy over the whole
                 vocabulary (the reference: its entropy)

Then, per checkpoint, each estimator's mean over prompts and standard error (prompts are the unit, their samples
averaged first, as in the report), all from transformers' full distributions except "engine":

    exact   sum over the sample's positions of the exact KL between the two next-token distributions
    top-k   the exact terms of the policy's k most likely tokens, the sampled token's log-ratio when it is not one
            of them (k = 20 is what the engine lists: "engine" is it with the engine's own log-probs)
    k3      sum of r - 1 - log r, r = pi_ref / pi at each sampled token
    plain   log pi(y|x) - log pi_ref(y|x)

All are unbiased for the sequence KL; the question is their variance (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from prefbench import models
from prefbench.check import load_recipe
from prefbench.data.tokenize import Example
from prefbench.eval import metrics as M
from prefbench.eval.engines import TOP_LOGPROBS, prompt_ids
from prefbench.eval.stages import base as eval_run
from prefbench.logprobs import _completion_hidden

KS = (5, TOP_LOGPROBS, 50)


def transformers_terms(policy, reference, ids: list[list[int]], samples: list) -> dict[str, np.ndarray]:
    """Per sample [prompts, samples], every estimator's sum from both models' full next-token distributions."""
    flat = [(i, j) for i, comps in enumerate(samples) for j in range(len(comps))]
    examples = [Example(tuple(ids[i]), (tuple(samples[i][j].token_ids),)) for i, j in flat]
    names = ["exact", *(f"top-{k}" for k in KS), "k3", "plain", "entropy"]
    out = {name: np.zeros((len(samples), len(samples[0]))) for name in names}
    with torch.no_grad():
        for batch, fwd in M._forwards(policy, examples, [(k, k, 0) for k in range(len(flat))], 16):
            (a, head, _), (b, ref_head, _) = _completion_hidden(policy, fwd), _completion_hidden(reference, fwd)
            lp = F.linear(a, head.weight, head.bias).double().log_softmax(-1)
            lq = F.linear(b, ref_head.weight, ref_head.bias).double().log_softmax(-1)
            log_r = (lq - lp).gather(1, fwd.targets[:, None]).squeeze(1)
            terms = {
                "exact": (lp.exp() * (lp - lq)).sum(-1),
                "k3": torch.expm1(log_r) - log_r,
                "plain": -log_r,
                "entropy": -(lp.exp() * lp).sum(-1),
            }
            for k in KS:
                top = lp.topk(k, -1).indices
                tail = ~(top == fwd.targets[:, None]).any(1)
                terms[f"top-{k}"] = (lp.exp().gather(1, top) * (lp.gather(1, top) - lq.gather(1, top))).sum(
                    -1
                ) + tail * -log_r
            for name, t in terms.items():
                sums = torch.zeros(len(batch), dtype=t.dtype).index_add(0, fwd.rows, t)
                for r, k in enumerate(batch):
                    out[name][flat[k]] = sums[r].item()
    return out


def old_phase(unit, reference, ids, samples) -> None:
    """The phase as metrics version 2 ran it for one unit: the reference's entropy along its own samples; a
    checkpoint loaded again, it and the reference run over its samples, the exact per-token KL and entropy in fp32
    (its logprobs.completion_stats with a reference, less the bookkeeping)."""
    examples = [Example(tuple(ids[i]), (tuple(c.token_ids),)) for i, comps in enumerate(samples) for c in comps]
    rows = [(k, k, 0) for k in range(len(examples))]
    if unit.name == "reference":
        M.row_stats(reference, examples, rows)
        return
    policy = models.load_model(unit.checkpoint)
    with torch.no_grad():
        for _, fwd in M._forwards(policy, examples, rows, 16):
            (a, head, _), (b, ref_head, _) = _completion_hidden(policy, fwd), _completion_hidden(reference, fwd)
            chunk = max(1, (1 << 23) // head.weight.shape[0] // 2)
            kept = []
            for start in range(0, a.shape[0], chunk):
                target = fwd.targets[start : start + chunk, None]
                lp = F.linear(a[start : start + chunk], head.weight, head.bias).log_softmax(-1)
                p = lp.exp()
                kept += [lp.gather(1, target), -torch.where(p > 0, p * lp, 0.0).sum(-1)]
                lq = F.linear(b[start : start + chunk], ref_head.weight, ref_head.bias).log_softmax(-1)
                kept += [lq.gather(1, target), torch.where(p > 0, p * (lp - lq), 0.0).sum(-1)]


def new_phase(reference, ids, samples) -> None:
    M.entropy_sums(samples)
    M.kl_sums(reference, ids, samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    torch.manual_seed(0)
    units = list(eval_run.eval_units(recipe).values())
    prompts = [r["prompt"] for r in eval_run.prompt_records(recipe)]
    gens, _ = eval_run.generate_all(recipe, units, prompts)
    samples = {u.name: gens[str(u.checkpoint)]["sampled"] for u in units}
    ids = prompt_ids(models.load_tokenizer(recipe.model.name), prompts)
    reference = models.load_model(units[0].checkpoint)

    seconds = {"transformers": 0.0, "engine": 0.0}
    for n, u in enumerate(units):  # each unit both ways, first one then the other, so that drift falls on both
        for way in ("transformers", "engine")[:: 1 if n % 2 else -1]:
            started = time.perf_counter()
            old_phase(u, reference, ids, samples[u.name]) if way == "transformers" else new_phase(
                reference, ids, samples[u.name]
            )
            seconds[way] += time.perf_counter() - started
    print(
        f"KL and entropy phase, {len(units)} units, {sum(map(len, samples['reference']))} samples each: "
        f"transformers {seconds['transformers']:.1f} s, engine {seconds['engine']:.1f} s "
        f"({seconds['engine'] / seconds['transformers']:.2f}x)"
    )

    se = lambda v: v.mean(1).std(ddof=1) / np.sqrt(v.shape[0])
    for u in units[1:]:
        policy = models.load_model(u.checkpoint)
        terms = transformers_terms(policy, reference, ids, samples[u.name])
        engine = M.kl_sums(reference, ids, samples[u.name])
        terms["engine"] = engine["kl"]
        print(
            f"{u.name}: engine vs transformers, same tokens listed: max |KL difference| per sample "
            f"{np.abs(engine['kl'] - terms[f'top-{TOP_LOGPROBS}']).max():.2e} nats"
        )
        for name in ("exact", "engine", *(f"top-{k}" for k in KS), "k3", "plain"):
            print(f"  {name:8s} mean {terms[name].mean(1).mean():.4f}  standard error {se(terms[name]):.4f}")
        entropy = M.entropy_sums(samples[u.name])
        tokens = np.array([[len(c.token_ids) for c in cs] for cs in samples[u.name]])
        print(
            f"  entropy/token: engine {np.mean(entropy.sum(1) / tokens.sum(1)):.4f} (se {np.std(entropy.sum(1) / tokens.sum(1), ddof=1) / np.sqrt(len(tokens)):.4f}), "
            f"exact {np.mean(terms['entropy'].sum(1) / tokens.sum(1)):.4f} (se {np.std(terms['entropy'].sum(1) / tokens.sum(1), ddof=1) / np.sqrt(len(tokens)):.4f})"
        )


if __name__ == "__main__":
    main()
