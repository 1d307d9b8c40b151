"""Data transforms for the experiments: pure functions, records in, (records, report) out.

Each transform returns new record dicts (the input list and its dicts are never modified) and a
small report for the run manifest: {"name", "params", "before", "after", ...} with record
counts, plus the input indices it dropped or flipped. Randomness comes only from
`random.Random(seed)` over lists in input order (never a set or hash()), so the same seed gives
the same output in every process, whatever PYTHONHASHSEED is.

Records are expected to have passed `prefbench.data.validate`.
"""

from __future__ import annotations

import random
from typing import get_args

from prefbench.data.load import detect_format, prompt_key
from prefbench.recipe import DropWhich, UnpairedView


def _class_counts(records: list[dict]) -> dict[str, int]:
    n_desirable = sum(1 for r in records if r["label"])
    return {"records": len(records), "desirable": n_desirable, "undesirable": len(records) - n_desirable}


def _check_fraction(name: str, fraction: float) -> None:
    if not 0 <= fraction <= 1:
        raise ValueError(f"{name}: fraction must be in [0, 1], got {fraction}")


def _require_unpaired(name: str, records: list[dict]) -> None:
    if records and detect_format(records) != "unpaired":
        raise ValueError(
            f"{name} needs unpaired records (prompt, completion, label); got paired records: convert them with paired_to_unpaired first"
        )


def paired_to_unpaired(records: list[dict], mode: str = "both", seed: int = 0) -> tuple[list[dict], dict]:
    """Paired records -> unpaired records, for running an unpaired objective (KTO) on paired data.

    mode="both": every pair gives (prompt, chosen, True) then (prompt, rejected, False), in input
    order; `seed` is unused. Other fields of the record are kept on both.

    mode="one_per_prompt" (the KTO paper's one-output-per-input ablation): each distinct prompt
    keeps ONE completion, so no prompt is seen both desirable and undesirable. The prompts are
    shuffled with the seed; the first ceil(n/2) keep a chosen completion (desirable), the rest a
    rejected one (undesirable). The classes are balanced (desirable gets the odd one, which puts
    n_D / n_U at >= 1, inside KTO's recommended [1, 4/3] with unit weights) so the ablation
    does not also change the class balance. When a prompt has several pairs, one of them is
    drawn with the seed. Output follows the prompts' first appearance in the input.
    """
    if mode not in get_args(UnpairedView):
        raise ValueError(f"paired_to_unpaired: mode must be one of {list(get_args(UnpairedView))}, got {mode!r}")
    if records and detect_format(records) != "paired":
        raise ValueError("paired_to_unpaired needs paired records (prompt, chosen, rejected)")

    def unpaired(record: dict, side: str) -> dict:
        rest = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
        return {**rest, "completion": record[side], "label": side == "chosen"}

    out: list[dict] = []
    if mode == "both":
        for r in records:
            out += [unpaired(r, "chosen"), unpaired(r, "rejected")]
    else:
        by_prompt: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_prompt.setdefault(prompt_key(r["prompt"]), []).append(i)
        groups = list(by_prompt.values())  # first-appearance order
        rng = random.Random(seed)
        order = list(range(len(groups)))
        rng.shuffle(order)
        n_desirable = (len(groups) + 1) // 2
        desirable = [False] * len(groups)
        for g in order[:n_desirable]:
            desirable[g] = True
        for g, indices in enumerate(groups):
            pick = indices[rng.randrange(len(indices))]
            out.append(unpaired(records[pick], "chosen" if desirable[g] else "rejected"))

    report = {
        "name": "paired_to_unpaired",
        "params": {"mode": mode, "seed": seed},
        "before": {"records": len(records), "prompts": len({prompt_key(r["prompt"]) for r in records})},
        "after": _class_counts(out),
    }
    return out, report


