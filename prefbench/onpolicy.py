"""On-policy preference data: sample K completions per prompt from a model, score them, and build
paired data (best vs worst; prompts whose samples all score the same are dropped) and unpaired data
(every sample, desirable when its reward is at least a threshold), with statistics of what was built.

`prefbench generate-data RECIPE` runs it; recipes/embedded_data.yaml regenerates the dataset that
ships in prefbench/data/embedded/ (prefbench.data.load.EMBEDDED_DATA; SmolLM2-135M-Instruct on the embedded task's train prompts).
Generation goes through the generation cache, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from prefbench import models
from prefbench.eval.engines import Sampling
from prefbench.eval.generate import generate
from prefbench.eval.prompts import load_prompts
from prefbench.eval.rewards import REWARDS, RewardModel, make_reward, score_all
from prefbench.recipe import DataGenSpec
from prefbench.results import versions, write_json, write_jsonl


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


def generate_data(spec: DataGenSpec) -> dict:
    """Sample, score, build, write `spec.out`/{paired,unpaired}.jsonl and stats.json; returns the stats."""
    g = spec.generation
    prompts = load_prompts(g.prompts)
    REWARDS[spec.reward].check_prompts(prompts, at="reward")
    path = models.resolve(spec.model)
    sp = g.sampling
    sampling = Sampling("sampled", sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed)
    started = time.perf_counter()
    results, gen_stats = generate(
        [path],
        prompts,
        [sampling],
        engine=g.engine,
        max_model_len=g.max_model_len,
        vllm_options={
            k: v
            for k, v in (
                ("tensor_parallel_size", g.tensor_parallel_size),
                ("gpu_memory_utilization", g.gpu_memory_utilization),
            )
            if v
        },
    )
    completions = results[str(path)]["sampled"]
    rewards = score_all(
        make_reward(spec.reward, spec.reward_model), prompts, [[c.text for c in cs] for cs in completions]
    )
    paired, unpaired, stats = build_preferences(
        prompts, [[c.text for c in cs] for cs in completions], rewards, spec.desirable_at_least, spec.min_chosen_reward
    )
    stats |= {
        "truncated_share": float(np.mean([c.finish_reason == "length" for cs in completions for c in cs])),
        "mean_completion_tokens": float(np.mean([len(c.token_ids) for cs in completions for c in cs])),
        "model": models.describe(spec.model) | {"path": None},  # machine-specific paths stay out of shipped files
        "reward": {"name": spec.reward, "version": REWARDS[spec.reward].version}
        | (
            {"checkpoint": RewardModel.identity(spec.reward_model)["checkpoint"]} if spec.reward_model else {}
        ),  # no local paths
        "recipe": json.loads(json.dumps(spec, default=lambda o: o.__dict__)),
        "engine": gen_stats.engine,
        "fallback_reason": gen_stats.fallback_reason,
        "seconds": round(time.perf_counter() - started, 1),
        "prompts_from_generation_cache": gen_stats.cached,  # their samples were generated by an earlier run
        "generate_tokens_per_second": round(gen_stats.tokens_per_second, 1),
        "versions": versions(),
    }
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "paired.jsonl", paired)
    write_jsonl(out / "unpaired.jsonl", unpaired)
    write_json(out / "stats.json", stats)
    return stats
