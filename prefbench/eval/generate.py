"""Generation: every checkpoint sampled the same way, with vLLM (transformers `generate` as the fallback).

Sampling is always explicit (`Sampling`): a checkpoint's own generation_config.json is never read.
Prompts go through the chat template once and reach the engine as token ids, so both engines and
every checkpoint see identical inputs. Each prompt's sampled pass has its own seed, derived from the
sampling seed and the prompt's tokens: a prompt's samples do not depend on which other prompts share
its batch, on the order checkpoints are evaluated in, or on whether part of the work came from cache.

Many checkpoints of one base pay one vLLM start: weights are reloaded in place, and every load
(including the first) is verified against transformers' log-probs on a probe sequence before
anything is generated. A checkpoint whose config differs from the running engine's gets a fresh
engine.

Each completion keeps the model's own log-probs from the engine that sampled it (before temperature and top_p,
so the policy's): of each token it chose, and of its TOP_LOGPROBS most likely tokens at each position. KL and
entropy are computed from them (metrics.py): no checkpoint is run again after it generated.

Generations are cached per (checkpoint weights, engine, sampling), one entry per prompt, so a re-run
or a new checkpoint or a longer prompt list pays only for what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prefbench import models
from prefbench.eval.engines import (
    Completion,
    GenerationError,
    Sampling,
    open_engine,
    prompt_ids,
    resolve_engine,
    stop_ids,
    verify_load,
)
from prefbench.models import checkpoint_id
from prefbench.results import AppendLog

log = logging.getLogger("prefbench.generate")

# Bump when what a cached completion holds changes: older cache files are not read.
CACHE_FORMAT = 2


class GenerationCache:
    """JSONL files under cache_dir()/generations, one per (checkpoint, engine, sampling); one line per prompt.

    Lines are appended and fsynced batch by batch (results.AppendLog), so a killed run keeps what it
    generated; a line torn by the kill is skipped on read.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else models.cache_dir() / "generations"

    def path(self, ckpt: str, engine: str, sampling: Sampling) -> Path:
        key = json.dumps([ckpt, engine, sampling.key(), CACHE_FORMAT], sort_keys=True)
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.jsonl"

    @staticmethod
    def prompt_key(ids: list[int]) -> str:
        return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:24]

    def read(self, path: Path) -> dict[str, list[Completion]]:
        return {
            entry["prompt"]: [
                Completion(
                    c["text"],
                    tuple(c["token_ids"]),
                    c["finish_reason"],
                    tuple(c["logprobs"]),
                    tuple(map(tuple, c["top_ids"])),
                    tuple(map(tuple, c["top_logprobs"])),
                )
                for c in entry["completions"]
            ]
            for entry in AppendLog(path).read()
        }

    def append(self, path: Path, entries: dict[str, list[Completion]]) -> None:
        AppendLog(path).append(
            [{"prompt": key, "completions": [dataclasses.asdict(c) for c in comps]} for key, comps in entries.items()]
        )


@dataclass
class GenerationStats:
    generated: int = 0  # prompt x sampling entries produced now
    cached: int = 0  # entries read from cache
    new_tokens: int = 0
    generate_seconds: float = 0.0
    engine_starts: int = 0
    engine_start_seconds: float = 0.0
    reloads: int = 0
    probe_max_diff: float = 0.0
    engine: str = ""
    fallback_reason: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.generate_seconds if self.generate_seconds else 0.0


def generate(
    checkpoints: list[str | Path],
    prompts: list[str],
    samplings: list[Sampling],
    *,
    engine: str = "auto",
    chat_template: bool = True,
    cache: GenerationCache | None = None,
    batch_prompts: int = 64,
    max_model_len: int = 1024,
    vllm_options: dict | None = None,
) -> tuple[dict[str, dict[str, list[list[Completion]]]], GenerationStats]:
    """{checkpoint: {sampling name: [per prompt: [completions]]}} and what it cost.

    Checkpoints are directories of one tokenizer (the first one's is used). The engine starts only if
    something is missing from the cache, once, and is reused while the architecture stays the same.
    """
    paths = _checkpoint_paths(checkpoints)
    kind, reason = resolve_engine(engine)
    vllm_options = vllm_options or {}
    stats = GenerationStats(engine=_engine_name(kind, vllm_options), fallback_reason=reason)
    run = _Generation(paths[0], prompts, chat_template, cache or GenerationCache(), stats, batch_prompts)
    engines = _Engines(kind, run.tokenizer, stats, {"max_model_len": max_model_len, **vllm_options})
    results: dict[str, dict[str, list[list[Completion]]]] = {}
    try:
        for path in tqdm(paths, desc="generate", unit="checkpoint", disable=len(paths) < 2):
            ckpt = checkpoint_id(path)
            results[str(path)] = {sampling.name: run.sampling(engines, path, ckpt, sampling) for sampling in samplings}
    finally:
        engines.close()
    return results, stats


