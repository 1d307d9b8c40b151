"""prefbench's trainer: one loop, read top to bottom.

    train_one       one objective, one seed: set_up, restore, train_loop, save_final

The reference log-probs every objective reads are prefbench.reference (computed once, before training); the
device, torchrun's process group and the FSDP2/DDP wrap are prefbench.device.

The data trained on is prefbench.data.prepare (once per run); which examples a step sees, and the rows
and tensors they become, is prefbench.data.batches.

Distributed data parallelism comes from torchrun: each process takes a contiguous slice of every
step's examples, and losses are scaled so the averaged gradient equals the single-process one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import transformers
from tqdm.auto import tqdm

from prefbench import models
from prefbench.data.batches import (
    MicroBatch,
    collate,
    loss_count,
    micro_batches,
    real_tokens,
    schedule,
    to_device,
)
from prefbench.data.prepare import Prepared
from prefbench.device import autocast_for, distribute, init_distributed, peak_memory_mb, ready
from prefbench.errors import TrainingError
from prefbench.health import training_findings
from prefbench.logprobs import (
    SequenceLogps,
    attention_kernels,
    causal_lm,
)
from prefbench.objectives import (
    OBJECTIVES,
    GroupedLogps,
    Objective,
    PairedLogps,
    UnpairedLogps,
    build,
)
from prefbench.optimizer import make as make_optimizer
from prefbench.recipe import ObjectiveSpec, Recipe, TrainSpec
from prefbench.reference import RefLogps, tail_key
from prefbench.results import (
    AppendLog,
    BusyError,
    UnitId,
    atomic,
    exclusive,
    objective_dir,
    online_costs,
    read_json,
    record_timing,
    run_dir,
    write_json,
)
from prefbench.tracking import Trackers


def _mean_over_batches(sums: dict[str, tuple[float, int]], world: int) -> dict[str, float]:
    """Each metric's mean over the micro-batches (of every process) that reported it; a class-mean
    such as rewards/rejected is absent from a micro-batch without that class."""
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, sums)
        sums = {}
        for part in gathered:
            for k, (total, count) in part.items():
                t0, c0 = sums.get(k, (0.0, 0))
                sums[k] = (t0 + total, c0 + count)
    return {k: total / count for k, (total, count) in sums.items()}


def check_budget_and_fsdp(recipe: Recipe, world: int) -> None:
    if world > 1 and recipe.train.fsdp and recipe.train.max_tokens_per_forward:
        raise TrainingError(
            "train.max_tokens_per_forward cannot be combined with train.fsdp: every FSDP rank must run the same number of forwards"
        )


# ---- the loop: set-up, restore, steps, save ------------------------------------------------------


@dataclass
class TrainState:
    """One objective and one seed being trained in this process: what set_up builds and the loop works on."""

    spec: ObjectiveSpec
    seed: int
    out: Path  # <run>/<label>/seed<k>
    rank: int
    world: int
    device: torch.device
    sharded: bool  # FSDP2: each process holds a shard of the weights and optimizer state
    layout: str  # how forwards lay out their rows (data.batches.LAYOUTS; logprobs.layout)
    autocast: object
    objective: Objective
    lm: torch.nn.Module  # the Hugging Face model (PEFT-wrapped with LoRA): what checkpoints save
    tokenizer: object
    policy: torch.nn.Module  # SequenceLogps over lm; DDP-wrapped or sharded under torchrun
    params: list[torch.nn.Parameter]  # the trainable ones
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    # a moving reference (objectives' moving_reference: TR-DPO): SequenceLogps over a copy of the model, updated
    # toward the policy by the objective's rule; None where the reference log-probs come from the run's cache
    reference: torch.nn.Module | None = None

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def train_one(
    recipe: Recipe, spec: ObjectiveSpec, seed: int, prepared: Prepared, ref: RefLogps | None, rounds=None
) -> dict:
    """Train one objective with one seed. Resumes from the last checkpoint; a finished run returns its summary.
    Rank 0 holds the unit's lock, so a second `prefbench run` or `train` of the unit stops at once. `rounds`: a
    semi-online unit's data (online.OnlineRounds, from the runner): each step's pairs, sampled as it trains."""
    rank, world, device = init_distributed()
    transformers.utils.logging.disable_progress_bar()  # prefbench's own bars say what is happening
    out = objective_dir(recipe, spec.label, seed)
    with contextlib.ExitStack() as held:
        busy = [None]
        if rank == 0:
            try:
                held.enter_context(
                    exclusive(run_dir(recipe), f"train-{spec.label}-seed{seed}", f"training {UnitId(spec.label, seed)}")
                )
            except BusyError as err:
                busy = [str(err)]
        if world > 1:  # every rank stops, not only rank 0 (the others would wait in its collectives)
            dist.broadcast_object_list(busy, src=0)
        if busy[0]:
            raise BusyError(busy[0])
        if (out / "summary.json").exists():
            return read_json(out / "summary.json")
        t = recipe.train_for(spec)
        if spec.online is not None and world > 1:
            raise TrainingError(f"{spec.label}: online training samples in one process; run it without torchrun")
        if t.batch_size % (t.micro_batch_size * world):
            raise TrainingError(
                f"train.batch_size={t.batch_size} must be a multiple of micro_batch_size x processes = {t.micro_batch_size} x {world}"
            )
        started = time.perf_counter()
        resume = latest_checkpoint(out)
        u = set_up(recipe, spec, seed, out, resume, rank, world, device)
        start_step = restore(u, resume)
        train_seconds, tokens = train_loop(u, recipe, prepared, ref, start_step, rounds)
        summary = _summary(u, recipe, resume, train_seconds, tokens)
        save_final(u, recipe, summary)
        if rank == 0:
            record_timing(
                out, "train", time.perf_counter() - started, device, world, from_step=start_step, steps=t.steps
            )
        return summary


# ---- set-up


def set_up(
    recipe: Recipe,
    spec: ObjectiveSpec,
    seed: int,
    out: Path,
    resume: Path | None,
    rank: int,
    world: int,
    device: torch.device,
) -> TrainState:
    """The objective, the model (its weights from `resume` when given), the FSDP2/DDP wrap, AdamW and its schedule
    (at the objective's own settings where its entry has them: Recipe.train_for)."""
    t = recipe.train_for(spec)
    sharded = world > 1 and t.fsdp  # train_units refused max_tokens_per_forward with FSDP before the reference pass
    objective = build(spec.name, **spec.hyperparameters)
    autocast = autocast_for(t.dtype, device)
    torch.manual_seed(seed)
    lm, tokenizer = _load_model(recipe, resume, device)
    rows_layout = ready(lm, t, device)
    policy = distribute(SequenceLogps(lm, objective.needs_square_mass), lm, sharded, world, device)
    params = [p for p in policy.parameters() if p.requires_grad]
    reference = None
    # the model as it starts, in memory: a moving reference (restore loads a checkpoint's moved one), or the fixed one
    # of an online unit, whose pairs are sampled as it trains (no cached pass can hold them)
    if objective.moving_reference or (spec.online is not None and objective.needs_reference):
        reference_lm, _ = models.load(recipe.model.name, next(lm.parameters()).dtype)
        reference_lm = reference_lm.to(device).eval().requires_grad_(False)
        ready(reference_lm, t, device)
        reference = SequenceLogps(reference_lm)
    optimizer = make_optimizer(params, t, device)
    warmup = int(t.warmup_ratio * t.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.steps, warmup, t.schedule))
    return TrainState(
        spec,
        seed,
        out,
        rank,
        world,
        device,
        sharded,
        rows_layout,
        autocast,
        objective,
        lm,
        tokenizer,
        policy,
        params,
        optimizer,
        scheduler,
        reference,
    )


