"""The whole pipeline on one GPU, as a user runs it: `prefbench run` of a recipe on a random-init model with
SmolLM2-360M's shapes and SmolLM2's real tokenizer, bf16, DPO, KTO and SimPO (then a LoRA DPO recipe): prepare,
train, generation with rewards and KL, held-out preferences, a reward-model reward, lm-eval's hf backend on the
offline pack, the report; then the same recipe through `prefbench launch --executor local` on the one GPU. Every
stage's output is asserted; per-phase times and peak memory go to one JSON with the device, commit and date.

    PYTHONPATH=. python3 bench/gpu_e2e.py --tokenizer .gpu/tokenizer --out "$OUT"   (on the device: bench/gpu_e2e.sh)
    PYTHONPATH=. python3 bench/gpu_e2e.py --dry --out /tmp/e2e                       (tiny shapes on the CPU, minutes)
    PYTHONPATH=. python3 bench/gpu_e2e.py --dry --check --out /tmp/e2e               (the recipes checked only, seconds)

No hub access: the models are built here from a configuration (random weights: rewards and accuracies are noise,
the machinery, times and memory are not). vLLM's CUDA wheel cannot travel to the device, so generation there uses
the transformers engine; vLLM on a GPU stays untested.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SHAPE_360M = dict(
    hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560,
    tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
)  # fmt: skip
DRY_SHAPE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128
)
REWARD_SHAPE = dict(
    hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512
)


def build(out: Path, tokenizer_dir: Path, shape: dict, reward: bool = False) -> Path:
    """A random-init Llama (a sequence classifier for the reward model) saved as a plain checkpoint with the
    tokenizer beside it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(**shape, vocab_size=len(tokenizer), pad_token_id=pad, **ids, num_labels=1)
    torch.manual_seed(0)
    kind = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    kind.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def recipe(name: str, root: Path, policy: Path, reward_model: Path, dry: bool, lora: bool = False) -> dict:
    return {
        "name": name,
        "output_dir": str(root / "runs"),
        "report_dir": str(root / "reports"),
        "model": {"name": str(policy), **({"lora": {"r": 16, "alpha": 32}} if lora else {})},
        "data": {"source": "embedded:paired", "eval_fraction": 0.1, "max_length": 256, "max_prompt_length": 128},
        "objectives": [{"name": "dpo"}] if lora else [{"name": "dpo"}, {"name": "kto"}, {"name": "simpo"}],
        "train": {"steps": 3 if dry else 16, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-5, "dtype": "auto"},
        "seeds": [0],
        "eval": {
            "reward": "reward_model",
            "reward_model": {"model": str(reward_model)},
            "generation": {
                "engine": "hf",
                "prompts": {"split": "heldout", "n": 8 if dry else 64},
                "sampling": {"n": 2, "temperature": 1.0, "max_tokens": 16 if dry else 128},
                "max_model_len": 512,
            },
            "benchmarks": {
                "backend": "hf",
                "tasks": [{"task": "prefbench_mc", "num_fewshot": 0, "limit": 10 if dry else 100}],
            },
        },
    }


def cli(*args: str, env: dict | None = None) -> float:
    """One prefbench command, its seconds; its output goes to the log; a failure stops the script."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "prefbench.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    LOG.write(f"$ prefbench {' '.join(args)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n")
    LOG.flush()
    if done.returncode != 0:
        raise SystemExit(f"prefbench {args[0]} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def check_run(run: Path, units: list[str], report: Path) -> dict:
    """Every stage's output for every unit; each unit's phases (timings.jsonl) and its training peak."""
    out = {}
    for unit in ["reference", *units]:
        d = run / unit
        need = ["eval_generation.json", "eval_preference.json", "benchmarks/prefbench_mc.0shot.json"]
        need += [] if unit == "reference" else ["summary.json", "final/COMPLETE", "benchmarks/vs_reference.json"]
        missing = [f for f in need if not (d / f).is_file()]
        assert not missing, f"{d}: missing {missing}"
        generation = json.loads((d / "eval_generation.json").read_text())
        assert generation["sampled"]["reward"]["mean"] is not None
        phases = (
            [json.loads(line) for line in (d / "timings.jsonl").read_text().splitlines()]
            if (d / "timings.jsonl").is_file()
            else []
        )
        summary = json.loads((d / "summary.json").read_text()) if unit != "reference" else {}
        out[unit] = {
            "phases": {p["stage"]: p["seconds"] for p in phases},
            "peak_memory_mb": summary.get("peak_memory_mb"),
            "kl": (generation.get("kl") or {}).get("mean"),
        }
    assert (run / "eval_objectives.json").is_file() and (report / "report.md").is_file()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dry", action="store_true", help="tiny shapes on the CPU, to check the script")
    p.add_argument("--check", action="store_true", help="build the models and `prefbench check` the recipes only")
    p.add_argument("--tokenizer", default="", help="SmolLM2's tokenizer files (default: the embedded model's)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-e2e"))
    args = p.parse_args()
    from prefbench import models

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    global LOG
    LOG = (root / "gpu_e2e.log").open("w")
    tokenizer = Path(args.tokenizer) if args.tokenizer else models.resolve(models.EMBEDDED)
    shape = DRY_SHAPE if args.dry else SHAPE_360M
    policy = build(root / "models" / "policy", tokenizer, shape)
    reward_model = build(root / "models" / "reward", tokenizer, DRY_SHAPE if args.dry else REWARD_SHAPE, reward=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    result: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "date": datetime.date.today().isoformat(),
        "shape": shape,
        "dry": args.dry,
        "runs": {},
    }
    for name, lora, launch in (
        ("gpu_e2e", False, False),
        ("gpu_e2e_lora", True, False),
        ("gpu_e2e_launch", False, True),
    ):
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe(name, root, policy, reward_model, args.dry, lora)))
        if args.check:
            cli("check", str(path), env=env)
            print(f"{name}: recipe ok", flush=True)
            continue
        command = ("launch", str(path), "--executor", "local", "--parallel", "1") if launch else ("run", str(path))
        seconds = cli(*command, env=env)
        units = ["dpo/seed0"] if lora else ["dpo/seed0", "kto/seed0", "simpo/seed0"]
        result["runs"][name] = {
            "seconds": round(seconds, 1),
            "units": check_run(root / "runs" / name, units, root / "reports" / name),
        }
        (root / "gpu_e2e.json").write_text(json.dumps(result, indent=1))  # after every run: a timeout keeps the rest
        print(f"{name}: ok in {seconds:.0f} s", flush=True)
    print(json.dumps(result, indent=1))


LOG = sys.stderr

if __name__ == "__main__":
    main()
