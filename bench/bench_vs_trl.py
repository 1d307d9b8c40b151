"""prefbench's trainer vs TRL 1.16's DPOTrainer, side by side, on this machine's CPU.

    .venv/bin/python bench/bench_vs_trl.py [--repeats 2] [--steps 20] [--batch-size 8] [--out PATH]

Two tiny Llama models from prefbench.models (`tiny:head`: vocab 49152 / hidden 64 / 2 layers, the loss
head dominates; `tiny:body`: vocab 384 / hidden 256 / 4 layers, the layers dominate), one synthetic
conversational preference set with Zipf-like (Pareto) prompt and completion lengths and Zipf word
frequencies, DPO (sigmoid, beta 0.1), fp32, AdamW (torch.optim.AdamW, lr 1e-4, betas 0.9/0.999,
eps 1e-8, no weight decay), constant LR without warmup, grad-norm clip 1.0, batch 8 pairs without
accumulation, 20 steps = one epoch of 160 pairs, 2 CPU threads (shared/reference/performance.md §8).

Every job is a fresh process (bench/_worker.py), one at a time. Cells per model:

  prefbench          prefbench's defaults (length bucketing over 8 batches, reference log-probs
                     precomputed once before training), micro_batch_size = batch size (8), so one
                     forward holds the same 8 pairs as TRL's (per_device_train_batch_size 8, no accumulation)
  TRL                TRL defaults with the §8 pins: reference model forward inside every step,
                     shuffled batches (RandomSampler, seed 0), gradient checkpointing off like prefbench
  TRL precompute     TRL with precompute_ref_log_probs=True ("best TRL")
    -- the three above are repeated (--repeats, default 2) in A/B/B/A order; the rest run once --
  prefbench nobucket prefbench with train.bucket_batches = 1 (plain shuffled batches)
  prefbench noshare  prefbench with train.share_prompts = false (each completion with its own copy of the prompt)
  prefbench micro4   prefbench with its own micro_batch_size default (4): 2 x 4 pairs per step, same gradient
  prefbench budget   micro_batch_size 8 (TRL's forward) with train.max_tokens_per_forward = TOKEN_BUDGET: a step
                     wider than the budget is cut, in length order, into forwards within it; same gradient
  TRL grouped        TRL with transformers' LengthGroupedSampler (the group_by_length padding policy)
  TRL same-batches   TRL fed prefbench's exact batch sequence (sequential sampler over prefbench's
                     schedule): the parity check, and speed on identical batches
  (optional, --cells: "prefbench gc", "TRL gc" = gradient checkpointing on, TRL's real default)

Figures: throughput = real (non-padding) tokens of the whole job, prompt included, both completions
of each pair, / (reference pass + every training step); peak memory = VmHWM of the job's process
minus its VmRSS after all imports, before any model or data is loaded. Medians over repeats. The "pad eff"
column is that of one plain forward per step (each row its own sequence), whatever the cell computes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_worker.py"
CONFIGS = {"head": "tiny:head", "body": "tiny:body"}
WARMUP_STEPS = 3  # discarded for the per-step (steady-state) figures only
PARITY_LOSS_TOL = 1e-4  # absolute, on the DPO loss
PARITY_LOGPS_RTOL = 1e-4  # relative, on the batch-mean summed log-probs and the grad norm

# ---- synthetic data -----------------------------------------------------------------------------

WORDS = """the a of to and in is it you that he was for on are with as his they be at one have this from or had by
word but what some we can out other were all there when up use your how said an each she which do their time if will way
about many then them write would like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very through just form sentence
great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well
also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth father head stand own page should
country found answer school grow study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story saw far sea draw left late run while press close night real life few north ocean weather
mountains music history science short clear commas exclamation hello quotes important response topic capital france paris""".split()


def write_data(path: Path, pairs: int, seed: int) -> None:
    """Conversational pairs (prompt = one user message, chosen/rejected = one assistant message each),
    so both trainers render them with the model's chat template. Lengths in words are Pareto (alpha 1.5)
    with caps, so no record comes near max_length and neither trainer truncates anything."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) for k in range(len(WORDS))]  # Zipf word frequencies

    def text(n: int) -> str:
        return " ".join(rng.choices(WORDS, weights, k=n)).capitalize() + "."

    def words(scale: float, low: int, cap: int) -> int:
        return min(cap, low + int(scale * (rng.paretovariate(1.5) - 1)))

    with open(path, "w") as f:
        for _ in range(pairs):
            p, c, r = words(6, 3, 40), words(8, 2, 48), words(8, 2, 48)
            record = {
                "prompt": [{"role": "user", "content": text(p)}],
                "chosen": [{"role": "assistant", "content": text(c)}],
                "rejected": [{"role": "assistant", "content": text(r)}],
            }
            f.write(json.dumps(record) + "\n")


