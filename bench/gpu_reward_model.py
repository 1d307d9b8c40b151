"""The reward-model scorer (prefbench.eval.rewards.RewardModel) on a GPU: bf16 there against fp32 on the CPU,
batch-size invariance, and scoring throughput of a 1B-parameter reward model. Run on a GPU machine:

    PYTHONPATH=. python3 bench/gpu_reward_model.py          (--dry: tiny sizes on the CPU, to check the script)

No hub access is needed: the models are random-init Llama sequence classifiers built here with the tiny
models' byte-level tokenizer (scores are then meaningless, but the scorer's arithmetic and speed are not).
Prints one JSON object.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DRY = "--dry" in sys.argv  # a seconds-long run of the same code on the CPU, to check the script before a GPU call
DRY_SHAPE = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)  # both models


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(out: Path, **shape) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from prefbench import models

    tokenizer = AutoTokenizer.from_pretrained(models.resolve("tiny:small"))
    config = LlamaConfig(
        **shape,
        vocab_size=len(tokenizer),
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def texts(n: int, words: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = "the a ocean river quick answer model reward short long clear bright cold music tea".split()
    prompts = [f"Write about {rng.choice(vocab)}." for _ in range(n)]
    answers = [" ".join(rng.choice(vocab) for _ in range(rng.randint(words // 4, words))) for _ in range(n)]
    return prompts, answers


def main() -> dict:
    from prefbench.eval.rewards import RewardModel
    from prefbench.recipe import RewardModelSpec

    assert torch.cuda.is_available() or DRY, "needs a GPU"
    out = {"device": torch.cuda.get_device_name(0) if not DRY else "cpu (dry run)", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        small = build(
            Path(tmp) / "small",
            **(
                DRY_SHAPE
                if DRY
                else dict(
                    hidden_size=256,
                    num_hidden_layers=4,
                    num_attention_heads=4,
                    num_key_value_heads=4,
                    intermediate_size=1024,
                )
            ),
        )
        prompts, answers = texts(16 if DRY else 64, 60)
        gpu = RewardModel(RewardModelSpec(model=str(small), batch_size=16))
        dtype = str(next(gpu.model.parameters()).dtype)
        gpu_scores = gpu.score(prompts, answers)
        one_by_one = RewardModel(RewardModelSpec(model=str(small), batch_size=1)).score(prompts, answers)
        gpu.model.float().to("cpu")  # the same scorer in fp32 on the CPU
        gpu.device = "cpu"
        cpu_scores = gpu.score(prompts, answers)
        out["small"] = {
            "dtype_on_gpu": dtype,
            "bf16_gpu_vs_fp32_cpu_max_abs": float(np.abs(gpu_scores - cpu_scores).max()),
            "score_std_fp32": float(cpu_scores.std()),
            "pearson_bf16_vs_fp32": float(np.corrcoef(gpu_scores, cpu_scores)[0, 1]),
            "batch16_vs_batch1_max_abs_bf16": float(np.abs(gpu_scores - one_by_one).max()),
        }
        big = build(
            Path(tmp) / "big",
            **(
                DRY_SHAPE
                if DRY
                else dict(
                    hidden_size=2048,
                    num_hidden_layers=16,
                    num_attention_heads=16,
                    num_key_value_heads=8,
                    intermediate_size=8192,
                )
            ),
        )
        rm = RewardModel(RewardModelSpec(model=str(big), batch_size=32, max_length=1024))
        params = sum(p.numel() for p in rm.model.parameters())
        prompts, answers = texts(16 if DRY else 1024, 300, seed=1)
        rm.score(prompts[:64], answers[:64])  # warm-up
        sync()
        start = time.perf_counter()
        scores = rm.score(prompts, answers)
        sync()
        seconds = time.perf_counter() - start
        tokens = sum(
            len(rm.tokenizer(rm.text(p, a), add_special_tokens=False)["input_ids"]) for p, a in zip(prompts, answers)
        )
        out["big"] = {
            "parameters": params,
            "answers": len(answers),
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "answers_per_s": round(len(answers) / seconds, 1),
            "tokens_per_s": round(tokens / seconds),
            "finite": bool(np.isfinite(scores).all()),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if not DRY else None,
        }
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["small"]["pearson_bf16_vs_fp32"] > 0.99 and result["big"]["finite"] else 1)
