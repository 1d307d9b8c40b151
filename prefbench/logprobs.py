"""The only code that turns model outputs into sequence log-probs.

`SequenceLogps` wraps a causal LM and returns, for each row, the log-prob of its completion tokens
summed, and their count. It never builds the [batch, sequence, vocab] logits: the backbone's hidden
states are gathered at the positions that predict a completion token (prompt and padding positions
never reach the LM head), and those rows go through the head in chunks, each checkpointed so that
backward recomputes one [chunk, vocab] block at a time instead of keeping all of them.

Its input is a `data.batches.Forward`: each row its own sequence, or rows of one prompt sharing it
(the prompt run once, each completion after it under a mask that keeps completions apart), either
padded to a common width or packed into one row (`layout` says which one a model computes exactly).

It is an nn.Module so that DDP and FSDP2 wrap it whole: calling the backbone through the wrapper
keeps their gradient hooks in the path.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from prefbench.data.batches import PACKED, Forward, attends, collate, dense_mask
from prefbench.data.tokenize import Example

# Elements of one logits block: 2^23 floats = 32 MiB in fp32 (with its gradient, 64 MiB). On a GPU
# a block of that size is ~170 rows of a 49k vocabulary: the head becomes hundreds of small launches
# (measured on an H100, SmolLM2-135M shapes: 2^27-element blocks cut a DPO micro-step 227 -> 172 ms).
LOGITS_BLOCK_ELEMENTS = 1 << 23
LOGITS_BLOCK_ELEMENTS_CUDA = 1 << 27  # 512 MiB in fp32: one block at a time, recomputed in backward
# Below this many logits in all (128 MiB in fp32) the head runs in one piece without recomputation:
# recomputing costs a third more head time (measured +31% step throughput on tiny:head by skipping
# it) and the memory saved is small at that size.
LOGITS_RECOMPUTE_ABOVE = 1 << 25


def _token_logps(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, square_mass: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """log softmax(hidden @ weight.T + bias)[target] for a block of rows, in fp32 at least; with `square_mass`, also
    log sum_v softmax(...)_v^2 at each row, without gradient (WPO's per-token normaliser)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    normaliser = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - normaliser
    if not square_mass:
        return logp
    with torch.no_grad():
        return logp, torch.logsumexp(2 * (logits - normaliser[:, None]), dim=-1)


def attention_kernels(device: torch.device):
    """On a GPU, SDPA without its cuDNN backend: with a padding mask cuDNN was picked, and it builds a
    plan per shape; the memory-efficient kernel was faster on an H100 (SmolLM2-135M shapes, 16 pairs per
    forward: 62k -> 84k tokens/s; 1.7B, 4 pairs: 19.2k -> 20.2k). Backward must run under it too:
    gradient checkpointing recomputes the forward there, and a different backend fails the recompute."""
    if device.type != "cuda":
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def block_elements(device: torch.device) -> int:
    return LOGITS_BLOCK_ELEMENTS_CUDA if device.type == "cuda" else LOGITS_BLOCK_ELEMENTS


def causal_lm(model: nn.Module) -> nn.Module:
    """The underlying *ForCausalLM, through PEFT wrappers (whose LoRA layers live inside it anyway)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


# Where padding-free batches run: on a CPU a packed row's dense [width, width] mask costs more than the padding it
# saves, and flex attention has no backward there (tests add "cpu" to check the layout against the others).
PACKED_DEVICES = ("cuda",)


def shares_prompts(model: nn.Module) -> bool:
    """Whether `model` computes a shared-prompt forward (`data.batches.collate(layout="shared")`) exactly: its
    attention is SDPA, eager or flex, which apply a custom mask as given, and every layer attends alike (to the whole
    context, or each to the same sliding window, which the mask then carries: attention_window). Other
    implementations (flash-attention's kernels take no such mask) and models that mix full and sliding layers run
    each completion with its own copy of the prompt."""
    config = causal_lm(model).config
    uniform = attention_window(config) != MIXED
    return uniform and getattr(config, "_attn_implementation", None) in ("sdpa", "eager", "flex_attention")


MIXED = -1  # attention_window of a model whose layers attend differently


def attention_window(config) -> int | None:
    """The sliding window every layer attends within (Mistral's `sliding_window`, or layer_types all
    "sliding_attention"), None where every layer attends to the whole context, MIXED where layers differ. A config
    without layer_types slides where it names a window, as Mistral's models do."""
    types, window = set(getattr(config, "layer_types", None) or ()), getattr(config, "sliding_window", None)
    if not types:
        return window
    if types == {"full_attention"}:
        return None
    return window if types == {"sliding_attention"} else MIXED


def layout(model: nn.Module, share_prompts: bool, padding_free: bool, device, align: bool = False) -> str:
    """The batch layout (`data.batches.LAYOUTS`) to run `model` in: "rows" unless share_prompts and its attention
    takes a custom mask (shares_prompts); "packed" on a GPU when padding_free ("aligned" with `align`), which
    switches the model's attention to flex attention (a BlockMask keeps the packed sequences apart without an L x L
    tensor; PyTorch's flex attention has no backward on CPU); else "shared"."""
    if not shares_prompts(model):
        return "rows"
    chosen = planned_layout(share_prompts, padding_free, device, align)
    if chosen in PACKED and torch.device(device).type == "cuda":
        causal_lm(model).set_attn_implementation("flex_attention")
    return chosen  # packed elsewhere (the tests' CPU runs): with the dense mask of data.batches.dense_mask


def planned_layout(share_prompts: bool, padding_free: bool, device, align: bool = False) -> str:
    """The layout `layout` gives a model whose attention takes the mask, known before any model loads (the
    reference cache's key, and the micro-batches whose reference log-probs are computed in advance)."""
    if not share_prompts:
        return "rows"
    if padding_free and torch.device(device).type in PACKED_DEVICES:
        return "aligned" if align else "packed"
    return "shared"


def _block_mask(packed: Tensor, positions: Tensor, window: int | None):
    """Flex attention's BlockMask for a packed [1, 2, width] (sequence, segment) batch: blocks no query of which
    attends to any key are skipped, so the cost follows the sequences' own lengths, not the row's."""
    from torch.nn.attention.flex_attention import (
        create_block_mask,
    )  # deferred: torch: a second to import; prefbench check and report do without

    sequence, segment, at = packed[0, 0], packed[0, 1], positions[0]
    mask_mod = lambda b, h, q, kv: attends(
        sequence[q], segment[q], sequence[kv], segment[kv], q, kv, at[q], at[kv], window
    )
    width = packed.shape[-1]
    return create_block_mask(
        mask_mod, 1, None, width, width, device=packed.device, _compile=packed.device.type == "cuda"
    )


class SequenceLogps(nn.Module):
    def __init__(self, lm: nn.Module, square_mass: bool = False):
        super().__init__()
        self.lm = lm
        self.square_mass = square_mass  # also return each row's summed square mass (objectives' needs_square_mass)

    def forward(self, *batch) -> tuple[Tensor, ...]:
        """Summed completion log-probs [rows] and completion token counts [rows] of a `Forward` (passed as
        its fields, so that DDP and FSDP see plain tensors); then, with `square_mass`, each row's
        sum_t log sum_v pi(v)^2 (no gradient), and where the Forward has `tail_from`, each row's log-probs summed
        over its tail (the scored tokens from that index on)."""
        fwd = Forward(*batch)
        selected, head, dtype = _completion_hidden(self.lm, fwd)
        vocab = head.weight.shape[0]
        recompute = torch.is_grad_enabled() and selected.shape[0] * vocab > LOGITS_RECOMPUTE_ABOVE
        chunk = max(1, block_elements(selected.device) // vocab)
        pieces = []
        for start in range(0, selected.shape[0], chunk):
            args = (selected[start : start + chunk], head.weight, head.bias, fwd.targets[start : start + chunk])
            args += (self.square_mass,)
            pieces.append(checkpoint(_token_logps, *args, use_reentrant=False) if recompute else _token_logps(*args))
        pieces = [p if self.square_mass else (p,) for p in pieces]
        zeros = torch.zeros(fwd.n_rows, dtype=dtype, device=selected.device)
        per_token = [torch.cat(parts) for parts in zip(*pieces, strict=True)] or [
            selected.new_zeros(0, dtype=dtype)
        ] * (2 if self.square_mass else 1)
        sums = [zeros.index_add(0, fwd.rows, values) for values in per_token]
        if fwd.tail_from is not None:
            in_tail = _index_in_row(fwd) >= fwd.tail_from[fwd.rows]
            sums.append(zeros.index_add(0, fwd.rows, torch.where(in_tail, per_token[0], 0.0)))
        return sums[0], _counts(fwd), *sums[1:]


def _counts(fwd: Forward) -> Tensor:
    """Completion tokens of each row. Not torch.bincount: its output size depends on the data, so on a GPU it waits
    for every queued kernel (a host sync in every forward)."""
    ones = torch.ones_like(fwd.rows)
    return torch.zeros(fwd.n_rows, dtype=ones.dtype, device=ones.device).index_add(0, fwd.rows, ones)


def _index_in_row(fwd: Forward) -> Tensor:
    """Each scored token's index within its row's scored tokens (collate lays a row's tokens out contiguously and in
    order)."""
    at = torch.arange(fwd.rows.numel(), device=fwd.rows.device)
    first = torch.zeros(fwd.n_rows, dtype=at.dtype, device=at.device)
    first = first.scatter_reduce(0, fwd.rows, at, "amin", include_self=False)
    return at - first[fwd.rows]


def _completion_hidden(lm: nn.Module, fwd: Forward):
    """The backbone's hidden states at the positions that predict a completion token, the LM head, and the
    log-prob dtype (fp32 at least)."""
    lm = causal_lm(lm)
    backbone, head = lm.get_decoder(), lm.get_output_embeddings()
    mask, attention = fwd.attention_mask, lm.config._attn_implementation
    if mask.dim() == 3:  # shared or packed: each token's (sequence, segment)
        window = attention_window(lm.config)
        if attention == "flex_attention":
            mask = _block_mask(mask, fwd.position_ids, window)
        else:
            mask = dense_mask(mask, fwd.position_ids, window)
    if (
        torch.is_tensor(mask) and mask.dim() == 4 and attention in ("eager", "flex_attention")
    ):  # they add the mask to the scores
        mask = torch.zeros(mask.shape, dtype=lm.dtype, device=mask.device).masked_fill(~mask, torch.finfo(lm.dtype).min)
    with attention_kernels(fwd.input_ids.device):
        hidden = backbone(
            input_ids=fwd.input_ids, attention_mask=mask, position_ids=fwd.position_ids, use_cache=False
        ).last_hidden_state
    return hidden.flatten(0, 1)[fwd.predict_at], head, torch.promote_types(hidden.dtype, torch.float32)


@torch.no_grad()
def completion_stats(lm: nn.Module, fwd: Forward) -> dict[str, Tensor]:
    """Per row (evaluation only: no gradient): "logp" the summed completion log-probs, "entropy" the summed
    per-token entropies of the model's next-token distribution at those positions, "tokens" their count."""
    selected, head, dtype = _completion_hidden(lm, fwd)
    chunk = max(1, block_elements(selected.device) // head.weight.shape[0])
    pieces: dict[str, list[Tensor]] = {"logp": [], "entropy": []}
    for start in range(0, selected.shape[0], chunk):
        logits = F.linear(selected[start : start + chunk], head.weight, head.bias).to(dtype).log_softmax(-1)
        pieces["logp"].append(logits.gather(1, fwd.targets[start : start + chunk, None]).squeeze(1))
        p = logits.exp()  # terms where p is 0 are 0 (not 0 * -inf: a token masked out of the vocabulary)
        pieces["entropy"].append(-torch.where(p > 0, p * logits, 0.0).sum(-1))
    zeros = torch.zeros(fwd.n_rows, dtype=dtype, device=selected.device)
    out = {"tokens": _counts(fwd)}
    for name, values in pieces.items():
        out[name] = zeros.clone().index_add(
            0, fwd.rows, torch.cat(values) if values else selected.new_zeros(0, dtype=dtype)
        )
    return out


@torch.no_grad()
def completion_logps_at(lm: nn.Module, fwd: Forward, ids: Tensor) -> Tensor:
    """[tokens, m] log-probs under `lm` of the m token ids `ids[i]` at the position that predicts completion token
    i of `fwd` (fwd's target order): a model scored on what another one (an engine) listed at each position."""
    selected, head, dtype = _completion_hidden(lm, fwd)
    chunk = max(1, block_elements(selected.device) // head.weight.shape[0])
    pieces = [
        F.linear(selected[start : start + chunk], head.weight, head.bias)
        .to(dtype)
        .log_softmax(-1)
        .gather(1, ids[start : start + chunk])
        for start in range(0, selected.shape[0], chunk)
    ]
    return torch.cat(pieces) if pieces else selected.new_zeros(0, ids.shape[1], dtype=dtype)


@torch.no_grad()
def token_logps(lm: nn.Module, ids: list[int], start: int) -> Tensor:
    """Per-token log-probs (fp32 at least, on the CPU) of ids[start:] under `lm`, each given what precedes it:
    the transformers side of the check that an engine loaded a checkpoint's weights as saved."""
    fwd = collate([(0, 0, 0)], [Example(tuple(ids[:start]), (tuple(ids[start:]),))], 0, next(lm.parameters()).device)
    selected, head, _ = _completion_hidden(lm, fwd)
    return _token_logps(selected, head.weight, head.bias, fwd.targets).cpu()
