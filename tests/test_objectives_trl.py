"""prefbench's objectives against TRL 1.16's own loss code, in float64, to 1e-6.

TRL computes its losses inside trainer methods that also run the model. The model is the one
thing replaced here: a stand-in returns per-token log-probs whose completion sums are the batch's
log-probs, so TRL's real `_compute_loss` (DPO, KTO) and `cpo_loss`/`odds_ratio_loss` (CPO, ORPO)
run on exactly the numbers prefbench's objectives get. Reference log-probs go in through TRL's
precomputed-reference path; GRPO's old-policy log-probs through the sampled batch's `old_per_token_logps`.

Every objective is either in TRL_CASES or in NOT_IN_TRL with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prefbench.objectives import OBJECTIVES, PairedLogps, UnpairedLogps
from prefbench.objectives.paired import chosen_nll

trl = pytest.importorskip("trl", minversion="1.16.0")
from trl import DPOTrainer, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from prefbench.objectives.grouped import GroupedLogps, group_advantages  # noqa: E402

CPU = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)


def random_paired(n=7, seed=0, equal_chosen_lengths=False) -> PairedLogps:
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    chosen_tokens = (
        torch.full((n,), 4.0, dtype=torch.float64)
        if equal_chosen_lengths
        else torch.randint(1, 9, (n,), generator=g).double()
    )
    rejected_tokens = torch.randint(1, 9, (n,), generator=g).double()
    ref_c, ref_r = -chosen_tokens * (1 + 3 * torch.rand(n, **f64)), -rejected_tokens * (1 + 3 * torch.rand(n, **f64))
    pol_c = (ref_c + 4 * torch.randn(n, **f64)).clamp(max=-0.05)
    pol_r = (ref_r + 4 * torch.randn(n, **f64)).clamp(max=-0.05)
    return PairedLogps(pol_c, pol_r, chosen_tokens, rejected_tokens, ref_c, ref_r)


def random_unpaired(n=8, seed=1) -> UnpairedLogps:
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    tokens = torch.randint(1, 9, (n,), generator=g).double()
    ref = -tokens * (1 + 3 * torch.rand(n, **f64))
    kl_ref = -5 - 20 * torch.rand(n, **f64)
    return UnpairedLogps(
        policy=(ref + 4 * torch.randn(n, **f64)).clamp(max=-0.05),
        tokens=tokens,
        desirable=torch.tensor([True, False, True, True, False, True, False, False][:n]),
        ref=ref,
        kl_policy=kl_ref + 2 + 3 * torch.randn(n, **f64),  # mean difference > 0, so z0 is not clamped
        kl_ref=kl_ref,
    )


def per_token(sums: torch.Tensor, lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of per-token log-probs (each completion's sum spread evenly) and TRL's completion_mask.

    The mask has one prompt position in front, as TRL's (it shifts the mask by one for the labels).
    """
    n = sums.numel()
    positions = torch.arange(width).expand(n, width)
    on = positions < lengths.long().unsqueeze(1)
    logps = torch.where(on, sums.unsqueeze(1) / lengths.unsqueeze(1), torch.zeros((), dtype=sums.dtype))
    mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), on.long()], dim=1)
    return logps, mask


def stand_in_model(rows_by_input: dict[int, torch.Tensor], square_mass: torch.Tensor | None = None):
    """Answers TRL's `model(..., fused_lm_head=True)` with given per-token log-probs (and log sum p^2 per token,
    WPO's `log_sum_sq_probs`)."""

    def model(*, input_ids, **_):
        logps = rows_by_input[id(input_ids)]
        zeros = torch.zeros_like(logps)
        mass = zeros if square_mass is None else square_mass
        return SimpleNamespace(
            log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), log_sum_sq_probs=mass
        )

    return model


