"""Paired objectives: (prompt, chosen y_w, rejected y_l).

Notation (shared/reference/objectives.md §1): S(y) is the completion log-prob summed over tokens,
|y| its token count, A(y) = S(y)/|y|, h(y) = S_policy(y) - S_ref(y) the log-ratio, and
Delta = h(y_w) - h(y_l). Implicit rewards are beta * h (TRL's convention, also for IPO and
sigmoid_norm whose losses use a length-normalised ratio); reference-free objectives report the
quantity they score with (beta * S or beta * A).

Every class body is the paper's equation; its docstring cites it and says where prefbench
deliberately differs from TRL 1.16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prefbench.objectives.base import (
    Objective,
    ObjectiveOutput,
    PairedLogps,
    paired_output,
    require_range,
)


def smoothed_logistic(z: Tensor, epsilon: float) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z): the logistic loss with the label flipped w.p. eps."""
    loss = -F.logsigmoid(z)
    if epsilon:
        loss = (1 - epsilon) * loss - epsilon * F.logsigmoid(-z)
    return loss


def chosen_nll(b: PairedLogps) -> Tensor:
    """Per-token negative log-likelihood of each chosen completion, -S(y_w)/|y_w|.

    Per sequence, so that a pair's loss does not depend on the rest of its batch (and gradient
    accumulation changes nothing). TRL's `sft` term is the token mean over the whole batch
    instead; the two agree when all chosen completions have the same length.
    """
    return -b.policy_chosen / b.chosen_tokens


@dataclass
class _WithReference(Objective):
    """Paired objectives scored on log-ratios h against a reference model."""

    data = "paired"
    needs_reference = True
    beta: float = 0.1

    def logratios(self, b: PairedLogps) -> tuple[Tensor, Tensor]:
        ref_chosen, ref_rejected = b.require_reference(type(self).__name__)
        return b.policy_chosen - ref_chosen, b.policy_rejected - ref_rejected

    def output(self, losses: Tensor, h_w: Tensor, h_l: Tensor, **extra: Tensor) -> ObjectiveOutput:
        return paired_output(losses, self.beta * h_w, self.beta * h_l, **extra)


@dataclass
class DPO(_WithReference):
    """DPO: -log sigma(beta * Delta). Rafailov et al. 2023, arXiv:2305.18290, Eq. 7; beta = 0.1 (§6)."""

    paper = "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        return self.output(-F.logsigmoid(self.beta * (h_w - h_l)), h_w, h_l)


@dataclass
class CDPO(_WithReference):
    """Conservative DPO: DPO with the preference label flipped with probability epsilon.

    (1 - eps) * [-log sigma(beta Delta)] + eps * [-log sigma(-beta Delta)]  (Mitchell 2023, cDPO note).
    The gradient is beta * (sigma(beta Delta) - (1 - eps)), so the loss is minimised at
    sigma(beta Delta) = 1 - eps: a finite margin, and at eps = 0.5 no preference is learned at all.
    eps = 0.2 as HALOs' cdpo config. TRL dropped this objective in v0.29 (its `robust` is a
    different, unbiased estimator); prefbench keeps it under its own name.
    """

    paper = "Mitchell 2023, A note on DPO with noisy preferences and relationship to IPO"
    epsilon: float = 0.2

    def validate(self) -> None:
        super().validate()
        require_range(self, "epsilon", 0.0, 0.5)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        return self.output(smoothed_logistic(self.beta * (h_w - h_l), self.epsilon), h_w, h_l)


@dataclass
class Robust(_WithReference):
    """Robust DPO (rDPO): an unbiased DPO loss under label-flip rate epsilon.

    [(1 - eps)(-log sigma(beta Delta)) - eps(-log sigma(-beta Delta))] / (1 - 2 eps).
    Chowdhury et al. 2024, arXiv:2403.00409, Eq. 9; eps = 0.1 as in its experiments.
    """

    paper = "Chowdhury, Kini, Natarajan 2024, Provably Robust DPO, arXiv:2403.00409"
    epsilon: float = 0.1

    def validate(self) -> None:
        super().validate()
        require_range(self, "epsilon", 0.0, 0.5, high_open=True)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        z = self.beta * (h_w - h_l)
        e = self.epsilon
        losses = ((1 - e) * -F.logsigmoid(z) - e * -F.logsigmoid(-z)) / (1 - 2 * e)
        return self.output(losses, h_w, h_l)