def _checkpoint_paths(checkpoints: list[str | Path]) -> list[Path]:
    paths = [Path(c) for c in checkpoints]
    for p in paths:
        if not (p / "config.json").is_file():
            raise GenerationError(f"{p}: not a Hugging Face checkpoint directory (no config.json)")
    return paths


class _Engines:
    """The engine of one generate call: started for the first checkpoint with work missing, restarted only
    for a checkpoint vLLM cannot reload in place, and every loaded checkpoint verified before it generates."""

    def __init__(self, kind: str, tokenizer, stats: GenerationStats, options: dict):
        self.kind, self.tokenizer, self.stats, self.options = kind, tokenizer, stats, options
        self.running, self.verified = None, None

    def ready(self, path: Path):
        """The engine with path's weights loaded and checked."""
        if self.running is None or (self.running.kind == "vllm" and not self.running.can_load(path)):
            self._start(path)
        if self.running.path != path:
            self.stats.reloads += self.running.path is not None
            self.running.load(path)
        if self.verified != path:
            self.stats.probe_max_diff = max(self.stats.probe_max_diff, verify_load(self.running, path, self.tokenizer))
            self.verified = path
        return self.running

    def _start(self, path: Path) -> None:
        self.close()
        started = time.perf_counter()
        self.running = open_engine(self.kind, path, **self.options)
        self.stats.engine_starts += 1
        self.stats.engine_start_seconds += time.perf_counter() - started
        self.verified = None

    def close(self) -> None:
        if self.running is not None:
            self.running.close()
            self.running = None


class _Generation:
    """The prompts of one generate call as every engine sees them (token ids, stop tokens), and their cache."""

    def __init__(
        self,
        first: Path,
        prompts: list[str],
        chat_template: bool,
        cache: GenerationCache,
        stats: GenerationStats,
        batch_prompts: int,
    ):
        from transformers import (
            AutoTokenizer,
        )  # deferred: transformers: seconds to import; prefbench check does without

        self.tokenizer = AutoTokenizer.from_pretrained(first)
        self.ids = prompt_ids(self.tokenizer, prompts, chat_template)
        self.keys = [cache.prompt_key(i) for i in self.ids]
        self.stops = stop_ids(first, self.tokenizer)
        self.cache, self.stats, self.batch_prompts = cache, stats, batch_prompts

    def sampling(self, engines: _Engines, path: Path, ckpt: str, sampling: Sampling) -> list[list[Completion]]:
        """One checkpoint's completions of every prompt: from the cache, the missing ones generated now."""
        file = self.cache.path(ckpt, self.stats.engine, sampling)  # the engine as reported is the key's engine part
        have = self.cache.read(file)
        missing = [j for j, k in enumerate(self.keys) if k not in have]
        self.stats.cached += len(self.keys) - len(missing)
        if missing:
            have.update(self._generate(engines.ready(path), path, sampling, missing, file))
        return [have[k] for k in self.keys]

    def _generate(
        self, engine, path: Path, sampling: Sampling, missing: list[int], file: Path
    ) -> dict[str, list[Completion]]:
        """The missing prompts' completions, batch by batch, each batch appended to the cache as it is done."""
        new: dict[str, list[Completion]] = {}
        bar = tqdm(total=len(missing), desc=f"{path.name} {sampling.name}", unit="prompt", leave=False)
        for start in range(0, len(missing), self.batch_prompts):
            chunk = missing[start : start + self.batch_prompts]
            t0 = time.perf_counter()
            out = engine.generate([self.ids[j] for j in chunk], sampling, self.tokenizer, self.stops)
            self.stats.generate_seconds += time.perf_counter() - t0
            self.stats.new_tokens += sum(len(c.token_ids) for comps in out for c in comps)
            batch = {self.keys[j]: comps for j, comps in zip(chunk, out)}
            self.cache.append(file, batch)
            new.update(batch)
            self.stats.generated += len(chunk)
            bar.update(len(chunk))
        bar.close()
        return new


def _engine_name(kind: str, vllm_options: dict) -> str:
    """The engine part of a cache key: kind ("vllm" or "hf", resolved), version, device and dtype, known
    before any engine starts."""
    gpu = torch.cuda.is_available()
    if kind == "vllm":
        import vllm  # deferred: vLLM: seconds to import, and absent where not installed

        dtype = vllm_options.get("dtype") or ("bfloat16" if gpu else "float32")
        return f"vllm-{vllm.__version__}-{'gpu' if gpu else 'cpu'}-{dtype}"
    import transformers  # deferred: transformers: seconds to import; prefbench check does without

    return f"hf-{transformers.__version__}-{'cuda-bfloat16' if gpu else 'cpu-float32'}"
