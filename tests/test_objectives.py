"""The objective library against closed forms, hand arithmetic and the papers' claims.

Every test that is parametrized over OBJECTIVES makes a new registry entry fail until its author
adds (1) its hand-computed case to HAND, (2) its closed form at initialisation to AT_INIT, and
(3) its TRL counterpart, or the reason it has none, in tests/test_objectives_trl.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefbench.cli import main as cli_main
from prefbench.objectives import OBJECTIVES, GroupedLogps, PairedLogps, UnpairedLogps, build, group_advantages

L3 = math.log(3)  # sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4: the hand cases use it to keep sigmoids exact
LN2, LN4, LN43 = math.log(2), math.log(4), math.log(4 / 3)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def sp(x: float) -> float:
    """-log sigma(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def batch_for(cls, paired: PairedLogps, unpaired: UnpairedLogps, grouped: GroupedLogps):
    return {"paired": paired, "unpaired": unpaired, "grouped": grouped}[cls.data]


def hand_grouped() -> GroupedLogps:
    """Four answers (GRPO, eps = 0.2): per-token log-ratios (S - S_old)/|o| = [0, ln 1.5, ln 0.5, ln 1.1] so
    rho = [1, 1.5, 0.5, 1.1]; advantages [1, 1, -2, -1]. -min(rho A, clip(rho, 0.8, 1.2) A):
    [-min(1, 1), -min(1.5, 1.2), -min(-1.0, -1.6), -min(-1.1, -1.1)] = [-1, -1.2, 1.6, 1.1]."""
    n = t(4, 2, 3, 1)
    old = t(-10, -8, -12, -3)
    return GroupedLogps(
        policy=old + n * t(0, math.log(1.5), math.log(0.5), math.log(1.1)),
        old=old,
        tokens=n,
        advantages=t(1, 1, -2, -1),
    )


def init_grouped() -> GroupedLogps:
    """The policy that sampled (rho = 1): the loss is -A."""
    s = t(-12, -7.5, -30, -9)
    return GroupedLogps(policy=s.clone(), old=s.clone(), tokens=t(3, 5, 6, 3), advantages=t(1, -1, 0.5, -0.5))


def extreme_grouped() -> GroupedLogps:
    near, far = -1e-3, -1e4
    return GroupedLogps(
        policy=t(near, far, near, far), old=t(far, near, far, near), tokens=t(1, 1, 2, 5), advantages=t(1, -1, -1, 1)
    )


# ---- the hand-computed case --------------------------------------------------------------------


def hand_paired() -> PairedLogps:
    """Three pairs, beta = 0.1 unless the objective's default differs, L = ln 3.

    ref_chosen = [-20, -30, -25], ref_rejected = [-22, -28, -27]
    log-ratios h_w = [0, 10L, 0], h_l = [0, 0, 10L]  ->  beta*Delta = z = [0, L, -L]
    so sigma(z) = [1/2, 3/4, 1/4] and -log sigma(z) = [ln 2, ln 4/3, ln 4].
    policy_chosen = [-20, -30 + 10L, -25], policy_rejected = [-22, -28, -27 + 10L]
    |y_w| = [4, 2, 5], |y_l| = [4, 4, 5]
    per-token chosen NLL = -S_w/|y_w| = [20/4, (30 - 10L)/2, 25/5] = [5, 15 - 5L, 5]
    A_w = S_w/|y_w| = [-5, -15 + 5L, -5], A_l = [-5.5, -7, -5.4 + 2L]
    S_w - S_l = [2, -2 + 10L, 2 - 10L]
    square mass Q = S + |y| [ln 2, ln 4]: mean_t (log p - log sum p^2) = -ln 2 (chosen), -ln 4 (rejected): WPO's
    weight 1/2 * 1/4 = 1/8 in every pair
    tails (LD-DPO): only pair 2's lengths differ (2 vs 4): its rejected completion's last 2 tokens, -10 under the
    policy and -14 under the reference (a tail log-ratio of +4); every other tail is empty (0)
    """
    s_w, s_l, n_w, n_l = t(-20, -30 + 10 * L3, -25), t(-22, -28, -27 + 10 * L3), t(4, 2, 5), t(4, 4, 5)
    return PairedLogps(
        policy_chosen=s_w,
        policy_rejected=s_l,
        chosen_tokens=n_w,
        rejected_tokens=n_l,
        ref_chosen=t(-20, -30, -25),
        ref_rejected=t(-22, -28, -27),
        policy_chosen_square_mass=s_w + n_w * LN2,
        policy_rejected_square_mass=s_l + n_l * LN4,
        policy_chosen_tail=t(0, 0, 0),
        policy_rejected_tail=t(0, -10, 0),
        ref_chosen_tail=t(0, 0, 0),
        ref_rejected_tail=t(0, -14, 0),
    )


def hand_unpaired() -> UnpairedLogps:
    """Four examples: desirable, desirable, undesirable, undesirable; beta = 0.1.

    ref = [-20, -30, -25, -10], h = [0, 10L, 0, 10L] -> beta*h = [0, L, 0, L]
    mismatched pairs: kl_policy - kl_ref = [-1+3, -2+6, -3+9, -4+8] = [2, 4, 6, 4], mean 4 = z0,
    so beta*z0 = 0.4, and x = beta * s_y * (h - z0) = [-0.4, L - 0.4, 0.4, 0.4 - L].
    """
    return UnpairedLogps(
        policy=t(-20, -30 + 10 * L3, -25, -10 + 10 * L3),
        tokens=t(4, 2, 5, 5),
        desirable=torch.tensor([True, True, False, False]),
        ref=t(-20, -30, -25, -10),
        kl_policy=t(-1, -2, -3, -4),
        kl_ref=t(-3, -6, -9, -8),
    )


def _orpo_hand() -> list[float]:
    # log-odds = (A_w - A_l) - (log(1 - e^A_w) - log(1 - e^A_l)); loss = NLL + 0.1 * (-log sigma(log-odds))
    a_w, a_l, nll = [-5, -15 + 5 * L3, -5], [-5.5, -7, -5.4 + 2 * L3], [5, 15 - 5 * L3, 5]
    odds = [(w - l) - (math.log(1 - math.exp(w)) - math.log(1 - math.exp(l))) for w, l in zip(a_w, a_l)]  # noqa: E741  (the paper's w and l)
    return [n + 0.1 * sp(o) for n, o in zip(nll, odds)]


EXO_EPS = 1e-3
HAND: dict[str, list[float]] = {
    "dpo": [LN2, LN43, LN4],
    # (1 - 0.2) * (-log sigma(z)) + 0.2 * (-log sigma(-z))
    "cdpo": [LN2, 0.8 * LN43 + 0.2 * LN4, 0.8 * LN4 + 0.2 * LN43],
    # [(0.9)(-log sigma(z)) - 0.1(-log sigma(-z))] / 0.8; at z = 0: (0.9 - 0.1) ln 2 / 0.8 = ln 2
    "robust": [LN2, (0.9 * LN43 - 0.1 * LN4) / 0.8, (0.9 * LN4 - 0.1 * LN43) / 0.8],
    # per-token margins h_w/|y_w| - h_l/|y_l| = [0, 10L/2, -10L/5] = [0, 5L, -2L]; (m - 1/(2*0.1))^2
    "ipo": [25.0, (5 * L3 - 5) ** 2, (2 * L3 + 5) ** 2],
    # max(0, 1 - z); 1 - ln 3 < 0
    "hinge": [1.0, 0.0, 1 + L3],
    # q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps), q_w = sigma(z)
    "exo_pair": [
        q * (math.log(q) - math.log(1 - EXO_EPS)) + (1 - q) * (math.log(1 - q) - math.log(EXO_EPS))
        for q in (0.5, 0.75, 0.25)
    ],
    # -log sigma(beta h_w) - 1/2 log sigma(-beta h_w) - 1/2 log sigma(-beta h_l); beta h_w = [0, L, 0], beta h_l = [0, 0, L]
    "nca_pair": [2 * LN2, LN43 + 0.5 * LN4 + 0.5 * LN2, LN2 + 0.5 * LN2 + 0.5 * LN4],
    # -log sigma(beta h_w) - log sigma(-beta h_l)
    "bco_pair": [2 * LN2, LN43 + LN2, LN2 + LN4],
    # beta = 1e-3, 1/(2 beta) = 500: (h_w - 500)^2 + (h_l + 500)^2
    "sppo_hard": [2 * 500.0**2, (10 * L3 - 500) ** 2 + 500.0**2, 500.0**2 + (10 * L3 + 500) ** 2],
    # u = S_w - S_l = [2, -2 + 10L, 2 - 10L] sorted [2 - 10L, 2, 10L - 2]; v = [2, -2, 2] sorted [-2, 2, 2];
    # d = [4 - 10L, 0, 10L - 4]; beta d = [0.4 - L, 0, L - 0.4]
    "aot": [sp(0.4 - L3), LN2, sp(L3 - 0.4)],
    # sorted h_w = [0, 0, 10L] and sorted h_l = [0, 0, 10L]: the two marginals are equal, d = 0
    "aot_unpaired": [LN2, LN2, LN2],
    # [1 - sigma(beta h_w)] + sigma(beta h_l)
    "apo_zero": [0.5 + 0.5, 0.25 + 0.5, 0.5 + 0.75],
    # sigma(beta h_w) + [1 - sigma(z)]
    "apo_down": [0.5 + 0.5, 0.75 + 0.25, 0.5 + 0.75],
    # m = sigma(z / 0.05): [1/2, 1/(1 + 3^-20), 1/(1 + 3^20)]; (1 - m)(-log sigma(z)) + m e^-z
    "discopop": [
        0.5 * LN2 + 0.5,
        (1 - 1 / (1 + 3**-20)) * LN43 + (1 / (1 + 3**-20)) / 3,
        (1 - 1 / (1 + 3**20)) * LN4 + (1 / (1 + 3**20)) * 3,
    ],
    # beta * per-token margin = [0, 0.5L, -0.2L]
    "sigmoid_norm": [LN2, sp(0.5 * L3), sp(-0.2 * L3)],
    # DPO + 1.0 * NLL
    "rpo": [LN2 + 5, LN43 + 15 - 5 * L3, LN4 + 5],
    # DPO's loss on the reference it is given (the trainer moves the reference: tests/test_train.py)
    "tr_dpo": [LN2, LN43, LN4],
    # h_l' = h_l - (1 - 0.5) (tail log-ratio) = [0, -2, 10L]: z = 0.1 (h_w - h_l') = [0, L + 0.2, -L]
    "ld_dpo": [LN2, sp(L3 + 0.2), LN4],
    # DPO's losses, each pair weighted 1/8 (hand_paired's square mass)
    "wpo": [LN2 / 8, LN43 / 8, LN4 / 8],
    # JS score s(h) = ln 2 + log sigma(h): s(0) = 0, s(10L) = ln 2 - ln(1 + 3^-10); -log sigma(0.1 (s_w - s_l))
    "fdpo": [LN2, sp(0.1 * (LN2 - math.log1p(3**-10))), sp(-0.1 * (LN2 - math.log1p(3**-10)))],
    # h_w >= 0 in every pair: the DPOP penalty max(0, -h_w) is 0 and it is DPO (test_dpop_penalty_... engages it)
    "dpop": [LN2, LN43, LN4],
    # |y_w| - |y_l| = [0, -2, 0]: z = beta Delta + 0.05 (|y_w| - |y_l|) = [0, L - 0.1, -L]
    "rdpo": [LN2, sp(L3 - 0.1), LN4],
    # -log sigma(h_w - h_l) + 0.5 [(h_w - 500)^2 + (h_l + 500)^2], beta = 1e-3; h_w - h_l = [0, 10L, -10L]
    "cal_dpo": [
        LN2 + 250000.0,
        sp(10 * L3) + 0.5 * ((10 * L3 - 500) ** 2 + 500**2),
        sp(-10 * L3) + 0.5 * (500**2 + (10 * L3 + 500) ** 2),
    ],
    # first step: M0 = 0, batch mean margin (0 + 10L - 10L)/3 = 0, so beta stays 0.1: DPO
    "beta_dpo": [LN2, LN43, LN4],
    # exp(A_l) - exp(A_w), A_w = [-5, -15 + 5L, -5], A_l = [-5.5, -7, -5.4 + 2L]
    "simper": [
        math.exp(-5.5) - math.exp(-5),
        math.exp(-7) - math.exp(-15 + 5 * L3),
        math.exp(-5.4 + 2 * L3) - math.exp(-5),
    ],
    # r(A) = (1 - e^(-0.25 A)) / 0.25; -log sigma(2.5 (r_w - r_l - 0.1))
    "alphapo": [
        sp(2.5 * ((1 - math.exp(0.25 * w)) / 0.25 - (1 - math.exp(0.25 * r)) / 0.25 - 0.1))
        for w, r in zip([5, 15 - 5 * L3, 5], [5.5, 7, 5.4 - 2 * L3])  # -A_w, -A_l
    ],
    # MPO: 0.8 dpo + 0.2 bco_pair + 1.0 sft, each as above
    "mix": [
        0.8 * d + 0.2 * b + n
        for d, b, n in zip([LN2, LN43, LN4], [2 * LN2, LN43 + LN2, LN2 + LN4], [5.0, 15 - 5 * L3, 5.0])
    ],
    "orpo": _orpo_hand(),
    # beta = 2, gamma/beta = 0.25: -log sigma(2 (A_w - A_l - 0.25)), A_w - A_l = [0.5, -8 + 5L, 0.4 - 2L]
    "simpo": [sp(2 * 0.25), sp(2 * (5 * L3 - 8.25)), sp(2 * (0.15 - 2 * L3))],
    # -log sigma(0.1 (S_w - S_l)) + NLL; 0.1 (S_w - S_l) = [0.2, L - 0.2, 0.2 - L]
    "cpo": [sp(0.2) + 5, sp(L3 - 0.2) + 15 - 5 * L3, sp(0.2 - L3) + 5],
    # max(0, 1 - S_w + S_l) - 0.1 S_w: [max(0, -1) + 2, max(0, 3 - 10L) + 3 - L, (10L - 1) + 2.5]
    "slic": [2.0, 3 - L3, 10 * L3 + 1.5],
    "sft": [5.0, 15 - 5 * L3, 5.0],
    # 1 - sigma(x) = sigma(-x), x = [-0.4, L - 0.4, 0.4, 0.4 - L]
    "kto": [sig(0.4), sig(0.4 - L3), sig(-0.4), sig(L3 - 0.4)],
    # z0 = 0: x = [0, L, 0, -L]
    "kto_no_z0": [0.5, 0.25, 0.5, 0.75],
    # -log sigma(x)
    "kto_concave": [sp(-0.4), sp(L3 - 0.4), sp(0.4), sp(0.4 - L3)],
    # -x
    "kto_risk_neutral": [0.4, 0.4 - L3, -0.4, L3 - 0.4],
    # no reference: h = S_policy = [-20, -30 + 10L, -25, -10 + 10L]; x = 0.1 * s * h = [-2, L - 3, 2.5, 1 - L]
    "kto_no_ref": [sig(2), sig(3 - L3), sig(-2.5), sig(L3 - 1)],
    # desirable 1 - sigma(beta h), undesirable sigma(beta h)
    "apo_zero_unpaired": [0.5, 0.25, 0.5, 0.75],
    # delta = the mean beta h of the steps before = 0 (the first step); beta h = [0, L, 0, L]; desirable
    # -log sigma(beta h - delta) = [ln 2, ln(4/3)], undesirable -log sigma(delta - beta h) = [ln 2, ln 4]
    "bco": [LN2, LN43, LN2, LN4],
    "grpo": [-1.0, -1.2, 1.6, 1.1],
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_hand_computed_case(name):
    assert name in HAND, f"add the hand-computed case of {name!r} to HAND"
    cls = OBJECTIVES[name]
    out = cls().loss(batch_for(cls, hand_paired(), hand_unpaired(), hand_grouped()))
    torch.testing.assert_close(out.losses, t(*HAND[name]), rtol=0, atol=1e-12)


# ---- the closed form at initialisation (policy = reference) ------------------------------------


def init_paired() -> PairedLogps:
    """policy = reference, and chosen = rejected (so reference-free objectives are at their tie too).

    S = [-12, -7.5, -30], |y| = [3, 5, 6]: per-token NLL = [4, 1.5, 5].
    """
    s, n = t(-12, -7.5, -30), t(3, 5, 6)
    return PairedLogps(
        policy_chosen=s.clone(),
        policy_rejected=s.clone(),
        chosen_tokens=n,
        rejected_tokens=n.clone(),
        ref_chosen=s.clone(),
        ref_rejected=s.clone(),
        policy_chosen_square_mass=s + n * LN2,
        policy_rejected_square_mass=s + n * LN2,
        policy_chosen_tail=s / 3,  # equal lengths would give empty tails; any tails equal to the reference's
        policy_rejected_tail=s / 3,
        ref_chosen_tail=s / 3,
        ref_rejected_tail=s / 3,
    )


def init_unpaired() -> UnpairedLogps:
    """policy = reference, mismatched pairs at policy = reference too (z0 = 0). S = [-12, -7.5, -30, -9]."""
    s = t(-12, -7.5, -30, -9)
    return UnpairedLogps(
        policy=s.clone(),
        tokens=t(3, 5, 6, 3),
        desirable=torch.tensor([True, False, True, False]),
        ref=s.clone(),
        kl_policy=t(-5, -6, -7, -8),
        kl_ref=t(-5, -6, -7, -8),
    )


NLL_INIT = [4.0, 1.5, 5.0]
AT_INIT: dict[str, list[float]] = {
    "dpo": [LN2] * 3,
    "cdpo": [LN2] * 3,
    "robust": [LN2] * 3,
    "ipo": [(1 / (2 * 0.1)) ** 2] * 3,
    "hinge": [1.0] * 3,
    "exo_pair": [0.5 * (math.log(0.5) - math.log(1 - EXO_EPS)) + 0.5 * (math.log(0.5) - math.log(EXO_EPS))] * 3,
    "nca_pair": [2 * LN2] * 3,
    "bco_pair": [2 * LN2] * 3,
    "sppo_hard": [2 * (1 / (2 * 1e-3)) ** 2] * 3,
    "aot": [LN2] * 3,
    "aot_unpaired": [LN2] * 3,
    "apo_zero": [1.0] * 3,
    "apo_down": [1.0] * 3,
    "discopop": [0.5 * LN2 + 0.5] * 3,
    "sigmoid_norm": [LN2] * 3,
    "rpo": [LN2 + n for n in NLL_INIT],
    "fdpo": [LN2] * 3,  # every score is 0 at h = 0
    "wpo": [LN2 / 4] * 3,  # square mass S + |y| ln 2 on both sides: weight 1/2 * 1/2
    "ld_dpo": [LN2] * 3,
    "tr_dpo": [LN2] * 3,
    "dpop": [LN2] * 3,
    "rdpo": [LN2] * 3,  # equal lengths
    "cal_dpo": [LN2 + 0.5 * 2 * 500.0**2] * 3,
    "beta_dpo": [LN2] * 3,
    "simper": [0.0] * 3,  # chosen = rejected
    "alphapo": [sp(-2.5 * 0.1)] * 3,  # r_w = r_l: -log sigma(-gamma), gamma = beta * 0.1
    "mix": [0.8 * LN2 + 0.2 * 2 * LN2 + n for n in NLL_INIT],
    "orpo": [n + 0.1 * LN2 for n in NLL_INIT],  # log-odds 0: -0.1 log sigma(0)
    "simpo": [sp(-2.0 * 0.25)] * 3,  # A_w = A_l: -log sigma(-gamma), gamma = 0.5
    "cpo": [LN2 + n for n in NLL_INIT],
    "slic": [1.0 + 0.1 * 12, 1.0 + 0.1 * 7.5, 1.0 + 0.1 * 30],  # max(0, delta) - lambda S
    "sft": NLL_INIT,
    "kto": [0.5] * 4,
    "kto_no_z0": [0.5] * 4,
    "kto_concave": [LN2] * 4,
    "kto_risk_neutral": [0.0] * 4,
    # no reference: 1 - sigma(0.1 * s * S), S = [-12, -7.5, -30, -9], s = [+, -, +, -]
    "kto_no_ref": [sig(1.2), sig(-0.75), sig(3.0), sig(-0.9)],
    "apo_zero_unpaired": [0.5] * 4,
    "bco": [LN2] * 4,
    "grpo": [-1.0, 1.0, -0.5, 0.5],  # -A at rho = 1
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_closed_form_at_initialisation(name):
    assert name in AT_INIT, f"add the closed-form value at initialisation of {name!r} to AT_INIT"
    cls = OBJECTIVES[name]
    out = cls().loss(batch_for(cls, init_paired(), init_unpaired(), init_grouped()))
    torch.testing.assert_close(out.losses, t(*AT_INIT[name]), rtol=0, atol=1e-12)


# ---- gradient direction at initialisation ------------------------------------------------------

# Objectives whose gradient at initialisation is not "raise chosen, lower loss", each with the
# sign the test then demands instead.
INIT_GRADIENT_EXCEPTIONS = {
    # sigma(beta h_w) and -sigma(beta (h_w - h_l)) have equal slopes at 0: raising the chosen
    # log-prob alone does nothing; the margin still lowers the loss (via the rejected term).
    "apo_down": "chosen_flat",
    # With m = sigma(z/tau) the mixing weight moves 1/(4 tau) = 5 per unit z at z = 0, toward the
    # exponential term (value 1 > ln 2): dL/dz(0) = 5 (1 - ln 2) - 1/4 - 1/2 > 0.
    "discopop": "margin_up_raises_loss",
}


def _grads(cls):
    if cls.data == "paired":
        b = init_paired()
        pc, pr = b.policy_chosen.requires_grad_(), b.policy_rejected.requires_grad_()
        cls().loss(b).losses.mean().backward()
        return pc.grad, pr.grad
    if cls.data == "grouped":  # "chosen": answers above their group's mean (advantage > 0), "rejected" below
        b = init_grouped()
        p = b.policy.requires_grad_()
        cls().loss(b).losses.mean().backward()
        return p.grad[b.advantages > 0], p.grad[b.advantages < 0]
    b = init_unpaired()
    p = b.policy.requires_grad_()
    cls().loss(b).losses.mean().backward()
    return p.grad[b.desirable], p.grad[~b.desirable]


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gradient_direction_at_initialisation(name):
    """Raising a chosen (desirable) log-prob lowers the loss; lowering a rejected one does not raise it."""
    cls = OBJECTIVES[name]
    up, down = _grads(cls)  # d loss / d log-prob of chosen (desirable) and of rejected (undesirable)
    exception = INIT_GRADIENT_EXCEPTIONS.get(name)
    if exception == "chosen_flat":
        assert torch.all(up.abs() < 1e-15) and torch.all(down > 0)
    elif exception == "margin_up_raises_loss":
        assert torch.all(up - down > 0)
        assert HAND[name][1] < AT_INIT[name][0]  # yet a clear margin (z = ln 3) beats z = 0
    else:
        assert torch.all(up < 0), up
        if name == "sft":
            assert down is None  # rejected completions are unused: no gradient reaches them
        else:
            assert torch.all(down > 0), down


# ---- numerical safety --------------------------------------------------------------------------


def extreme_paired() -> PairedLogps:
    """|h| = 1e4 - 1e-3 in every sign combination, plus per-token log-probs near 0 and at -1e4."""
    near, far = -1e-3, -1e4
    return PairedLogps(
        policy_chosen=t(near, far, near, far, -5.0),
        policy_rejected=t(far, near, near, far, near),
        chosen_tokens=t(1, 1, 7, 3, 2),
        rejected_tokens=t(1, 1, 7, 3, 2),
        ref_chosen=t(far, near, far, near, -5.0),
        ref_rejected=t(near, far, far, near, far),
        policy_chosen_square_mass=t(near, near, near, near, near),  # WPO weights from e^-1e4 to 1
        policy_rejected_square_mass=t(near, near, near, near, near),
        policy_chosen_tail=t(near, far, near, far, -5.0) / 2,
        policy_rejected_tail=t(far, near, near, far, near) / 2,
        ref_chosen_tail=t(far, near, far, near, -5.0) / 2,
        ref_rejected_tail=t(near, far, far, near, far) / 2,
    )


def extreme_unpaired() -> UnpairedLogps:
    near, far = -1e-3, -1e4
    return UnpairedLogps(
        policy=t(near, far, near, far),
        tokens=t(1, 2, 1, 5),
        desirable=torch.tensor([True, True, False, False]),
        ref=t(far, near, far, near),
        kl_policy=t(near, near, near, near),
        kl_ref=t(far, far, far, far),  # z0 = 1e4 - 1e-3
    )


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_extreme_logratios(name, dtype):
    cls = OBJECTIVES[name]
    b = batch_for(cls, extreme_paired(), extreme_unpaired(), extreme_grouped())
    fields = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.__dict__.items()}
    b = type(b)(**fields)
    leaves = [v.requires_grad_() for k, v in b.__dict__.items() if k.startswith("policy")]
    out = cls().loss(b)
    out.losses.mean().backward()
    assert torch.isfinite(out.losses).all(), out.losses
    for leaf in leaves:
        assert leaf.grad is None or torch.isfinite(leaf.grad).all(), leaf.grad
    for value in out.metrics.values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_zero_length_completion_is_a_clear_error(name):
    cls = OBJECTIVES[name]
    with pytest.raises(ValueError, match=r"zero-length completion at batch index \[1\]"):
        if cls.data == "paired":
            b = init_paired()
            PairedLogps(**{**b.__dict__, "rejected_tokens": t(3, 0, 6)})
        elif cls.data == "grouped":
            GroupedLogps(**{**init_grouped().__dict__, "tokens": t(3, 0, 6, 3)})
        else:
            b = init_unpaired()
            UnpairedLogps(**{**b.__dict__, "tokens": t(3, 0, 6, 3)})


# ---- the seed texts' claims, as properties -----------------------------------------------------


def margins_batch(margins, beta_scale=1.0) -> PairedLogps:
    """Pairs with h_w = margin, h_l = 0 and one token each (so per-token and summed margins agree)."""
    m = torch.as_tensor(margins, dtype=torch.float64)
    z = torch.zeros_like(m)
    return PairedLogps(
        policy_chosen=m - 10,
        policy_rejected=z - 10,
        chosen_tokens=z + 1,
        rejected_tokens=z + 1,
        ref_chosen=z - 10,
        ref_rejected=z - 10,
    )


def per_pair_loss_and_grad(objective, margins):
    b = margins_batch(margins)
    pc = b.policy_chosen.requires_grad_()
    losses = objective.loss(b).losses
    losses.sum().backward()  # pairs are independent: each pair's gradient is its own
    return losses.detach(), pc.grad


def test_ipo_is_minimised_at_margin_one_over_two_beta_and_rises_past_it():
    beta = 0.1
    margins = torch.linspace(0, 10, 101, dtype=torch.float64)  # 1/(2 beta) = 5 is margins[50]
    losses, grads = per_pair_loss_and_grad(OBJECTIVES["ipo"](beta=beta), margins)
    assert int(losses.argmin()) == 50 and losses[50] == 0
    assert torch.all(losses[51:].diff() > 0) and torch.all(losses[:51].diff() < 0)
    assert grads[50] == 0 and torch.all(grads[51:] > 0)


def test_dpo_keeps_falling_as_the_margin_grows():
    margins = [-10.0, 0.0, 1.0, 10.0, 100.0, 300.0]
    losses, grads = per_pair_loss_and_grad(OBJECTIVES["dpo"](), margins)
    assert torch.all(losses.diff() < 0)
    assert torch.all(grads < 0)  # no finite optimum: the margin is pushed up forever


def test_cdpo_at_half_has_zero_gradient_and_learns_no_preference():
    cdpo = OBJECTIVES["cdpo"](epsilon=0.5)
    losses, grads = per_pair_loss_and_grad(cdpo, [0.0, -20.0, -5.0, 5.0, 20.0])
    assert grads[0] == 0  # at initialisation (margin 0) nothing moves
    assert torch.all(losses[1:] > losses[0])  # and margin 0 is the minimum: no preference is learned
    # For eps < 0.5 the optimum is finite: sigma(beta Delta) = 1 - eps, i.e. beta Delta = ln 4 at eps 0.2.
    _, g = per_pair_loss_and_grad(OBJECTIVES["cdpo"](epsilon=0.2), [10 * math.log(4)])
    assert abs(float(g[0])) < 1e-15


def kto_batch(h, desirable, kl_diff=0.0) -> UnpairedLogps:
    h = torch.as_tensor(h, dtype=torch.float64)
    n = h.numel()
    return UnpairedLogps(
        policy=h - 50,
        ref=torch.full((n,), -50.0, dtype=torch.float64),
        tokens=torch.ones(n, dtype=torch.float64),
        desirable=torch.as_tensor(desirable),
        kl_policy=torch.full((n,), -50.0 + kl_diff, dtype=torch.float64),
        kl_ref=torch.full((n,), -50.0, dtype=torch.float64),
    )


def test_kto_gradient_vanishes_as_h_moves_away_from_z0():
    kto = OBJECTIVES["kto"]()
    z0 = 3.0
    for desirable in (True, False):
        h = torch.tensor([z0, z0 + 10, z0 + 100, z0 + 1000, z0 - 10, z0 - 100, z0 - 1000], dtype=torch.float64)
        b = kto_batch(h, [desirable] * 7, kl_diff=z0)
        p = b.policy.requires_grad_()
        kto.loss(b).losses.sum().backward()
        g = p.grad.abs()
        assert g[0] == pytest.approx(0.1 * 0.25)  # beta * sigma'(0)
        assert g[0] > g[1] > g[2] > g[3] and g[0] > g[4] > g[5] > g[6]
        assert g[3] < 1e-40 and g[6] < 1e-40


def test_kto_mismatched_z0_ignores_labels_and_matched_logps_and_gets_no_gradient():
    kto = OBJECTIVES["kto"]()
    b = hand_unpaired()
    z0 = kto.loss(b).metrics["z0"]
    assert float(z0) == pytest.approx(4.0)  # mean of [2, 4, 6, 4]
    flipped = UnpairedLogps(**{**b.__dict__, "desirable": ~b.desirable})
    moved = UnpairedLogps(**{**b.__dict__, "policy": b.policy + t(7, -3, 1, 20)})
    assert float(kto.loss(flipped).metrics["z0"]) == float(z0)
    assert float(kto.loss(moved).metrics["z0"]) == float(z0)
    kl = b.kl_policy.requires_grad_()
    p = b.policy.requires_grad_()
    kto.loss(b).losses.sum().backward()
    assert kl.grad is None and p.grad is not None


def test_kto_mismatched_z0_is_clamped_at_zero():
    b = kto_batch([1.0, -1.0], [True, False], kl_diff=-2.0)
    out = OBJECTIVES["kto"]().loss(b)
    assert float(out.metrics["z0"]) == 0.0
    torch.testing.assert_close(out.losses, t(1 - sig(0.1), 1 - sig(0.1)))


def test_kto_batch_mean_z0_tracks_labels_and_loses_saturation_at_batch_size_one():
    kto = OBJECTIVES["kto"](z0="batch_mean")
    out = kto.loss(kto_batch([2.0, 4.0, -9.0], [True, True, False]))
    assert float(out.metrics["z0"]) == pytest.approx(-1.0)  # (2 + 4 - 9) / 3, not clamped
    # At batch size 1, z0 = h: the loss is 0.5 whatever h is, and since z0 is detached the gradient is
    # a constant -beta/4 that never saturates: KTO's bounded, saturating value function is gone.
    b = kto_batch([-40.0, 0.0, 5.0, 300.0], [True] * 4)
    for i in range(4):
        single = UnpairedLogps(**{k: v[i : i + 1] for k, v in b.__dict__.items()})
        p = single.policy.requires_grad_()
        loss = kto.loss(single).losses
        loss.sum().backward()
        assert float(loss.detach()) == 0.5 and float(p.grad) == pytest.approx(-0.1 / 4)


def test_kto_class_weights_scale_each_class():
    b = hand_unpaired()
    base = OBJECTIVES["kto"]().loss(b).losses
    weighted = OBJECTIVES["kto"](desirable_weight=2.0, undesirable_weight=0.5).loss(b).losses
    torch.testing.assert_close(weighted, base * t(2, 2, 0.5, 0.5))


def test_bco_running_mean_spans_steps_and_round_trips():
    bco = OBJECTIVES["bco"]()
    first = bco.loss(hand_unpaired())  # beta h = [0, L, 0, L]: sum 2L over 4
    second = kto_batch([10.0, -30.0], [True, False])  # beta h = [1, -3]
    # a second micro-batch of the same step reads the same delta (0: no step has ended)
    assert float(bco.loss(second).metrics["delta"]) == float(first.metrics["delta"]) == 0.0
    bco.end_step()  # the step's six rewards join the mean: (2L + 1 - 3) / 6
    out = bco.loss(second)
    delta = (2 * L3 + 1 - 3) / 6
    assert float(out.metrics["delta"]) == pytest.approx(delta)
    torch.testing.assert_close(out.losses, t(sp(1 - delta), sp(-(-3 - delta))))
    with torch.no_grad():  # evaluation reads delta without moving it
        bco.loss(kto_batch([100.0], [True]))
    bco.end_step()  # (the training batch above joins: 8 rewards)
    restored = OBJECTIVES["bco"]()
    restored.load_state_dict(bco.state_dict())
    assert restored.state_dict() == {"reward_sum": pytest.approx(2 * L3 - 4), "reward_count": 8}


# ---- the registry and its user-facing errors ---------------------------------------------------


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_registry_entry_declares_its_needs(name):
    cls = OBJECTIVES[name]
    assert cls.data in ("paired", "unpaired", "grouped")
    assert isinstance(cls.needs_reference, bool)
    assert isinstance(cls.version, int) and cls.version >= 1
    assert cls.paper and cls.__doc__
    obj = cls()
    assert obj.hyperparameters() == build(name).hyperparameters()


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_fdpo_scores_approach_dpo_near_the_reference_and_stay_finite_far_from_it(divergence):
    """Every f-divergence's score has s(0) = 0 and s'(0) = 1 (forward KL, alpha) or 1/2 (JS): for |h| small, f-DPO
    is DPO at beta (or beta / 2); at |h| = 1e4 the clamped exponent keeps loss and gradient finite."""
    h_w, h_l = t(0.002, -0.001), t(-0.0015, 0.003)  # s(h) - slope * h is second order: below 1e-5 here
    small = PairedLogps(h_w - 10, h_l - 12, t(3, 3), t(4, 4), t(-10, -10), t(-12, -12))
    slope = 0.5 if divergence == "js_divergence" else 1.0
    got = build("fdpo", divergence=divergence, beta=1.0).loss(small).losses
    expected = build("dpo", beta=slope).loss(small).losses
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    b = extreme_paired()
    leaf = b.policy_chosen.requires_grad_()
    out = build("fdpo", divergence=divergence).loss(b)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(leaf.grad).all()


def test_grpo_advantages_by_hand_and_a_group_without_spread():
    """Rewards [1, 2, 4]: mean 7/3, unbiased std sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 2) = sqrt(7/3), so A =
    [-4/3, -1/3, 5/3] / (sqrt(7/3) + 1e-4); a group whose answers all score 0.5 gets zeros. At rho = 1 GRPO's loss is
    -A, whose group mean is 0, and its gradient on each answer is -A / (|o| N): above-mean answers pushed up."""
    a = group_advantages(t(1, 2, 4, 0.5, 0.5, 0.5).view(2, 3))
    scale = math.sqrt(7 / 3) + 1e-4
    torch.testing.assert_close(a[0], t(-4 / 3, -1 / 3, 5 / 3) / scale, rtol=0, atol=1e-12)
    assert a[1].tolist() == [0.0, 0.0, 0.0]
    s = t(-6, -9, -3).requires_grad_()
    b = GroupedLogps(policy=s, old=s.detach().clone(), tokens=t(2, 3, 1), advantages=a[0])
    out = build("grpo").loss(b)
    assert abs(out.losses.sum().item()) < 1e-12 and out.metrics["ratio"].item() == 1.0
    out.losses.mean().backward()
    torch.testing.assert_close(s.grad, -a[0] / t(2, 3, 1) / 3, rtol=0, atol=1e-12)


def test_dpop_penalty_engages_only_below_the_reference():
    """h_w = -1 (chosen below the reference), h_l = -3: DPO's z = 0.1 * 2 = 0.2, DPOP's 0.1 (2 - 50 * 1) = -4.8; with
    h_w = +1 the two agree. The penalty's gradient raises the chosen log-prob: dL/dS_w is more negative than DPO's."""
    below = PairedLogps(t(-11.0), t(-13.0), t(4), t(4), t(-10.0), t(-10.0))
    above = PairedLogps(t(-9.0), t(-13.0), t(4), t(4), t(-10.0), t(-10.0))
    torch.testing.assert_close(build("dpop").loss(below).losses, t(sp(-4.8)), rtol=0, atol=1e-12)
    torch.testing.assert_close(build("dpop").loss(above).losses, build("dpo").loss(above).losses, rtol=0, atol=0)
    grads = []
    for name in ("dpo", "dpop"):
        b = PairedLogps(t(-11.0).requires_grad_(), t(-13.0), t(4), t(4), t(-10.0), t(-10.0))
        build(name).loss(b).losses.sum().backward()
        grads.append(b.policy_chosen.grad.item())
    # d/dS_w: -0.1 (1 + 50) sigma(4.8) for DPOP against -0.1 sigma(-0.2) for DPO
    assert grads == pytest.approx([-0.1 * sig(-0.2), -0.1 * 51 * sig(4.8)], rel=1e-12)


def test_beta_dpo_beta_follows_the_batch_margin_against_its_running_mean():
    """Margins Delta = [2, 4] (mean 3) on the first step: M0 = 0.9 * 0 + 0.1 * 3 = 0.3 before use, beta = 0.1 (1 +
    0.6 (3 - 0.3)) = 0.262. end_step moves M0 to 0.3; the next step, margins [-1, 1] (mean 0): M0 = 0.27 + 0 = 0.27,
    beta = 0.1 (1 - 0.6 * 0.27) = 0.0838. A batch far below M0 clamps beta at 1e-3. The running mean round-trips."""
    obj = build("beta_dpo")
    first = PairedLogps(t(-8.0, -6.0), t(-10.0, -10.0), t(3, 3), t(3, 3), t(-10.0, -10.0), t(-10.0, -10.0))
    out = obj.loss(first)
    assert out.metrics["beta"].item() == pytest.approx(0.1 * (1 + 0.6 * 2.7))
    torch.testing.assert_close(out.losses, t(sp(0.262 * 2), sp(0.262 * 4)), rtol=0, atol=1e-12)
    obj.end_step()
    assert obj.state_dict() == {"margin_mean": pytest.approx(0.3)}
    second = PairedLogps(t(-11.0, -9.0), t(-10.0, -10.0), t(3, 3), t(3, 3), t(-10.0, -10.0), t(-10.0, -10.0))
    assert obj.loss(second).metrics["beta"].item() == pytest.approx(0.1 * (1 - 0.6 * 0.27))
    far = PairedLogps(t(-1000.0), t(-10.0), t(3), t(3), t(-10.0), t(-10.0))
    assert obj.loss(far).metrics["beta"].item() == pytest.approx(1e-3)
    with torch.no_grad():  # evaluation forwards leave the statistics alone
        obj.loss(first)
    restored = build("beta_dpo")
    restored.load_state_dict(obj.state_dict())
    torch.testing.assert_close(restored.loss(second).losses, obj.loss(second).losses)


def test_rdpo_pushes_less_where_the_chosen_completion_is_longer():
    """Equal log-ratios; a chosen completion 20 tokens longer than the rejected one gets z = 0.05 * 20 = 1 more, so a
    smaller loss and gradient than one 20 tokens shorter (the length it would otherwise learn to exploit)."""
    pair = lambda cw, cl: PairedLogps(t(-10.0), t(-10.0), t(cw), t(cl), t(-10.0), t(-10.0))
    longer, shorter = build("rdpo").loss(pair(30, 10)).losses, build("rdpo").loss(pair(10, 30)).losses
    torch.testing.assert_close(longer, t(sp(1.0)), rtol=0, atol=1e-12)
    torch.testing.assert_close(shorter, t(sp(-1.0)), rtol=0, atol=1e-12)


def test_mix_weights_registered_parts_and_checks_each():
    """A mixture's loss is the weighted sum of its parts' losses on the same pairs, each part built with its own
    hyperparameters; malformed mixtures are one-line errors."""
    b = hand_paired()
    mix = build("mix", parts=[{"name": "dpo", "weight": 2, "beta": 0.2}, {"name": "simpo", "weight": 0.5}])
    expected = 2 * build("dpo", beta=0.2).loss(b).losses + 0.5 * build("simpo").loss(b).losses
    out = mix.loss(b)
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-12)
    assert mix.needs_reference and not build("mix", parts=[{"name": "simpo", "weight": 1}]).needs_reference
    assert set(out.metrics) >= {"loss/dpo", "loss/simpo", "rewards/margins"}
    for parts, message in [
        ([], "non-empty list"),
        ([{"name": "dpo"}], "a name and a weight"),
        ([{"name": "dpo", "weight": 0}], "weight must be a number > 0"),
        ([{"name": "kto", "weight": 1}], "paired objective of per-pair losses"),
        ([{"name": "aot", "weight": 1}], "paired objective of per-pair losses"),
        ([{"name": "mix", "weight": 1}], "not a mixture"),
        ([{"name": "dpo", "weight": 1, "beta": -1}], "beta must be > 0"),
        ([{"name": "dpoo", "weight": 1}], "unknown objective 'dpoo'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build("mix", parts=parts)


def test_bad_hyperparameters_are_one_line_errors():
    with pytest.raises(ValueError, match=r"CDPO: epsilon must be in \[0.0, 0.5\], got 0.6"):
        OBJECTIVES["cdpo"](epsilon=0.6)
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        OBJECTIVES["dpo"](beta=0)
    with pytest.raises(ValueError, match=r"z0 must be one of \['mismatched', 'batch_mean', 'none'\]"):
        OBJECTIVES["kto"](z0="mean")
    with pytest.raises(ValueError, match=r"unknown objective 'dpoo' \(did you mean 'dpo'\?\)"):
        build("dpoo")
    with pytest.raises(ValueError, match=r"has no hyperparameter 'epsilom' \(did you mean 'epsilon'\?\)"):
        build("cdpo", epsilom=0.1)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        OBJECTIVES["dpo"]().loss(
            PairedLogps(policy_chosen=t(-1), policy_rejected=t(-2), chosen_tokens=t(1), rejected_tokens=t(1))
        )


def test_cli_lists_every_objective_with_its_hyperparameters(capsys):
    assert cli_main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name, cls in OBJECTIVES.items():
        line = next(row for row in out.splitlines() if row.split()[:1] == [name])
        assert cls.data in line and f"v{cls.version}" in line
    assert "epsilon=0.2" in next(row for row in out.splitlines() if row.startswith("cdpo "))
    assert "z0='mismatched'" in next(row for row in out.splitlines() if row.startswith("kto "))
