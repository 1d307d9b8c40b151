"""Unpaired objectives: (prompt, completion, desirable?) examples, h = S_policy(y) - S_ref(y).

KTO and its reference point z0 (shared/reference/objectives.md §3):
  z0 = "mismatched"  max(0, mean_i [S_pi(y'_i|x_i) - S_ref(y'_i|x_i)]) over mismatched pairs
                     (x_i with another example's completion), detached: the estimate of
                     KL(pi || ref) that TRL and HALOs use. It never looks at the labels.
  z0 = "batch_mean"  mean_i h(y_i|x_i) over the labelled examples themselves, detached, unclamped:
                     no extra forward, but it tracks the batch's label mix, and at batch size 1 it
                     equals h: the loss reads 0.5 whatever h is, and its gradient is a constant
                     beta/4 that never saturates (z0 is detached).
  z0 = "none"        z0 = 0.
The batch z0 is averaged over is the optimizer step's, as the paper defines it (the trainer passes every
micro-batch the mismatched pairs of the whole step, gathered from every process): cutting a step into
micro-batches or processes changes nothing (tests/test_invariances.py). TRL before PR #2153 averaged over each
micro-batch; its all-process gather came with that PR.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prefbench.objectives.base import (
    Objective,
    ObjectiveOutput,
    UnpairedLogps,
    require_choice,
    require_range,
    unpaired_output,
)


@dataclass
class KTO(Objective):
    """KTO: loss = lambda_y * (1 - sigma(beta * s_y * (h - z0))), s_y = +1 desirable, -1 undesirable.

    Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7 (loss = lambda_y - v(x, y)); beta = 0.1,
    lambda_D = lambda_U = 1. The paper's rule for imbalanced data (Eq. 8) keeps
    lambda_D n_D / (lambda_U n_U) in [1, 4/3]; applying it is a data transform, not this class's job.
    `value` selects the paper's value-function ablations: "sigmoid" (KTO), "log_sigmoid" (concave:
    loss = -lambda_y log sigma(.)), "linear" (risk-neutral: loss = -lambda_y beta s_y (h - z0)).
    Rewards are beta * h; the batch reduction is a plain mean over examples (TRL's nanmean).
    """

    data = "unpaired"
    needs_reference = True
    version = 2  # 2: z0 over the whole step's mismatched pairs (was: each micro-batch's; equal with one a step)
    paper = "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv:2402.01306"
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    z0: str = "mismatched"
    value: str = "sigmoid"

    def validate(self) -> None:
        super().validate()
        require_range(self, "desirable_weight", 0.0, float("inf"), low_open=True)
        require_range(self, "undesirable_weight", 0.0, float("inf"), low_open=True)
        require_choice(self, "z0", ("mismatched", "batch_mean", "none"))
        require_choice(self, "value", ("sigmoid", "log_sigmoid", "linear"))

    @property
    def needs_mismatched_pairs(self) -> bool:
        return self.z0 == "mismatched"

    def logratios(self, b: UnpairedLogps) -> Tensor:
        if not self.needs_reference:
            return b.policy
        return b.policy - b.require_reference(type(self).__name__)

    def reference_point(self, b: UnpairedLogps, h: Tensor) -> Tensor:
        if self.z0 == "none":
            return h.new_zeros(())
        if self.z0 == "batch_mean":
            return h.detach().mean()
        if b.kl_policy is None or (self.needs_reference and b.kl_ref is None):
            raise ValueError(
                f"{type(self).__name__} with z0='mismatched' needs kl_policy and kl_ref (mismatched-pair log-probs)"
            )
        kl = b.kl_policy - b.kl_ref if self.needs_reference else b.kl_policy
        return kl.detach().mean().clamp(min=0)

    def loss(self, b: UnpairedLogps) -> ObjectiveOutput:
        h = self.logratios(b)
        z0 = self.reference_point(b, h)
        sign = torch.where(b.desirable, 1.0, -1.0).to(h.dtype)
        x = self.beta * sign * (h - z0)  # > 0: better than the reference point in the label's direction
        if self.value == "sigmoid":
            per_example = 1 - torch.sigmoid(x)
        elif self.value == "log_sigmoid":
            per_example = -F.logsigmoid(x)
        else:
            per_example = -x
        weight = torch.where(b.desirable, self.desirable_weight, self.undesirable_weight).to(h.dtype)
        return unpaired_output(weight * per_example, self.beta * h, b.desirable, z0=z0)


@dataclass
class KTONoZ0(KTO):
    """KTO ablation without the reference point (z0 = 0). KTO paper, Table 2 / §4.3."""

    version = 1  # no z0: the step-wide estimate changed nothing here
    z0: str = "none"


@dataclass
class KTOConcave(KTO):
    """KTO ablation with a concave value function, log sigma instead of sigma. KTO paper §4.3."""

    value: str = "log_sigmoid"


@dataclass
class KTORiskNeutral(KTO):
    """KTO ablation with a risk-neutral (identity) value function. KTO paper §4.3. Unbounded below."""

    value: str = "linear"


@dataclass
class KTONoReference(KTO):
    """KTO ablation without a reference model: h = S_policy(y), z0 = 0. KTO paper §4.3.

    With no reference, the mismatched estimate of E[S_policy] would always clamp to 0 (log-probs
    are <= 0), so z0 defaults to "none". Rewards are beta * S_policy.
    """

    needs_reference = False
    version = 1  # no z0: the step-wide estimate changed nothing here
    z0: str = "none"


@dataclass
class APOZeroUnpaired(Objective):
    """APO-zero on unpaired data: desirable 1 - sigma(beta h), undesirable sigma(beta h).

    D'Oosterlinck et al. 2024, arXiv:2408.06266 (unpaired form of Eq. 7, TRL's KTOTrainer
    `apo_zero_unpaired`). No reference point, so no mismatched pairs are needed.
    """

    data = "unpaired"
    needs_reference = True
    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, arXiv:2408.06266"
    beta: float = 0.1

    def loss(self, b: UnpairedLogps) -> ObjectiveOutput:
        h = b.policy - b.require_reference("apo_zero_unpaired")
        p = torch.sigmoid(self.beta * h)
        return unpaired_output(torch.where(b.desirable, 1 - p, p), self.beta * h, b.desirable)


@dataclass
class BCO(Objective):
    """BCO (unpaired): a binary classifier on the implicit reward beta h, shifted by delta.

    desirable -log sigma(beta h - delta), undesirable -log sigma(-(beta h - delta)), where delta is
    the running mean of every beta h of the steps before this one.
    Jung et al. 2024, arXiv:2404.04656, Eq. 7 (reward shift); beta = 0.1. Deviation: TRL moves the mean
    with each micro-batch, that batch included, so there how a step is cut into micro-batches changes
    delta; here a step's rewards join the mean once the step ends (`end_step`), so every micro-batch of a
    step reads the same delta (tests/test_invariances.py). Rewards are collected only while gradients are
    enabled (training); an evaluation pass under torch.no_grad() reads the mean without moving it. It is
    state: the trainer saves it with `state_dict()`.
    Not implemented: the paper's underlying-distribution matching (a prompt classifier), and
    delta is every process's mean (the step's rewards summed over processes when it ends, as TRL <= 1.15 had).
    """

    data = "unpaired"
    needs_reference = True
    version = 2  # 2: the reward mean moves once per step (was: with each micro-batch)
    paper = "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, arXiv:2404.04656"
    beta: float = 0.1
    reward_sum: float = field(default=0.0, init=False, repr=False)
    reward_count: int = field(default=0, init=False, repr=False)
    step_sum: float = field(default=0.0, init=False, repr=False)  # this step's rewards, not yet in the mean
    step_count: int = field(default=0, init=False, repr=False)

    def loss(self, b: UnpairedLogps) -> ObjectiveOutput:
        r = self.beta * (b.policy - b.require_reference("bco"))
        if torch.is_grad_enabled():
            self.step_sum += float(r.detach().sum())
            self.step_count += r.numel()
        delta = self.reward_sum / self.reward_count if self.reward_count else 0.0
        shifted = r - delta
        losses = torch.where(b.desirable, -F.logsigmoid(shifted), -F.logsigmoid(-shifted))
        return unpaired_output(losses, r, b.desirable, delta=r.new_tensor(delta))

    def end_step(self, total=None) -> None:
        step_sum, step_count = total([self.step_sum, self.step_count]) if total else (self.step_sum, self.step_count)
        self.reward_sum, self.reward_count = self.reward_sum + step_sum, self.reward_count + int(step_count)
        self.step_sum, self.step_count = 0.0, 0

    def state_dict(self) -> dict[str, float]:
        return {"reward_sum": self.reward_sum, "reward_count": self.reward_count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.reward_sum, self.reward_count = float(state["reward_sum"]), int(state["reward_count"])
