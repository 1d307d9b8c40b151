"""Mixtures: an objective whose loss is a weighted sum of registered paired objectives' losses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from prefbench.objectives.base import Objective, ObjectiveOutput, PairedLogps, build_from, paired_output

MPO_PARTS = ({"name": "dpo", "weight": 0.8}, {"name": "bco_pair", "weight": 0.2}, {"name": "sft", "weight": 1.0})


@dataclass
class Mix(Objective):
    """sum_i w_i * loss_i(pair), each part a registered paired objective with its own hyperparameters:

        {name: mix, parts: [{name: dpo, weight: 0.8, beta: 0.1}, {name: bco_pair, weight: 0.2}, {name: sft, weight: 1}]}

    The default is MPO's mixture (Wang et al. 2024, Mixed Preference Optimization, arXiv:2411.10442, §3.2:
    0.8 preference (DPO) + 0.2 quality (BCO) + 1.0 generation (SFT)), TRL 1.16's `loss_type` list with
    `loss_weights`. Each part's loss is per pair, so the sum is too; the parts' `sft` and `rpo` NLL is per sequence
    where TRL's is a token mean over the batch (objectives.paired.chosen_nll). Rewards are the first part's; each
    part's mean loss is logged as `loss/<name>`. A part may not be a mixture, have running statistics or be defined
    over its micro-batch (the trainer's micro-batch checks read the registry's class, not the parts).
    """

    data = "paired"
    needs_reference = True  # the class's answer; an instance's is whether any of its parts needs one
    paper = "Wang et al. 2024, Enhancing the Reasoning Ability of Multimodal LLMs via Mixed Preference Optimization, arXiv:2411.10442"
    parts: list[dict[str, Any]] = field(default_factory=lambda: [dict(p) for p in MPO_PARTS])
    built: list[tuple[str, float, Objective]] = field(default_factory=list, init=False, repr=False, compare=False)
    registry: ClassVar[Mapping[str, type[Objective]]] = {}  # where parts are looked up: prefbench.objectives sets it

    def validate(self) -> None:
        if not isinstance(self.parts, (list, tuple)) or not self.parts:
            raise ValueError("Mix: parts must be a non-empty list of {name: <objective>, weight: <w>, ...}")
        self.built = []
        for i, part in enumerate(self.parts):
            if not isinstance(part, dict) or "name" not in part or "weight" not in part:
                raise ValueError(f"Mix: parts[{i}] must be a mapping with a name and a weight, got {part!r}")
            name, weight = str(part["name"]), part["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"Mix: parts[{i}] ({name}): weight must be a number > 0, got {weight!r}")
            cls = self.registry.get(name)
            if cls is Mix or (cls is not None and (cls.data != "paired" or cls.batch_defined)):
                raise ValueError(
                    f"Mix: parts[{i}] ({name}) must be a paired objective of per-pair losses, not a mixture"
                )
            objective = build_from(self.registry, name, {k: v for k, v in part.items() if k not in ("name", "weight")})
            if objective.state_dict() or objective.moving_reference:
                raise ValueError(
                    f"Mix: parts[{i}] ({name}) keeps running statistics or a moving reference; a mixture cannot"
                )
            self.built.append((name, float(weight), objective))
        self.needs_reference = any(o.needs_reference for _, _, o in self.built)
        self.needs_square_mass = any(o.needs_square_mass for _, _, o in self.built)
        self.needs_tails = any(o.needs_tails for _, _, o in self.built)

    def loss(self, b: PairedLogps) -> ObjectiveOutput:
        total: Tensor | float = 0.0
        extra: dict[str, Tensor] = {}
        rewards = None
        for i, (name, weight, objective) in enumerate(self.built):
            out = objective.loss(b)
            total = total + weight * out.losses
            extra[f"loss/{name}" if f"loss/{name}" not in extra else f"loss/{name}.{i}"] = out.losses.mean()
            rewards = rewards or (out.rewards_chosen, out.rewards_rejected)
        return paired_output(total, *rewards, **extra)
