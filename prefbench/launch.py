"""`prefbench launch RECIPE --executor local|slurm|ray`: a recipe's stages handed to an engine the user already
runs. prefbench schedules nothing itself: it says which commands may run at once and in what order, and the
engine runs them. The stages, in waves (each waits for the one before):

  1. prefbench prepare RECIPE                         the reference pass for every unit, the manifest
  2. prefbench train RECIPE --objective L --seed S    every unit                  } at the same time
     prefbench evaluate RECIPE --unit reference       the reference's evaluation  }
  3. prefbench evaluate RECIPE --unit L/seedS         every trained unit
  4. prefbench run RECIPE                             the run-wide rest (benchmark tests across the grid, judge,
                                                      objectives, claims) and the report; trained and evaluated
                                                      units are skipped

Every stage is idempotent and resumable, so a task that is killed and run again (a Slurm requeue, a relaunch)
continues where it stopped; a launch run again does not queue what is done (a trained unit's training, an
evaluation stored with the same settings; the final step always runs). Each task's output goes to
<run>/logs/<task>.log. The executors:

  local  one process per task on this machine, at most --parallel at a time; on a GPU machine each task gets its
         own --gpus-per-unit devices through CUDA_VISIBLE_DEVICES (torchrun inside a training task that has
         several), on a CPU the cores are shared out
  slurm  a job array per wave through submitit (pip install 'prefbench[slurm]'), --parallel as the array's limit;
         a requeued or preempted task runs again and resumes from its checkpoint
  ray    one Ray task per unit with num_gpus=--gpus-per-unit on the cluster ray.init finds (RAY_ADDRESS, or a local
         one), at most --parallel in flight (pip install 'prefbench[ray]')
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prefbench.errors import PrefbenchError
from prefbench.eval.run import finished_units, stages
from prefbench.results import objective_dir, read_json, run_dir, unit_ids


class LaunchError(PrefbenchError, RuntimeError):
    pass


@dataclass(frozen=True)
class Task:
    name: str  # "train dpo/seed0": what the progress lines and errors say
    argv: tuple[str, ...]  # the command, from the Python executable on
    gpus: int  # devices it asks for (0 on a CPU)
    log: Path  # its output


def plan(
    recipe_path: str, overrides: list[str], recipe, gpus_per_unit: int = 0, done: set[str] | None = None
) -> list[list[Task]]:
    """The waves of tasks that carry `recipe` out, less the `done` ones (by name; default: done_tasks). Every path
    a task sees is absolute (the recipe, output_dir, report_dir), so a task runs the same from any working
    directory or node; relative data paths in the recipe resolve against the launch's working directory, which
    every executor runs its tasks in."""
    root = run_dir(recipe).resolve()
    fixed = [
        *overrides,
        f"output_dir={Path(recipe.output_dir).resolve()}",
        f"report_dir={Path(recipe.report_dir).resolve()}",
    ]
    sets = [a for item in fixed for a in ("--set", item)]
    python = [sys.executable]
    torchrun = (
        [*python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_unit}"]
        if gpus_per_unit > 1
        else python
    )

    def task(name: str, command: list[str], distributed: bool = False) -> Task:
        argv = (
            *(torchrun if distributed else python),
            "-m",
            "prefbench.cli",
            *command,
            str(Path(recipe_path).resolve()),
            *sets,
        )
        return Task(name, argv, gpus_per_unit, root / "logs" / (name.replace(" ", "-").replace("/", "-") + ".log"))

    waves = _trial_waves(recipe, task) + _unit_waves(recipe, task, [], "prepare", "evaluate reference")
    waves.append([task("finish", ["run"])])
    done = done_tasks(recipe) if done is None else done
    return [[t for t in wave if t.name not in done] for wave in waves]


def _trial_waves(recipe, task) -> list[list[Task]]:
    """A tuned recipe's trials first (the commands' --trials: the recipe's <name>-tune run), then `tune`, which
    reads them and writes the choice the later waves train with; none without a tune section."""
    if recipe.tune is None:
        return []
    trials = recipe.trials_recipe()
    return _unit_waves(trials, task, ["--trials"], "prepare trials", "evaluate trials reference") + [
        [task("tune", ["tune"])]
    ]


def _unit_waves(recipe, task, flags: list[str], prepare: str, reference: str) -> list[list[Task]]:
    """One run's waves: the reference pass, then every unit's training beside the reference's evaluation, then
    every unit's evaluation (where the recipe has per-unit stages); `flags` select the run (--trials), `prepare`
    and `reference` name its first task and the reference's evaluation."""
    units, evaluated = unit_ids(recipe), _has_unit_stages(recipe)
    return [
        [task(prepare, ["prepare", *flags], distributed=True)],
        [
            task(f"train {uid}", ["train", *flags, "--objective", uid.label, "--seed", str(uid.seed)], distributed=True)
            for uid in units
        ]
        + ([task(reference, ["evaluate", *flags, "--unit", "reference"])] if evaluated else []),
        [task(f"evaluate {uid}", ["evaluate", *flags, "--unit", str(uid)]) for uid in units] if evaluated else [],
    ]


