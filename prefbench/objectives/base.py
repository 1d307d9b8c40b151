"""The objective contract: sequence log-probs in, per-example losses and implicit rewards out.

Everything here is pure tensor math on one value per example. Turning a model's outputs into
sequence log-probs is `prefbench.logprobs`' job; choosing data, devices and reductions across
ranks is the trainer's. An objective never sees a model, a config or a logger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefbench.errors import did_you_mean


def _check_batch(name: str, values: dict[str, Tensor | None], tokens: dict[str, Tensor]) -> None:
    """Shape and length checks shared by both batch kinds; each failure is one clear line."""
    sizes = {k: v.shape for k, v in values.items() if v is not None}
    for k, shape in sizes.items():
        if len(shape) != 1:
            raise ValueError(f"{name}.{k} must be 1-D (one summed log-prob per example), got shape {tuple(shape)}")
    if len({s[0] for s in sizes.values()}) > 1:
        raise ValueError(
            f"{name}: fields disagree on the batch size: " + ", ".join(f"{k}={s[0]}" for k, s in sizes.items())
        )
    for k, t in tokens.items():
        if t.device.type != "cpu":
            # Reading the lengths would make the host wait for the device in every forward (launch-bound small models
            # then idle); the trainer's data holds no completion without a scored token (data.tokenize drops them).
            continue
        empty = torch.nonzero(t < 1).flatten().tolist()
        if empty:
            # A zero-length completion has no log-prob to learn from and turns every per-token
            # average into 0/0; TRL clamps the length to 1 and silently trains on it (trl #1033).
            raise ValueError(
                f"{name}.{k}: zero-length completion at batch index {empty} (every completion needs >= 1 token)"
            )


@dataclass(frozen=True)
class PairedLogps:
    """Summed completion log-probs of (prompt, chosen, rejected) pairs, one value per pair.

    Reference fields are None when the objective does not need a reference model. The square-mass fields, for
    objectives that declare `needs_square_mass` (WPO), hold sum_t log sum_v pi(v | prefix_t)^2 over each
    completion's positions under the policy, without gradient; None otherwise. The tail fields, for objectives
    that declare `needs_tails` (LD-DPO), hold the log-probs summed over each completion's tokens past the first
    min(|y_w|, |y_l|) of its pair (policy, and reference where needed); None otherwise.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    policy_chosen_square_mass: Tensor | None = None
    policy_rejected_square_mass: Tensor | None = None
    policy_chosen_tail: Tensor | None = None
    policy_rejected_tail: Tensor | None = None
    ref_chosen_tail: Tensor | None = None
    ref_rejected_tail: Tensor | None = None

    def __post_init__(self) -> None:
        _check_batch(
            "PairedLogps",
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            {"chosen_tokens": self.chosen_tokens, "rejected_tokens": self.rejected_tokens},
        )

    def require_reference(self, objective: str) -> tuple[Tensor, Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError(f"objective {objective!r} needs reference log-probs (ref_chosen, ref_rejected)")
        return self.ref_chosen, self.ref_rejected

    def require_square_mass(self, objective: str) -> tuple[Tensor, Tensor]:
        if self.policy_chosen_square_mass is None or self.policy_rejected_square_mass is None:
            raise ValueError(f"objective {objective!r} needs the policy's square mass (policy_*_square_mass)")
        return self.policy_chosen_square_mass, self.policy_rejected_square_mass

    def require_tails(self, objective: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tails = (self.policy_chosen_tail, self.policy_rejected_tail, self.ref_chosen_tail, self.ref_rejected_tail)
        if any(t is None for t in tails):
            raise ValueError(f"objective {objective!r} needs the completions' tail log-probs (policy and reference)")
        return tails  # type: ignore[return-value]


@dataclass(frozen=True)
class UnpairedLogps:
    """Summed completion log-probs of (prompt, completion, label) examples.

    `kl_policy`/`kl_ref` are the log-probs of mismatched (prompt, completion) pairs, used by KTO's
    mismatched reference point z0; None when not used. They are the whole optimizer step's pairs (the
    batch z0 averages over), so their length is the step's, not this micro-batch's.
    """

    policy: Tensor
    tokens: Tensor
    desirable: Tensor
    ref: Tensor | None = None
    kl_policy: Tensor | None = None
    kl_ref: Tensor | None = None

    def __post_init__(self) -> None:
        examples = ("policy", "tokens", "desirable", "ref")
        _check_batch("UnpairedLogps", {k: getattr(self, k) for k in examples}, {"tokens": self.tokens})
        _check_batch("UnpairedLogps", {"kl_policy": self.kl_policy, "kl_ref": self.kl_ref}, {})
        if self.desirable.dtype != torch.bool:
            raise ValueError(f"UnpairedLogps.desirable must be a bool tensor, got {self.desirable.dtype}")

    def require_reference(self, objective: str) -> Tensor:
        if self.ref is None:
            raise ValueError(f"objective {objective!r} needs reference log-probs (ref)")
        return self.ref


@dataclass
class ObjectiveOutput:
    """Per-example `losses` (the trainer averages them), implicit rewards, and scalar metrics.

    Paired objectives fill `rewards_chosen`/`rewards_rejected`; unpaired ones fill `rewards`.
    Metrics are detached scalars (batch means), ready to log.
    """

    losses: Tensor
    metrics: dict[str, Tensor]
    rewards: Tensor | None = None
    rewards_chosen: Tensor | None = None
    rewards_rejected: Tensor | None = None


def paired_output(losses: Tensor, rewards_chosen: Tensor, rewards_rejected: Tensor, **extra: Tensor) -> ObjectiveOutput:
    """The standard paired metrics (TRL's names and definitions), from the implicit rewards."""
    rc, rr = rewards_chosen.detach(), rewards_rejected.detach()
    metrics = {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margins": (rc - rr).mean(),
        "rewards/accuracies": (rc > rr).to(rc.dtype).mean(),  # strict, as TRL
        **{k: v.detach() for k, v in extra.items()},
    }
    return ObjectiveOutput(losses=losses, metrics=metrics, rewards_chosen=rc, rewards_rejected=rr)


def unpaired_output(losses: Tensor, rewards: Tensor, desirable: Tensor, **extra: Tensor) -> ObjectiveOutput:
    """Class-mean rewards (TRL KTO's `rewards/chosen|rejected|margins`); a class absent from the batch is left out."""
    r = rewards.detach()
    metrics: dict[str, Tensor] = {k: v.detach() for k, v in extra.items()}
    if desirable.any():
        metrics["rewards/chosen"] = r[desirable].mean()
    if (~desirable).any():
        metrics["rewards/rejected"] = r[~desirable].mean()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return ObjectiveOutput(losses=losses, metrics=metrics, rewards=r)


@dataclass
class Objective:
    """Base of every objective. Subclasses are dataclasses whose fields are their hyperparameters.

    Class attributes declare what the trainer must provide, so it never guesses:
      data             "paired" (PairedLogps), "unpaired" (UnpairedLogps) or "grouped" (GroupedLogps: GRPO)
      needs_reference  whether reference log-probs must be computed
      needs_square_mass  whether the log-prob pass must also sum log sum_v pi(v)^2 over each completion (WPO)
      needs_tails      whether the log-prob passes (policy and reference) must also sum each completion's tail (LD-DPO)
      moving_reference whether the reference moves toward the policy as it trains (TR-DPO): the trainer then holds
                       it in memory and computes its log-probs each step (`reference_update` gives the rule)
                       instead of reading the run's reference cache
      version          bump whenever a formula or a default changes the numbers
      paper            citation shown by `prefbench objectives`
      batch_defined    why the loss of an example depends on the others of its micro-batch (AOT sorts them);
                       empty for a mean of per-example terms, which accumulation leaves unchanged
    """

    data: ClassVar[str]
    needs_reference: ClassVar[bool]
    needs_square_mass: ClassVar[bool] = False
    needs_tails: ClassVar[bool] = False
    moving_reference: ClassVar[bool] = False
    online_only: ClassVar[bool] = False  # trains only on samples drawn as it trains (an `online:` entry): GRPO
    version: ClassVar[int] = 1
    paper: ClassVar[str] = ""
    batch_defined: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one line) for hyperparameters outside their valid range."""
        if hasattr(self, "beta") and not self.beta > 0:
            raise ValueError(f"{type(self).__name__}: beta must be > 0, got {self.beta}")

    @property
    def needs_mismatched_pairs(self) -> bool:
        """Whether the trainer must supply kl_policy/kl_ref (KTO's mismatched-pair z0)."""
        return False

    def loss(self, batch: PairedLogps | UnpairedLogps) -> ObjectiveOutput:
        raise NotImplementedError

    def reference_update(self, step: int) -> float | None:
        """For a moving reference: after optimizer step `step` (1-based), the weight w of the update
        reference <- w * policy + (1 - w) * reference, or None for no update."""
        return None

    def hyperparameters(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def end_step(self, total=None) -> None:
        """Called once after each optimizer step. An objective with running statistics (BCO's reward mean) moves them
        here, not per micro-batch, so that how a step is cut into micro-batches changes nothing. `total`, under
        several processes: sums a list of floats over them (every process then holds the same statistics)."""

    # Objectives with running statistics (BCO's reward mean) save them with the checkpoint.
    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


def build_from(registry: Mapping[str, type[Objective]], name: str, hyperparameters: dict[str, object]) -> Objective:
    """registry[name](**hyperparameters), with one-line errors for an unknown name or field (the registry's `build`,
    and a mixture's parts)."""
    if name not in registry:
        raise ValueError(f"unknown objective {name!r}{did_you_mean(name, registry)}; `prefbench objectives` lists them")
    cls = registry[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in hyperparameters:
        if key not in fields:
            raise ValueError(
                f"objective {name!r} has no hyperparameter {key!r}{did_you_mean(key, fields)}; it has {fields}"
            )
    floats = {f.name for f in dataclasses.fields(cls) if f.type in ("float", float)}
    hyperparameters = dict(hyperparameters)
    for key, value in hyperparameters.items():
        if key in floats and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                hyperparameters[key] = float(value)
            except ValueError:
                raise ValueError(f"objective {name!r}: {key} must be a number, got {value!r}") from None
    return cls(**hyperparameters)


def require_range(
    obj: Objective, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    value = getattr(obj, name)
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{type(obj).__name__}: {name} must be in {lo}{low}, {high}{hi}, got {value}")


def require_choice(obj: Objective, name: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, name) not in choices:
        raise ValueError(f"{type(obj).__name__}: {name} must be one of {list(choices)}, got {getattr(obj, name)!r}")


__all__ = [
    "Objective",
    "ObjectiveOutput",
    "PairedLogps",
    "UnpairedLogps",
    "paired_output",
    "require_choice",
    "require_range",
    "unpaired_output",
]