def trl_dpo(
    b: PairedLogps, loss_types, loss_weights=None, beta=0.1, label_smoothing=0.0, discopop_tau=0.05,
    f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, use_weighting=False, ld_alpha=None,
):  # fmt: skip
    """TRL's DPOTrainer._compute_loss on this batch: (mean loss, TRL's logged metrics)."""
    self = DPOTrainer.__new__(DPOTrainer)
    self.__dict__.update(
        accelerator=CPU, model=SimpleNamespace(training=True), aux_loss_enabled=False, precompute_ref_logps=True,
        ld_alpha=ld_alpha, f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=list(loss_types),
        loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta, label_smoothing=label_smoothing,
        use_weighting=use_weighting, args=SimpleNamespace(discopop_tau=discopop_tau), _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    width = int(max(b.chosen_tokens.max(), b.rejected_tokens.max()))
    logps, mask = per_token(
        torch.cat([b.policy_chosen, b.policy_rejected]), torch.cat([b.chosen_tokens, b.rejected_tokens]), width
    )
    input_ids = torch.zeros_like(mask)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(mask),
        completion_mask=mask,
        ref_chosen_logps=b.ref_chosen,
        ref_rejected_logps=b.ref_rejected,
    )
    mass = None
    if use_weighting:  # each completion's square mass spread evenly over its tokens, as its log-probs are
        mass, _ = per_token(
            torch.cat([b.policy_chosen_square_mass, b.policy_rejected_square_mass]),
            torch.cat([b.chosen_tokens, b.rejected_tokens]),
            width,
        )
    loss = self._compute_loss(stand_in_model({id(input_ids): logps}, mass), inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in self._metrics["train"].items()}


