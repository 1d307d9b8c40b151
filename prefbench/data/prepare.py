"""Records -> the validated, split, transformed and tokenized examples a run trains on, once per run, with a
report of what happened to the data and the fingerprint of the exact token ids (the run's manifest keeps both)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from prefbench.data import load, transforms
from prefbench.data.tokenize import Example, fingerprint, tokenize_records
from prefbench.errors import TrainingError

if TYPE_CHECKING:
    from prefbench.recipe import DataSpec, Recipe


@dataclass
class Prepared:
    fmt: str  # "paired" | "unpaired", after transforms
    train: list[Example]
    eval: list[Example]
    report: dict  # loading, validation, split, transforms, tokenization: what happened to the data
    fingerprint: str
    one_per_prompt: list[int]  # for the one_per_prompt view of paired data: which completion each pair keeps
    train_prompts: list = dataclasses.field(default_factory=list)  # each training example's prompt as given (online)
    # grouped data (GRPO's online rounds): per example, per answer, (advantage, summed log-prob under the sampler)
    scores: list = dataclasses.field(default_factory=list)


class Split(NamedTuple):
    """The data section's records before transforms, split by prompt: training never sees the held-out (test)
    prompts nor the validation prompts (data.validation_fraction, carved from what the held-out split leaves),
    and those two share no prompt."""

    records: list[dict]  # every valid record
    report: load.DataReport  # what validation found
    train: list[dict]
    held_out: list[dict]
    validation: list[dict]


def split_records(d: DataSpec) -> Split:
    records = load_sources(d)
    if d.limit:
        records = records[: d.limit]
    records, report = load.validate(records, d.format, on_bad=d.on_bad)
    train, held_out = load.train_eval_split(records, d.eval_fraction, d.split_seed)
    # carved after the held-out split, so a recipe without validation keeps its split, and with one keeps its test
    # prompts; another seed, so validation is not the held-out split's neighbours in one shuffle
    train, validation = load.train_eval_split(train, d.validation_fraction, d.split_seed + 1)
    return Split(records, report, train, held_out, validation)


def load_sources(d: DataSpec) -> list[dict]:
    """The records of the data section: its source's, or each mixed source's share (data.mix: a seeded sample of
    round(fraction x its records), kept in its order), the sources one after another."""
    if not d.mix:
        return load.load_records(d.source, split=d.split, config=d.config, data_dir=d.data_dir, columns=d.columns)
    records = []
    for m in d.mix:
        mine = load.load_records(m.source, split=m.split, config=m.config, data_dir=m.data_dir, columns=m.columns)
        taken = sorted(random.Random(d.split_seed).sample(range(len(mine)), round(m.fraction * len(mine))))
        records += [mine[i] for i in taken]
    return records


def prepare_data(recipe: Recipe, tokenizer) -> Prepared:
    d = recipe.data
    split = split_records(d)
    records, validation, train_records, eval_records = split.records, split.report, split.train, split.held_out
    fmt, applied = d.format, []
    for tr in d.transforms:  # training data only: the held-out set stays as collected
        if tr.name == "paired_to_unpaired":
            train_records, info = transforms.paired_to_unpaired(train_records, mode=tr.mode, seed=d.split_seed)
            eval_records, _ = transforms.paired_to_unpaired(eval_records, mode=tr.mode, seed=d.split_seed)
            fmt = "unpaired"
        elif tr.name == "drop_fraction":
            train_records, info = transforms.drop_fraction(
                train_records, which=tr.which, fraction=tr.fraction, seed=d.split_seed
            )
        elif tr.name == "flip_labels":
            train_records, info = transforms.flip_labels(train_records, fraction=tr.fraction, seed=d.split_seed)
        applied.append(info)
    train, tok_train = tokenize_records(train_records, fmt, tokenizer, d)
    held_out, tok_eval = tokenize_records(eval_records, fmt, tokenizer, d)
    if len(train) < recipe.train.batch_size:
        raise TrainingError(
            f"data: {len(train)} training examples after preparation, fewer than train.batch_size={recipe.train.batch_size}"
        )
    coin = torch.Generator().manual_seed(d.split_seed)
    report = {
        "records": len(records),
        "validation": dataclasses.asdict(validation),
        "split": {"train": len(train_records), "eval": len(eval_records)}
        | ({"validation": len(split.validation)} if d.validation_fraction else {}),
        "transforms": applied,
        "tokenize": {"train": dataclasses.asdict(tok_train), "eval": dataclasses.asdict(tok_eval)},
        "truncation": {"policy": d.truncation, "max_length": d.max_length, "max_prompt_length": d.max_prompt_length},
    }
    dropped = {i for indices in tok_train.dropped.values() for i in indices}
    prompts = [r["prompt"] for i, r in enumerate(train_records) if i not in dropped]
    return Prepared(
        fmt, train, held_out, report, fingerprint(train), torch.randint(0, 2, (len(train),), generator=coin).tolist(),
        prompts,
    )  # fmt: skip