# ---- preparation: prefbench's tokenization and schedule, read once in this process -------------


def prepare(config: str, data: Path, work: Path, args) -> dict:
    """Token ids and batch schedules exactly as prefbench's trainer computes them."""
    import datasets
    from transformers import AutoTokenizer

    from prefbench import models
    from prefbench.check import parse_recipe
    from prefbench.data.batches import schedule
    from prefbench.data.prepare import prepare_data

    datasets.disable_progress_bars()
    spec = CONFIGS[config]
    model_dir = models.resolve(spec)
    recipe = parse_recipe(
        {
            "name": "prep",
            "output_dir": str(work / "prep"),
            "model": {"name": spec},
            "data": {
                "source": str(data),
                "format": "paired",
                "eval_fraction": 0.0,
                "max_length": args.max_length,
                "max_prompt_length": args.max_prompt_length,
            },
            "objectives": [{"name": "dpo", "beta": args.beta}],
            "train": {"steps": args.steps, "batch_size": args.batch_size, "micro_batch_size": args.batch_size},
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prepared = prepare_data(recipe, tokenizer)
    tok = prepared.report["tokenize"]["train"]
    if tok["prompts_truncated"] or tok["completions_truncated"] or tok["dropped"]:
        raise SystemExit(
            f"{config}: prefbench truncated or dropped records ({tok}); the trainers would truncate differently"
        )
    examples = prepared.train
    tokens_path = work / f"tokens_{config}.json"
    tokens_path.write_text(
        json.dumps([[list(e.prompt), list(e.completions[0]), list(e.completions[1])] for e in examples])
    )
    lengths = [e.length() for e in examples]
    plans, padded = {}, {}
    for bucket in (8, 1):
        plan = schedule(lengths, args.batch_size, args.steps, args.seed, bucket)
        path = work / f"plan_{config}_bucket{bucket}.json"
        path.write_text(json.dumps(plan))
        plans[bucket] = str(path)
        padded[bucket] = [2 * len(b) * max(lengths[i] for i in b) for b in plan]
    rows = [len(e.prompt) + len(c) for e in examples for c in e.completions]
    return {
        "model_spec": spec,
        "model_dir": str(model_dir),
        "tokens_path": str(tokens_path),
        "plans": plans,
        "padded_per_step": padded,
        "pairs": len(examples),
        "real_tokens_per_epoch": sum(rows),
        "row_tokens": {
            "mean": statistics.mean(rows),
            "median": statistics.median(rows),
            "max": max(rows),
            "min": min(rows),
        },
        "completion_token_fraction": sum(len(c) for e in examples for c in e.completions) / sum(rows),
        "distinct_tokens": len({t for e in examples for t in e.prompt + e.completions[0] + e.completions[1]}),
    }


# ---- one job ------------------------------------------------------------------------------------


TOKEN_BUDGET = 1024  # padded tokens per forward for the "prefbench budget" cell

CELLS = {
    # name: (trainer, knobs)
    "prefbench": ("prefbench", {"bucket_batches": 8}),
    "prefbench nobucket": ("prefbench", {"bucket_batches": 1}),
    "prefbench noshare": ("prefbench", {"bucket_batches": 8, "share_prompts": False}),
    "TRL": ("trl", {}),
    "TRL precompute": ("trl", {"precompute": True}),
    "TRL same-batches": ("trl", {"order_bucket": 8}),
    # prefbench's own micro_batch_size default (4: two micro-batches of 4 pairs per step, the same gradient).
    "prefbench micro4": ("prefbench", {"bucket_batches": 8, "micro_batch_size": 4}),
    # TRL's per-forward count (8 pairs) with train.max_tokens_per_forward: only micro-batches wider than the
    # budget are split (in length order), so the widest batch no longer sets the peak.
    "prefbench budget": ("prefbench", {"bucket_batches": 8, "max_tokens_per_forward": TOKEN_BUDGET}),
    # Optional (--cells): gradient checkpointing on for prefbench, and TRL's real default (GC on).
    "prefbench gc": ("prefbench", {"bucket_batches": 8, "gradient_checkpointing": True}),
    "TRL gc": ("trl", {"gradient_checkpointing": True}),
    # TRL with transformers' LengthGroupedSampler (train_sampling_strategy="group_by_length"), TRL's own answer to
    # padding: shuffles, then sorts windows of min(N / (4 x batch), 50) batches by length (5 batches of 8 here).
    "TRL grouped": ("trl", {"group_by_length": True}),
}
HEADLINE = ["prefbench", "TRL", "TRL precompute"]  # repeated, A/B/B/A
ONCE = [
    "prefbench nobucket",
    "prefbench noshare",
    "prefbench micro4",
    "prefbench budget",
    "TRL grouped",
    "TRL same-batches",
]  # attribution and parity cells: once, after repeat 0


def run_job(cell: str, config: str, prep: dict, data: Path, work: Path, args, tag: str) -> dict:
    trainer, knobs = CELLS[cell]
    job = work / "jobs" / f"{config}-{cell.replace(' ', '_')}-{tag}"
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    # A fresh prefbench cache per job (reference log-probs are cached on disk and would make a second run
    # skip its reference pass); the built models are shared through a link.
    cache = job / "prefbench_cache"
    cache.mkdir()
    (cache / "models").symlink_to(Path(prep["model_dir"]).parent)
    spec = {
        "trainer": trainer,
        "model_spec": prep["model_spec"],
        "model_dir": prep["model_dir"],
        "data": str(data),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "beta": args.beta,
        "max_grad_norm": 1.0,
        "seed": args.seed,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
        "bucket_batches": knobs.get("bucket_batches", 8),
        "precompute": knobs.get("precompute", False),
        "micro_batch_size": knobs.get("micro_batch_size"),
        "max_tokens_per_forward": knobs.get("max_tokens_per_forward"),
        "share_prompts": knobs.get("share_prompts", True),
        "gradient_checkpointing": knobs.get("gradient_checkpointing", False),
        "group_by_length": knobs.get("group_by_length", False),
        "order": prep["plans"][knobs["order_bucket"]] if "order_bucket" in knobs else None,
        "output_dir": str(job / "out"),
        "run_name": "bench",
        "result": str(job / "result.json"),
        "prefbench_tokens": prep["tokens_path"],
        "threads": args.threads,
    }
    (job / "spec.json").write_text(json.dumps(spec, indent=1))
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
        PREFBENCH_CACHE=str(cache),
        HF_DATASETS_CACHE=str(job / "hf_datasets"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TQDM_DISABLE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    start = time.perf_counter()
    with open(job / "log.txt", "w") as log:
        proc = subprocess.run(
            [sys.executable, str(WORKER), str(job / "spec.json")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=args.job_timeout,
        )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (job / "log.txt").read_text()[-3000:]
        raise SystemExit(f"job {config}/{cell} failed (exit {proc.returncode}); log {job / 'log.txt'}:\n{tail}")
    result = json.loads((job / "result.json").read_text())
    result["process_seconds"] = elapsed
    if trainer == "prefbench":
        plan_padded = prep["padded_per_step"][spec["bucket_batches"]]
        for step, pad in zip(result["steps"], plan_padded):
            step["padded_tokens"] = pad
    return summarize(result)


def summarize(r: dict) -> dict:
    steps = r["steps"]
    tokens = sum(s["tokens"] for s in steps)
    job_seconds = r["ref_seconds"] + r["loop_seconds"]
    steady = steps[WARMUP_STEPS:]
    r["summary"] = {
        "real_tokens": tokens,
        "padded_tokens": sum(s["padded_tokens"] for s in steps),
        "padding_efficiency": tokens / sum(s["padded_tokens"] for s in steps),
        "ref_seconds": r["ref_seconds"],
        "loop_seconds": r["loop_seconds"],
        "job_seconds": job_seconds,
        "job_tokens_per_s": tokens / job_seconds,
        "steady_tokens_per_s": sum(s["tokens"] for s in steady) / sum(s["seconds"] for s in steady),
        "median_step_seconds": statistics.median(s["seconds"] for s in steady),
        "peak_delta_mb": r["peak_delta_mb"],
        "peak_rss_mb": r["peak_rss_mb"],
        "baseline_rss_mb": r["baseline_rss_mb"],
        "wall_seconds": r["wall_seconds"],
        "process_seconds": r["process_seconds"],
    }
    return r


# ---- parity -------------------------------------------------------------------------------------


def parity(p: dict, t: dict) -> dict:
    """prefbench's default run vs TRL on the very same batches: every step's tokens, loss, log-probs, grad norm."""
    ps, ts = p["steps"], t["steps"]

    def rel(a, b):
        return abs(a - b) / max(abs(a), abs(b), 1e-12)

    out = {
        "tokens_equal_every_step": all(a["tokens"] == b["tokens"] for a, b in zip(ps, ts)),
        "padded_equal_every_step": all(a["padded_tokens"] == b["padded_tokens"] for a, b in zip(ps, ts)),
        "step1": {
            k: {"prefbench": ps[0][k], "trl": ts[0][k]} for k in ("loss", "logps_chosen", "logps_rejected", "grad_norm")
        },
        "step2": {
            k: {"prefbench": ps[1][k], "trl": ts[1][k]} for k in ("loss", "logps_chosen", "logps_rejected", "grad_norm")
        },
        "abs_diff_loss_step1": abs(ps[0]["loss"] - ts[0]["loss"]),
        "abs_diff_loss_step2": abs(ps[1]["loss"] - ts[1]["loss"]),
        "rel_diff_logps_step1": max(
            rel(ps[0]["logps_chosen"], ts[0]["logps_chosen"]), rel(ps[0]["logps_rejected"], ts[0]["logps_rejected"])
        ),
        "rel_diff_logps_step2": max(
            rel(ps[1]["logps_chosen"], ts[1]["logps_chosen"]), rel(ps[1]["logps_rejected"], ts[1]["logps_rejected"])
        ),
        "rel_diff_grad_norm_step1": rel(ps[0]["grad_norm"], ts[0]["grad_norm"]),
        "max_abs_diff_loss_all_steps": max(abs(a["loss"] - b["loss"]) for a, b in zip(ps, ts)),
        "max_rel_diff_logps_all_steps": max(
            max(rel(a["logps_chosen"], b["logps_chosen"]), rel(a["logps_rejected"], b["logps_rejected"]))
            for a, b in zip(ps, ts)
        ),
        "token_ids_trl_vs_prefbench": t["token_check"],
    }
    out["pass"] = bool(
        out["tokens_equal_every_step"]
        and out["padded_equal_every_step"]
        and t["token_check"]["n_mismatched"] == 0
        and out["abs_diff_loss_step1"] <= PARITY_LOSS_TOL
        and out["abs_diff_loss_step2"] <= PARITY_LOSS_TOL
        and out["rel_diff_logps_step1"] <= PARITY_LOGPS_RTOL
        and out["rel_diff_logps_step2"] <= PARITY_LOGPS_RTOL
        and out["rel_diff_grad_norm_step1"] <= PARITY_LOGPS_RTOL
    )
    return out


# ---- report -------------------------------------------------------------------------------------


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r["summary"][key] for r in runs)


def spread(runs: list[dict], key: str) -> str:
    values = [r["summary"][key] for r in runs]
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else "-"


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "prefbench"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        out["prefbench_git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        out["prefbench_git"] += "-dirty" if dirty else ""
    except OSError:
        pass
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def warm_memory(gib: float) -> float:
    """Touch (then free) a few GiB once: on this VM the first touch of guest memory costs extra, and the
    first job would otherwise pay it alone."""
    start = time.perf_counter()
    block = bytearray(int(gib * 2**30))
    block[::4096] = b"\x01" * (len(block) // 4096 + (1 if len(block) % 4096 else 0))
    del block
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_vs_trl.json"))
    ap.add_argument("--configs", default="head,body", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="A/B/B/A repeats of the headline cells (" + ", ".join(HEADLINE) + "); the others run once",
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=None, help="dataset size (default steps x batch size: one epoch)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-prompt-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--job-timeout", type=int, default=1200)
    ap.add_argument(
        "--cells",
        default=",".join(HEADLINE + ONCE),
        help="comma-separated cells, of: "
        + ", ".join(CELLS)
        + " (prefbench and TRL are required; cells outside the headline three run once)",
    )
    ap.add_argument("--workdir", default=None, help="keep jobs' files here (default: a temp dir, removed at the end)")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: the head model, 4 steps of 2 pairs, prefbench and TRL once "
        "(the test suite's check that this script runs; its figures mean nothing)",
    )
    args = ap.parse_args()
    if args.smoke:
        args.configs, args.repeats, args.steps, args.batch_size, args.cells = "head", 1, 4, 2, "prefbench,TRL"
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    started = time.perf_counter()

    ver = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs; jobs pinned to {args.threads} threads (OMP/MKL env + torch.set_num_threads)"
    )
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="prefbench-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # This process only tokenizes (prefbench's data path goes through `datasets`); keep its cache out of ~/.cache.
    os.environ.update(
        HF_DATASETS_CACHE=str(work / "hf_datasets"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    data = work / "pairs.jsonl"
    pairs = args.pairs or args.steps * args.batch_size
    write_data(data, pairs, args.seed)
    print(
        f"data: {pairs} synthetic conversational pairs (seed {args.seed}); {args.steps} steps x {args.batch_size} pairs; work dir {work}"
    )
    print(f"memory warm-up: {warm_memory(0.0 if args.smoke else 4.0):.1f} s")

    preps = {c: prepare(c, data, work, args) for c in configs}
    for c, p in preps.items():
        rt = p["row_tokens"]
        print(
            f"  {c}: {p['model_spec']} at {p['model_dir']}; {p['real_tokens_per_epoch']} real tokens per epoch, "
            f"row length mean {rt['mean']:.0f} / median {rt['median']:.0f} / max {rt['max']}, completion share {p['completion_token_fraction']:.0%}"
        )

    # A/B/B/A: prefbench first on even repeats, TRL first on odd ones; the other cells once, at the end of repeat 0.
    runs: dict[str, dict[str, list[dict]]] = {c: {cell: [] for cell in CELLS} for c in configs}
    chosen = [cell.strip() for cell in args.cells.split(",") if cell.strip()]
    unknown = [cell for cell in chosen if cell not in CELLS]
    if unknown or "prefbench" not in chosen or "TRL" not in chosen:
        raise SystemExit(f"--cells: unknown {unknown} or missing 'prefbench'/'TRL'; cells: {', '.join(CELLS)}")
    pref_cells = [cell for cell in HEADLINE if cell in chosen and CELLS[cell][0] == "prefbench"]
    trl_cells = [cell for cell in HEADLINE if cell in chosen and CELLS[cell][0] == "trl"]
    once = [cell for cell in chosen if cell not in HEADLINE]
    for r in range(args.repeats):
        for c in configs:
            order = pref_cells + trl_cells if r % 2 == 0 else list(reversed(trl_cells)) + list(reversed(pref_cells))
            if r == 0:
                order = order + once
            for cell in order:
                t0 = time.perf_counter()
                result = run_job(cell, c, preps[c], data, work, args, f"r{r}")
                s = result["summary"]
                runs[c][cell].append(result)
                print(
                    f"  [{time.perf_counter() - started:6.0f}s] repeat {r} {c:4s} {cell:18s} {s['job_tokens_per_s']:8.0f} tok/s job, "
                    f"{s['steady_tokens_per_s']:8.0f} tok/s steady, peak +{s['peak_delta_mb']:6.0f} MB, ref {s['ref_seconds']:5.1f} s, "
                    f"loop {s['loop_seconds']:6.1f} s, process {time.perf_counter() - t0:5.0f} s",
                    flush=True,
                )

    report = build_report(runs, preps, configs, args, ver, pairs, started)
    print_report(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["runs"] = runs  # every job: spec, per-step records, summary
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwritten: {out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def build_report(runs, preps, configs, args, ver, pairs, started) -> dict:
    report = {
        "versions": ver,
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads},
        "setup": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "pairs": pairs,
            "lr": args.lr,
            "beta": args.beta,
            "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length,
            "seed": args.seed,
            "repeats": args.repeats,
            "warmup_steps_discarded_for_steady": WARMUP_STEPS,
            "trl_pins": "use_cpu, bf16=False, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0, report_to=none, "
            "save_strategy=no, eval_strategy=no, logging_steps=1, disable_dropout, max_length, optim=adamw_torch, "
            "lr/betas/eps/weight_decay=0, batch, grad_accum=1, max_steps, constant LR no warmup, seed, max_grad_norm, "
            "sdpa attention, fp32 weights",
        },
        "data": {
            c: {k: v for k, v in preps[c].items() if k not in ("plans", "padded_per_step", "tokens_path")}
            for c in configs
        },
        "cells": {},
        "ratios": {},
        "parity": {},
        "targets": {"throughput_ratio_min": 1.5, "memory_ratio_max": 0.7},
    }
    for c in configs:
        report["cells"][c] = {}
        for cell, rs in runs[c].items():
            if not rs:
                continue
            report["cells"][c][cell] = {
                "n": len(rs),
                **{
                    k: median_of(rs, k)
                    for k in (
                        "job_tokens_per_s",
                        "steady_tokens_per_s",
                        "median_step_seconds",
                        "peak_delta_mb",
                        "peak_rss_mb",
                        "ref_seconds",
                        "loop_seconds",
                        "job_seconds",
                        "real_tokens",
                        "padded_tokens",
                        "padding_efficiency",
                        "wall_seconds",
                        "process_seconds",
                    )
                },
                "job_tokens_per_s_range": [
                    min(r["summary"]["job_tokens_per_s"] for r in rs),
                    max(r["summary"]["job_tokens_per_s"] for r in rs),
                ],
                "peak_delta_mb_range": [
                    min(r["summary"]["peak_delta_mb"] for r in rs),
                    max(r["summary"]["peak_delta_mb"] for r in rs),
                ],
                "step1_loss": rs[0]["steps"][0]["loss"],
            }
        cells = report["cells"][c]
        p, t = cells["prefbench"], cells["TRL"]
        ratios = {
            "throughput_prefbench_over_trl": p["job_tokens_per_s"] / t["job_tokens_per_s"],
            "memory_prefbench_over_trl": p["peak_delta_mb"] / t["peak_delta_mb"],
        }
        if "TRL precompute" in cells:
            tp = cells["TRL precompute"]
            ratios["throughput_prefbench_over_trl_precompute"] = p["job_tokens_per_s"] / tp["job_tokens_per_s"]
            ratios["memory_prefbench_over_trl_precompute"] = p["peak_delta_mb"] / tp["peak_delta_mb"]
        for extra, key in (
            ("prefbench nobucket", "nobucket"),
            ("prefbench noshare", "noshare"),
            ("prefbench micro4", "micro4"),
            ("prefbench budget", "budget"),
        ):
            if extra in cells:
                ratios[f"throughput_prefbench_{key}_over_trl"] = (
                    cells[extra]["job_tokens_per_s"] / t["job_tokens_per_s"]
                )
                ratios[f"memory_prefbench_{key}_over_trl"] = cells[extra]["peak_delta_mb"] / t["peak_delta_mb"]
        if "TRL grouped" in cells:
            ratios["throughput_prefbench_over_trl_grouped"] = (
                p["job_tokens_per_s"] / cells["TRL grouped"]["job_tokens_per_s"]
            )
            ratios["memory_prefbench_over_trl_grouped"] = p["peak_delta_mb"] / cells["TRL grouped"]["peak_delta_mb"]
        if "TRL same-batches" in cells:
            ts = cells["TRL same-batches"]
            ratios["throughput_prefbench_over_trl_same_batches"] = p["job_tokens_per_s"] / ts["job_tokens_per_s"]
            ratios["steady_prefbench_over_trl_same_batches"] = p["steady_tokens_per_s"] / ts["steady_tokens_per_s"]
        # Every prefbench cell against every TRL cell (the rows above are the named subset).
        ratios["matrix"] = {
            f"{a} / {b}": {
                "throughput": cells[a]["job_tokens_per_s"] / cells[b]["job_tokens_per_s"],
                "steady": cells[a]["steady_tokens_per_s"] / cells[b]["steady_tokens_per_s"],
                "memory": cells[a]["peak_delta_mb"] / cells[b]["peak_delta_mb"],
            }
            for a in cells
            if CELLS[a][0] == "prefbench"
            for b in cells
            if CELLS[b][0] == "trl"
        }
        ratios["throughput_target_met"] = (
            ratios["throughput_prefbench_over_trl"] >= 1.5
            and ratios.get("throughput_prefbench_over_trl_precompute", 9) >= 1.5
        )
        ratios["memory_target_met"] = (
            ratios["memory_prefbench_over_trl"] <= 0.7 and ratios.get("memory_prefbench_over_trl_precompute", 0) <= 0.7
        )
        if "prefbench budget" in cells:  # TRL's per-forward count, with the widest forwards cut to the token budget
            worst = max(ratios["matrix"][f"prefbench budget / {b}"]["memory"] for b in cells if CELLS[b][0] == "trl")
            ratios["memory_budget_worst_over_trl"] = worst
            ratios["memory_target_met_with_budget"] = worst <= 0.7
        report["ratios"][c] = ratios
        if runs[c]["TRL same-batches"]:
            report["parity"][c] = parity(runs[c]["prefbench"][0], runs[c]["TRL same-batches"][0])
        report["token_checks"] = report.get("token_checks", {})
        report["token_checks"][c] = {
            cell: [r["token_check"]["n_mismatched"] for r in rs]
            for cell, rs in runs[c].items()
            if rs and "token_check" in rs[0]
        }
    report["wall_seconds"] = time.perf_counter() - started
    return report


def print_report(rep: dict) -> None:
    s = rep["setup"]
    print(
        f"\n=== prefbench vs TRL {rep['versions']['trl']} DPO, CPU {rep['machine']['threads']} threads, {s['steps']} steps x {s['batch_size']} pairs, fp32; medians of {s['repeats']} A/B/B/A repeats ==="
    )
    print("throughput = real tokens (prompt + chosen + rejected rows, no padding) / (reference pass + all steps);")
    print(
        f"steady = same, steps {WARMUP_STEPS + 1}-{s['steps']} only, no reference pass; process = the fresh process end to end"
    )
    print(
        "(imports, data, model loads, reference pass, steps, prefbench's final checkpoint); peak = VmHWM - VmRSS after imports\n"
    )
    header = f"{'config':6s} {'trainer':18s} {'n':>2s} {'job tok/s':>10s} {'(range)':>11s} {'steady tok/s':>12s} {'ref pass s':>10s} {'steps s':>8s} {'process s':>9s} {'pad eff':>7s} {'peak MB':>8s} {'step1 loss':>11s}"
    print(header)
    print("-" * len(header))
    for c, cells in rep["cells"].items():
        for cell, v in cells.items():
            lo, hi = v["job_tokens_per_s_range"]
            rng = f"{lo:.0f}-{hi:.0f}" if v["n"] > 1 else ""
            print(
                f"{c:6s} {cell:18s} {v['n']:2d} {v['job_tokens_per_s']:10.0f} {rng:>11s} {v['steady_tokens_per_s']:12.0f} {v['ref_seconds']:10.2f} "
                f"{v['loop_seconds']:8.1f} {v['process_seconds']:9.1f} {v['padding_efficiency']:7.0%} {v['peak_delta_mb']:8.0f} {v['step1_loss']:11.6f}"
            )
    print("\nratios (prefbench defaults vs ...)            target   " + "  ".join(f"{c:>8s}" for c in rep["ratios"]))
    rows = [
        ("throughput / TRL default", "throughput_prefbench_over_trl", ">=1.5"),
        ("throughput / TRL precompute (best TRL)", "throughput_prefbench_over_trl_precompute", ">=1.5"),
        ("throughput / TRL group_by_length sampler", "throughput_prefbench_over_trl_grouped", ""),
        ("throughput / TRL on the same batches", "throughput_prefbench_over_trl_same_batches", ""),
        ("steady step / TRL on the same batches", "steady_prefbench_over_trl_same_batches", ""),
        ("throughput, prefbench nobucket / TRL", "throughput_prefbench_nobucket_over_trl", ""),
        ("peak memory / TRL default", "memory_prefbench_over_trl", "<=0.7"),
        ("peak memory / TRL precompute", "memory_prefbench_over_trl_precompute", "<=0.7"),
        ("peak memory / TRL group_by_length sampler", "memory_prefbench_over_trl_grouped", ""),
        ("throughput, prefbench noshare / TRL", "throughput_prefbench_noshare_over_trl", ""),
        ("throughput, prefbench micro4 / TRL", "throughput_prefbench_micro4_over_trl", ""),
        ("peak memory, prefbench nobucket / TRL", "memory_prefbench_nobucket_over_trl", ""),
        ("peak memory, prefbench noshare / TRL", "memory_prefbench_noshare_over_trl", ""),
        ("peak memory, prefbench micro4 (its default) / TRL", "memory_prefbench_micro4_over_trl", "<=0.5"),
        (f"throughput, prefbench budget {TOKEN_BUDGET} / TRL", "throughput_prefbench_budget_over_trl", ""),
        (f"peak memory, prefbench budget {TOKEN_BUDGET} / TRL", "memory_prefbench_budget_over_trl", "<=0.7"),
    ]
    for label, key, target in rows:
        vals = [rep["ratios"][c].get(key) for c in rep["ratios"]]
        if all(v is None for v in vals):
            continue
        print(f"  {label:44s} {target:6s} " + "  ".join(f"{v:7.2f}x" if v is not None else f"{'-':>8s}" for v in vals))
    extra = [k for k in next(iter(rep["ratios"].values()))["matrix"] if " gc" in k]
    if extra:
        print("\n  optional cells (throughput / steady / memory ratios):")
        for k in extra:
            print(
                f"    {k:36s} "
                + "   ".join(
                    f"{c}: {r['matrix'][k]['throughput']:.2f}x / {r['matrix'][k]['steady']:.2f}x / {r['matrix'][k]['memory']:.2f}x"
                    for c, r in rep["ratios"].items()
                    if k in r["matrix"]
                )
            )
    for c, r in rep["ratios"].items():
        line = f"  {c}: throughput target {'MET' if r['throughput_target_met'] else 'MISSED'}, memory target {'MET' if r['memory_target_met'] else 'MISSED'} at TRL's per-forward batch"
        if "memory_target_met_with_budget" in r:
            line += (
                f"; with train.max_tokens_per_forward={TOKEN_BUDGET}: {'MET' if r['memory_target_met_with_budget'] else 'MISSED'}"
                f" (worst over the TRL cells {r['memory_budget_worst_over_trl']:.2f}x)"
            )
        print(line)

    if rep["parity"]:
        print("\nparity: prefbench (defaults) vs TRL fed the same batches, fp32")
        for c, p in rep["parity"].items():
            s1, s2 = p["step1"], p["step2"]
            tc = p["token_ids_trl_vs_prefbench"]
            print(
                f"  {c}: {'PASS' if p['pass'] else 'FAIL'}; token ids identical for {tc['records'] - tc['n_mismatched']}/{tc['records']} records; real and padded tokens equal every step: {p['tokens_equal_every_step'] and p['padded_equal_every_step']}"
            )
            for name, st in (("step 1", s1), ("step 2", s2)):
                print(
                    f"    {name}: loss {st['loss']['prefbench']:.7f} vs {st['loss']['trl']:.7f} (|d| {abs(st['loss']['prefbench'] - st['loss']['trl']):.1e}); "
                    f"logps/chosen {st['logps_chosen']['prefbench']:.4f} vs {st['logps_chosen']['trl']:.4f}; "
                    f"logps/rejected {st['logps_rejected']['prefbench']:.4f} vs {st['logps_rejected']['trl']:.4f}; "
                    f"grad norm {st['grad_norm']['prefbench']:.5f} vs {st['grad_norm']['trl']:.5f}"
                )
            print(
                f"    max over all {len(rep['runs'][c]['prefbench'][0]['steps']) if 'runs' in rep else s['steps']} steps: |d loss| {p['max_abs_diff_loss_all_steps']:.1e}, "
                f"relative d logps {p['max_rel_diff_logps_all_steps']:.1e} (tolerances: loss {PARITY_LOSS_TOL:g} abs at steps 1-2, logps and grad norm {PARITY_LOGPS_RTOL:g} rel)"
            )
    print(f"\ntoken-id check of every TRL job vs prefbench's tokenization (mismatched records): {rep['token_checks']}")
    print(f"wall time: {rep['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
