"""One measured training job in a fresh process: prefbench's trainer or TRL 1.16's DPOTrainer.

Run by bench/bench_vs_trl.py (CPU) and bench/bench_gpu.py (TRL's cell, SPEC["gpu"]) as
`python bench/_worker.py SPEC.json`; not meant to be run by hand.
SPEC (written by the parent) says which trainer, model directory, data file and knobs; the worker
writes one JSON result to SPEC["result"]:

  baseline_rss_mb   VmRSS after every library import, before any model or data is loaded
  peak_rss_mb       VmHWM at the end of the job (before post-run checks that allocate)
  steps             per optimizer step: loss, logps/chosen, logps/rejected, grad_norm, tokens, seconds
  ref_seconds       reference pass outside the steps (prefbench's precompute, TRL's precompute_ref_log_probs)
  loop_seconds      the training steps, summed
  wall_seconds      the whole call (data prep, model loads, reference pass, steps, prefbench's final save)

Threads are pinned before torch does any work; the parent also sets OMP_NUM_THREADS/MKL_NUM_THREADS.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    threads = int(spec.get("threads", 2))

    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    # Every heavy library either job touches, imported up front so the baseline RSS excludes them.
    import accelerate  # noqa: F401
    import datasets
    import transformers
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoTokenizer, TrainerCallback

    if spec["trainer"] == "prefbench":
        import prefbench.data.load  # noqa: F401
        import prefbench.train  # noqa: F401
        from prefbench.check import parse_recipe
        from prefbench.results import reference_seconds
        from prefbench.runner import train_units
    else:
        from trl import DPOConfig, DPOTrainer
    import torch.utils.checkpoint  # noqa: F401

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    result: dict = {
        "spec": spec,
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    result["baseline_rss_mb"] = _status_mb("VmRSS")

    if spec["trainer"] == "prefbench":
        run_prefbench(spec, result, parse_recipe, train_units, reference_seconds)
    else:
        run_trl(spec, result, DPOConfig, DPOTrainer, AutoTokenizer, TrainerCallback, datasets)

    result["peak_rss_mb"] = _status_mb("VmHWM")
    result["peak_delta_mb"] = result["peak_rss_mb"] - result["baseline_rss_mb"]
    if spec["trainer"] == "trl":
        dataset = result.pop("_trl_dataset")
        if spec.get("prefbench_tokens"):
            result["token_check"] = check_tokens(spec, dataset)
    if spec.get("gpu"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(spec["result"], "w") as f:
        json.dump(result, f, indent=1)


# ---- prefbench ----------------------------------------------------------------------------------


def run_prefbench(spec: dict, result: dict, parse_recipe, train_units, reference_seconds) -> None:
    recipe = parse_recipe(
        {
            "name": spec["run_name"],
            "output_dir": spec["output_dir"],
            "model": {"name": spec["model_spec"]},
            "data": {
                "source": spec["data"],
                "format": "paired",
                "eval_fraction": 0.0,
                "max_length": spec["max_length"],
                "max_prompt_length": spec["max_prompt_length"],
            },
            "objectives": [{"name": "dpo", "beta": spec["beta"]}],
            "train": {
                "steps": spec["steps"],
                "batch_size": spec["batch_size"],
                "micro_batch_size": spec.get("micro_batch_size") or spec["batch_size"],
                "lr": spec["lr"],
                "warmup_ratio": 0.0,
                "schedule": "constant",
                "weight_decay": 0.0,
                "max_grad_norm": spec["max_grad_norm"],
                "gradient_checkpointing": bool(spec.get("gradient_checkpointing")),
                "dtype": "fp32",
                "bucket_batches": spec["bucket_batches"],
                "max_tokens_per_forward": spec.get("max_tokens_per_forward") or 0,
                "share_prompts": spec.get("share_prompts", True),
            },
            "seeds": [spec["seed"]],
        }
    )
    start = time.perf_counter()
    train_units(recipe)
    result["wall_seconds"] = time.perf_counter() - start
    run = os.path.join(spec["output_dir"], spec["run_name"])
    result["ref_seconds"] = reference_seconds(run)
    with open(os.path.join(run, "dpo", f"seed{spec['seed']}", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    result["steps"] = [
        {
            "step": r["step"],
            "loss": r["loss"],
            "logps_chosen": r["logps/chosen"],
            "logps_rejected": r["logps/rejected"],
            "grad_norm": r["grad_norm"],
            "tokens": r["tokens"],
            "seconds": r["step_seconds"],
        }
        for r in rows
    ]
    result["loop_seconds"] = sum(r["seconds"] for r in result["steps"])
    with open(os.path.join(run, "manifest.json")) as f:
        result["manifest_tokenize"] = json.load(f)["data"]["tokenize"]["train"]


# ---- TRL ----------------------------------------------------------------------------------------


def run_trl(spec: dict, result: dict, DPOConfig, DPOTrainer, AutoTokenizer, TrainerCallback, datasets) -> None:
    with open(spec["data"]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    rows = [dict(r, idx=i) for i, r in enumerate(records)]
    if spec.get("order"):  # the exact batch sequence of a prefbench run, read sequentially
        with open(spec["order"]) as f:
            plan = json.load(f)
        rows = [rows[i] for batch in plan for i in batch]
    # A fingerprint given, not hashed from the table: on the GPU image (Python 3.12, pyarrow 26, dill 0.4.1) hashing
    # the table failed to pickle a pyarrow type, and a name is all a bench run needs.
    from datasets.table import InMemoryTable

    dataset = datasets.Dataset(InMemoryTable.from_pylist(rows), fingerprint=f"bench-{len(rows)}-{spec['seed']}")
    pair_lengths: list[int] = []
    if spec.get("group_by_length"):
        with open(spec["prefbench_tokens"]) as f:  # identical to TRL's own ids (checked after training)
            ids = json.load(f)
        pair_lengths = [len(ids[row["idx"]][0]) + max(len(ids[row["idx"]][1]), len(ids[row["idx"]][2])) for row in rows]

    precompute_timer = {"seconds": 0.0}

    padded: list[int] = []

    class TimedDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                padded.append(int(inputs["input_ids"].numel()))  # rows x padded width of this step's batch
            return super().compute_loss(model, inputs, *args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if not spec.get("group_by_length"):
                return super()._get_train_sampler(train_dataset)
            # transformers' LengthGroupedSampler (what train_sampling_strategy="group_by_length" builds), given the
            # pair lengths directly: the tokenized DPO columns have no `input_ids` for it to measure.
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(self.args.train_batch_size, lengths=pair_lengths)

        def _precompute_ref_logps(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            precompute_timer["seconds"] += time.perf_counter() - t0
            return out

    class Recorder(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.logs.append({"step": state.global_step, **logs})

    gpu = bool(spec.get("gpu"))
    # On a GPU, TRL at its best documented settings: bf16 autocast over fp32 weights (as prefbench), its default
    # fused AdamW, Liger's layer kernels, gradient accumulation over micro-batches of prefbench's size.
    # (Its padding_free is disabled for DPO in 1.16: it warns and pads.)
    gpu_args = dict(use_liger_kernel=True, optim="adamw_torch_fused", per_device_train_batch_size=spec["micro_batch_size"],
                    gradient_accumulation_steps=spec["batch_size"] // spec["micro_batch_size"]) if gpu else {}  # fmt: skip
    args = DPOConfig(
        output_dir=spec["output_dir"],
        use_cpu=not gpu,
        bf16=gpu,
        fp16=False,
        gradient_checkpointing=bool(spec.get("gradient_checkpointing")),  # TRL's own default is True
        dataloader_num_workers=0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=1,  # losses and log-probs of every step, for the parity check
        disable_dropout=True,
        disable_tqdm=True,
        max_length=spec["max_length"],
        beta=spec["beta"],
        loss_type=["sigmoid"],
        learning_rate=spec["lr"],
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        **(
            {
                "optim": "adamw_torch",
                "per_device_train_batch_size": spec["batch_size"],
                "gradient_accumulation_steps": 1,
            }
            | gpu_args
        ),  # CPU: torch.optim.AdamW, as prefbench
        max_steps=spec["steps"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=spec["max_grad_norm"],
        seed=spec["seed"],
        data_seed=spec["seed"],
        precompute_ref_log_probs=bool(spec.get("precompute")),
        train_sampling_strategy="sequential" if spec.get("order") else "random",
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    recorder = Recorder()
    start = time.perf_counter()
    trainer = TimedDPOTrainer(
        model=spec["model_dir"], args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder]
    )
    init_seconds = time.perf_counter() - start
    trainer.train()
    result["wall_seconds"] = time.perf_counter() - start
    result["init_seconds"] = init_seconds
    result["ref_seconds"] = precompute_timer["seconds"]
    marks = recorder.marks
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    steps, previous_tokens = [], 0
    for log, sec, pad in zip(recorder.logs, seconds, padded):
        tokens = int(log["num_tokens"]) - previous_tokens  # num_tokens: cumulative attention_mask sum
        previous_tokens = int(log["num_tokens"])
        steps.append(
            {
                "step": log["step"],
                "loss": log["loss"],
                "logps_chosen": log["logps/chosen"],
                "logps_rejected": log["logps/rejected"],
                "grad_norm": log["grad_norm"],
                "tokens": tokens,
                "padded_tokens": pad,
                "seconds": sec,
            }
        )
    if len(steps) != spec["steps"]:
        raise RuntimeError(f"TRL logged {len(steps)} steps, expected {spec['steps']}")
    result["steps"] = steps
    result["loop_seconds"] = sum(seconds)
    result["ref_model_loaded"] = trainer.ref_model is not None
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    result["optimizer"] = type(optimizer).__name__
    result["optimizer_groups"] = [
        {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in g.items()
            if k in ("lr", "betas", "eps", "weight_decay", "foreach", "fused")
        }
        for g in optimizer.param_groups
    ]
    result["_trl_dataset"] = trainer.train_dataset


def check_tokens(spec: dict, trl_dataset) -> dict:
    """Token ids TRL trains on vs the ids prefbench tokenized (written by the parent), record by record."""
    with open(spec["prefbench_tokens"]) as f:
        ref = json.load(f)  # list of [prompt, chosen, rejected] per record, in file order
    mismatched = []
    columns = trl_dataset.select_columns(["idx", "prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
    for row in columns:
        p, c, r = ref[row["idx"]]
        if (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) != (p, c, r):
            mismatched.append(row["idx"])
    return {
        "records": len(columns),
        "distinct_records": len({row["idx"] for row in columns}),
        "mismatched": mismatched[:20],
        "n_mismatched": len(mismatched),
    }


if __name__ == "__main__":
    main(sys.argv[1])
