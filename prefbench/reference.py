"""Reference log-probs: computed once per run, before any objective trains, and cached on disk per (model,
tokenized data, precision, layout), so every objective and seed reads the same values and a new objective pays
only for the rows it adds (KTO's mismatched pairs). Under torchrun each process computes a share."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from filelock import FileLock
from tqdm.auto import tqdm

from prefbench import kernels, models
from prefbench.data.batches import Key, collate, micro_batches, prompt_totals, schedule
from prefbench.data.prepare import Prepared
from prefbench.data.tokenize import Example
from prefbench.device import autocast_for, distribute, process_rank, ready
from prefbench.logprobs import SequenceLogps, planned_layout
from prefbench.objectives import build
from prefbench.recipe import ObjectiveSpec, Recipe, TrainSpec
from prefbench.results import atomic


def tail_key(key: Key) -> tuple:
    """The cache's key of a row's tail log-probs (LD-DPO: data.batches.tail_cut), beside its whole sum's."""
    return (*key, "tail")


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
        wanted = keys - self.values.keys()
        tails = any(len(k) == 4 for k in wanted)  # LD-DPO's tail sums: every row computes both then
        # a row whose whole sum is cached but not its tail is computed again (one forward gives both)
        missing = {k[:3] for k in wanted}
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
            model = distribute(model, lm, True, world, device)
            # every rank runs as many forwards (their all-gathers are collectives); the extra ones repeat a chunk
            count = torch.tensor(len(chunks), device=device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            chunks += [chunks[-1] if chunks else missing[:1]] * (int(count) - len(chunks))
        computed = []  # kept on the device until the end: reading each chunk back would stall the GPU
        with (
            torch.no_grad(),
            tqdm(total=len(mine), desc="reference log-probs", unit="seq", disable=process_rank() != 0) as bar,
        ):
            for chunk in chunks:
                with autocast:
                    sums, _, *tail = model(*collate(chunk, examples, pad_id, device, rows_layout, tails=tails))
                computed.append(torch.stack([sums, *tail], 1).double())
                bar.update(len(chunk))
        values = torch.cat(computed).tolist() if computed else []
        pieces = list(zip(mine, (v[0] for v in values)))  # zip drops the repeated chunks
        pieces += list(zip(map(tail_key, mine), (v[1] for v in values))) if tails else []
        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, pieces)
            pieces = [(tuple(k), v) for share in gathered for k, v in share]
        # a value once cached is never replaced: a row computed again for its tail (other neighbours in its forward)
        # differs by rounding, and units already trained on the cached value must read it again on resume
        self.values.update((k, v) for k, v in pieces if k not in self.values)
        del model, lm
        if process_rank() == 0:
            with FileLock(str(self.path) + ".lock"):  # concurrent units of one run share this file
                if self.path.exists():
                    self.values = {**self.values, **torch.load(self.path, weights_only=True)}
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


def reference_keys(recipe: Recipe, prepared: Prepared, objectives: list[ObjectiveSpec], seeds, world: int) -> set[Key]:
    """Every row whose reference log-prob training will read: each step's rows and, for KTO, the step's mismatched
    pairs (built from the whole step, so how a token budget cuts the step into micro-batches changes nothing)."""
    keys: set[Key] = set()
    lengths = [ex.length() for ex in prepared.train]
    for spec in objectives:
        objective = build(spec.name, **spec.hyperparameters)
        # a moving reference, or an online unit's sampled pairs: their reference is computed in training
        if not objective.needs_reference or objective.moving_reference or spec.online is not None:
            continue
        for seed in seeds:
            for step in schedule(
                lengths, recipe.train.batch_size, recipe.train_for(spec).steps, seed, recipe.train.bucket_batches
            ):
                for rank in range(world):
                    for mb in micro_batches(objective, prepared, step, recipe, rank, world):
                        keys.update(mb.rows)
                        keys.update(mb.kl_rows or ())
                        keys.update(map(tail_key, mb.rows) if objective.needs_tails else ())
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
        planned := planned_layout(t.share_prompts, t.padding_free, device, t.align_packed), "packed"
    )
    rows_layout += "-aligned" if planned == "aligned" else ""  # (keys of earlier caches kept)
    identity = [models.describe(recipe.model.name), weights, prepared.fingerprint, precision, device.type, rows_layout]
    if (
        kind := kernels.chosen(t.kernels, device)
    ) != "none":  # fused or compiled kernels round differently (keys of earlier caches kept)
        identity.append(kind)
    identity = json.dumps(identity, sort_keys=True, default=str)
    return models.cache_dir() / "reflogps" / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.pt"
