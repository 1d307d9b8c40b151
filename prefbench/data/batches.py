"""Batching: which examples each optimizer step sees, and how they become the rows of a forward.

    schedule        which examples each optimizer step sees: identical for every objective of a seed
    micro_batches   a step's examples as the rows the objective needs (paired, unpaired, mismatched),
                    cut to train.max_tokens_per_forward when set
    collate         rows -> one forward's tensors on the device (`Forward`): each row its own sequence, or with
                    shared prompts, the rows of one prompt in one sequence (the prompt once, each completion after
                    it, none seeing another)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from prefbench.errors import TrainingError

if TYPE_CHECKING:  # annotations only
    from prefbench.data.prepare import Prepared
    from prefbench.data.tokenize import Example
    from prefbench.objectives import Objective
    from prefbench.recipe import Recipe

Key = tuple[int, int, int]  # (example giving the prompt, example giving the completion, which completion)

# On a GPU, batch widths round up to a multiple of this: kernels tuned per shape (cuDNN attention plans,
# GEMM heuristics) are then reused instead of rebuilt for nearly every batch. Measured on an H100 with a
# 1.7B model, 4 pairs per forward: 8.5k -> 19.2k tokens/s.
PAD_MULTIPLE_CUDA = 64


def schedule(lengths: list[int], batch_size: int, steps: int, seed: int, bucket_batches: int) -> list[list[int]]:
    """`steps` batches of example indices. Each epoch shuffles (seeded), sorts windows of
    `bucket_batches` batches by length so a batch holds similar lengths (less padding), and
    shuffles the batches of each window, so length order does not become training order."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    window = batch_size * bucket_batches
    while len(out) < steps:
        perm = torch.randperm(len(lengths), generator=g).tolist()
        usable = len(perm) - len(perm) % batch_size  # drop the last partial batch of each epoch
        for start in range(0, usable, window):
            chunk = sorted(perm[start : min(start + window, usable)], key=lambda i: lengths[i])
            batches = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            out.extend(batches[j] for j in torch.randperm(len(batches), generator=g).tolist())
    return out[:steps]


@dataclass
class MicroBatch:
    rows: list[Key]  # sequences of the one policy forward (paired: chosen rows, then rejected rows)
    labels: list[bool] | None = None  # unpaired: desirable per row
    kl_rows: list[Key] | None = None  # KTO's mismatched pairs, one per row


def view(objective: Objective, prepared: Prepared, indices: list[int], unpaired_view: str) -> MicroBatch:
    """The rows one micro-batch of examples gives this objective."""
    if objective.data == "paired":
        return MicroBatch([(i, i, 0) for i in indices] + [(i, i, 1) for i in indices])
    if prepared.fmt == "unpaired":
        rows, labels = [(i, i, 0) for i in indices], [bool(prepared.train[i].label) for i in indices]
    elif unpaired_view == "both":  # every pair gives its chosen (desirable) and rejected (undesirable) half
        rows = [(i, i, 0) for i in indices] + [(i, i, 1) for i in indices]
        labels = [True] * len(indices) + [False] * len(indices)
    else:  # one completion per prompt, as in the KTO paper's one-y-per-x ablation
        rows = [(i, i, prepared.one_per_prompt[i]) for i in indices]
        labels = [w == 0 for _, _, w in rows]
    batch = MicroBatch(rows, labels)
    if objective.needs_mismatched_pairs:
        batch.kl_rows = [_mismatched(rows, j, prepared.train) for j in range(len(rows))]
    return batch


def _mismatched(rows: list[Key], j: int, examples: list[Example]) -> Key:
    """Row j's prompt with the completion of the nearest earlier row of another prompt (cyclic):
    TRL's rotation by one, made safe for batches that hold several completions of one prompt
    (both halves of a pair, or unpaired data with repeated prompts). Prompts compare by tokens."""
    prompt = rows[j][0]
    for step in range(1, len(rows)):
        p, c, w = rows[(j - step) % len(rows)]
        if examples[p].prompt != examples[prompt].prompt:
            return (prompt, c, w)
    raise TrainingError("KTO's mismatched z0 needs at least two prompts per micro-batch: raise train.micro_batch_size or use z0: batch_mean")