@dataclass
class IPO(_WithReference):
    """IPO: (h_w/|y_w| - h_l/|y_l| - 1/(2 beta))^2, Azar et al. 2023, arXiv:2310.12036, Eq. 17 (beta = tau).

    Eq. 17 is written on sequence log-probs; TRL and HALOs divide each log-ratio by its
    completion length (which the IPO authors confirmed to TRL), and so does prefbench by default.
    `length_normalized: false` gives the literal summed form. Where TRL clamps a zero length to 1,
    prefbench refuses the batch (a zero-length completion is an error, trl #1033).
    """

    paper = "Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences, arXiv:2310.12036"
    length_normalized: bool = True

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        if self.length_normalized:
            margin = h_w / b.chosen_tokens - h_l / b.rejected_tokens
        else:
            margin = h_w - h_l
        return self.output((margin - 1 / (2 * self.beta)) ** 2, h_w, h_l)


@dataclass
class Hinge(_WithReference):
    """Hinge (RSO's hinge-norm, SLiC with a reference): max(0, 1 - beta Delta); beta = 1/margin.

    Liu et al. 2023 (RSO), arXiv:2309.06657, Eq. 6; Zhao et al. 2023 (SLiC-HF), arXiv:2305.10425.
    """

    paper = "Liu et al. 2023, Statistical Rejection Sampling Improves Preference Optimization, arXiv:2309.06657"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        return self.output(torch.relu(1 - self.beta * (h_w - h_l)), h_w, h_l)


@dataclass
class EXOPair(_WithReference):
    """EXO-pref: KL([q_w, q_l] || [1 - eps, eps]) with q_w = sigma(beta Delta), q_l = sigma(-beta Delta).

    Ji et al. 2024, arXiv:2402.00856, Eq. 16 (K = 2); eps = 1e-3 as in the paper.
    """

    paper = "Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, arXiv:2402.00856"
    epsilon: float = 1e-3

    def validate(self) -> None:
        super().validate()
        require_range(self, "epsilon", 0.0, 1.0, low_open=True, high_open=True)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        z = self.beta * (h_w - h_l)
        q_w, q_l = torch.sigmoid(z), torch.sigmoid(-z)
        losses = q_w * (F.logsigmoid(z) - math.log1p(-self.epsilon)) + q_l * (F.logsigmoid(-z) - math.log(self.epsilon))
        return self.output(losses, h_w, h_l)


@dataclass
class NCAPair(_WithReference):
    """NCA (pairwise): -log sigma(beta h_w) - 1/2 log sigma(-beta h_w) - 1/2 log sigma(-beta h_l).

    Chen et al. 2024, Noise Contrastive Alignment, arXiv:2402.05369, Eq. 11 (K = 2).
    """

    paper = "Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards, arXiv:2402.05369"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        r_w, r_l = self.beta * h_w, self.beta * h_l
        losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
        return self.output(losses, h_w, h_l)


@dataclass
class BCOPair(_WithReference):
    """BCO on pairs, without the running-mean shift: -log sigma(beta h_w) - log sigma(-beta h_l).

    Jung et al. 2024, arXiv:2404.04656. This is TRL 1.16's `bco_pair` (TRL <= 0.28 subtracted a
    running mean delta; prefbench's unpaired `bco` keeps that shift).
    """

    paper = "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment, arXiv:2404.04656"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        losses = -F.logsigmoid(self.beta * h_w) - F.logsigmoid(-self.beta * h_l)
        return self.output(losses, h_w, h_l)


@dataclass
class SPPOHard(_WithReference):
    """SPPO with hard win probabilities: (h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2.

    Wu et al. 2024, arXiv:2405.00675, Eq. 4.7 with P(y_w > y_l) set to 1 and 0. beta = 1e-3
    (the paper's eta^-1, as TRL's paper index records); TRL's own default is 0.1.
    """

    paper = "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, arXiv:2405.00675"
    beta: float = 1e-3

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        target = 1 / (2 * self.beta)
        return self.output((h_w - target) ** 2 + (h_l + target) ** 2, h_w, h_l)