def _load_model(recipe: Recipe, resume: Path | None, device: torch.device):
    """(model, tokenizer), training on `device`: the checkpoint's weights when resuming (with LoRA, the
    base model and the checkpoint's adapters), else recipe.model's, with LoRA adapters added if asked."""
    # train.weights: bf16 loads the weights in bf16 (with LoRA: the frozen base; peft keeps its adapters in fp32)
    dtype = torch.bfloat16 if recipe.train.weights == "bf16" else torch.float32
    lm, tokenizer = models.load(str(resume) if resume and not recipe.model.lora else recipe.model.name, dtype)
    if recipe.model.lora:
        from peft import LoraConfig, PeftModel, get_peft_model  # deferred: peft: only LoRA recipes need it

        lora = recipe.model.lora
        if resume:
            lm = PeftModel.from_pretrained(lm, resume, is_trainable=True)
        else:
            lm = get_peft_model(
                lm,
                LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
                ),
            )
    if recipe.train.gradient_checkpointing:
        causal_lm(lm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.to(device).train()
    _disable_dropout(lm)
    return lm, tokenizer


# ---- restore


def restore(u: TrainState, resume: Path | None) -> int:
    """The step to start from. When resuming: optimizer, schedule, objective state and RNG from the
    checkpoint (set_up loaded its weights). metrics.jsonl keeps only the lines up to that step."""
    start_step = 0
    if resume:
        # tensors and plain containers only: a run directory may come from anyone, and a pickle can run code
        # on the CPU: saved from rank 0's device, it would otherwise land on that device in every process
        state = torch.load(resume / "trainer_state.pt", weights_only=True, map_location="cpu")
        if u.sharded:
            from torch.distributed.checkpoint.state_dict import (  # deferred: torch: a second to import; prefbench check and report do without
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                u.policy, u.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            u.optimizer.load_state_dict(state["optimizer"])
        u.scheduler.load_state_dict(state["scheduler"])
        u.objective.load_state_dict(state["objective"])
        if u.reference is not None and u.objective.moving_reference:
            u.reference.lm.load_state_dict(state["moving_reference"])
        torch.set_rng_state(state["rng"])  # LoRA dropout, the one random thing in a step
        start_step = state["step"]
    if u.rank == 0:
        u.out.mkdir(parents=True, exist_ok=True)
        path = u.metrics_path
        kept = [
            line for line in (path.read_text().splitlines() if path.exists() else []) if _step_of(line) <= start_step
        ]
        with atomic(path) as tmp:  # a killed run's steps past its checkpoint are redone
            tmp.write_text("".join(line + "\n" for line in kept))
    return start_step


def latest_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _step_of(line: str) -> float:
    """The step of a metrics line; a line half-written by a kill counts as past every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return math.inf


# ---- the steps


def train_loop(
    u: TrainState, recipe: Recipe, prepared: Prepared, ref: RefLogps | None, start_step: int, rounds=None
) -> tuple[float, int]:
    """Steps start_step+1 .. train.steps: one update and one metrics.jsonl line each, a checkpoint every
    train.save_every steps. Returns this process's seconds in steps and real tokens. With `rounds` (semi-online),
    each step's examples come from it instead of the run's data."""
    t = recipe.train_for(u.spec)
    plan = schedule([ex.length() for ex in prepared.train], t.batch_size, t.steps, u.seed, t.bucket_batches)
    train_seconds, tokens_total = 0.0, 0
    bar = tqdm(
        total=t.steps, initial=start_step, desc=f"{u.spec.label} seed {u.seed}", unit="step", disable=u.rank != 0
    )
    # rank 0 logs (and so opens the trackers); the others' Trackers stay closed
    with (
        contextlib.closing(Trackers(recipe, str(UnitId(u.spec.label, u.seed)), u.out)) as trackers,
        _profiled(u) as profiler,
    ):
        for step in range(start_step, t.steps):
            if rounds:  # semi-online: this step's examples, sampled by the policy at its round's start
                data, indices = rounds.step(u.lm, u.tokenizer, step, lambda examples: _logps_now(u, examples, t))
            else:
                data, indices = prepared, plan[step]
            step_start = time.perf_counter()  # after a round's sampling, which its own costs count (online_costs)
            batches = micro_batches(u.objective, data, indices, recipe, u.rank, u.world, u.layout)
            sums, tokens = _forward_backward(u, batches, data, ref)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                u.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
            )
            grad_norm, sums = _read_once(grad_norm, sums)
            logged = _mean_over_batches(sums, u.world)
            if not (math.isfinite(logged["loss"]) and math.isfinite(grad_norm)):
                last = latest_checkpoint(u.out)
                raise TrainingError(
                    f"{u.spec.label} seed {u.seed}: loss {logged['loss']} / grad norm {grad_norm} at step {step + 1}; "
                    f"stopped before the update. Last good checkpoint: {last or 'none (set train.save_every)'}"
                )
            lr = u.scheduler.get_last_lr()[0]  # the rate this update uses
            u.optimizer.step()
            if u.reference is not None and (weight := u.objective.reference_update(step + 1)) is not None:
                _move_reference(u, weight)
            u.scheduler.step()
            u.objective.end_step(_summed if u.world > 1 else None)
            u.optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - step_start
            train_seconds += seconds
            tokens_total += tokens
            record = {
                "step": step + 1,
                **logged,
                "grad_norm": grad_norm,
                "lr": lr,
                "tokens": tokens * u.world,
                "tokens_per_s": tokens * u.world / seconds,
                "step_seconds": seconds,
                "peak_memory_mb": peak_memory_mb(u.device),
            }
            if u.rank == 0:
                AppendLog(u.metrics_path).append([record])
                trackers.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss']:.4f}")
            done = step + 1
            # the snapshot first: a kill between the two resumes after this step and would never write it
            if t.snapshot_every and done % t.snapshot_every == 0 and done < t.steps:
                save_snapshot(u, done)
            if t.save_every and done % t.save_every == 0 and done < t.steps:
                save_periodic(u, done)
            _fault_injection(done)
            profiler.step()
    bar.close()
    return train_seconds, tokens_total


def _forward_backward(
    u: TrainState, batches: list[MicroBatch], prepared: Prepared, ref: RefLogps | None
) -> tuple[dict[str, tuple[float, int]], int]:
    """One step's forwards and backwards over this process's micro-batches, gradients accumulating.
    Returns each metric's (example-weighted sum, examples) and the real tokens seen."""
    pad_id = u.tokenizer.pad_token_id
    counts_per_batch = [loss_count(u.objective, mb) for mb in batches]
    sums: dict[str, tuple[float, int]] = {}
    tokens = 0
    mismatched = _mismatched_logps(u, batches, prepared, ref)
    for n, mb in enumerate(batches):
        fwd = collate(mb.rows, prepared.train, pad_id, u.device, u.layout, tails=u.objective.needs_tails)
        tokens += real_tokens(mb.rows, prepared.train)
        sync = nullcontext() if n == len(batches) - 1 or u.world == 1 or u.sharded else u.policy.no_sync()
        with sync:
            with u.autocast:
                logps, counts, *more = u.policy(*fwd)
            logps, counts = logps.double(), counts.double()
            if u.reference is not None:  # the reference as it is now, on the same forward
                with torch.no_grad(), u.autocast:
                    ref = _Computed(u.reference(*fwd)[0].double())
            batch, extra = _objective_batch(u, mb, logps, counts, ref, mismatched, more)
            out = u.objective.loss(batch)
            if out.losses.shape[0] != counts_per_batch[n]:  # shapes are known on the host: no sync
                raise TrainingError(
                    f"{u.spec.name}: {out.losses.shape[0]} losses for {counts_per_batch[n]} examples; the step mean would be wrong"
                )
            # Summed over this process's micro-batches (and averaged over processes by DDP/FSDP),
            # the gradient is that of the mean loss over all of the step's examples.
            with attention_kernels(u.device):  # gradient checkpointing recomputes attention here
                (out.losses.sum() / sum(counts_per_batch)).backward()
        weight = counts_per_batch[
            n
        ]  # metrics weighted by examples: micro-batches split by the token budget differ in size
        for k, v in {"loss": out.losses.detach().mean(), **out.metrics, **extra}.items():
            total, count = sums.get(k, (0.0, 0))  # summed where they are (no host sync inside the step)
            sums[k] = (total + weight * (v.detach().double() if torch.is_tensor(v) else float(v)), count + weight)
    return sums, tokens


def _read_once(grad_norm, sums: dict) -> tuple[float, dict[str, tuple[float, int]]]:
    """The step's gradient norm and metric sums on the host, in one device-to-host copy: each float() of a GPU
    tensor is a sync that waits for every queued kernel, and a step reads a dozen metrics."""
    names = list(sums)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2's norm is a DTensor (its shards' norms reduced on read)
        grad_norm = grad_norm.full_tensor()
    values = [grad_norm] + [sums[k][0] for k in names]
    device = next((v.device for v in values if torch.is_tensor(v)), "cpu")
    read = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]).tolist()
    return read[0], {k: (total, sums[k][1]) for k, total in zip(names, read[1:])}


