"""prefbench's trainer: one loop, read top to bottom.

    RefLogps        reference log-probs, computed once and cached on disk, shared by every objective
    train_one       one objective, one seed: set_up, restore, train_loop, save_final

The data trained on is prefbench.data.prepare (once per run); which examples a step sees, and the rows
and tensors they become, is prefbench.data.batches.

Distributed data parallelism comes from torchrun: each process takes a contiguous slice of every
step's examples, and losses are scaled so the averaged gradient equals the single-process one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from filelock import FileLock
from tqdm.auto import tqdm

from prefbench import kernels, models
from prefbench.data.batches import (
    Key,
    MicroBatch,
    collate,
    loss_count,
    micro_batches,
    prompt_totals,
    real_tokens,
    schedule,
    to_device,
)
from prefbench.data.prepare import Prepared
from prefbench.data.tokenize import Example
from prefbench.errors import TrainingError
from prefbench.logprobs import (
    SequenceLogps,
    attention_kernels,
    causal_lm,
    layout,
    planned_layout,
)
from prefbench.objectives import (
    OBJECTIVES,
    Objective,
    PairedLogps,
    UnpairedLogps,
    build,
)
from prefbench.recipe import ObjectiveSpec, Recipe, TrainSpec
from prefbench.results import (
    AppendLog,
    BusyError,
    atomic,
    exclusive,
    objective_dir,
    read_json,
    record_timing,
    run_dir,
    write_json,
)
from prefbench.tracking import Trackers

# ---- reference log-probs ------------------------------------------------------------------------


class RefLogps:
    """Reference log-probs per sequence key, cached on disk per (model, tokenized data).

    Every objective and seed of a run reads the same cache; a new objective pays only for keys it
    adds (KTO's mismatched pairs)."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[Key, float] = torch.load(path, weights_only=True) if path.exists() else {}

    def ensure(
        self,
        keys: set[Key],
        spec: str,
        examples: list[Example],
        pad_id: int,
        batch_rows: int,
        device,
        autocast,
        train: TrainSpec,
    ) -> tuple[float, int]:
        """Compute missing keys with the reference model, in the layout training uses (logprobs.layout of
        train.share_prompts and train.padding_free); returns (seconds spent, rows computed). Every process of a
        torchrun group calls it: each computes a contiguous share of the missing rows (whole prompts, so a prompt's
        rows keep their layout), the shares are gathered on every rank, and rank 0 writes the cache."""
        missing = keys - self.values.keys()
        totals = prompt_totals(missing, examples)  # a prompt's rows next to each other, prompts in length order
        missing = sorted(missing, key=lambda k: (totals[examples[k[0]].prompt], k))
        if not missing:
            return 0.0, 0
        start = time.perf_counter()
        mine = _share(missing, examples)
        lm, _ = models.load(spec)
        lm = lm.to(device).eval()
        rows_layout = ready(lm, train, device)
        model = SequenceLogps(lm)
        chunks = [mine[i : i + batch_rows] for i in range(0, len(mine), batch_rows)]
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world > 1 and train.fsdp:  # a model that only fits sharded: FSDP2 as in training, each rank on its share
            model = _distribute(model, lm, True, world, device)
            # every rank runs as many forwards (their all-gathers are collectives); the extra ones repeat a chunk
            count = torch.tensor(len(chunks), device=device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            chunks += [chunks[-1] if chunks else missing[:1]] * (int(count) - len(chunks))
        computed = []  # kept on the device until the end: reading each chunk back would stall the GPU
        with (
            torch.no_grad(),
            tqdm(total=len(mine), desc="reference log-probs", unit="seq", disable=_rank() != 0) as bar,
        ):
            for chunk in chunks:
                with autocast:
                    sums, _ = model(*collate(chunk, examples, pad_id, device, rows_layout))
                computed.append(sums.double())
                bar.update(len(chunk))
        pieces = list(zip(mine, torch.cat(computed).tolist() if computed else []))  # zip drops the repeated chunks
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pieces)
            pieces = [(tuple(k), v) for share in gathered for k, v in share]
        self.values.update(pieces)
        del model, lm
        if _rank() == 0:
            with FileLock(str(self.path) + ".lock"):  # concurrent units of one run share this file
                if self.path.exists():
                    self.values = {**torch.load(self.path, weights_only=True), **self.values}
                with atomic(self.path) as tmp:
                    torch.save(self.values, tmp)
        return time.perf_counter() - start, len(missing)

    def tensor(self, keys: list[Key]) -> torch.Tensor:
        return torch.tensor([self.values[k] for k in keys], dtype=torch.float64)


def _share(rows: list[Key], examples: list[Example]) -> list[Key]:
    """This process's contiguous share of `rows` (in order) under torchrun, cut only between prompts; all of them
    in a single process."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world == 1:
        return rows
    starts = [i for i in range(len(rows)) if i == 0 or examples[rows[i][0]].prompt != examples[rows[i - 1][0]].prompt]

    def cut(r: int) -> int:  # where rank r's share begins: at the start of prompt number len(starts) * r // world
        return starts[len(starts) * r // world] if r < world else len(rows)

    return rows[cut(dist.get_rank()) : cut(dist.get_rank() + 1)]


def ready(lm: torch.nn.Module, train: TrainSpec, device) -> str:
    """Set `lm` up for train's layout and kernels, in that order (packed rows switch its attention to flex, and
    compiled layers must see the attention they will run); returns the layout (logprobs.layout)."""
    rows_layout = layout(lm, train.share_prompts, train.padding_free, device)
    kernels.apply(lm, train.kernels, device)
    return rows_layout


def reference_keys(
    recipe: Recipe, prepared: Prepared, objectives: list[ObjectiveSpec], seeds, world: int, device="cpu"
) -> set[Key]:
    """Every row whose reference log-prob training will read. A token budget cuts a step by the tokens of the
    layout training runs in, and KTO's mismatched pairs depend on the cut: the keys of the planned layout and of
    plain rows (where the model's attention takes no custom mask) are both included."""
    t = recipe.train
    layouts = (
        {"rows", planned_layout(t.share_prompts, t.padding_free, device)} if t.max_tokens_per_forward else {"rows"}
    )
    keys: set[Key] = set()
    lengths = [ex.length() for ex in prepared.train]
    for spec in objectives:
        objective = build(spec.name, **spec.hyperparameters)
        if not objective.needs_reference:
            continue
        for seed in seeds:
            for step in schedule(
                lengths, recipe.train.batch_size, recipe.train.steps, seed, recipe.train.bucket_batches
            ):
                for rank in range(world):
                    for mb in (
                        mb
                        for rows_layout in layouts
                        for mb in micro_batches(objective, prepared, step, recipe, rank, world, rows_layout)
                    ):
                        keys.update(mb.rows)
                        keys.update(mb.kl_rows or ())
    return keys


def ref_cache_path(recipe: Recipe, prepared: Prepared, device: torch.device) -> Path:
    """Keyed by everything that changes reference log-probs: the model (config, and each weight
    file's name, size and mtime), the exact token ids, and the precision actually used."""
    path = models.resolve(recipe.model.name)
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.glob("*.safetensors"))
    precision = "bf16" if isinstance(autocast_for(recipe.train.dtype, device), torch.autocast) else "fp32"
    # the layout changes the values by float rounding only, but a cache holds one layout's: runs repeat to the bit
    t = recipe.train
    rows_layout = {"rows": "own-prompts", "shared": "shared-prompts"}.get(
        planned_layout(t.share_prompts, t.padding_free, device), "packed"
    )
    identity = [models.describe(recipe.model.name), weights, prepared.fingerprint, precision, device.type, rows_layout]
    if (
        kind := kernels.chosen(t.kernels, device)
    ) != "none":  # fused or compiled kernels round differently (keys of earlier caches kept)
        identity.append(kind)
    identity = json.dumps(identity, sort_keys=True, default=str)
    return models.cache_dir() / "reflogps" / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.pt"


