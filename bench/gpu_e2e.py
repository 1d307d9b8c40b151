"""The whole pipeline on one GPU, as a user runs it: `prefbench run` of a recipe on a random-init model with
SmolLM2-360M's shapes and SmolLM2's real tokenizer, bf16, DPO, KTO and SimPO (then a LoRA DPO recipe): prepare,
train, generation with rewards and KL, held-out preferences, a reward-model reward, lm-eval's hf backend on the
offline pack, the report; then the same recipe through `prefbench launch --executor local` on the one GPU. Every
stage's output is asserted; per-phase times and peak memory go to one JSON with the device, commit and date.

    PYTHONPATH=. python3 bench/gpu_e2e.py --tokenizer .gpu/tokenizer --out "$OUT"   (on the device: bench/gpu_e2e.sh)
    PYTHONPATH=. python3 bench/gpu_e2e.py --dry --out /tmp/e2e                       (tiny shapes on the CPU, minutes)
    PYTHONPATH=. python3 bench/gpu_e2e.py --dry --check --out /tmp/e2e               (the recipes checked only, seconds)
    PYTHONPATH=. python3 bench/gpu_e2e.py [--dry] --memory                            (the memory cells only)

The memory cells (after the runs): one training step's peak at 4 pairs x 1024 tokens beside prefbench.memory's estimate,
from a 1.7B full fine-tune to an 8B one with bf16 weights and the optimizer offloaded, and LoRA on an 8B shape.

No hub access: the models are built here from a configuration (random weights: rewards and accuracies are noise,
the machinery, times and memory are not). vLLM's CUDA wheel cannot travel to the device, so generation there uses
the transformers engine; vLLM on a GPU stays untested.
"""

from __future__ import annotations

import argparse
import contextlib
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


# The memory cells: (name, shape, LoRA rank, train settings); 4 pairs x 1024 tokens (512 prompt + 512 completion).
LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256)  # fmt: skip
SMOLLM_1_7B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                   intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
LLAMA_3B = dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)  # fmt: skip
MEMORY_CELLS = [
    ("1.7B full, fp32 AdamW", SMOLLM_1_7B, 0, {}),
    ("1.7B full, bf16 weights, checkpointing", SMOLLM_1_7B, 0, {"weights": "bf16", "gradient_checkpointing": True}),
    ("3B full, bf16 weights, 8-bit AdamW, checkpointing", LLAMA_3B, 0,
     {"weights": "bf16", "optimizer": "adamw_8bit", "gradient_checkpointing": True}),
    ("8B full, bf16 weights, offloaded AdamW, checkpointing", LLAMA_8B, 0,
     {"weights": "bf16", "optimizer_offload": True, "gradient_checkpointing": True}),
    ("8B LoRA r16, bf16 base, checkpointing", LLAMA_8B, 16, {"weights": "bf16", "gradient_checkpointing": True}),
]  # fmt: skip


def memory_cell(shape: dict, lora: int, train: dict, dry: bool) -> dict:
    """One training step's peak (torch.cuda.max_memory_allocated) beside prefbench.memory's estimate for it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefbench.data.batches import collate
    from prefbench.data.tokenize import Example
    from prefbench.logprobs import SequenceLogps
    from prefbench.memory import Shape, estimate
    from prefbench.optimizer import make
    from prefbench.recipe import TrainSpec

    t = TrainSpec(lr=1e-5, **train)
    if dry:
        shape = {**DRY_SHAPE, "vocab_size": 384}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = t.weights == "bf16"
    config = LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config).to(torch.bfloat16 if bf16 else torch.float32)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora, lora_alpha=2 * lora, target_modules="all-linear"))
    model.train()
    half = 32 if dry else 512
    g = torch.Generator().manual_seed(0)
    examples = [Example(tuple(torch.randint(1, 300, (half,), generator=g).tolist()),
                        tuple(tuple(torch.randint(1, 300, (half,), generator=g).tolist()) for _ in range(2)))
                for _ in range(4)]  # fmt: skip
    fwd = collate([(i, i, j) for i in range(4) for j in range(2)], examples, 0, device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = make(trained, t, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for _ in range(2):  # the second step holds the optimizer's states from the start
        with autocast:
            sums, _ = SequenceLogps(model)(*fwd)
        sums.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    e = estimate(
        Shape.from_config(config.to_dict()), tokens=fwd.input_ids.numel(), completion_tokens=int(fwd.targets.numel()),
        gpu=device.type == "cuda", lora_r=lora, checkpointing=t.gradient_checkpointing, bf16_weights=bf16,
        eight_bit=t.optimizer == "adamw_8bit", offload=t.optimizer_offload,
    )  # fmt: skip
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"estimate_gib": round(e.total / 2**30, 2), "peak_gib": None if peak is None else round(peak, 2),
            "ratio": None if peak is None else round(e.total / 2**30 / peak, 3), "estimate": e.line()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dry", action="store_true", help="tiny shapes on the CPU, to check the script")
    p.add_argument("--check", action="store_true", help="build the models and `prefbench check` the recipes only")
    p.add_argument("--memory", action="store_true", help="the memory cells only (peak beside the estimate)")
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
    runs = (("gpu_e2e", False, False), ("gpu_e2e_lora", True, False), ("gpu_e2e_launch", False, True))
    for name, lora, launch in () if args.memory else runs:
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
    if args.memory or not args.check:  # after the runs: an 8B cell may take what time is left
        result["memory"] = {}
        for name, shape_, lora, train in MEMORY_CELLS:
            try:
                result["memory"][name] = memory_cell(shape_, lora, train, args.dry)
            except torch.OutOfMemoryError as e:  # a cell that does not fit is a figure too
                result["memory"][name] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
                torch.cuda.empty_cache()
            (root / "gpu_e2e.json").write_text(json.dumps(result, indent=1))
            print(f"memory {name}: {result['memory'][name]}", flush=True)
    print(json.dumps(result, indent=1))


LOG = sys.stderr

if __name__ == "__main__":
    main()
