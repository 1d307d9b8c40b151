"""Batching: which examples each optimizer step sees, and how they become the rows of a forward.

schedule        which examples each optimizer step sees: identical for every objective of a seed
micro_batches   a step's examples as the rows the objective needs (paired, unpaired, mismatched),
                cut to train.max_tokens_per_forward when set
collate         rows -> one forward's tensors on the device (`Forward`), in one of three layouts:
                  rows    each row its own sequence, right-padded
                  shared  the rows of one prompt in one sequence (the prompt once, each completion after it,
                          none seeing another), right-padded
                  packed  the shared sequences one after another in a single row, without padding between
                          them (attention kept within each sequence: flex attention on a GPU)
                  aligned packed, each sequence starting at a multiple of ALIGN_BLOCK: no attention tile holds two
                          sequences, so a sequence's log-probs do not depend on what it is packed with
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
LAYOUTS = ("rows", "shared", "packed", "aligned")
PACKED = ("packed", "aligned")  # the layouts of one row holding every sequence

# Flex attention's default tile (query and key blocks of 128 positions). In the aligned layout each sequence
# starts at a multiple of it, so every tile a sequence's queries read holds its own keys only, summed in the same
# order whatever its neighbours: the reference pass (which packs a sequence with other neighbours than training
# does) and training's first step then compute the same bf16 log-probs. Its cost: up to 127 padding positions a
# sequence (bench/bench_gpu.py's `align` flag measures it).
ALIGN_BLOCK = 128

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
    scores: list[tuple[float, float]] | None = None  # grouped: (advantage, the sampler's log-prob) per row


def view(objective: Objective, prepared: Prepared, indices: list[int], unpaired_view: str) -> MicroBatch:
    """The rows one micro-batch of examples gives this objective."""
    if objective.data == "paired":
        return MicroBatch([(i, i, 0) for i in indices] + [(i, i, 1) for i in indices])
    if objective.data == "grouped":  # every answer of each prompt's group
        rows = [(i, i, w) for i in indices for w in range(len(prepared.train[i].completions))]
        return MicroBatch(rows, scores=[tuple(prepared.scores[p][w]) for p, _, w in rows])
    if prepared.fmt == "unpaired":
        rows, labels = [(i, i, 0) for i in indices], [bool(prepared.train[i].label) for i in indices]
    elif unpaired_view == "both":  # every pair gives its chosen (desirable) and rejected (undesirable) half
        rows = [(i, i, 0) for i in indices] + [(i, i, 1) for i in indices]
        labels = [True] * len(indices) + [False] * len(indices)
    else:  # one completion per prompt, as in the KTO paper's one-y-per-x ablation
        rows = [(i, i, prepared.one_per_prompt[i]) for i in indices]
        labels = [w == 0 for _, _, w in rows]
    return MicroBatch(rows, labels)


def _mismatched(rows: list[Key], j: int, examples: list[Example]) -> Key:
    """Row j's prompt with the completion of the nearest earlier row of another prompt (cyclic):
    TRL's rotation by one, made safe for batches that hold several completions of one prompt
    (both halves of a pair, or unpaired data with repeated prompts). Prompts compare by tokens."""
    prompt = rows[j][0]
    for step in range(1, len(rows)):
        p, c, w = rows[(j - step) % len(rows)]
        if examples[p].prompt != examples[prompt].prompt:
            return (prompt, c, w)
    raise TrainingError(
        "KTO's mismatched z0 needs at least two prompts per step: raise train.batch_size or use z0: batch_mean"
    )


def micro_batches(
    objective: Objective,
    prepared: Prepared,
    step: list[int],
    recipe: Recipe,
    rank: int,
    world: int,
    layout: str = "rows",
) -> list[MicroBatch]:
    """This process's micro-batches of one step; `layout`: how the forwards will lay out their rows (the token
    budget counts the tokens they will hold)."""
    per_rank = len(step) // world
    mine = step[rank * per_rank : (rank + 1) * per_rank]
    m, budget = recipe.train.micro_batch_size, recipe.train.max_tokens_per_forward
    out = []
    for i in range(0, len(mine), m):
        pieces = (
            _within_budget(objective, prepared, mine[i : i + m], recipe.data.unpaired_view, budget, layout)
            if budget
            else [mine[i : i + m]]
        )
        out.extend(view(objective, prepared, piece, recipe.data.unpaired_view) for piece in pieces)
    if objective.needs_mismatched_pairs:
        # KTO's reference point is a mean over the whole step's mismatched pairs (every process's), built from the
        # whole step's rows: each micro-batch forwards the pairs of its own rows, and the trainer averages them all,
        # so neither the micro-batch size nor the number of processes changes z0.
        whole = view(objective, prepared, step, recipe.data.unpaired_view).rows
        pairs = {row: _mismatched(whole, j, prepared.train) for j, row in enumerate(whole)}
        for mb in out:
            mb.kl_rows = [pairs[row] for row in mb.rows]
    return out


def row_length(key: Key, examples: list[Example]) -> int:
    p, c, w = key
    return len(examples[p].prompt) + len(examples[c].completions[w])


def sequences(
    rows: list[Key], examples: list[Example], share: bool
) -> list[tuple[tuple[int, ...], list[tuple[int, ...]], list[int]]]:
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


def _span(length: int, layout: str) -> int:
    """Positions a sequence of `length` tokens takes in a packed row: aligned, rounded up to ALIGN_BLOCK."""
    return length + (-length % ALIGN_BLOCK if layout == "aligned" else 0)


def _shape(seqs: list, device, layout: str) -> tuple[int, int]:
    """(rows, width) of the batch `collate` builds from `sequences`: one row per sequence as wide as the longest, or
    packed, one row as long as all of them; the width rounded up to PAD_MULTIPLE_CUDA on a GPU."""
    lengths = [_span(len(prompt) + sum(map(len, completions)), layout) for prompt, completions, _ in seqs]
    width = sum(lengths) if layout in PACKED else max(lengths)
    width += -width % PAD_MULTIPLE_CUDA if torch.device(device).type == "cuda" else 0
    return (1 if layout in PACKED else len(seqs)), width


def padded_tokens(rows: list[Key], examples: list[Example], layout: str = "rows", device="cpu") -> int:
    """Tokens of the [rows, width] batch `collate` builds, padding included."""
    n, width = _shape(sequences(rows, examples, layout != "rows"), device, layout)
    return n * width


def _within_budget(
    objective: Objective, prepared: Prepared, indices: list[int], unpaired_view: str, budget: int, layout: str = "rows"
) -> list[list[int]]:
    """`indices` cut, in length order, into the fewest consecutive runs whose forward stays within
    `budget` padded tokens: the rare wide micro-batch that sets the peak is split, the rest are
    untouched. A single example over the budget runs alone. (On a GPU the width then rounds up to a multiple
    of PAD_MULTIPLE_CUDA, so a forward may exceed the budget by up to 63 tokens a row.)"""
    fits = lambda run: (
        padded_tokens(view(objective, prepared, run, unpaired_view).rows, prepared.train, layout) <= budget
    )
    if fits(indices):
        return [indices]
    ordered = sorted(indices, key=lambda i: prepared.train[i].length())
    runs: list[list[int]] = []
    for i in ordered:
        if runs and fits(runs[-1] + [i]):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def loss_count(objective: Objective, mb: MicroBatch) -> int:
    """Entries of `objective.loss(...).losses` for this micro-batch: one per pair, or per unpaired or grouped row."""
    return len(mb.rows) // 2 if objective.data == "paired" else len(mb.rows)


class Forward(NamedTuple):
    """One forward's tensors, and where each completion token's log-prob is read from its output.

    A NamedTuple, so that DDP and FSDP move and cast it like any tuple of arguments."""

    input_ids: torch.Tensor  # [sequences, width] (packed: [1, width])
    # rows: [sequences, width] padding mask; shared: [sequences, 2, width] and packed: [1, 2, width], each token's
    # sequence and segment (`attends`), turned into a mask by the forward (dense_mask, or a BlockMask for flex
    # attention), which knows the model's sliding window if it has one
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None  # shared and packed: each completion continues from its prompt's last position
    predict_at: torch.Tensor  # [tokens] flat position (row * width + t) whose output predicts each completion token
    targets: torch.Tensor  # [tokens] the completion tokens
    rows: torch.Tensor  # [tokens] the row (index into collate's `rows`) each token belongs to
    n_rows: int
    # [rows] for objectives that need a completion's tail (LD-DPO): its scored tokens from this index on are the
    # tail (`tail_cut`); None otherwise
    tail_from: torch.Tensor | None = None


def attends(
    sequence_q: torch.Tensor,
    segment_q: torch.Tensor,
    sequence_kv: torch.Tensor,
    segment_kv: torch.Tensor,
    q: torch.Tensor,
    kv: torch.Tensor,
    position_q: torch.Tensor | None = None,
    position_kv: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Whether position q may attend to position kv, given each one's sequence and segment (-1 padding, 0 the prompt,
    k + 1 the k-th completion): causal, within one sequence, to the prompt or to its own completion. Padding attends
    to earlier padding, so no softmax row is empty. With a sliding `window` (a model each of whose layers attends to
    its last `window` positions only, as Mistral's), also only to keys fewer than `window` positions before it in
    its own sequence (the positions the model sees, position_q and position_kv), as the model's own mask does. One
    rule for the dense masks and flex attention's mask_mod."""
    visible = (segment_kv == segment_q) | ((segment_kv == 0) & (segment_q >= 0))
    allowed = (sequence_q == sequence_kv) & visible & (kv <= q)
    return allowed if window is None else allowed & (position_q - position_kv < window)


