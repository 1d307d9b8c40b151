"""On-policy preference data: sample K completions per prompt from a model, score them, and build
paired data (best vs worst; prompts whose samples all score the same are dropped) and unpaired data
(every sample, desirable when its reward is at least a threshold), with statistics of what was built.

`prefbench generate-data RECIPE` runs it; recipes/embedded_data.yaml regenerates the dataset that
ships in prefbench/data/embedded/ (SmolLM2-135M-Instruct on the embedded task's train prompts).
Generation goes through the generation cache, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from prefbench.data.load import EMBEDDED_DATA  # noqa: F401  (where the shipped dataset lives)
from prefbench.recipe import DataGenSpec, DataSpec, PromptSpec
from prefbench.results import write_jsonl


def load_prompt_records(spec: PromptSpec, data: DataSpec | None = None, need_chosen: bool = False) -> list[dict]:
    """The first spec.n prompts, as {"prompt"} or {"prompt", "chosen"}: from a JSONL file (each line a text
    "prompt", optionally the data's text "chosen" answer), the held-out split of `data` (source: data; with
    `need_chosen`, only prompts that have a chosen answer), or the embedded task's split."""
    if spec.file:
        return _file_prompt_records(spec)
    if spec.source == "data":
        return held_out_prompt_records(data, spec.n, need_chosen)
    from prefbench.eval.rewards import make_prompts

    return [{"prompt": p.prompt} for p in make_prompts(spec.n, spec.split, spec.seed)]


def held_out_prompt_records(data: DataSpec, n: int, need_chosen: bool = False) -> list[dict]:
    """The first n distinct prompts of the data's held-out split (the one the trainer makes, by prompt), each
    with the data's chosen answer: a pair's chosen completion, or (unpaired) the first desirable completion,
    when the prompt has one; with `need_chosen`, prompts without one (unpaired: only undesirable completions)
    are left out. Prompts keep their form (text, or chat messages)."""
    from prefbench.data.load import prompt_key
    from prefbench.data.prepare import split_records
    from prefbench.data.tokenize import _text

    by_prompt: dict[str, dict] = {}
    for r in split_records(data)[3]:
        record = by_prompt.setdefault(prompt_key(r["prompt"]), {"prompt": r["prompt"]})
        answer = r.get("chosen", r.get("completion") if r.get("label") else None)
        if answer is not None and "chosen" not in record:
            record["chosen"] = _text(answer)
    return [r for r in by_prompt.values() if "chosen" in r or not need_chosen][:n]


def _file_prompt_records(spec: PromptSpec) -> list[dict]:
    records = []
    for i, line in enumerate(Path(spec.file).expanduser().read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{spec.file}: line {i + 1} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise ValueError(f"{spec.file}: line {i + 1} has no text 'prompt'")
        if "chosen" in record and not isinstance(record["chosen"], str):
            raise ValueError(f"{spec.file}: line {i + 1}: 'chosen' must be text")
        records.append({k: record[k] for k in ("prompt", "chosen") if k in record})
        if len(records) == spec.n:
            break
    return records


def prompt_text(prompt) -> str:
    """A prompt as one text, for readers that take text (the judge, exported answers): a text prompt as is,
    a single user message as its content, a conversation as "role: content" paragraphs."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def load_prompts(spec: PromptSpec, data: DataSpec | None = None) -> list:
    return [r["prompt"] for r in load_prompt_records(spec, data)]


def build_preferences(prompts: list[str], texts: list[list[str]], rewards: np.ndarray, desirable_at_least: float,
                      min_chosen_reward: float = 0.0):
    """(paired records, unpaired records, statistics). rewards: [prompts, samples].

    A pair whose best answer scores below min_chosen_reward is dropped: preferring a bad answer to a worse
    one teaches what the chosen answer does too (on the embedded task: instructions met off topic)."""
    paired, unpaired, ties, weak = [], [], 0, 0
    for prompt, samples, r in zip(prompts, texts, rewards):
        for text, value in zip(samples, r):
            unpaired.append({"prompt": prompt, "completion": text, "label": bool(value >= desirable_at_least), "reward": float(value)})
        best, worst = int(np.argmax(r)), int(np.argmin(r))  # first of equals: deterministic
        if r[best] == r[worst]:
            ties += 1
            continue
        if r[best] < min_chosen_reward:
            weak += 1
            continue
        paired.append({"prompt": prompt, "chosen": samples[best], "rejected": samples[worst],
                       "reward_chosen": float(r[best]), "reward_rejected": float(r[worst])})
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
    from prefbench import models
    from prefbench.eval.generate import Sampling, generate
    from prefbench.eval.rewards import REWARDS, RewardModel, make_reward, score_all
    from prefbench.results import versions, write_json

    g = spec.generation
    prompts = load_prompts(g.prompts)
    REWARDS[spec.reward].check_prompts(prompts, at="reward")
    path = models.resolve(spec.model)
    sp = g.sampling
    sampling = Sampling("sampled", sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.seed)
    started = time.perf_counter()
    results, gen_stats = generate([path], prompts, [sampling], engine=g.engine, max_model_len=g.max_model_len,
                                  vllm_options={k: v for k, v in (("tensor_parallel_size", g.tensor_parallel_size),
                                                                  ("gpu_memory_utilization", g.gpu_memory_utilization)) if v})
    completions = results[str(path)]["sampled"]
    rewards = score_all(make_reward(spec.reward, spec.reward_model), prompts, [[c.text for c in cs] for cs in completions])
    paired, unpaired, stats = build_preferences(prompts, [[c.text for c in cs] for cs in completions], rewards, spec.desirable_at_least,
                                                spec.min_chosen_reward)
    stats |= {
        "truncated_share": float(np.mean([c.finish_reason == "length" for cs in completions for c in cs])),
        "mean_completion_tokens": float(np.mean([len(c.token_ids) for cs in completions for c in cs])),
        "model": models.describe(spec.model) | {"path": None},  # machine-specific paths stay out of shipped files
        "reward": {"name": spec.reward, "version": REWARDS[spec.reward].version}
                  | ({"checkpoint": RewardModel.identity(spec.reward_model)["checkpoint"]} if spec.reward_model else {}),  # no local paths
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