@dataclass
class AOT(_WithReference):
    """AOT (paired): distributional alignment by optimal transport in one dimension.

    Sort u = S_pi(y_w) - S_pi(y_l) and v = S_ref(y_w) - S_ref(y_l) across the batch independently,
    d_(i) = u_(i) - v_(i), loss = smoothed logistic of beta d with label smoothing eps.
    Melnyk et al. 2024, arXiv:2406.05882, Eq. 9. Each loss belongs to a sorted slot, not to the pair
    at that index, so a per-example loss only means something as part of its batch.
    """

    paper = "Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport, arXiv:2406.05882"
    batch_defined = "sorts the log-ratios of the micro-batch it is given (Eq. 9): accumulation changes its loss"
    epsilon: float = 0.0

    def validate(self) -> None:
        super().validate()
        require_range(self, "epsilon", 0.0, 0.5)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        ref_chosen, ref_rejected = b.require_reference("aot")
        u, _ = torch.sort(b.policy_chosen - b.policy_rejected)
        v, _ = torch.sort(ref_chosen - ref_rejected)
        return self.output(smoothed_logistic(self.beta * (u - v), self.epsilon), h_w, h_l)


@dataclass
class AOTUnpaired(AOT):
    """AOT (unpaired): sort h_w and h_l across the batch independently; d_(i) = h_w,(i) - h_l,(i).

    Same paper, Eq. 10: the chosen and rejected sets are used as two marginals, so the pairing
    inside the batch does not matter.
    """

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        d = torch.sort(h_w).values - torch.sort(h_l).values
        return self.output(smoothed_logistic(self.beta * d, self.epsilon), h_w, h_l)


@dataclass
class APOZero(_WithReference):
    """APO-zero: [1 - sigma(beta h_w)] + sigma(beta h_l). D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7.

    For chosen completions better than the model's own: push chosen up and rejected down.
    """

    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, arXiv:2408.06266"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        losses = (1 - torch.sigmoid(self.beta * h_w)) + torch.sigmoid(self.beta * h_l)
        return self.output(losses, h_w, h_l)


@dataclass
class APODown(_WithReference):
    """APO-down: sigma(beta h_w) + [1 - sigma(beta Delta)]. Same paper, Eq. 8.

    For chosen completions worse than the model's own: both likelihoods go down, the rejected one
    faster. At initialisation raising h_w alone has zero first-order effect (the two terms cancel).
    """

    paper = "D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions, arXiv:2408.06266"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        losses = torch.sigmoid(self.beta * h_w) + (1 - torch.sigmoid(self.beta * (h_w - h_l)))
        return self.output(losses, h_w, h_l)


@dataclass
class DiscoPOP(_WithReference):
    """DiscoPOP / LRML: with z = beta Delta and m = sigma(z / tau), (1 - m)(-log sigma(z)) + m exp(-z).

    Lu et al. 2024, arXiv:2406.08414, Eq. 5; tau = 0.05. m * exp(-z) is computed as
    exp(log sigma(z/tau) - z), the same number without the inf * 0 = NaN that the literal form
    gives for z below about -700 (TRL's code has that overflow). The loss is not monotone near
    z = 0: at initialisation its gradient pushes the margin *down* (see the tests).
    """

    paper = "Lu et al. 2024, Discovering Preference Optimization Algorithms with and for LLMs, arXiv:2406.08414"
    tau: float = 0.05

    def validate(self) -> None:
        super().validate()
        require_range(self, "tau", 0.0, math.inf, low_open=True)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        z = self.beta * (h_w - h_l)
        m = torch.sigmoid(z / self.tau)
        losses = (1 - m) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / self.tau) - z)
        return self.output(losses, h_w, h_l)


@dataclass
class SigmoidNorm(_WithReference):
    """Length-normalised DPO: -log sigma(beta (h_w/|y_w| - h_l/|y_l|)).

    SimPO paper's "DPO w/ LN" ablation (Meng et al. 2024, arXiv:2405.14734, App.) and Tulu 3 §4.3
    (Lambert et al. 2024, arXiv:2411.15124). TRL's `sigmoid_norm`.
    """

    paper = "Meng et al. 2024, arXiv:2405.14734 (DPO w/ LN); Lambert et al. 2024, Tulu 3, arXiv:2411.15124"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        z = self.beta * (h_w / b.chosen_tokens - h_l / b.rejected_tokens)
        return self.output(-F.logsigmoid(z), h_w, h_l)