def dense_mask(packed: torch.Tensor, positions: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """[rows, 1, width, width] bool mask of a [rows, 2, width] (sequence, segment) tensor, for SDPA or eager attention
    (`positions` [rows, width] and `window`: a sliding window, see attends)."""
    sequence, segment = packed[:, 0], packed[:, 1]
    t = torch.arange(packed.shape[-1], device=packed.device)
    p = (positions[:, :, None], positions[:, None, :]) if window is not None else (None, None)
    return attends(
        sequence[:, :, None], segment[:, :, None], sequence[:, None, :], segment[:, None, :], t[:, None], t[None, :],
        *p, window,
    )[:, None]  # fmt: skip


def scored_length(key: Key, examples: list[Example]) -> int:
    """Tokens of a row's completion that have a log-prob: all, but the first where there is no prompt."""
    p, c, w = key
    return len(examples[c].completions[w]) - (0 if examples[p].prompt else 1)


def tail_cut(key: Key, examples: list[Example]) -> int:
    """LD-DPO's split of a paired row (Liu et al. 2024, arXiv:2409.06411): the first min(|y_w|, |y_l|) scored tokens
    of each completion of the pair are the shared part, the rest its tail. A row's pair is its example's two
    completions, so the cut is a function of the row alone (and the reference cache can key it)."""
    p, c, _ = key
    return min(scored_length((p, c, w), examples) for w in range(len(examples[c].completions)))


def collate(
    rows: list[Key], examples: list[Example], pad_id: int, device, layout: str = "rows", tails: bool = False
) -> Forward:
    """The forward of `rows` in `layout` (see the module's docstring). Shared or packed, rows of one prompt become
    one sequence, the prompt once and each completion after it: a completion attends to the prompt and to its own
    earlier tokens only, and its positions continue from the prompt's, so each completion's log-probs are those
    of its own sequence (to rounding). Used only where the model's attention takes such a mask
    (logprobs.layout)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    seqs = sequences(rows, examples, layout != "rows")
    packed = layout in PACKED
    if layout == "shared" and not any(len(completions) > 1 for _, completions, _ in seqs):
        layout = "rows"  # nothing shared: the plain padding mask is the same forward
    n, width = _shape(seqs, device, layout)
    ids = torch.full((n * width,), pad_id, dtype=torch.long)
    sequence = torch.full((n * width,), -1, dtype=torch.long)
    segment = torch.full((n * width,), -1, dtype=torch.long)  # -1 padding, 0 prompt, k + 1 the k-th completion
    positions = torch.zeros((n * width,), dtype=torch.long)
    predict_at, targets, owner = [], [], []
    offset = 0  # where sequence s starts in the flat [n * width] batch
    for s, (prompt, completions, indices) in enumerate(seqs):
        offset = offset if packed else s * width
        lp = len(prompt)
        ids[offset : offset + lp] = torch.tensor(prompt, dtype=torch.long)
        sequence[offset : offset + lp + sum(map(len, completions))] = s
        segment[offset : offset + lp] = 0
        positions[offset : offset + lp] = torch.arange(lp)
        start = offset + lp
        for k, (completion, r) in enumerate(zip(completions, indices)):
            c = len(completion)
            ids[start : start + c] = torch.tensor(completion, dtype=torch.long)
            segment[start : start + c] = k + 1
            positions[start : start + c] = torch.arange(lp, lp + c)
            # token j of the completion is predicted at the position before it: the prompt's last for j = 0
            at = torch.arange(start - 1, start + c - 1)
            at[:1] = offset + lp - 1
            keep = at >= offset  # a completion with no prompt: its first token has nothing to predict it
            predict_at.append(at[keep])
            targets.append(torch.tensor(completion, dtype=torch.long)[keep])
            owner.append(torch.full((int(keep.sum()),), r, dtype=torch.long))
            start += c
        offset = offset + _span(start - offset, layout)
        # aligned: the gap up to the next block is this sequence's padding (segment -1), attending to itself only,
        # so the tile it shares with the sequence's tail reads no other sequence's keys
        sequence[start:offset] = s
    flat = lambda t: t.view(n, width)
    if layout == "rows":
        mask, position_ids = flat(segment >= 0).long(), None
    else:
        mask, position_ids = torch.stack([flat(sequence), flat(segment)], 1), flat(positions)
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    cuts = to_device(torch.tensor([tail_cut(k, examples) for k in rows], dtype=torch.long), device) if tails else None
    return Forward(
        to_device(flat(ids), device), to_device(mask, device), None if position_ids is None else to_device(position_ids, device),
        to_device(cat(predict_at), device), to_device(cat(targets), device), to_device(cat(owner), device), len(rows), cuts,
    )  # fmt: skip


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory without waiting: a plain copy
    synchronises with the GPU, so a loop that copies each micro-batch's inputs would stall the GPU
    while the host queues the next kernels (measured: most of a 1.7B step's time on an H100)."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)  # (a tensor on a device already: a moving reference's log-probs, computed in the step)


def real_tokens(rows: list[Key], examples: list[Example]) -> int:
    """Tokens of the rows (prompt and completion each), counted on the host: the work a step does whatever the
    layout, so that tokens/s compares with and without shared prompts (with them, fewer are computed)."""
    return sum(row_length(k, examples) for k in rows)