def done_tasks(recipe) -> set[str]:
    """The tasks a launch need not queue again, so a relaunch after a failure queues only what is left: a trained
    unit's training (its summary.json, what `prefbench train` checks first); the reference pass, which only training
    reads, once every unit is trained; a unit's evaluation whose results are stored with this recipe's settings
    (eval.run.finished_units: the stages' own checks). The final step always runs."""
    if recipe.tune is None:
        return _finished(recipe, "prepare", "evaluate reference")
    # a tuned recipe: its trials' tasks as any run's; the chosen units' once `tune` has written the choice
    done = _finished(recipe.trials_recipe(), "prepare trials", "evaluate trials reference")
    if not (path := run_dir(recipe) / "tuning.json").is_file():
        return done
    return done | {"tune"} | _finished(recipe.with_choice(read_json(path)), "prepare", "evaluate reference")


def _finished(recipe, prepare: str, reference: str) -> set[str]:
    """One run's finished tasks: each unit trained (its summary.json), the reference pass once every unit is
    trained, each unit's evaluation stored with the recipe's settings; `prepare` and `reference` name the run's
    prepare task and the reference's evaluation task."""
    units = unit_ids(recipe)
    done = {f"train {uid}" for uid in units if (objective_dir(recipe, uid.label, uid.seed) / "summary.json").is_file()}
    if len(done) == len(units):
        done.add(prepare)
    if _has_unit_stages(recipe):
        evaluated = finished_units(recipe, ["reference", *map(str, units)])
        done |= {reference if u == "reference" else f"evaluate {u}" for u in evaluated}
    return done


def _has_unit_stages(recipe) -> bool:
    return any(stage.per_unit for stage in stages(recipe))


def launch(waves: list[list[Task]], executor) -> None:
    """Run the waves in order on `executor`, a line as each task ends; stops at the first wave with a failed task,
    naming each and its log."""
    total, ended = sum(map(len, waves)), [0]

    def report(task: Task, ok: bool, seconds: float) -> None:
        ended[0] += 1
        print(
            f"[{time.strftime('%H:%M:%S')}] {ended[0]}/{total} {task.name}: {'done' if ok else 'FAILED'} in {seconds:.0f} s",
            flush=True,
        )

    for wave in waves:
        if wave and (failed := executor.run(wave, report)):
            raise LaunchError(
                "; ".join(f"{t.name} failed (its output: {t.log})" for t in failed)
                + ". Fix the cause and launch again: finished work is kept"
            )


def run_task(argv: tuple[str, ...], log: str, cwd: str, extra: dict | None = None) -> int:
    """One task's command, its output to `log`; its exit status. What every executor runs (on whatever node)."""
    env = os.environ  # under Slurm, the job as squeue and scontrol name it: an array task, or a job of its own
    job = (
        f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        if "SLURM_ARRAY_JOB_ID" in env
        else env.get("SLURM_JOB_ID")
    )
    if (
        job and "OMP_NUM_THREADS" not in env
    ):  # as many threads as the CPUs Slurm gave the job on this node ("2" or "2(x3)")
        extra = {
            "OMP_NUM_THREADS": re.match(r"\d*", env.get("SLURM_JOB_CPUS_PER_NODE", "")).group() or "1",
            **(extra or {}),
        }
    with _open_log(Path(log), argv, f"slurm job {job}" if job else None) as out:
        return subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(extra or {})}
        ).returncode