def trl_kto(b: UnpairedLogps, loss_type, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    self = KTOTrainer.__new__(KTOTrainer)
    self.__dict__.update(
        accelerator=CPU, model=SimpleNamespace(training=True), aux_loss_enabled=False, precompute_ref_logps=True,
        calculate_KL=loss_type == "kto", loss_type=loss_type, beta=beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    width = int(b.tokens.max())
    logps, mask = per_token(b.policy, b.tokens, width)
    kl_logps, kl_mask = per_token(b.kl_policy, torch.ones_like(b.tokens), width)
    input_ids, kl_ids = torch.zeros_like(mask), torch.zeros_like(kl_mask)
    inputs = dict(
        input_ids=input_ids, attention_mask=torch.ones_like(mask), completion_mask=mask, label=b.desirable,
        KL_input_ids=kl_ids, KL_attention_mask=torch.ones_like(kl_mask), KL_completion_mask=kl_mask,
        ref_logps=b.ref, ref_KL_logps=b.kl_ref,
    )  # fmt: skip
    loss = self._compute_loss(
        stand_in_model({id(input_ids): logps, id(kl_ids): kl_logps}), inputs, return_outputs=False
    )
    return loss, {k: v[-1] for k, v in self._metrics["train"].items()}


def close(a, b):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=0, atol=1e-6
    )


def check_dpo_family(name, loss_types, *, batch_coupled=False, **trl_kwargs):
    """Mean loss and TRL's reward metrics on the whole batch; per-pair losses one pair at a time."""
    ours = OBJECTIVES[name]()
    b = random_paired()
    out = ours.loss(b)
    loss, metrics = trl_dpo(b, loss_types, beta=ours.beta, **trl_kwargs)
    close(out.losses.mean(), loss)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        close(out.metrics[key], metrics[key])
    if not batch_coupled:
        for i in range(len(b.policy_chosen)):
            one = PairedLogps(**{k: None if v is None else v[i : i + 1] for k, v in b.__dict__.items()})
            close(out.losses[i], trl_dpo(one, loss_types, beta=ours.beta, **trl_kwargs)[0])


TRL_CASES = {
    "dpo": lambda: check_dpo_family("dpo", ["sigmoid"]),
    "ipo": lambda: check_dpo_family("ipo", ["ipo"]),
    "robust": lambda: check_dpo_family("robust", ["robust"], label_smoothing=0.1),
    "hinge": lambda: check_dpo_family("hinge", ["hinge"]),
    "exo_pair": lambda: check_dpo_family("exo_pair", ["exo_pair"], label_smoothing=1e-3),
    "nca_pair": lambda: check_dpo_family("nca_pair", ["nca_pair"]),
    "bco_pair": lambda: check_dpo_family("bco_pair", ["bco_pair"]),
    "sppo_hard": lambda: check_dpo_family("sppo_hard", ["sppo_hard"]),
    "aot": lambda: check_dpo_family("aot", ["aot"], batch_coupled=True),
    "aot_unpaired": lambda: check_dpo_family("aot_unpaired", ["aot_unpaired"], batch_coupled=True),
    "apo_zero": lambda: check_dpo_family("apo_zero", ["apo_zero"]),
    "apo_down": lambda: check_dpo_family("apo_down", ["apo_down"]),
    "discopop": lambda: check_dpo_family("discopop", ["discopop"]),
    "sigmoid_norm": lambda: check_dpo_family("sigmoid_norm", ["sigmoid_norm"]),
}


def check_rpo_and_sft():
    # TRL's `sft` term is the token mean over the batch, prefbench's the per-sequence token mean:
    # equal when every chosen completion has the same length, which this batch has.
    b = random_paired(equal_chosen_lengths=True)
    rpo = OBJECTIVES["rpo"](alpha=0.7)
    close(rpo.loss(b).losses.mean(), trl_dpo(b, ["sigmoid", "sft"], [1.0, 0.7])[0])
    close(OBJECTIVES["sft"]().loss(b).losses.mean(), trl_dpo(b, ["sft"])[0])
    # ... and differ, as documented, when lengths differ.
    u = random_paired()
    assert abs(float(OBJECTIVES["sft"]().loss(u).losses.mean()) - float(trl_dpo(u, ["sft"])[0])) > 1e-3


TRL_CASES["rpo"] = check_rpo_and_sft
TRL_CASES["sft"] = check_rpo_and_sft


def check_fdpo():
    """Each divergence against TRL's `f_divergence_type` with its `sigmoid` loss. TRL's alpha-divergence clamps in
    the batch's dtype and has no float64 entry: that case runs in float32 (to 1e-5)."""
    for divergence in ("forward_kl", "js_divergence"):
        ours = OBJECTIVES["fdpo"](divergence=divergence, beta=0.3)
        b = random_paired(seed=3)
        loss, metrics = trl_dpo(b, ["sigmoid"], beta=0.3, f_divergence_type=divergence)
        out = ours.loss(b)
        close(out.losses.mean(), loss)
        close(out.metrics["rewards/margins"], metrics["rewards/margins"])
    ours = OBJECTIVES["fdpo"](divergence="alpha_divergence", alpha=0.3, beta=0.3)
    b = PairedLogps(**{k: None if v is None else v.float() for k, v in random_paired(seed=4).__dict__.items()})
    loss, _ = trl_dpo(b, ["sigmoid"], beta=0.3, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3)
    torch.testing.assert_close(ours.loss(b).losses.mean(), loss, rtol=0, atol=1e-5)


def check_wpo():
    """TRL's `use_weighting` with its sigmoid loss: the pair weight exp(mean_t (log p - log sum p^2)) of chosen times
    rejected, from the model's per-token log sum p^2 (here each completion's square mass spread over its tokens)."""
    b = random_paired(seed=7)
    g = torch.Generator().manual_seed(8)
    extra = lambda n: n * torch.rand(n.shape, dtype=torch.float64, generator=g)  # log p - log sum p^2 in [-1, 0]
    b = PairedLogps(**{**b.__dict__, "policy_chosen_square_mass": b.policy_chosen + extra(b.chosen_tokens),
                       "policy_rejected_square_mass": b.policy_rejected + extra(b.rejected_tokens)})  # fmt: skip
    out = OBJECTIVES["wpo"]().loss(b)
    loss, metrics = trl_dpo(b, ["sigmoid"], use_weighting=True)
    close(out.losses.mean(), loss)
    close(out.metrics["rewards/margins"], metrics["rewards/margins"])
    for i in range(len(b.policy_chosen)):
        one = PairedLogps(**{k: None if v is None else v[i : i + 1] for k, v in b.__dict__.items()})
        close(out.losses[i], trl_dpo(one, ["sigmoid"], use_weighting=True)[0])


def check_ld_dpo():
    """TRL's `ld_alpha`: its per-token log-probs (each completion's sum spread evenly, so the tail past the pair's
    shorter length k holds (n - k) / n of it) split at min(|y_w|, |y_l|). TRL's precomputed reference log-probs are
    its weighted sums (its precompute applies ld_alpha), so the reference goes in weighted."""
    b = random_paired(seed=9)
    k = torch.minimum(b.chosen_tokens, b.rejected_tokens)
    tail = lambda s, n: s * (n - k) / n
    fields = dict(b.__dict__, policy_chosen_tail=tail(b.policy_chosen, b.chosen_tokens),
                  policy_rejected_tail=tail(b.policy_rejected, b.rejected_tokens),
                  ref_chosen_tail=tail(b.ref_chosen, b.chosen_tokens), ref_rejected_tail=tail(b.ref_rejected, b.rejected_tokens))  # fmt: skip
    ours = OBJECTIVES["ld_dpo"](alpha=0.3)
    b = PairedLogps(**fields)
    weighted = PairedLogps(**dict(fields, ref_chosen=b.ref_chosen - 0.7 * b.ref_chosen_tail,
                                  ref_rejected=b.ref_rejected - 0.7 * b.ref_rejected_tail))  # fmt: skip
    out = ours.loss(b)
    loss, metrics = trl_dpo(weighted, ["sigmoid"], ld_alpha=0.3)
    close(out.losses.mean(), loss)
    close(out.metrics["rewards/margins"], metrics["rewards/margins"])
    close(out.metrics["rewards/chosen"], metrics["rewards/chosen"])


def check_mix():
    """MPO's default mixture against TRL's loss list [sigmoid, bco_pair, sft] with weights [0.8, 0.2, 1.0] (on equal
    chosen lengths, where the two NLL conventions agree: check_rpo_and_sft), and a mixture of DPO-family parts at
    their own betas (TRL takes one beta for all: equal here) on any lengths."""
    b = random_paired(equal_chosen_lengths=True)
    close(OBJECTIVES["mix"]().loss(b).losses.mean(), trl_dpo(b, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])[0])
    u = random_paired(seed=5)
    parts = [{"name": "ipo", "weight": 0.3, "beta": 0.2}, {"name": "hinge", "weight": 1.5, "beta": 0.2}]
    close(OBJECTIVES["mix"](parts=parts).loss(u).losses.mean(), trl_dpo(u, ["ipo", "hinge"], [0.3, 1.5], beta=0.2)[0])


