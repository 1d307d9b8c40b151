"""Semi-online training data (an objective entry's `online:`): pairs sampled from the policy as it trains, scored by
the recipe's reward, and `build_preferences`, the rule that turns scored samples into preference data (which
`prefbench generate-data`, prefbench/onpolicy.py, uses too).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from prefbench import models
from prefbench.data.batches import schedule
from prefbench.data.prepare import Prepared
from prefbench.data.tokenize import Example, fingerprint, tokenize_records
from prefbench.errors import TrainingError
from prefbench.eval.engines import (
    HFEngine,
    Sampling,
    VLLMEngine,
    resolve_engine,
    stop_ids,
    verify_reload,
)
from prefbench.eval.rewards import REWARDS, make_reward, score_all
from prefbench.objectives import OBJECTIVES, group_advantages
from prefbench.results import read_json, read_jsonl, write_json, write_jsonl

COLOCATED_GPU_SHARE = 0.3  # online.engine vllm on a GPU: the engine's share of its memory (weights and KV cache)


def build_preferences(
    prompts: list[str],
    texts: list[list[str]],
    rewards: np.ndarray,
    desirable_at_least: float,
    min_chosen_reward: float = 0.0,
):
    """(paired records, unpaired records, statistics). rewards: [prompts, samples].

    A pair whose best answer scores below min_chosen_reward is dropped: preferring a bad answer to a worse
    one teaches what the chosen answer does too (on the embedded task: instructions met off topic)."""
    paired, unpaired, ties, weak = [], [], 0, 0
    for prompt, samples, r in zip(prompts, texts, rewards):
        for text, value in zip(samples, r):
            unpaired.append(
                {
                    "prompt": prompt,
                    "completion": text,
                    "label": bool(value >= desirable_at_least),
                    "reward": float(value),
                }
            )
        best, worst = int(np.argmax(r)), int(np.argmin(r))  # first of equals: deterministic
        if r[best] == r[worst]:
            ties += 1
            continue
        if r[best] < min_chosen_reward:
            weak += 1
            continue
        paired.append(
            {
                "prompt": prompt,
                "chosen": samples[best],
                "rejected": samples[worst],
                "reward_chosen": float(r[best]),
                "reward_rejected": float(r[worst]),
            }
        )
    values, counts = np.unique(np.round(rewards, 6), return_counts=True)
    stats = {
        "prompts": len(prompts),
        "samples": int(rewards.size),
        "mean_reward": float(rewards.mean()) if rewards.size else float("nan"),
        "reward_histogram": {f"{v:g}": int(c) for v, c in zip(values, counts)},
        "pairs": len(paired),
        "prompts_dropped_as_ties": ties,
        "pairs_dropped_weak_chosen": weak,
        "min_chosen_reward": min_chosen_reward,
        "mean_margin": float(np.mean([p["reward_chosen"] - p["reward_rejected"] for p in paired])) if paired else 0.0,
        "unpaired": len(unpaired),
        "desirable": sum(u["label"] for u in unpaired),
        "desirable_share": float(np.mean([u["label"] for u in unpaired])) if unpaired else 0.0,
        "desirable_at_least": desirable_at_least,
    }
    return paired, unpaired, stats


class OnlineRounds:
    """Semi-online training data for one unit (ObjectiveSpec.online): round r covers steps r*every .. (r+1)*every - 1.
    At its first step the policy as it is samples `sampling.n` answers (seeded per round and prompt; the sampler is
    online.engine's, see _engine_at) to every prompt those steps would train on offline (the run's schedule, prompts
    only), the recipe's reward scores them, and build_preferences makes each prompt's pair; the round's steps then
    train on those pairs, scheduled as an offline run schedules its data. So every = train.steps is offline training
    on the starting policy's own samples (`prefbench generate-data` with the same prompts).

    A grouped objective (GRPO) keeps every answer instead of a pair: each prompt's group with its advantages
    (objectives.group_advantages) and the sampling policy's summed log-probs, which its ratio starts from.

    Each round's pairs (or groups) and costs are written to <unit>/online/round-<r>.jsonl and .json before training
    on them: a killed run resumes with the same samples, and nothing is generated twice."""

    def __init__(self, recipe, spec, seed: int, prepared, out: Path):
        self.recipe, self.online, self.seed, self.prepared = recipe, spec.online, seed, prepared
        self.dir = out / "online"
        t = recipe.train_for(spec)
        self.steps, self.batch_size, self.bucket = t.steps, t.batch_size, t.bucket_batches
        self.plan = schedule([ex.length() for ex in prepared.train], t.batch_size, t.steps, seed, t.bucket_batches)
        self.current: tuple | None = None  # (round, its Prepared, its steps' example indices)
        self.grouped = OBJECTIVES[spec.name].data == "grouped"  # GRPO: every answer, not a pair
        self._reward = None  # built at the first round that samples, once
        self._vllm = None  # online.engine vllm: started at the first round that samples, reloaded each round after
        self._probe = None  # the policy's probe log-probs at the last round the engine was reloaded for
        self.engine = resolve_engine(spec.online.engine)[0]
        # what decides a round's samples: a round file written under other settings is refused, not trained on
        self.settings = {
            "every": self.online.every, "sampling": dataclasses.asdict(self.online.sampling), "seed": seed,
            "engine": self.engine,
            "reward": recipe.eval.reward, "reward_model": recipe.eval.reward_model and recipe.eval.reward_model.model,
        }  # fmt: skip
        REWARDS[recipe.eval.reward].check_prompts(
            prepared.train_prompts, at=f"objectives ({spec.label}).online: eval.reward"
        )

    def step(self, lm, tokenizer, step: int, logps=None):
        """(the data, the example indices) of training step `step` (0-based). `logps(examples)`: each example's
        answers' summed log-probs under the policy now, as the trainer computes them (a grouped objective's ratio
        needs the sampling policy's)."""
        r = step // self.online.every
        if self.current is None or self.current[0] != r:
            self.current = (r, *self._round(lm, tokenizer, r, logps))
        return self.current[1], self.current[2][step - r * self.online.every]

    def _round(self, lm, tokenizer, r: int, logps=None):
        first, last = r * self.online.every, min((r + 1) * self.online.every, self.steps)
        path = self.dir / f"round-{r}.jsonl"
        if not path.exists():
            # each prompt sampled once, however often the round's steps hold it (an epoch's wrap)
            indices = list(dict.fromkeys(i for s in range(first, last) for i in self.plan[s]))
            self._generate(lm, tokenizer, r, indices, path, logps)
        stored = read_json(path.with_suffix(".json")).get("settings")
        stored = stored and {"engine": "hf", **stored}  # rounds written before online.engine: transformers sampled
        if stored != self.settings:
            raise TrainingError(
                f"{path}: sampled under other online settings ({stored}); this run's are {self.settings}: use another "
                "output_dir or name"
            )
        if self.grouped:
            records = read_jsonl(path)
            examples, kept = self._groups(records, tokenizer)
            scores = [list(zip(rec["advantages"], rec["old"])) for rec in records]
            scores = [[scores[g][w] for w in answers] for g, answers in kept]
        else:
            examples, _ = tokenize_records(read_jsonl(path), "paired", tokenizer, self.recipe.data)
            scores = []
        if not examples:
            raise TrainingError(
                f"online round {r}: no pair (every prompt's answers scored alike); sample more answers "
                "(online.sampling.n) or more diverse ones (online.sampling.temperature)"
            )
        # a round with fewer examples than a batch trains on them again (as an offline epoch repeats its data)
        repeat = -(-self.batch_size // len(examples))
        examples, scores = examples * repeat, scores * repeat
        data = Prepared(
            "grouped" if self.grouped else "paired", examples, [], {}, fingerprint(examples), [0] * len(examples),
            scores=scores,
        )  # fmt: skip
        return data, schedule([ex.length() for ex in examples], self.batch_size, last - first, self.seed, self.bucket)

    def _groups(self, records: list[dict], tokenizer) -> tuple[list, list[tuple[int, list[int]]]]:
        """A grouped round's records as examples (one per prompt, its answers that tokenize within the data's
        limits) and, per example, (its record, the answers kept)."""
        flat = [{"prompt": r["prompt"], "completion": c, "label": True} for r in records for c in r["completions"]]
        singles, report = tokenize_records(
            flat, "unpaired", tokenizer, dataclasses.replace(self.recipe.data, on_bad="drop")
        )
        dropped = {i for indices in report.dropped.values() for i in indices}
        it, examples, kept, at = iter(singles), [], [], 0
        for g, rec in enumerate(records):
            answers = [w for w in range(len(rec["completions"])) if at + w not in dropped]
            mine = [next(it) for _ in answers]
            at += len(rec["completions"])
            if answers:
                examples.append(Example(mine[0].prompt, tuple(e.completions[0] for e in mine)))
                kept.append((g, answers))
        return examples, kept

    def _engine_at(self, lm, tokenizer, r: int):
        """What samples round r: transformers' generate on the training model itself, or (online.engine: vllm) the
        unit's one vLLM engine with the policy's weights of now, saved to online/weights-<r>, reloaded in place,
        checked against the policy on the probe sequence (engines.verify_reload: a reload that did not take is an
        error, not samples from stale weights), then deleted. Returns (the engine, the probe's max |engine - policy|
        log-prob or None, the engine's start seconds or None)."""
        if self.engine == "hf":
            engine = HFEngine(device=str(next(lm.parameters()).device))
            engine.model = lm
            return engine, None, None
        start_seconds = None
        if self._vllm is None:
            self._vllm = VLLMEngine(
                models.resolve(self.recipe.model.name),
                max_model_len=self.recipe.data.max_length + self.online.sampling.max_tokens,
                # beside the training model on one GPU: its weights, KV cache and activations keep the rest
                gpu_memory_utilization=COLOCATED_GPU_SHARE if torch.cuda.is_available() else None,
            )
            start_seconds = self._vllm.start_seconds
        weights = self.dir / f"weights-{r}"
        try:
            lm.save_pretrained(weights, safe_serialization=True)
            self._vllm.load(weights)
            lm.eval()
            diff, self._probe = verify_reload(self._vllm, lm, tokenizer, previous=self._probe)
        finally:
            lm.train()
            shutil.rmtree(weights, ignore_errors=True)
        return self._vllm, diff, start_seconds

    def close(self) -> None:
        """Stop the unit's vLLM engine, if one was started."""
        if self._vllm is not None:
            self._vllm.close()
            self._vllm = None

    def _generate(self, lm, tokenizer, r: int, indices: list[int], path: Path, logps=None) -> None:
        sp = self.online.sampling
        started = time.perf_counter()
        engine, probe, start_seconds = self._engine_at(lm, tokenizer, r)
        sampling = Sampling(
            f"online-{r}", sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed + 1000 * self.seed + r
        )
        lm.eval()
        try:
            completions = engine.generate(
                [list(self.prepared.train[i].prompt) for i in indices],
                sampling,
                tokenizer,
                stop_ids(models.resolve(self.recipe.model.name), tokenizer),
                logprobs=False,  # a round reads the answers' text only
            )
        finally:
            lm.train()
        generated = time.perf_counter() - started
        prompts = [self.prepared.train_prompts[i] for i in indices]
        texts = [[c.text for c in cs] for cs in completions]
        if self._reward is None:
            self._reward = make_reward(self.recipe.eval.reward, self.recipe.eval.reward_model)
        rewards = score_all(self._reward, prompts, texts)
        if self.grouped:  # every answer, its advantage within its prompt's group, the sampler's log-prob of it
            advantages = group_advantages(torch.tensor(rewards, dtype=torch.float64)).tolist()
            rows = [{"prompt": p, "completions": t, "rewards": rw.tolist(), "advantages": a}
                    for p, t, rw, a in zip(prompts, texts, rewards, advantages)]  # fmt: skip
            examples, kept = self._groups(rows, tokenizer)
            old = logps(examples) if examples else []
            for row in rows:
                row["old"] = [None] * len(row["completions"])
            for (g, answers), values in zip(kept, old):
                for w, v in zip(answers, values):
                    rows[g]["old"][w] = v
            ties = sum(1 for rw in rewards if np.ptp(rw) == 0)
            paired, stats = rows, {"prompts_dropped_as_ties": 0, "mean_reward": float(rewards.mean()), "ties": ties}
        else:  # every prompt whose best answer beats its worst makes a pair: online DPO learns from relative quality
            paired, _, stats = build_preferences(prompts, texts, rewards, 0.5, min_chosen_reward=-np.inf)
        costs = {
            "round": r, "prompts": len(prompts), "samples": int(rewards.size), "reward_calls": int(rewards.size),
            "generated_tokens": sum(len(c.token_ids) for cs in completions for c in cs), "pairs": len(paired),
            "prompts_dropped_as_ties": stats["prompts_dropped_as_ties"], "mean_reward": stats["mean_reward"],
            "generate_seconds": round(generated, 3), "seconds": round(time.perf_counter() - started, 3),
            "probe_max_diff": probe, "engine_start_seconds": start_seconds,
            "settings": self.settings,
        }  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path.with_suffix(".json"), costs)
        write_jsonl(path, paired)  # last: its presence means the round is complete
