"""The device a unit runs on: torchrun's process group (a single process otherwise), the FSDP2/DDP wrap, autocast,
and the model made ready for the row layout and kernels training uses. Shared by the reference pass and the
trainer."""

from __future__ import annotations

import datetime
import os
import resource
from contextlib import nullcontext

import torch
import torch.distributed as dist

from prefbench import kernels
from prefbench.logprobs import SequenceLogps, causal_lm, layout
from prefbench.recipe import TrainSpec


def process_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        # Rank 0 computes the reference log-probs while the others wait: allow hours, not the default minutes.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=6))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return process_rank(), world, torch.device("cuda", local)
    return process_rank(), world, torch.device("cpu")


def distribute(policy: SequenceLogps, lm, sharded: bool, world: int, device: torch.device) -> torch.nn.Module:
    """Under torchrun, FSDP2 (each decoder layer, then the rest) or DDP; in one process, the policy as is."""
    if sharded:
        from torch.distributed.fsdp import (
            fully_shard,
        )  # deferred: torch: a second to import; prefbench check and report do without

        for layer in causal_lm(lm).get_decoder().layers:
            fully_shard(layer)
        fully_shard(policy)
    elif world > 1:
        policy = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    return policy


def ready(lm: torch.nn.Module, train: TrainSpec, device) -> str:
    """Set `lm` up for train's layout and kernels, in that order (packed rows switch its attention to flex, and
    compiled layers must see the attention they will run); returns the layout (logprobs.layout)."""
    rows_layout = layout(lm, train.share_prompts, train.padding_free, device, train.align_packed)
    kernels.apply(lm, train.kernels, device)
    return rows_layout


def autocast_for(dtype: str, device: torch.device):
    """fp32 on CPU (no fast bf16 there); bf16 autocast on GPU, master weights and optimizer in fp32."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
