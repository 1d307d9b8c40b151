"""Standard errors of three KL(policy || reference) estimators on one evaluated checkpoint's own samples.

    .venv/bin/python bench/kl_estimators.py CHECKPOINT RECIPE [--set KEY=VALUE ...]

Reads the checkpoint's sampled pass from the generation cache (as `prefbench evaluate RECIPE` left it; the
engine starts only for what is missing) and scores every sample with the policy and the recipe's model in
transformers. Per sample:

    exact   sum over the sample's positions of the exact KL between the two next-token distributions (what
            prefbench reports, metrics.KL_ESTIMATOR)
    k3      sum of r - 1 - log r, r = pi_ref / pi at each sampled token (needs only sampled-token log-probs)
    plain   log pi(y|x) - log pi_ref(y|x) (likewise)

and prints each one's mean over prompts and its standard error (prompts are the unit, their samples averaged
first, as in the report). All three are unbiased; the question is their variance (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from prefbench import models
from prefbench.data.batches import collate
from prefbench.data.tokenize import Example
from prefbench.eval import run as eval_run
from prefbench.eval.generate import prompt_ids
from prefbench.logprobs import _completion_hidden, shares_prompts
from prefbench.recipe import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    prompts = [r["prompt"] for r in eval_run.prompt_records(recipe)]
    gens, _ = eval_run.generate_all(recipe, [SimpleNamespace(checkpoint=args.checkpoint)], prompts)
    samples = gens[str(args.checkpoint)]["sampled"]
    ids = prompt_ids(models.load_tokenizer(str(args.checkpoint)), prompts)
    policy, reference = models.load_model(args.checkpoint), models.load_model(models.resolve(recipe.model.name))
    values = {name: np.zeros((len(samples), len(samples[0]))) for name in ("exact", "k3", "plain")}
    with torch.no_grad():
        for i, comps in enumerate(samples):
            examples = [Example(tuple(ids[i]), (tuple(c.token_ids),)) for c in comps]
            fwd = collate([(k, k, 0) for k in range(len(comps))], examples, 0, "cpu", shares_prompts(policy))
            (a, head, _), (b, ref_head, _) = _completion_hidden(policy, fwd), _completion_hidden(reference, fwd)
            lp, lq = F.linear(a, head.weight, head.bias).log_softmax(-1), F.linear(b, ref_head.weight, ref_head.bias).log_softmax(-1)
            exact = (lp.exp() * (lp - lq)).sum(-1)
            log_r = (lq - lp).gather(1, fwd.targets[:, None]).squeeze(1)
            for j in range(len(comps)):
                mine = fwd.rows == j
                values["exact"][i, j] = exact[mine].sum()
                values["k3"][i, j] = (torch.expm1(log_r[mine]) - log_r[mine]).sum()
                values["plain"][i, j] = -log_r[mine].sum()
    for name, v in values.items():
        per_prompt = v.mean(1)
        print(f"{name:6s} mean {per_prompt.mean():.4f}  standard error {per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)):.4f}")


if __name__ == "__main__":
    main()