def micro_batches(objective: Objective, prepared: Prepared, step: list[int], recipe: Recipe, rank: int, world: int, share: bool = False) -> list[MicroBatch]:
    """This process's micro-batches of one step; `share`: the forwards will share prompts (the token budget
    counts the tokens they will hold)."""
    per_rank = len(step) // world
    mine = step[rank * per_rank : (rank + 1) * per_rank]
    m, budget = recipe.train.micro_batch_size, recipe.train.max_tokens_per_forward
    out = []
    for i in range(0, len(mine), m):
        pieces = _within_budget(objective, prepared, mine[i : i + m], recipe.data.unpaired_view, budget, share) if budget else [mine[i : i + m]]
        out.extend(view(objective, prepared, piece, recipe.data.unpaired_view) for piece in pieces)
    return out


def row_length(key: Key, examples: list[Example]) -> int:
    p, c, w = key
    return len(examples[p].prompt) + len(examples[c].completions[w])


def sequences(rows: list[Key], examples: list[Example], share: bool) -> list[tuple[tuple[int, ...], list[tuple[int, ...]], list[int]]]:
    """The sequences one forward runs, as (prompt, completions, their indices in `rows`): one per row, or with
    `share`, one per distinct prompt (compared by tokens), its rows' completions in row order after it."""
    if not share:
        return [(examples[p].prompt, [examples[c].completions[w]], [r]) for r, (p, c, w) in enumerate(rows)]
    groups: dict[tuple[int, ...], tuple] = {}
    for r, (p, c, w) in enumerate(rows):
        prompt = examples[p].prompt
        group = groups.setdefault(prompt if prompt else ("empty", r), (prompt, [], []))  # no prompt: nothing to share
        group[1].append(examples[c].completions[w])
        group[2].append(r)
    return list(groups.values())


def prompt_totals(rows: list[Key], examples: list[Example]) -> dict[tuple[int, ...], int]:
    """Each prompt's (by tokens) total row length over `rows`: sorting rows by it, then by prompt, puts a
    prompt's rows next to each other and prompts in length order, so batches cut from the order share
    prompts and pad little."""
    totals: dict[tuple[int, ...], int] = {}
    for key in rows:
        prompt = examples[key[0]].prompt
        totals[prompt] = totals.get(prompt, 0) + row_length(key, examples)
    return totals


def _width(seqs: list, device) -> int:
    """The longest of `sequences`' sequences, rounded up to PAD_MULTIPLE_CUDA on a GPU."""
    width = max(len(prompt) + sum(map(len, completions)) for prompt, completions, _ in seqs)
    return width + (-width % PAD_MULTIPLE_CUDA if torch.device(device).type == "cuda" else 0)


def batch_width(rows: list[Key], examples: list[Example], device="cpu", share: bool = False) -> int:
    """Width of the batch `collate` builds: the longest sequence, rounded up to PAD_MULTIPLE_CUDA on a GPU."""
    return _width(sequences(rows, examples, share), device)


def padded_tokens(rows: list[Key], examples: list[Example], share: bool = False) -> int:
    """Tokens of the [sequences, width] batch `collate` builds on CPU (on a GPU the width rounds up to PAD_MULTIPLE_CUDA)."""
    seqs = sequences(rows, examples, share)
    return len(seqs) * _width(seqs, "cpu")


def _within_budget(objective: Objective, prepared: Prepared, indices: list[int], unpaired_view: str, budget: int, share: bool = False) -> list[list[int]]:
    """`indices` cut, in length order, into the fewest consecutive runs whose forward stays within
    `budget` padded tokens: the rare wide micro-batch that sets the peak is split, the rest are
    untouched. A single example over the budget runs alone; KTO's mismatched pairs need two distinct
    prompts, so for it a run grows until it has them. (On a GPU the width then rounds up to a multiple
    of PAD_MULTIPLE_CUDA, so a forward may exceed the budget by up to 63 tokens a row.)"""
    fits = lambda run: padded_tokens(view(objective, prepared, run, unpaired_view).rows, prepared.train, share) <= budget
    if fits(indices):
        return [indices]
    short = lambda run: objective.needs_mismatched_pairs and len({prepared.train[i].prompt for i in run}) < 2
    ordered = sorted(indices, key=lambda i: prepared.train[i].length())
    runs: list[list[int]] = []
    for i in ordered:
        if runs and (short(runs[-1]) or fits(runs[-1] + [i])):
            runs[-1].append(i)
        else:
            runs.append([i])
    if len(runs) > 1 and short(runs[-1]):
        runs[-2].extend(runs.pop())
    return runs