def _open_log(log: Path, argv: tuple[str, ...], note: str | None = None):
    """A task's log opened for appending, headed by its command (and a note, e.g. its Slurm job)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    out.write(f"$ {' '.join(argv)}\n".encode() + (f"{note}\n".encode() if note else b""))
    out.flush()
    return out


# ---- executors: run(wave, report) -> the tasks that failed ------------------------------------------------


class LocalExecutor:
    """One process per task on this machine, at most `parallel` at a time. On a GPU machine, each task takes
    `gpus` free devices (CUDA_VISIBLE_DEVICES) and waits for them; on a CPU, each of the `parallel` processes gets
    its share of the cores (OMP_NUM_THREADS)."""

    def __init__(self, parallel: int, cwd: str, devices: int | None = None):
        import torch  # deferred: torch: a second to import; prefbench check and report do without

        self.parallel, self.cwd = parallel, cwd
        self.devices = torch.cuda.device_count() if devices is None else devices
        self.threads = max(1, (os.cpu_count() or 1) // parallel)

    def run(self, wave: list[Task], report) -> list[Task]:
        pending, running, failed = list(wave), [], []
        free = list(range(self.devices))
        while pending or running:
            while pending and len(running) < self.parallel and len(free) >= pending[0].gpus:
                task = pending.pop(0)
                held, free = free[: task.gpus], free[task.gpus :]
                env = (
                    {"CUDA_VISIBLE_DEVICES": ",".join(map(str, held))}
                    if self.devices
                    else {"OMP_NUM_THREADS": str(self.threads)}
                )
                running.append((task, held, time.time(), _start(task, self.cwd, env)))
            if pending and not running:
                raise LaunchError(f"{pending[0].name} asks for {pending[0].gpus} GPUs; this machine has {self.devices}")
            time.sleep(0.2)
            for entry in [e for e in running if e[3].poll() is not None]:
                task, held, started, process = entry
                running.remove(entry)
                free += held
                ok = process.returncode == 0
                report(task, ok, time.time() - started)
                failed += [] if ok else [task]
        return failed


def _start(task: Task, cwd: str, env: dict) -> subprocess.Popen:
    with _open_log(task.log, task.argv) as out:  # the child keeps its own handle on the log
        return subprocess.Popen(task.argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})


class SlurmExecutor:
    """A job array per wave through submitit, at most `parallel` array tasks at a time, each with `gpus` GPUs on
    one node, its threads as many as the CPUs Slurm gave it (OMP_NUM_THREADS, unless set). The tasks are
    requeueable: a requeued or preempted task runs its command again, which resumes. A task
    is over when it has left Slurm's queue, and done when its result says its command succeeded: a requeued task
    stays queued, and the result its killed attempt may have written is replaced by the next one's; a task that
    left without a result (cancelled, its node failed) failed, where submitit alone would wait for it forever
    with accounting (sacct) off."""

    def __init__(self, parallel: int, cwd: str, folder: Path, gpus: int, options: dict[str, str]):
        try:
            import submitit  # deferred: an optional engine's client (prefbench[slurm])
        except ImportError:
            raise LaunchError("--executor slurm needs submitit: pip install 'prefbench[slurm]'") from None
        options = dict(options)
        minutes = int(options.pop("time", 24 * 60))
        self.cwd = cwd
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        self.executor.update_parameters(
            slurm_array_parallelism=parallel,
            gpus_per_node=gpus or None,
            nodes=1,
            tasks_per_node=1,
            timeout_min=minutes,
            slurm_additional_parameters={"requeue": True, **options},
        )

    def run(self, wave: list[Task], report) -> list[Task]:
        started = time.time()
        with self.executor.batch():
            jobs = [self.executor.submit(run_task, t.argv, str(t.log), self.cwd) for t in wave]
        waiting, failed = dict(zip(jobs, wave)), []
        while waiting:
            time.sleep(1)
            queued = _slurm_queue()
            for job, task in list(waiting.items()):
                if job.job_id in queued:  # pending, running, or requeued (a killed attempt may have left a result)
                    continue
                del waiting[job]
                try:  # its result file (job.done() would ask sacct, which prints an error at every poll where it is off)
                    ok = job.paths.result_pickle.exists() and job.result() == 0
                except Exception:  # the job's own failure: its submitit log (logs/slurm/) says why
                    ok = False
                report(task, ok, time.time() - started)
                failed += [] if ok else [task]
        return failed


def _slurm_queue() -> set[str]:
    """The ids of the jobs and array tasks in Slurm's queue (pending, running, requeued), as submitit names them."""
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i"], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


class RayExecutor:
    """One Ray task per unit with num_gpus=`gpus` on the cluster ray.init finds (RAY_ADDRESS, or a local one
    started here), at most `parallel` in flight."""

    def __init__(self, parallel: int, cwd: str, gpus: int, address: str | None):
        try:
            import ray  # deferred: an optional engine's client (prefbench[ray])
        except ImportError:
            raise LaunchError("--executor ray needs ray: pip install 'prefbench[ray]'") from None
        self.ray, self.parallel, self.cwd = ray, parallel, cwd
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        self.remote = ray.remote(num_gpus=gpus, num_cpus=0 if gpus else 1, max_retries=0)(run_task)

    def run(self, wave: list[Task], report) -> list[Task]:
        pending, running, failed = list(wave), {}, []
        while pending or running:
            while pending and len(running) < self.parallel:
                task = pending.pop(0)
                running[self.remote.remote(task.argv, str(task.log), self.cwd)] = (task, time.time())
            ready, _ = self.ray.wait(list(running), num_returns=1)
            task, started = running.pop(ready[0])
            try:
                ok = self.ray.get(ready[0]) == 0
            except self.ray.exceptions.RayError:
                ok = False
            report(task, ok, time.time() - started)
            failed += [] if ok else [task]
        return failed


EXECUTORS = ("local", "slurm", "ray")


def make_executor(
    kind: str,
    parallel: int,
    gpus_per_unit: int,
    root: Path,
    *,
    slurm_options: dict[str, str] | None = None,
    ray_address: str | None = None,
):
    cwd = os.getcwd()
    if kind == "local":
        return LocalExecutor(parallel, cwd)
    if kind == "slurm":
        return SlurmExecutor(parallel, cwd, root / "logs" / "slurm", gpus_per_unit, slurm_options or {})
    if kind == "ray":
        return RayExecutor(parallel, cwd, gpus_per_unit, ray_address)
    raise LaunchError(f"--executor {kind}: one of {', '.join(EXECUTORS)}")