def check_tr_dpo():
    """TR-DPO's loss is TRL's sigmoid on the current reference; its update is TRL's SyncRefModelCallback rule
    (target <- (1 - alpha) target + alpha policy), here against prefbench's on two small models."""
    check_dpo_family("tr_dpo", ["sigmoid"])
    from trl.trainer.callbacks import SyncRefModelCallback

    from prefbench.train import _move_reference

    torch.manual_seed(0)
    policy, ours, theirs = (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)) for _ in range(3))
    theirs.load_state_dict(ours.state_dict())
    _move_reference(SimpleNamespace(lm=policy, reference=SimpleNamespace(lm=ours)), 0.6)
    SyncRefModelCallback._sync_target_model(policy, theirs, 0.6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


TRL_CASES.update(fdpo=check_fdpo, mix=check_mix, wpo=check_wpo, ld_dpo=check_ld_dpo, tr_dpo=check_tr_dpo)


def check_kto(name, loss_type, **hp):
    ours = OBJECTIVES[name](**hp)
    b = random_unpaired()
    out = ours.loss(b)
    loss, metrics = trl_kto(b, loss_type, **hp)
    close(out.losses.mean(), loss)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        close(out.metrics[key], metrics[key])
    if loss_type == "kto":
        close(out.metrics["z0"], metrics["kl"])


TRL_CASES["kto"] = lambda: check_kto("kto", "kto", desirable_weight=1.3, undesirable_weight=0.8)
TRL_CASES["apo_zero_unpaired"] = lambda: check_kto("apo_zero_unpaired", "apo_zero_unpaired")


def trl_cpo(b: PairedLogps, loss_type, beta, simpo_gamma=0.5, label_smoothing=0.0, average=False, alpha=0.0):
    self = SimpleNamespace(
        alpha=alpha,
        beta=beta,
        loss_type=loss_type,
        simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing,
        accelerator=CPU,
    )
    c, r = b.policy_chosen, b.policy_rejected
    if average:  # CPOTrainer feeds simpo length-averaged log-probs
        c, r = c / b.chosen_tokens, r / b.rejected_tokens
    return CPOTrainer.cpo_loss(self, c, r)


def check_simpo():
    ours = OBJECTIVES["simpo"](epsilon=0.1)
    b = random_paired()
    out = ours.loss(b)
    losses, rc, rr = trl_cpo(
        b, "simpo", ours.beta, simpo_gamma=ours.beta * ours.gamma_beta_ratio, label_smoothing=0.1, average=True
    )
    close(out.losses, losses)
    close(out.rewards_chosen, rc)
    close(out.rewards_rejected, rr)


def check_cpo():
    # TRL adds cpo_alpha * (token-mean NLL over the batch) outside cpo_loss; compare the preference
    # term with alpha = 0 here and the NLL convention in check_rpo_and_sft.
    ours = OBJECTIVES["cpo"](alpha=0.0, epsilon=0.05)
    b = random_paired()
    out = ours.loss(b)
    losses, rc, rr = trl_cpo(b, "sigmoid", ours.beta, label_smoothing=0.05)
    close(out.losses, losses)
    close(out.rewards_chosen, rc)
    close(out.rewards_rejected, rr)


def check_orpo():
    # TRL: loss = NLL - mean(beta * log sigma(log-odds)), its NLL over prompt and completion tokens;
    # prefbench's NLL covers completion tokens only, so compare the odds-ratio term.
    ours = OBJECTIVES["orpo"]()
    b = random_paired()
    out = ours.loss(b)
    self = SimpleNamespace(beta=ours.beta, accelerator=CPU)
    or_losses, rc, rr, _, log_odds = ORPOTrainer.odds_ratio_loss(
        self, b.policy_chosen / b.chosen_tokens, b.policy_rejected / b.rejected_tokens
    )
    close(out.losses - chosen_nll(b), -or_losses)
    close(out.metrics["log_odds"], log_odds)
    close(out.rewards_chosen, rc)
    close(out.rewards_rejected, rr)


def check_alphapo():
    """TRL's CPO `alpha` with the simpo loss (its loss_type "alphapo"), which feeds length-averaged log-probs."""
    ours = OBJECTIVES["alphapo"](alpha=-0.5)
    b = random_paired(seed=6)
    out = ours.loss(b)
    gamma = ours.beta * ours.gamma_beta_ratio
    losses, rc, rr = trl_cpo(b, "simpo", ours.beta, simpo_gamma=gamma, average=True, alpha=-0.5)
    close(out.losses, losses)
    close(out.rewards_chosen, rc)
    close(out.rewards_rejected, rr)
    ours = OBJECTIVES["alphapo"]()
    losses, *_ = trl_cpo(b, "simpo", ours.beta, simpo_gamma=ours.beta * ours.gamma_beta_ratio, average=True, alpha=0.25)
    close(ours.loss(b).losses, losses)


TRL_CASES.update(simpo=check_simpo, cpo=check_cpo, orpo=check_orpo, alphapo=check_alphapo)


def trl_grpo(per_token_logps, old_per_token_logps, mask, advantages, level, epsilon=0.2):
    """TRL's GRPOTrainer._compute_loss (loss_type "grpo", beta 0, its defaults otherwise) on these per-token
    log-probs: (the loss, TRL's logged metrics)."""
    self = GRPOTrainer.__new__(GRPOTrainer)
    self.__dict__.update(
        accelerator=SimpleNamespace(**vars(CPU), reduce=lambda x, reduction: x), model=SimpleNamespace(training=True),
        loss_type="grpo", importance_sampling_level=level, epsilon_low=epsilon, epsilon_high=epsilon, beta=0.0,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, aux_loss_enabled=False, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
        args=SimpleNamespace(delta=None), _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps), None),
    )  # fmt: skip
    n, width = mask.shape
    zeros = torch.zeros(n, 1, dtype=torch.long)
    inputs = dict(
        prompt_ids=zeros, prompt_mask=torch.ones_like(zeros), completion_ids=torch.zeros_like(mask),
        completion_mask=mask, advantages=advantages, old_per_token_logps=old_per_token_logps,
    )  # fmt: skip
    return GRPOTrainer._compute_loss(self, None, inputs), self._metrics["train"]