@torch.no_grad()
def _logps_now(u: TrainState, examples: list, t: TrainSpec) -> list[list[float]]:
    """Each example's answers' summed log-probs under the policy as it is, computed as training computes them (its
    layout and autocast), micro-batch by micro-batch: a grouped objective's ratio starts from these at 1."""
    out = []
    for start in range(0, len(examples), t.micro_batch_size):
        chunk = range(start, min(start + t.micro_batch_size, len(examples)))
        rows = [(i, i, w) for i in chunk for w in range(len(examples[i].completions))]
        with u.autocast:
            values = u.policy(*collate(rows, examples, u.tokenizer.pad_token_id, u.device, u.layout))[0].double()
        values = iter(values.tolist())
        out += [[next(values) for _ in examples[i].completions] for i in chunk]
    return out


@torch.no_grad()
def _move_reference(u: TrainState, weight: float) -> None:
    """reference <- weight * policy + (1 - weight) * reference, parameter by parameter (the same architecture, the
    same order); every process holds the same weights after DDP's update, so every process moves alike."""
    torch._foreach_lerp_(list(u.reference.lm.parameters()), list(u.lm.parameters()), weight)


def _summed(values: list[float]) -> list[float]:
    """Each value summed over every process (an objective's step statistics: Objective.end_step)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _mismatched_logps(u: TrainState, batches: list[MicroBatch], prepared: Prepared, ref: RefLogps | None):
    """KTO's mismatched pairs of the whole step, every process's: (policy, reference) log-probs, no gradient (z0 is
    detached), or (None, None) for an objective without them. One forward per micro-batch's pairs, before any
    backward, so that every micro-batch's loss reads the same step-wide z0 (tests/test_invariances.py)."""
    if not u.objective.needs_mismatched_pairs:
        return None, None
    parts = []
    with torch.no_grad(), u.autocast:
        for mb in batches:
            logps = u.policy(*collate(mb.kl_rows, prepared.train, u.tokenizer.pad_token_id, u.device, u.layout))[0]
            parts.append(logps.double())
    rows = [row for mb in batches for row in mb.kl_rows]
    values = [torch.cat(parts)] + ([to_device(ref.tensor(rows), u.device)] if u.objective.needs_reference else [])
    if u.world > 1:  # every process holds as many pairs (equal shares of the step's examples)
        for i, mine in enumerate(values):
            gathered = [torch.empty_like(mine) for _ in range(u.world)]
            dist.all_gather(gathered, mine)
            values[i] = torch.cat(gathered)
    return values[0], values[1] if len(values) > 1 else None