@dataclass
class RPO(DPO):
    """RPO: DPO + alpha * NLL(y_w), the NLL per token of each chosen completion.

    Pang et al. 2024, Iterative Reasoning Preference Optimization, arXiv:2404.19733, Eq. 1
    (NLL normalised by length, alpha = 1). The standard answer to chosen log-probs falling under
    DPO (likelihood displacement). TRL's equivalent, loss_type=["sigmoid", "sft"], takes the NLL as
    a token mean over the batch; see `chosen_nll`.
    """

    paper = "Pang et al. 2024, Iterative Reasoning Preference Optimization, arXiv:2404.19733"
    alpha: float = 1.0

    def validate(self) -> None:
        super().validate()
        require_range(self, "alpha", 0.0, math.inf)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        nll = chosen_nll(b)
        losses = -F.logsigmoid(self.beta * (h_w - h_l)) + self.alpha * nll
        return self.output(losses, h_w, h_l, nll=nll.mean())


@dataclass
class FDPO(_WithReference):
    """f-DPO: -log sigma(beta (s(h_w) - s(h_l))), the log-ratio h replaced by the score s = f'(e^h) of an
    f-divergence. Wang et al. 2023, Beyond Reverse KL, arXiv:2309.16240, Thm. 1 and Table 1; TRL 1.16's
    `f_divergence_type` (with its `sigmoid` loss), whose parametrisation prefbench follows:

        forward_kl        s = 1 - e^(-h)
        js_divergence     s = log 2 + log sigma(h)
        alpha_divergence  s = (e^((alpha - 1) h) - 1) / (alpha - 1)   (the paper's alpha is 1 - this one)

    (reverse KL, s = h, is `dpo`). alpha = 0.5 as TRL's `f_alpha_divergence_coef`. The exponent of forward_kl and
    alpha_divergence is clamped at 80 (TRL clamps alpha_divergence's there in fp32; forward_kl it does not clamp):
    past |h| ~ 80 nats the score stops moving instead of overflowing. Rewards are beta * h (TRL's convention).
    """

    paper = "Wang et al. 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints, arXiv:2309.16240"
    divergence: str = "js_divergence"
    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        if self.divergence not in ("forward_kl", "js_divergence", "alpha_divergence"):
            raise ValueError(
                f"FDPO: divergence must be one of ['forward_kl', 'js_divergence', 'alpha_divergence'] (reverse_kl is "
                f"dpo), got {self.divergence!r}"
            )
        if self.divergence == "alpha_divergence" and not (0 < self.alpha < 1):
            raise ValueError(f"FDPO: alpha must be in (0, 1) (alpha -> 1 is reverse KL, dpo), got {self.alpha}")

    def score(self, h: Tensor) -> Tensor:
        if self.divergence == "forward_kl":
            return 1 - torch.exp((-h).clamp(max=80.0))
        if self.divergence == "js_divergence":
            return math.log(2) + F.logsigmoid(h)
        a = self.alpha - 1
        return (torch.exp((a * h).clamp(max=80.0)) - 1) / a

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        return self.output(-F.logsigmoid(self.beta * (self.score(h_w) - self.score(h_l))), h_w, h_l)


@dataclass
class WPO(_WithReference):
    """WPO: DPO with each pair's loss weighted by how likely the policy is to produce it, w(y_w) w(y_l), where
    w(y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2]) at each completion position, without gradient. Zhou et
    al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, arXiv:2406.11827, Eq. 2 with its
    per-token normalisation by sum_v pi(v)^2 (the form TRL 1.16's `use_weighting` computes): off-policy pairs the
    policy would rarely sample count less. Needs the log-prob pass's square mass (`needs_square_mass`).
    """

    paper = "Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, arXiv:2406.11827"
    needs_square_mass = True

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        q_w, q_l = b.require_square_mass("wpo")
        weight = torch.exp((b.policy_chosen - q_w) / b.chosen_tokens + (b.policy_rejected - q_l) / b.rejected_tokens)
        weight = weight.detach()
        return self.output(weight * -F.logsigmoid(self.beta * (h_w - h_l)), h_w, h_l, weight=weight.mean())


