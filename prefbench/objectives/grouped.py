"""Grouped objectives: several answers sampled for one prompt, each with a reward; the online baseline GRPO.

Its data exists only as training goes (prefbench/online.py samples a group of answers per prompt with the policy as it
is and scores them), so it trains only as an `online:` objective (`online_only`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from prefbench.objectives.base import Objective, ObjectiveOutput, _check_batch, require_range

ADVANTAGE_EPS = 1e-4  # TRL 1.16's GRPOTrainer: (r - mean) / (std + 1e-4)


@dataclass(frozen=True)
class GroupedLogps:
    """Answers sampled in groups, one value per answer: `policy` its summed log-prob now, `old` under the policy that
    sampled it (no gradient), `tokens` its length, `advantages` its reward normalised within its prompt's group."""

    policy: Tensor
    old: Tensor
    tokens: Tensor
    advantages: Tensor

    def __post_init__(self) -> None:
        _check_batch(
            "GroupedLogps", {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, {"tokens": self.tokens}
        )


def group_advantages(rewards: Tensor) -> Tensor:
    """[prompts, G] rewards -> advantages (r - group mean) / (group std + 1e-4), the std unbiased (n - 1), as TRL's
    GRPO (Shao et al. 2024, §4.1.2, outcome supervision). A group whose answers all score alike gets zeros."""
    mean, std = rewards.mean(-1, keepdim=True), rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


@dataclass
class GRPO(Objective):
    """GRPO: per answer -min(rho A, clip(rho, 1 - eps, 1 + eps) A), A its group-normalised advantage and rho the
    policy's probability of it over the sampling policy's, per token: rho = exp((S - S_old) / |o|). Shao et al. 2024,
    DeepSeekMath, arXiv:2402.03300, Eq. 3 (its 1/|o_i| sum over tokens), eps = 0.2; no KL term (TRL 1.16's default
    beta 0). Deliberate difference: the ratio is the answer's per-token geometric mean, not one ratio per token
    (prefbench's log-prob pass returns sums): TRL 1.16's loss_type="grpo" with importance_sampling_level="sequence"
    (GSPO's sequence-level clipping, Zheng et al. 2025, arXiv:2507.18071), equal to it at any ratio. At rho = 1 (one
    update per sampled round) loss and gradient also equal per-token "grpo"'s, -A (1/|o|) sum_t grad log pi(o_t)
    (tests/test_objectives_trl.py runs TRL's own loss code for both; TRL's default loss_type is "dapo", which
    normalises by the batch's tokens instead). Rewards are the advantages.
    """

    data = "grouped"
    needs_reference = False
    online_only = True
    paper = "Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models, arXiv:2402.03300"
    epsilon: float = 0.2

    def validate(self) -> None:
        require_range(self, "epsilon", 0.0, 1.0, low_open=True, high_open=True)

    def loss(self, b: GroupedLogps) -> ObjectiveOutput:
        # the per-token log-ratio clamped at +-20 nats: a numerical guard (e^20), far outside any real update
        rho = torch.exp(((b.policy - b.old) / b.tokens).clamp(-20.0, 20.0))
        a, eps = b.advantages, self.epsilon
        losses = -torch.minimum(rho * a, rho.clamp(1 - eps, 1 + eps) * a)
        metrics = {
            "ratio": rho.detach().mean(),
            "clip_fraction": ((rho < 1 - eps) | (rho > 1 + eps)).to(rho.dtype).mean(),
            "advantage_abs": a.abs().mean(),
        }
        return ObjectiveOutput(losses=losses, metrics=metrics, rewards=a.detach())