# ---- distributed --------------------------------------------------------------------------------


def _rank() -> int:
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
        return _rank(), world, torch.device("cuda", local)
    return _rank(), world, torch.device("cpu")


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
class Unit:
    """One objective and one seed in this process: what set_up builds and the rest works on."""

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

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"


def train_one(recipe: Recipe, spec: ObjectiveSpec, seed: int, prepared: Prepared, ref: RefLogps | None) -> dict:
    """Train one objective with one seed. Resumes from the last checkpoint; a finished run returns its summary.
    Rank 0 holds the unit's lock, so a second `prefbench run` or `train` of the unit stops at once."""
    rank, world, device = init_distributed()
    transformers.utils.logging.disable_progress_bar()  # prefbench's own bars say what is happening
    out = objective_dir(recipe, spec.label, seed)
    with contextlib.ExitStack() as held:
        busy = [None]
        if rank == 0:
            try:
                held.enter_context(
                    exclusive(run_dir(recipe), f"train-{spec.label}-seed{seed}", f"training {spec.label}/seed{seed}")
                )
            except BusyError as err:
                busy = [str(err)]
        if world > 1:  # every rank stops, not only rank 0 (the others would wait in its collectives)
            dist.broadcast_object_list(busy, src=0)
        if busy[0]:
            raise BusyError(busy[0])
        if (out / "summary.json").exists():
            return read_json(out / "summary.json")
        t = recipe.train
        if t.batch_size % (t.micro_batch_size * world):
            raise TrainingError(
                f"train.batch_size={t.batch_size} must be a multiple of micro_batch_size x processes = {t.micro_batch_size} x {world}"
            )
        started = time.perf_counter()
        resume = latest_checkpoint(out)
        u = set_up(recipe, spec, seed, out, resume, rank, world, device)
        start_step = restore(u, resume)
        train_seconds, tokens = train_loop(u, recipe, prepared, ref, start_step)
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
) -> Unit:
    """The objective, the model (its weights from `resume` when given), the FSDP2/DDP wrap, AdamW and its schedule."""
    t = recipe.train
    sharded = world > 1 and t.fsdp  # train_units refused max_tokens_per_forward with FSDP before the reference pass
    objective = build(spec.name, **spec.hyperparameters)
    autocast = autocast_for(t.dtype, device)
    torch.manual_seed(seed)
    lm, tokenizer = _load_model(recipe, resume, device)
    rows_layout = ready(lm, t, device)
    policy = _distribute(SequenceLogps(lm), lm, sharded, world, device)
    params = [p for p in policy.parameters() if p.requires_grad]
    # on a GPU the fused AdamW (one kernel for every parameter's update; same arithmetic as the loop to rounding)
    optimizer = torch.optim.AdamW(
        params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay, fused=device.type == "cuda"
    )
    warmup = int(t.warmup_ratio * t.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.steps, warmup, t.schedule))
    return Unit(
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
    )