class _Computed:
    """A micro-batch's reference log-probs computed in the step (a moving reference), read as the cache is."""

    def __init__(self, values: torch.Tensor):
        self.values = values

    def tensor(self, keys: list) -> torch.Tensor:
        assert len(keys) == len(self.values)  # the rows of the forward that computed them, in order
        return self.values


def _objective_batch(u: TrainState, mb: MicroBatch, logps, counts, ref, mismatched, more=()):
    """The PairedLogps/UnpairedLogps the objective needs, plus log-prob metrics; `mismatched`: the step's
    (policy, reference) log-probs of KTO's mismatched pairs; `more`: SequenceLogps' further outputs, those the
    objective declares it needs (square mass, tails), in that order."""
    objective, device = u.objective, u.device
    ref_values = to_device(ref.tensor(mb.rows), device) if objective.needs_reference else None
    if objective.data == "paired":
        half = len(mb.rows) // 2
        more = [m.double() for m in more]
        sq = more.pop(0) if objective.needs_square_mass else None
        tail = more.pop(0) if objective.needs_tails else None
        ref_tail = to_device(ref.tensor([tail_key(k) for k in mb.rows]), device) if objective.needs_tails else None
        halves = lambda t: (None, None) if t is None else (t[:half], t[half:])
        batch = PairedLogps(
            logps[:half], logps[half:], counts[:half], counts[half:], *halves(ref_values), *halves(sq),
            *halves(tail), *halves(ref_tail),
        )  # fmt: skip
        extra = {
            "logps/chosen": logps[:half].mean(),
            "logps/rejected": logps[half:].mean(),
            "logps_per_token/chosen": (logps[:half] / counts[:half]).mean(),
            "logps_per_token/rejected": (logps[half:] / counts[half:]).mean(),
        }
        if ref_values is not None:  # how far from the reference, a token: what prefbench.health reads
            extra["logratio_per_token/chosen"] = ((logps[:half] - ref_values[:half]) / counts[:half]).mean()
            extra["logratio_per_token/rejected"] = ((logps[half:] - ref_values[half:]) / counts[half:]).mean()
        return batch, {k: v.detach() for k, v in extra.items()}
    if objective.data == "grouped":
        advantage, old = to_device(torch.tensor(mb.scores, dtype=torch.float64), device).unbind(1)
        batch = GroupedLogps(policy=logps, old=old, tokens=counts, advantages=advantage)
        return batch, {"logps_per_token": (logps / counts).mean().detach()}
    desirable = to_device(torch.tensor(mb.labels), device)
    kl_policy, kl_ref = mismatched
    batch = UnpairedLogps(
        policy=logps, tokens=counts, desirable=desirable, ref=ref_values, kl_policy=kl_policy, kl_ref=kl_ref
    )
    extra = {}
    for name, mask, present in (
        ("desirable", desirable, any(mb.labels)),
        ("undesirable", ~desirable, not all(mb.labels)),
    ):
        if present:  # masked means by weights: a boolean index would wait for the GPU to learn its size
            mean = lambda x: (x * mask).sum().detach() / (mask.sum())  # noqa: B023 (used at once)
            extra[f"logps/{name}"] = mean(logps)
            extra[f"logps_per_token/{name}"] = mean(logps / counts)
            if ref_values is not None:
                extra[f"logratio_per_token/{name}"] = mean((logps - ref_values) / counts)
    return batch, extra