def check_grpo():
    """GRPO with one ratio per answer (its per-token geometric mean) is TRL's loss_type "grpo" at
    importance_sampling_level "sequence", loss and gradient at any ratio (here with the clip deciding some answers'
    terms, by TRL's own count); at ratio 1 (old = current, one update per sampled round) it is also TRL's per-token
    "grpo", loss and gradient. Advantages: TRL's (r - group mean) / (nanstd + 1e-4)."""
    g = torch.Generator().manual_seed(3)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.4, 0.4]], dtype=torch.float64)
    trl_adv = (rewards - rewards.mean(1, keepdim=True)) / (nanstd(rewards, dim=1).unsqueeze(1) + 1e-4)
    close(group_advantages(rewards), trl_adv)
    adv = group_advantages(rewards).flatten()

    lengths = torch.tensor([3, 7, 1, 5, 2, 6, 4, 7])
    mask = (torch.arange(7).expand(8, 7) < lengths.unsqueeze(1)).long()
    old = torch.where(mask.bool(), -3 * torch.rand(8, 7, dtype=torch.float64, generator=g), 0.0)
    # each answer moved by its own shift (sd 0.4 nats a token) plus noise: some mean ratios past 1 +- 0.2, clipped
    shift = 0.4 * torch.randn(8, 1, dtype=torch.float64, generator=g)
    now = torch.where(mask.bool(), old + shift + 0.2 * torch.randn(8, 7, dtype=torch.float64, generator=g), 0.0)
    now.requires_grad_(True)
    ours = OBJECTIVES["grpo"]()
    out = ours.loss(GroupedLogps(policy=now.sum(1), old=old.sum(1), tokens=lengths.double(), advantages=adv))
    assert 0 < out.metrics["clip_fraction"] < 1
    trl_loss, trl_metrics = trl_grpo(now, old, mask, adv, "sequence")
    assert trl_metrics["clip_ratio/region_mean"][-1] > 0  # the clipped term is the one taken for some answers
    close(out.losses.mean(), trl_loss)
    (ours_grad,), (trl_grad,) = torch.autograd.grad(out.losses.mean(), now), torch.autograd.grad(trl_loss, now)
    close(ours_grad * mask, trl_grad * mask)

    at_one = old.clone().requires_grad_(True)
    out = ours.loss(GroupedLogps(policy=at_one.sum(1), old=old.sum(1), tokens=lengths.double(), advantages=adv))
    (ours_grad,) = torch.autograd.grad(out.losses.mean(), at_one)
    for level in ("sequence", "token"):
        trl_loss, _ = trl_grpo(at_one, None, mask, adv, level)  # TRL's old = current.detach() when none is given
        (trl_grad,) = torch.autograd.grad(trl_loss, at_one)
        close(out.losses.mean(), trl_loss)
        close(ours_grad * mask, trl_grad * mask)


