"""The objective registry: one literal dict, name -> class. Adding an objective is one class and one line here.

`OBJECTIVES[name](**hyperparameters)` builds an objective with the paper's defaults for whatever is
not given. Names are stable: results, reports and recipes are keyed by them.
"""

from prefbench.objectives.base import (
    Objective,
    ObjectiveOutput,
    PairedLogps,
    UnpairedLogps,
    build_from,
)
from prefbench.objectives.grouped import GRPO, GroupedLogps, group_advantages
from prefbench.objectives.mix import Mix
from prefbench.objectives.paired import (
    AOT,
    CDPO,
    CPO,
    DPO,
    DPOP,
    FDPO,
    IPO,
    LDDPO,
    ORPO,
    RDPO,
    RPO,
    SFT,
    TRDPO,
    WPO,
    AlphaPO,
    AOTUnpaired,
    APODown,
    APOZero,
    BCOPair,
    BetaDPO,
    CalDPO,
    DiscoPOP,
    EXOPair,
    Hinge,
    NCAPair,
    Robust,
    SigmoidNorm,
    SimPER,
    SimPO,
    SLiC,
    SPPOHard,
)
from prefbench.objectives.unpaired import (
    BCO,
    KTO,
    APOZeroUnpaired,
    KTOConcave,
    KTONoReference,
    KTONoZ0,
    KTORiskNeutral,
)

OBJECTIVES: dict[str, type[Objective]] = {
    # paired, with a reference model
    "dpo": DPO,
    "cdpo": CDPO,
    "ipo": IPO,
    "robust": Robust,
    "hinge": Hinge,
    "exo_pair": EXOPair,
    "nca_pair": NCAPair,
    "bco_pair": BCOPair,
    "sppo_hard": SPPOHard,
    "aot": AOT,
    "aot_unpaired": AOTUnpaired,
    "apo_zero": APOZero,
    "apo_down": APODown,
    "discopop": DiscoPOP,
    "sigmoid_norm": SigmoidNorm,
    "rpo": RPO,
    "fdpo": FDPO,
    "wpo": WPO,
    "ld_dpo": LDDPO,
    "tr_dpo": TRDPO,
    "dpop": DPOP,
    "rdpo": RDPO,
    "cal_dpo": CalDPO,
    "beta_dpo": BetaDPO,
    "mix": Mix,  # a weighted sum of the paired objectives above and below (MPO by default)
    # paired, reference-free
    "orpo": ORPO,
    "simpo": SimPO,
    "cpo": CPO,
    "slic": SLiC,
    "sft": SFT,
    "simper": SimPER,
    "alphapo": AlphaPO,
    # unpaired
    "kto": KTO,
    "kto_no_z0": KTONoZ0,
    "kto_concave": KTOConcave,
    "kto_risk_neutral": KTORiskNeutral,
    "kto_no_ref": KTONoReference,
    "apo_zero_unpaired": APOZeroUnpaired,
    "bco": BCO,
    # grouped, online only: answers sampled as it trains (an `online:` entry)
    "grpo": GRPO,
}


def build(name: str, **hyperparameters: object) -> Objective:
    """OBJECTIVES[name](**hyperparameters), with one-line errors for an unknown name or field."""
    return build_from(OBJECTIVES, name, hyperparameters)


# A mixture's parts are entries of this registry, which holds Mix itself: handed over here, not imported by mix.py.
Mix.registry = OBJECTIVES


__all__ = [
    "OBJECTIVES", "GroupedLogps", "Objective", "ObjectiveOutput", "PairedLogps", "UnpairedLogps", "build",
    "group_advantages",
]  # fmt: skip