@contextlib.contextmanager
def _profiled(u: TrainState):
    """The bench's hook (bench/bench_gpu.py --profile): with PREFBENCH_PROFILE=DIR, steps 3-5 run under
    torch.profiler and DIR/profile-<label>-seed<k>.txt gets the table of where their time went (operators by self
    device time on a GPU, self CPU time elsewhere). Without it, a profiler that does nothing."""
    where = os.environ.get("PREFBENCH_PROFILE")
    if not where or u.rank != 0:
        yield SimpleNamespace(step=lambda: None)
        return
    from torch.profiler import ProfilerActivity, profile, schedule  # deferred: only a profiled bench run needs it

    gpu = u.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])

    def write(prof) -> None:
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if gpu else "self_cpu_time_total", row_limit=30
        )
        out = Path(where) / f"profile-{u.spec.label}-seed{u.seed}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)

    with profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3), on_trace_ready=write) as prof:
        yield prof


def _fault_injection(step: int) -> None:
    """The resume tests' hook, called after each step is logged and saved: PREFBENCH_FAULT_KILL_AT_STEP=N
    kills this process after step N with SIGKILL, a real, ungraceful kill."""
    if os.environ.get("PREFBENCH_FAULT_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- save


def save_periodic(u: TrainState, step: int) -> None:
    """checkpoint-<step>, with what restore reads; the older checkpoint goes once it is complete.
    Every process calls it (FSDP2 gathers the shards)."""
    weights, optim_state = _full_state(u.policy, u.optimizer, sharded=u.sharded)
    state = {
        "optimizer": optim_state or u.optimizer.state_dict(), "scheduler": u.scheduler.state_dict(),
        "objective": u.objective.state_dict(), "step": step, "rng": torch.get_rng_state(),
    }  # fmt: skip
    if u.reference is not None and u.objective.moving_reference:  # where the moving reference has got to
        state["moving_reference"] = u.reference.lm.state_dict()
    if u.rank == 0:
        _save_checkpoint(u.out / f"checkpoint-{step}", u.lm, u.tokenizer, state, weights)
        for old in u.out.glob("checkpoint-*"):
            if old.name != f"checkpoint-{step}":
                shutil.rmtree(old, ignore_errors=True)
    if u.world > 1:
        dist.barrier()


def save_snapshot(u: TrainState, step: int) -> None:
    """snapshots/step-<step>: the weights at this step as a plain checkpoint, kept (the curve stage evaluates it).
    Every process calls it (FSDP2 gathers the shards)."""
    weights, _ = _full_state(u.policy, sharded=u.sharded)
    if u.rank == 0:
        _save_checkpoint(u.out / "snapshots" / f"step-{step}", u.lm, u.tokenizer, None, weights)
    if u.world > 1:
        dist.barrier()


def _summary(u: TrainState, recipe: Recipe, resume: Path | None, train_seconds: float, tokens: int) -> dict:
    """summary.json: what was trained, the last metrics line, its health findings (printed here), and this process's
    loop timings."""
    records = [json.loads(line) for line in u.metrics_path.read_text().splitlines()] if u.rank == 0 else []
    findings = training_findings(records) if records else []
    for finding in findings:
        tqdm.write(f"prefbench: {UnitId(u.spec.label, u.seed)}: {finding['text']}", file=sys.stderr)
    return {
        "objective": u.spec.name,
        "label": u.spec.label,
        "objective_version": OBJECTIVES[u.spec.name].version,
        "hyperparameters": u.objective.hyperparameters(),
        "seed": u.seed,
        "steps": recipe.train_for(u.spec).steps,
        # the settings an objective may set for itself, as this unit trained with them (cards and reports read them)
        "train": {k: getattr(recipe.train_for(u.spec), k) for k in TrainSpec.PER_OBJECTIVE},
        "final": records[-1] if records else {},
        "health": findings,
        "train_seconds_this_process": train_seconds,
        "loop_tokens_per_s": tokens * u.world / train_seconds
        if train_seconds
        else None,  # reference pass excluded: see manifest timings
        "peak_memory_mb": peak_memory_mb(u.device),
        "world_size": u.world,
        "resumed_from": resume.name if resume else None,
        "online": online_costs(u.out),  # a semi-online unit's samples, reward calls and generation time
    }


def save_final(u: TrainState, recipe: Recipe, summary: dict) -> None:
    """final/, a plain Hugging Face checkpoint (LoRA merged in), then summary.json; the periodic
    checkpoints go. Every process calls it (FSDP2 gathers the shards)."""
    weights, _ = _full_state(u.policy, sharded=u.sharded)
    if u.rank == 0:
        final = causal_lm(u.lm.merge_and_unload()) if recipe.model.lora else u.lm
        _save_checkpoint(u.out / "final", final, u.tokenizer, None, weights)
        write_json(u.out / "summary.json", summary)  # its presence means this unit is done
        for old in u.out.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)