def loss_count(objective: Objective, mb: MicroBatch) -> int:
    """Entries of `objective.loss(...).losses` for this micro-batch: one per pair, or per unpaired row."""
    return len(mb.rows) // 2 if objective.data == "paired" else len(mb.rows)


class Forward(NamedTuple):
    """One forward's tensors, and where each completion token's log-prob is read from its output.

    A NamedTuple, so that DDP and FSDP move and cast it like any tuple of arguments."""

    input_ids: torch.Tensor  # [sequences, width]
    attention_mask: torch.Tensor  # [sequences, width] padding mask; with shared prompts [sequences, 1, width, width], True: may attend
    position_ids: torch.Tensor | None  # with shared prompts: each completion continues from its prompt's last position
    predict_at: torch.Tensor  # [tokens] flat position (sequence * width + t) whose output predicts each completion token
    targets: torch.Tensor  # [tokens] the completion tokens
    rows: torch.Tensor  # [tokens] the row (index into collate's `rows`) each token belongs to
    n_rows: int


def collate(rows: list[Key], examples: list[Example], pad_id: int, device, share: bool = False) -> Forward:
    """The forward of `rows`, right-padded. With `share`, rows of one prompt become one sequence, the prompt once
    and each completion after it: a completion attends to the prompt and to its own earlier tokens only, and its
    positions continue from the prompt's, so each completion's log-probs are those of its own sequence (to
    rounding). Used only where the model's attention takes such a mask (models.shares_prompts)."""
    seqs = sequences(rows, examples, share)
    shared = share and any(len(completions) > 1 for _, completions, _ in seqs)
    width = _width(seqs, device)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    segment = torch.full((len(seqs), width), -1, dtype=torch.long)  # -1 padding, 0 prompt, k + 1 the k-th completion
    positions = torch.zeros((len(seqs), width), dtype=torch.long)
    predict_at, targets, owner = [], [], []
    for s, (prompt, completions, indices) in enumerate(seqs):
        ids[s, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        segment[s, : len(prompt)] = 0
        positions[s, : len(prompt)] = torch.arange(len(prompt))
        start = len(prompt)
        for k, (completion, r) in enumerate(zip(completions, indices)):
            n = len(completion)
            ids[s, start : start + n] = torch.tensor(completion, dtype=torch.long)
            segment[s, start : start + n] = k + 1
            positions[s, start : start + n] = torch.arange(len(prompt), len(prompt) + n)
            # token j of the completion is predicted at the position before it: the prompt's last for j = 0
            at = torch.arange(start - 1, start + n - 1)
            at[:1] = len(prompt) - 1
            keep = at >= 0  # a completion with no prompt: its first token has nothing to predict it
            predict_at.append(s * width + at[keep])
            targets.append(torch.tensor(completion, dtype=torch.long)[keep])
            owner.append(torch.full((int(keep.sum()),), r, dtype=torch.long))
            start += n
    if shared:
        q, k = segment[:, :, None], segment[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (causal & ((k == q) | ((k == 0) & (q >= 0))))[:, None]  # padding attends to padding: no empty softmax row
        position_ids = positions
    else:
        mask, position_ids = (segment >= 0).long(), None
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return Forward(
        to_device(ids, device), to_device(mask, device), None if position_ids is None else to_device(position_ids, device),
        to_device(cat(predict_at), device), to_device(cat(targets), device), to_device(cat(owner), device), len(rows),
    )  # fmt: skip


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory without waiting: a plain copy
    synchronises with the GPU, so a loop that copies each micro-batch's inputs would stall the GPU
    while the host queues the next kernels (measured: most of a 1.7B step's time on an H100)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def real_tokens(rows: list[Key], examples: list[Example]) -> int:
    """Tokens of the rows (prompt and completion each), counted on the host: the work a step does whatever the
    layout, so that tokens/s compares with and without shared prompts (with them, fewer are computed)."""
    return sum(row_length(k, examples) for k in rows)