@dataclass
class TRDPO(DPO):
    """TR-DPO, DPO against a trust region that moves: every `sync_steps` optimizer steps the reference is updated
    to mixup_alpha * policy + (1 - mixup_alpha) * reference (mixup_alpha = 1: a hard copy). Gorbatovski et al. 2024,
    Learn Your Reference Model for Real Good Alignment, arXiv:2404.09656, §3 (soft and hard updates); TRL 1.16's
    `sync_ref_model` with `ref_model_mixup_alpha` 0.6 and `ref_model_sync_steps` 512, its defaults here. A run
    shorter than sync_steps is DPO: set sync_steps to the run's scale. The loss is DPO's on the current reference's
    log-probs, which the trainer computes each step from a copy of the model held in memory (`moving_reference`;
    the cached reference pass serves the fixed-reference objectives of the same run).
    """

    paper = "Gorbatovski et al. 2024, Learn Your Reference Model for Real Good Alignment, arXiv:2404.09656"
    moving_reference = True
    mixup_alpha: float = 0.6
    sync_steps: int = 512

    def validate(self) -> None:
        super().validate()
        require_range(self, "mixup_alpha", 0.0, 1.0, low_open=True)
        if isinstance(self.sync_steps, bool) or not isinstance(self.sync_steps, int) or self.sync_steps < 1:
            raise ValueError(f"TRDPO: sync_steps must be an integer >= 1, got {self.sync_steps!r}")

    def reference_update(self, step: int) -> float | None:
        return self.mixup_alpha if step % self.sync_steps == 0 else None


@dataclass
class LDDPO(_WithReference):
    """LD-DPO, length-desensitised DPO: DPO on S' = S - (1 - alpha) T for policy and reference, T the log-probs of a
    completion's tail (its tokens past the first min(|y_w|, |y_l|) of the pair): the shared-length part counts
    whole, the longer completion's excess at alpha. Liu et al. 2024, LD-DPO: Length Desensitization in Preference
    Optimization, arXiv:2409.06411; TRL 1.16's `ld_alpha`. alpha = 0.5 is prefbench's default (TRL has none; the
    paper tunes it per model within [0, 1]); alpha = 1 is DPO. Rewards are beta times the weighted log-ratios, as
    TRL logs them. Needs the tails from both log-prob passes (`needs_tails`).
    """

    paper = "Liu et al. 2024, LD-DPO: Length Desensitization in Preference Optimization, arXiv:2409.06411"
    needs_tails = True
    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        require_range(self, "alpha", 0.0, 1.0)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        ref_chosen, ref_rejected = b.require_reference("ld_dpo")
        t_w, t_l, rt_w, rt_l = b.require_tails("ld_dpo")
        keep = 1 - self.alpha
        h_w = (b.policy_chosen - keep * t_w) - (ref_chosen - keep * rt_w)
        h_l = (b.policy_rejected - keep * t_l) - (ref_rejected - keep * rt_l)
        return self.output(-F.logsigmoid(self.beta * (h_w - h_l)), h_w, h_l)


@dataclass
class DPOP(_WithReference):
    """DPO-Positive: -log sigma(beta (h_w - h_l - lambda max(0, -h_w))): a penalty once the chosen completion's
    likelihood falls below the reference's. Pal et al. 2024 (Smaug), arXiv:2402.13228, Eq. 3 as corrected in its
    July 2024 revision (lambda inside beta's bracket; the first version's bracketing differed, smaug#2). lambda = 50
    (the value the authors' runs use; they report results insensitive to it over [5, 500]). Not in TRL.
    """

    paper = (
        "Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive, arXiv:2402.13228"
    )
    lambda_coef: float = 50.0

    def validate(self) -> None:
        super().validate()
        require_range(self, "lambda_coef", 0.0, math.inf)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        penalty = torch.relu(-h_w)
        losses = -F.logsigmoid(self.beta * (h_w - h_l - self.lambda_coef * penalty))
        return self.output(losses, h_w, h_l, chosen_below_reference=(h_w < 0).to(h_w.dtype).mean())