def _full_state(policy, optimizer=None, sharded: bool = False) -> tuple[dict | None, dict | None]:
    """Under FSDP2 every process holds a shard: gather full (model, optimizer) state dicts on CPU.
    A collective, so every rank calls it; only rank 0 gets the tensors. (None, None) when not sharded."""
    if not sharded:
        return None, None
    from torch.distributed.checkpoint.state_dict import (  # deferred: torch: a second to import; prefbench check and report do without
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = {k.removeprefix("lm."): v for k, v in get_model_state_dict(policy, options=options).items()}
    return model, (get_optimizer_state_dict(policy, optimizer, options=options) if optimizer is not None else None)


def _save_checkpoint(path: Path, lm, tokenizer, state: dict | None, weights: dict | None = None) -> None:
    with atomic(path, directory=True) as tmp:
        lm.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, tmp / "trainer_state.pt")
        (tmp / "COMPLETE").touch()  # a checkpoint without it is ignored on resume


# ---- small pieces


def _disable_dropout(lm: torch.nn.Module) -> None:
    """The reference log-probs are computed without dropout, so the policy must train without it
    too: otherwise policy != reference at step 0 (TRL does the same by default). LoRA's own dropout
    (`model.lora.dropout`) is the exception a recipe opts into."""
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # HF attention: passed to SDPA
            module.attention_dropout = 0.0


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