def drop_fraction(records: list[dict], which: str, fraction: float, seed: int = 0) -> tuple[list[dict], dict]:
    """Drop exactly round(fraction * n_class) records of one class ("desirable" or "undesirable").

    The dropped records are drawn with `random.Random(seed)`; the rest keep their order. This is
    the KTO paper's imbalance experiment (e.g. drop 90% of the desirable examples). `round` is
    Python's (halves go to the even number: 0.5 * 5 = 2.5 -> 2).
    """
    if which not in get_args(DropWhich):
        raise ValueError(f"drop_fraction: which must be one of {list(get_args(DropWhich))}, got {which!r}")
    _check_fraction("drop_fraction", fraction)
    _require_unpaired("drop_fraction", records)
    wanted = which == "desirable"
    members = [i for i, r in enumerate(records) if bool(r["label"]) == wanted]
    n_drop = round(fraction * len(members))
    dropped = sorted(random.Random(seed).sample(members, n_drop))
    dropped_set = set(dropped)  # membership only
    out = [dict(r) for i, r in enumerate(records) if i not in dropped_set]
    report = {
        "name": "drop_fraction",
        "params": {"which": which, "fraction": fraction, "seed": seed},
        "before": _class_counts(records),
        "after": _class_counts(out),
        "dropped_count": n_drop,
        "dropped_indices": dropped,
    }
    return out, report


def flip_labels(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], dict]:
    """Label noise: flip exactly round(fraction * n) records, drawn with `random.Random(seed)`.

    Paired records swap chosen and rejected; unpaired records get `label = not label`. Order and
    count are unchanged.
    """
    _check_fraction("flip_labels", fraction)
    fmt = detect_format(records) if records else "paired"
    n_flip = round(fraction * len(records))
    flipped = sorted(random.Random(seed).sample(range(len(records)), n_flip))
    flipped_set = set(flipped)  # membership only
    out = []
    for i, r in enumerate(records):
        r = dict(r)
        if i in flipped_set:
            if fmt == "paired":
                r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
            else:
                r["label"] = not r["label"]
        out.append(r)
    counts = _class_counts if fmt == "unpaired" else (lambda rs: {"records": len(rs)})
    report = {
        "name": "flip_labels",
        "params": {"fraction": fraction, "seed": seed},
        "before": counts(records),
        "after": counts(out),
        "flipped_count": n_flip,
        "flipped_indices": flipped,
    }
    return out, report


def kto_class_weights(records: list[dict]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight), the KTO paper's rule for imbalanced classes.

    KTO (arXiv:2402.01306, Eq. 8 and §4) weights desirable losses by lambda_D and undesirable ones
    by lambda_U, and recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]. We keep the
    majority class at weight 1 and give the minority class the smallest weight >= 1 that puts the
    ratio in that range:

        lambda_D = max(1, n_U / n_D)           lambda_U = max(1, 3 * n_D / (4 * n_U))

    - n_D < n_U (desirable minority): lambda_D = n_U / n_D, lambda_U = 1, ratio exactly 1.
      n_D = 10, n_U = 90: lambda_D = 90 / 10 = 9, ratio 9 * 10 / (1 * 90) = 1.
    - n_U <= n_D <= 4/3 n_U: both 1; the ratio n_D / n_U is already in [1, 4/3].
    - n_D > 4/3 n_U (undesirable minority): lambda_D = 1, lambda_U = 3 n_D / (4 n_U), ratio
      exactly 4/3. n_D = 90, n_U = 10: lambda_U = 270 / 40 = 6.75, ratio 90 / (6.75 * 10) = 4/3.

    Only one weight ever differs from 1, and the weights change continuously with n_D / n_U.
    Upweighting the minority (rather than downweighting the majority) keeps the majority's
    per-example loss scale, so the learning rate means the same thing across runs.
    """
    _require_unpaired("kto_class_weights", records)
    counts = _class_counts(records)
    n_d, n_u = counts["desirable"], counts["undesirable"]
    if n_d == 0 or n_u == 0:
        empty = "desirable" if n_d == 0 else "undesirable"
        raise ValueError(
            f"kto_class_weights: no {empty} records ({n_d} desirable, {n_u} undesirable); KTO needs both classes"
        )
    return max(1.0, n_u / n_d), max(1.0, 3 * n_d / (4 * n_u))