def _load_model(recipe: Recipe, resume: Path | None, device: torch.device):
    """(model, tokenizer), training on `device`: the checkpoint's weights when resuming (with LoRA, the
    base model and the checkpoint's adapters), else recipe.model's, with LoRA adapters added if asked."""
    lm, tokenizer = models.load(str(resume) if resume and not recipe.model.lora else recipe.model.name)
    if recipe.model.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

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


def _distribute(policy: SequenceLogps, lm, sharded: bool, world: int, device: torch.device) -> torch.nn.Module:
    """Under torchrun, FSDP2 (each decoder layer, then the rest) or DDP; in one process, the policy as is."""
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in causal_lm(lm).get_decoder().layers:
            fully_shard(layer)
        fully_shard(policy)
    elif world > 1:
        policy = torch.nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    return policy


# ---- restore


def restore(u: Unit, resume: Path | None) -> int:
    """The step to start from. When resuming: optimizer, schedule, objective state and RNG from the
    checkpoint (set_up loaded its weights). metrics.jsonl keeps only the lines up to that step."""
    start_step = 0
    if resume:
        # tensors and plain containers only: a run directory may come from anyone, and a pickle can run code
        state = torch.load(resume / "trainer_state.pt", weights_only=True)
        if u.sharded:
            from torch.distributed.checkpoint.state_dict import (
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


def train_loop(u: Unit, recipe: Recipe, prepared: Prepared, ref: RefLogps | None, start_step: int) -> tuple[float, int]:
    """Steps start_step+1 .. train.steps: one update and one metrics.jsonl line each, a checkpoint every
    train.save_every steps. Returns this process's seconds in steps and real tokens."""
    t = recipe.train
    plan = schedule([ex.length() for ex in prepared.train], t.batch_size, t.steps, u.seed, t.bucket_batches)
    train_seconds, tokens_total = 0.0, 0
    bar = tqdm(
        total=t.steps, initial=start_step, desc=f"{u.spec.label} seed {u.seed}", unit="step", disable=u.rank != 0
    )
    # rank 0 logs (and so opens the trackers); the others' Trackers stay closed
    with contextlib.closing(Trackers(recipe, f"{u.spec.label}/seed{u.seed}", u.out)) as trackers:
        for step in range(start_step, t.steps):
            step_start = time.perf_counter()
            batches = micro_batches(u.objective, prepared, plan[step], recipe, u.rank, u.world, u.layout)
            sums, tokens = _forward_backward(u, batches, prepared, ref)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                u.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
            )
            logged = _mean_over_batches(sums, u.world)
            if not (math.isfinite(logged["loss"]) and math.isfinite(float(grad_norm))):
                last = latest_checkpoint(u.out)
                raise TrainingError(
                    f"{u.spec.label} seed {u.seed}: loss {logged['loss']} / grad norm {float(grad_norm)} at step {step + 1}; "
                    f"stopped before the update. Last good checkpoint: {last or 'none (set train.save_every)'}"
                )
            lr = u.scheduler.get_last_lr()[0]  # the rate this update uses
            u.optimizer.step()
            u.scheduler.step()
            u.optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - step_start
            train_seconds += seconds
            tokens_total += tokens
            record = {
                "step": step + 1,
                **logged,
                "grad_norm": float(grad_norm),
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
            if t.save_every and done % t.save_every == 0 and done < t.steps:
                save_periodic(u, done)
            _fault_injection(done)
    bar.close()
    return train_seconds, tokens_total


def _forward_backward(
    u: Unit, batches: list[MicroBatch], prepared: Prepared, ref: RefLogps | None
) -> tuple[dict[str, tuple[float, int]], int]:
    """One step's forwards and backwards over this process's micro-batches, gradients accumulating.
    Returns each metric's (example-weighted sum, examples) and the real tokens seen."""
    pad_id = u.tokenizer.pad_token_id
    counts_per_batch = [loss_count(u.objective, mb) for mb in batches]
    sums: dict[str, tuple[float, int]] = {}
    tokens = 0
    for n, mb in enumerate(batches):
        fwd = collate(mb.rows, prepared.train, pad_id, u.device, u.layout)
        tokens += real_tokens(mb.rows, prepared.train)
        sync = nullcontext() if n == len(batches) - 1 or u.world == 1 or u.sharded else u.policy.no_sync()
        with sync:
            with u.autocast:
                logps, counts = u.policy(*fwd)
            logps, counts = logps.double(), counts.double()
            batch, extra = _objective_batch(u, mb, logps, counts, ref, prepared)
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
    return {k: (float(total), count) for k, (total, count) in sums.items()}, tokens


def _objective_batch(u: Unit, mb: MicroBatch, logps, counts, ref, prepared):
    """The PairedLogps/UnpairedLogps the objective needs, plus log-prob metrics."""
    objective, device = u.objective, u.device
    ref_values = to_device(ref.tensor(mb.rows), device) if objective.needs_reference else None
    if objective.data == "paired":
        half = len(mb.rows) // 2
        batch = PairedLogps(
            policy_chosen=logps[:half], policy_rejected=logps[half:], chosen_tokens=counts[:half], rejected_tokens=counts[half:],
            ref_chosen=None if ref_values is None else ref_values[:half], ref_rejected=None if ref_values is None else ref_values[half:],
        )  # fmt: skip
        extra = {
            "logps/chosen": logps[:half].mean(),
            "logps/rejected": logps[half:].mean(),
            "logps_per_token/chosen": (logps[:half] / counts[:half]).mean(),
            "logps_per_token/rejected": (logps[half:] / counts[half:]).mean(),
        }
        return batch, {k: v.detach() for k, v in extra.items()}
    desirable = to_device(torch.tensor(mb.labels), device)
    kl_policy = kl_ref = None
    if mb.kl_rows:
        with torch.no_grad(), u.autocast:  # z0 gets no gradient: one extra forward without a graph
            kl_policy, _ = u.policy(*collate(mb.kl_rows, prepared.train, u.tokenizer.pad_token_id, device, u.layout))
        kl_policy = kl_policy.double()
        kl_ref = to_device(ref.tensor(mb.kl_rows), device) if objective.needs_reference else None
    batch = UnpairedLogps(
        policy=logps, tokens=counts, desirable=desirable, ref=ref_values, kl_policy=kl_policy, kl_ref=kl_ref
    )
    extra = {}
    for name, mask, present in (
        ("desirable", desirable, any(mb.labels)),
        ("undesirable", ~desirable, not all(mb.labels)),
    ):
        if present:
            extra[f"logps/{name}"] = logps[mask].mean().detach()
            extra[f"logps_per_token/{name}"] = (logps[mask] / counts[mask]).mean().detach()
    return batch, extra


def _fault_injection(step: int) -> None:
    """The resume tests' hook, called after each step is logged and saved: PREFBENCH_FAULT_KILL_AT_STEP=N
    kills this process after step N with SIGKILL, a real, ungraceful kill."""
    if os.environ.get("PREFBENCH_FAULT_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- save


def save_periodic(u: Unit, step: int) -> None:
    """checkpoint-<step>, with what restore reads; the older checkpoint goes once it is complete.
    Every process calls it (FSDP2 gathers the shards)."""
    weights, optim_state = _full_state(u.policy, u.optimizer, sharded=u.sharded)
    state = {
        "optimizer": optim_state or u.optimizer.state_dict(), "scheduler": u.scheduler.state_dict(),
        "objective": u.objective.state_dict(), "step": step, "rng": torch.get_rng_state(),
    }  # fmt: skip
    if u.rank == 0:
        _save_checkpoint(u.out / f"checkpoint-{step}", u.lm, u.tokenizer, state, weights)
        for old in u.out.glob("checkpoint-*"):
            if old.name != f"checkpoint-{step}":
                shutil.rmtree(old, ignore_errors=True)
    if u.world > 1:
        dist.barrier()


def _summary(u: Unit, recipe: Recipe, resume: Path | None, train_seconds: float, tokens: int) -> dict:
    """summary.json: what was trained, the last metrics line, and this process's loop timings."""
    return {
        "objective": u.spec.name,
        "label": u.spec.label,
        "objective_version": OBJECTIVES[u.spec.name].version,
        "hyperparameters": u.objective.hyperparameters(),
        "seed": u.seed,
        "steps": recipe.train.steps,
        "final": json.loads(u.metrics_path.read_text().splitlines()[-1]) if u.rank == 0 else {},
        "train_seconds_this_process": train_seconds,
        "loop_tokens_per_s": tokens * u.world / train_seconds
        if train_seconds
        else None,  # reference pass excluded: see manifest timings
        "peak_memory_mb": peak_memory_mb(u.device),
        "world_size": u.world,
        "resumed_from": resume.name if resume else None,
    }


def save_final(u: Unit, recipe: Recipe, summary: dict) -> None:
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
    from torch.distributed.checkpoint.state_dict import (
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


def autocast_for(dtype: str, device: torch.device):
    """fp32 on CPU (no fast bf16 there); bf16 autocast on GPU, master weights and optimizer in fp32."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