@dataclass
class RDPO(_WithReference):
    """R-DPO, length-regularised DPO: -log sigma(beta Delta + alpha (|y_w| - |y_l|)). Park, Rafailov, Ermon, Finn
    2024, Disentangling Length from Quality in DPO, arXiv:2403.19159: the reward r - alpha |y| maximised under the
    KL constraint gives r = beta h + alpha |y| + const, so a pair whose chosen completion is the longer one is
    already "explained" by length and pushed less. alpha = 0.05 as its UltraFeedback runs (0.1 on HH). Not in TRL.
    """

    paper = "Park, Rafailov, Ermon, Finn 2024, Disentangling Length from Quality in Direct Preference Optimization, arXiv:2403.19159"
    alpha: float = 0.05

    def validate(self) -> None:
        super().validate()
        require_range(self, "alpha", 0.0, math.inf)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        z = self.beta * (h_w - h_l) + self.alpha * (b.chosen_tokens - b.rejected_tokens)
        return self.output(-F.logsigmoid(z), h_w, h_l)


@dataclass
class CalDPO(_WithReference):
    """Cal-DPO: -log sigma(h_w - h_l) + 1/2 [(h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2]: the logistic term on
    unscaled log-ratios, and each log-ratio calibrated to the reward scale +-1/(2 beta) (so the chosen likelihood
    must rise, not only the margin). Xiao et al. 2024, arXiv:2412.14516, as its official code computes it
    (tengxiao1/Cal-DPO@7d16b466, scripts/dpo_trainer.py: the two squared terms as a mean-squared error with weight
    0.5). beta = 0.001 as its released run scripts (targets +-500 nats: the squared terms dominate early, and its
    learning rate, 5e-7, is small to match). Rewards are beta * h, as for every reference objective. Not in TRL.
    """

    paper = "Xiao et al. 2024, Cal-DPO: Calibrated Direct Preference Optimization for Language Model Alignment, arXiv:2412.14516"
    beta: float = 1e-3

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        target = 1 / (2 * self.beta)
        calibration = 0.5 * ((h_w - target) ** 2 + (h_l + target) ** 2)
        return self.output(-F.logsigmoid(h_w - h_l) + calibration, h_w, h_l, calibration=calibration.mean())


@dataclass
class BetaDPO(_WithReference):
    """beta-DPO: DPO at a batch-adaptive beta, beta_b = max(1e-3, beta (1 + a (mean_b(M) - M0))), M = Delta the raw
    log-ratio margin of a pair, M0 a moving average of batch means (momentum 0.9) taken with this batch's mean
    before use, beta_b without gradient. Wu et al. 2024, beta-DPO: DPO with Dynamic beta, arXiv:2407.08639, as its
    official code computes it (junkangwu/beta-DPO@16290473, trainers.py); a = 0.6 as its README's example.
    Deliberate difference: its margin-based data filter (rho, a random draw of pairs weighted by a Gaussian around
    M0) is not applied, so the loss stays a deterministic function of the batch. beta_b depends on the micro-batch
    (batch_defined); M0 moves once per optimizer step with the step's mean margin (as BCO's running mean), which
    equals the code's rule when a step is one micro-batch. Not in TRL (its PR #6123 was closed).
    """

    paper = "Wu et al. 2024, beta-DPO: Direct Preference Optimization with Dynamic beta, arXiv:2407.08639"
    batch_defined = "its beta follows the mean margin of the micro-batch it is given: accumulation changes its loss"
    a: float = 0.6
    momentum: float = 0.9
    margin_mean: float = field(default=0.0, init=False, repr=False)  # M0, over the steps before
    step_sum: float = field(default=0.0, init=False, repr=False)  # this step's margins, not yet in M0
    step_count: int = field(default=0, init=False, repr=False)

    def validate(self) -> None:
        super().validate()
        require_range(self, "a", 0.0, math.inf)
        require_range(self, "momentum", 0.0, 1.0, high_open=True)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        h_w, h_l = self.logratios(b)
        margin = (h_w - h_l).detach()
        if torch.is_grad_enabled():
            self.step_sum += float(margin.sum())
            self.step_count += margin.numel()
        m0 = self.momentum * self.margin_mean + (1 - self.momentum) * margin.mean()
        beta = (self.beta * (1 + self.a * (margin.mean() - m0))).clamp(min=1e-3)
        losses = -F.logsigmoid(beta * (h_w - h_l))
        return self.output(losses, h_w, h_l, beta=beta)

    def end_step(self, total=None) -> None:
        step_sum, step_count = total([self.step_sum, self.step_count]) if total else (self.step_sum, self.step_count)
        if step_count:
            self.margin_mean = self.momentum * self.margin_mean + (1 - self.momentum) * step_sum / step_count
        self.step_sum, self.step_count = 0.0, 0

    def state_dict(self) -> dict[str, float]:
        return {"margin_mean": self.margin_mean}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.margin_mean = float(state["margin_mean"])


