"""What must not change an objective's gradient: how a step's examples are cut into micro-batches. A ranking that
moves with the micro-batch size measures the memory budget, not the objective (trl#2175: gradient accumulation
did not equal the full batch; trl PR #2153: KTO's KL estimate over the wrong batch). The tiny random model in fp32,
gradients compared to 1e-5."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from prefbench.check import parse_recipe
from prefbench.data.batches import micro_batches, schedule
from prefbench.objectives import OBJECTIVES
from prefbench.runner import prepare
from prefbench.train import _forward_backward, set_up

# every objective that trains on a fixed data set (GRPO samples as it trains: tests/test_online.py)
OFFLINE = [name for name, cls in OBJECTIVES.items() if not cls.online_only]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "prefbench" / "data" / "embedded" / "smoke.jsonl"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("inv")
    recipe = parse_recipe(
        {
            "name": "inv",
            "output_dir": str(out),
            "model": {"name": "tiny:small"},
            "data": {"source": str(DATA), "eval_fraction": 0.1, "max_length": 64, "max_prompt_length": 32},
            "objectives": [{"name": n} for n in OFFLINE],
            "train": {"steps": 2, "batch_size": 8, "micro_batch_size": 8, "lr": 1e-2, "warmup_ratio": 0.0},
            "seeds": [0],
        }
    )
    data, ref = prepare(recipe)
    return recipe, data, ref, out


def _gradients_at_step_two(recipe, name, data, ref, out) -> dict[int, torch.Tensor]:
    """One step at micro-batch 8 (so that the policy is no longer the reference and every batch statistic, KTO's z0
    and BCO's reward mean, is away from zero), then the second step's gradient with micro-batches of 8, 4, 2, 1,
    each from the same state."""
    u = set_up(recipe, recipe.objective(name), 0, out / name, None, 0, 1, torch.device("cpu"))
    plan = schedule([e.length() for e in data.train], 8, 2, 0, recipe.train.bucket_batches)

    def gradient(step: int, micro: int) -> torch.Tensor:
        cut = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, micro_batch_size=micro))
        batches = micro_batches(u.objective, data, plan[step], cut, 0, 1, u.layout)
        assert len(batches) == 8 // micro
        u.optimizer.zero_grad(set_to_none=True)
        _forward_backward(u, batches, data, ref)
        return torch.cat([p.grad.flatten() for p in u.params])

    gradient(0, 8)
    u.optimizer.step()
    u.objective.end_step()
    state = copy.deepcopy(u.objective)  # BCO collects the step's rewards as it goes: each cut starts from the same
    grads = {}
    for micro in (8, 4, 2, 1):
        u.objective = copy.deepcopy(state)
        grads[micro] = gradient(1, micro)
    return grads


@pytest.mark.parametrize("name", OFFLINE)
def test_accumulated_micro_batches_give_the_full_batch_gradient(prepared, name):
    """A step of 8 examples: one micro-batch of 8 and accumulated micro-batches of 4, 2 and 1 give the same
    gradient. For KTO this holds because its reference point z0 is the mean over the whole step's mismatched
    pairs (objectives/unpaired.py says so), for BCO because its reward mean moves once per step."""
    recipe, data, ref, out = prepared
    grads = _gradients_at_step_two(recipe, name, data, ref, out)
    whole = grads.pop(8)
    assert whole.norm() > 1e-3  # a real gradient, not zeros compared with zeros
    # relative to the gradient's norm: fp32 sums in another order differ by rounding (SPPO's gradients are ~1e3)
    gaps = {m: float((g - whole).norm() / whole.norm()) for m, g in grads.items()}
    if OBJECTIVES[name].batch_defined:  # declared: the declaration must be true
        assert max(gaps.values()) > 1e-3, gaps
    else:
        assert max(gaps.values()) < 1e-5, gaps