TRL_CASES["grpo"] = check_grpo

NOT_IN_TRL = {
    "cdpo": "removed from TRL's DPO in v0.29 (label_smoothing dropped from 'sigmoid')",
    "slic": "HALOs only",
    "kto_no_z0": "a KTO paper ablation; TRL's KTO always estimates z0",
    "kto_concave": "a KTO paper ablation",
    "kto_risk_neutral": "a KTO paper ablation",
    "kto_no_ref": "a KTO paper ablation",
    "bco": "TRL's BCOTrainer was removed in 1.16.0 (PR #7136)",
    "dpop": "a cited loss TRL does not have",
    "rdpo": "a cited loss TRL does not have",
    "cal_dpo": "a cited loss TRL does not have",
    "beta_dpo": "a cited loss TRL does not have (its PR #6123 was closed)",
    "simper": "a cited loss TRL does not have",
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_agrees_with_trl(name):
    assert (name in TRL_CASES) != (name in NOT_IN_TRL), (
        f"{name!r}: add a TRL comparison, or the reason there is none, to this file"
    )
    if name in NOT_IN_TRL:
        pytest.skip(f"not in TRL 1.16: {NOT_IN_TRL[name]}")
    TRL_CASES[name]()


def test_cdpo_matches_trl_0_28_label_smoothed_sigmoid_formula():
    """cDPO is TRL <= 0.28's `sigmoid` with label_smoothing; it equals TRL 1.16's `robust` numerator."""
    b = random_paired()
    eps = 0.2
    ours = OBJECTIVES["cdpo"](epsilon=eps).loss(b).losses.mean()
    dpo, _ = trl_dpo(b, ["sigmoid"])
    flipped = PairedLogps(
        b.policy_rejected, b.policy_chosen, b.rejected_tokens, b.chosen_tokens, b.ref_rejected, b.ref_chosen
    )
    dpo_flipped, _ = trl_dpo(flipped, ["sigmoid"])
    close(ours, (1 - eps) * dpo + eps * dpo_flipped)