# ---- reference-free --------------------------------------------------------------------------


@dataclass
class _ReferenceFree(Objective):
    data = "paired"
    needs_reference = False


@dataclass
class ORPO(_ReferenceFree):
    """ORPO: NLL(y_w) - lambda * log sigma(log-odds), on per-token averaged log-probs A.

    log-odds = (A_w - A_l) - (log(1 - e^A_w) - log(1 - e^A_l)). Hong et al. 2024, arXiv:2403.07691,
    Eqs. 6-7; lambda (`beta`, as TRL names it) = 0.1. Rewards are beta * A.
    Deliberate difference from TRL: TRL's NLL covers every non-pad token of the chosen sequence,
    prompt included, as a token mean over the batch; prefbench's covers completion tokens only,
    per sequence (`chosen_nll`), like every other NLL term here.
    """

    paper = "Hong, Lee, Thorne 2024, ORPO: Monolithic Preference Optimization without Reference Model, arXiv:2403.07691"
    beta: float = 0.1

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        a_w, a_l = b.policy_chosen / b.chosen_tokens, b.policy_rejected / b.rejected_tokens
        log_odds = (a_w - a_l) - (_log1mexp(a_w) - _log1mexp(a_l))
        nll = chosen_nll(b)
        losses = nll - self.beta * F.logsigmoid(log_odds)
        return paired_output(losses, self.beta * a_w, self.beta * a_l, nll=nll.mean(), log_odds=log_odds.mean())


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0, switching form at -ln 2 to avoid cancellation (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass
class SimPO(_ReferenceFree):
    """SimPO: smoothed logistic of beta (A_w - A_l) - gamma, with gamma = beta * gamma_beta_ratio.

    Meng, Xia, Chen 2024, arXiv:2405.14734, Eq. 6. Defaults from the official code: beta = 2.0,
    gamma_beta_ratio = 0.25, no label smoothing. TRL writes the same loss with an absolute
    `simpo_gamma` (= beta * gamma_beta_ratio); its CPOTrainer default cpo_alpha = 1 adds an NLL
    term, which prefbench's simpo does not. Rewards are beta * A.
    """

    paper = "Meng, Xia, Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, arXiv:2405.14734"
    beta: float = 2.0
    gamma_beta_ratio: float = 0.25
    epsilon: float = 0.0

    def validate(self) -> None:
        super().validate()
        require_range(self, "epsilon", 0.0, 0.5)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        a_w, a_l = b.policy_chosen / b.chosen_tokens, b.policy_rejected / b.rejected_tokens
        losses = smoothed_logistic(self.beta * (a_w - a_l - self.gamma_beta_ratio), self.epsilon)
        return paired_output(losses, self.beta * a_w, self.beta * a_l)


@dataclass
class SimPER(_ReferenceFree):
    """SimPER: -exp(A_w) + exp(A_l), the inverse perplexities of the two completions (A the per-token mean
    log-prob): no reference, no hyperparameter, each loss in [-1, 1]. Xiao et al. 2025, SimPER: A Minimalist
    Approach to Preference Alignment without Hyperparameters, arXiv:2502.00883, as its official code computes it
    (tengxiao1/SimPER@db08c97f, scripts/simper_trainer.py). Rewards are the inverse perplexities exp(A).
    Not in TRL.
    """

    paper = "Xiao et al. 2025, SimPER: A Minimalist Approach to Preference Alignment without Hyperparameters, arXiv:2502.00883"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        p_w = torch.exp(b.policy_chosen / b.chosen_tokens)
        p_l = torch.exp(b.policy_rejected / b.rejected_tokens)
        return paired_output(p_l - p_w, p_w, p_l)


@dataclass
class AlphaPO(_ReferenceFree):
    """AlphaPO: SimPO on the reward r = (1 - e^(-alpha A)) / alpha instead of A (the per-token mean log-prob):
    -log sigma(beta (r_w - r_l - gamma_beta_ratio)). Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM
    Alignment, arXiv:2501.03884, Eq. 4; alpha -> 0 is SimPO. TRL 1.16's CPO `alpha` (loss_type "alphapo"). Defaults
    as its Mistral-Instruct setting (alpha 0.25, beta 2.5, gamma/beta 0.1; TRL's paper index, from its Table 3).
    The exponent is clamped at 80: past it (a per-token log-prob below -320 at alpha 0.25) the reward stops moving
    instead of overflowing. Rewards are beta * r.
    """

    paper = "Gupta et al. 2025, AlphaPO: Reward Shape Matters for LLM Alignment, arXiv:2501.03884"
    beta: float = 2.5
    gamma_beta_ratio: float = 0.1
    alpha: float = 0.25

    def validate(self) -> None:
        super().validate()
        if self.alpha == 0:
            raise ValueError("AlphaPO: alpha must be nonzero (alpha -> 0 is simpo)")

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        reward = lambda a: (1 - torch.exp((-self.alpha * a).clamp(max=80.0))) / self.alpha
        r_w = reward(b.policy_chosen / b.chosen_tokens)
        r_l = reward(b.policy_rejected / b.rejected_tokens)
        losses = -F.logsigmoid(self.beta * (r_w - r_l - self.gamma_beta_ratio))
        return paired_output(losses, self.beta * r_w, self.beta * r_l)


@dataclass
class CPO(_ReferenceFree):
    """CPO: -log sigma(beta (S_w - S_l)) (label-smoothed by eps) + alpha * NLL(y_w).

    Xu et al. 2024, arXiv:2401.08417, Eq. 3 plus the NLL regulariser; beta = 0.1, alpha = 1.
    Rewards are beta * S. The NLL is per token of each chosen completion (`chosen_nll`), where
    TRL takes a token mean over the batch.
    """

    paper = "Xu et al. 2024, Contrastive Preference Optimization, arXiv:2401.08417"
    beta: float = 0.1
    alpha: float = 1.0
    epsilon: float = 0.0

    def validate(self) -> None:
        super().validate()
        require_range(self, "alpha", 0.0, math.inf)
        require_range(self, "epsilon", 0.0, 0.5)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        nll = chosen_nll(b)
        losses = smoothed_logistic(self.beta * (b.policy_chosen - b.policy_rejected), self.epsilon) + self.alpha * nll
        return paired_output(losses, self.beta * b.policy_chosen, self.beta * b.policy_rejected, nll=nll.mean())


@dataclass
class SLiC(_ReferenceFree):
    """SLiC-HF (calibration loss + regulariser): max(0, delta - S_w + S_l) - lambda * S_w.

    Zhao et al. 2023, arXiv:2305.10425, Eq. 2, with the positive completion as the regularisation
    target; delta (`beta`, HALOs' name) = 1.0 and lambda = 0.1 as HALOs' slic config. Log-probs
    are summed, as in the paper. Not in TRL. Rewards are the summed log-probs S.
    """

    paper = "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv:2305.10425"
    beta: float = 1.0
    lambda_coef: float = 0.1

    def validate(self) -> None:
        super().validate()
        require_range(self, "lambda_coef", 0.0, math.inf)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        losses = torch.relu(self.beta - b.policy_chosen + b.policy_rejected) - self.lambda_coef * b.policy_chosen
        return paired_output(losses, b.policy_chosen, b.policy_rejected)


@dataclass
class SFT(_ReferenceFree):
    """SFT on the chosen completions: -S(y_w)/|y_w| (the baseline row). Rejected completions are unused.

    Rewards are the summed log-probs S, so the report can still show how far chosen and rejected
    log-probs move apart without a preference loss.
    """

    paper = "supervised fine-tuning baseline (negative log-likelihood of the chosen completion)"

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        nll = chosen_nll(b)
        return paired_output(nll, b.policy_chosen, b.policy_rejected, nll=nll.mean())
