"""`prefbench launch`: a 2 objectives x 2 seeds grid handed to real engines on this machine (local processes, a
local Ray cluster) gives what `prefbench run` gives, with the reference pass computed once; and the stages it
is made of (prepare, train, evaluate --unit) each stand alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_digest import digest

REPO = Path(__file__).resolve().parent.parent
# one worker runs this module's tests, so the serial run they all compare with is computed once (a module fixture
# is set up once per worker that runs one of its tests)
pytestmark = [pytest.mark.xdist_group("launch"), pytest.mark.integration]  # real Ray and Slurm clusters
GRID = [
    "--set",
    "objectives=[{name: dpo, beta: 0.1}, {name: ipo, beta: 0.1}]",
    "--set",
    "seeds=[0, 1]",
    "--set",
    "train.steps=24",
    "--set",
    "train.save_every=4",
    "--set",
    "eval.generation.engine=hf",
    "--set",
    "eval.generation.greedy=false",
    "--set",
    "eval.benchmarks={backend: hf, tasks: [{task: prefbench_mc, num_fewshot: 0, limit: 8}]}",
]
UNITS = ["dpo/seed0", "dpo/seed1", "ipo/seed0", "ipo/seed1"]


def _command(args: list[str], out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefbench.cli",
        *args,
        str(REPO / "recipes" / "tiny_smoke.yaml"),
        *GRID,
        "--set",
        f"output_dir={out}",
        "--set",
        f"report_dir={out / 'reports'}",
    ]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    """Each run its own cache, so no generation is read from another run's."""
    return {**os.environ, "PREFBENCH_CACHE": str(cache), "PYTHONPATH": str(REPO), **extra}


def _prefbench(args: list[str], out: Path, cache: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(args, out), cwd=REPO, capture_output=True, text=True, env=_env(cache))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def _tables(report: Path) -> list[list[str]]:
    """The report's table rows (what a reader compares), less the columns of how fast it ran (train s, tokens/s,
    peak MB) and the prose about where and when."""
    rows, speed = [], set()
    for line in report.read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "unit":
            speed = {i for i, c in enumerate(cells) if c in ("train s", "tokens/s", "peak MB")}
        rows.append([c for i, c in enumerate(cells) if i not in speed])
    return rows


def _timings(root: Path) -> dict[str, list[dict]]:
    return {
        str(f.parent.relative_to(root)): [json.loads(line) for line in f.read_text().splitlines()]
        for f in root.rglob("timings.jsonl")
    }


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    _prefbench(["run"], out, out / "cache")
    return out


@pytest.mark.integration
def test_local_launch_gives_the_serial_runs_results_with_one_reference_pass(serial, tmp_path, monkeypatch):
    launched = tmp_path / "launched"
    result = _prefbench(["launch", "--executor", "local", "--parallel", "2"], launched, tmp_path / "cache")
    assert "finish: done" in result.stdout and "report:" in result.stdout
    assert digest(launched / "tiny_smoke") == digest(serial / "tiny_smoke")
    assert len(digest(serial / "tiny_smoke")) > 20
    assert _tables(launched / "reports" / "tiny_smoke" / "report.md") == _tables(
        serial / "reports" / "tiny_smoke" / "report.md"
    )

    timings = _timings(launched / "tiny_smoke")
    passes = [t for lines in timings.values() for t in lines if t["stage"] == "reference pass"]
    assert (
        len(passes) == 1 and passes[0]["rows"] > 0
    )  # prepare computed every unit's reference log-probs; no unit repeated it
    assert [t["stage"] for t in timings["reference"]] == ["reference pass", "evaluate"]
    for unit in UNITS:  # each unit wrote its own timings: one training, one evaluation, with where they ran
        assert [t["stage"] for t in timings[unit]] == ["train", "evaluate"] and all(
            t["host"] and t["device"] == "cpu" for t in timings[unit]
        )
    logs = sorted(p.name for p in (launched / "tiny_smoke" / "logs").iterdir())
    assert logs == sorted(
        ["prepare.log", "finish.log", "evaluate-reference.log"]
        + [f"{s}-{u.replace('/', '-')}.log" for s in ("train", "evaluate") for u in UNITS]
    )

    # launched again: nothing done is queued again (training, the reference pass only training reads, evaluations
    # stored with the same settings); only the final step runs, and finds everything done
    again = _prefbench(["launch", "--executor", "local", "--parallel", "2"], launched, tmp_path / "cache")
    done = ["evaluate reference"] + [f"{s} {u}" for s in ("evaluate", "train") for u in UNITS] + ["prepare"]
    assert f"done before, not queued again: {', '.join(sorted(done))}" in again.stdout
    assert again.stdout.count(": done in") == 1 and "1/1 finish: done" in again.stdout
    stages = {unit: [t["stage"] for t in lines] for unit, lines in _timings(launched / "tiny_smoke").items()}
    assert stages["reference"] == ["reference pass", "evaluate"] and all(
        stages[unit] == ["train", "evaluate"] for unit in UNITS
    )

    # what a launch queues is what the stages would redo: other evaluation settings queue every evaluation again,
    # no training; a unit's missing result queues that unit's evaluation alone
    from prefbench.check import load_recipe
    from prefbench.launch import plan

    monkeypatch.setenv(
        "PREFBENCH_CACHE", str(tmp_path / "cache")
    )  # the launch's: the reference model's path is part of the settings

    def queued(*changed: str, output_dir: Path = launched) -> list[list[str]]:
        overrides = [*GRID[1::2], f"output_dir={output_dir}", *changed]
        return [
            [t.name for t in w]
            for w in plan("r.yaml", overrides, load_recipe(REPO / "recipes" / "tiny_smoke.yaml", overrides))
        ]

    assert queued() == [[], [], [], ["finish"]]
    for changed in (
        "eval.generation.sampling.max_tokens=9",
        "eval.benchmarks={backend: hf, tasks: [{task: prefbench_mc, num_fewshot: 0, limit: 6}]}",
    ):
        assert queued(changed)[1:] == [["evaluate reference"], [f"evaluate {u}" for u in UNITS], ["finish"]], changed
    kept = (launched / "tiny_smoke" / "ipo" / "seed0" / "eval_preference.json").read_bytes()
    (launched / "tiny_smoke" / "ipo" / "seed0" / "eval_preference.json").unlink()
    assert queued() == [[], [], ["evaluate ipo/seed0"], ["finish"]]
    (launched / "tiny_smoke" / "ipo" / "seed0" / "eval_preference.json").write_bytes(kept)

    # a run directory moved elsewhere (another node's mount of shared storage) still reports and compares
    moved = tmp_path / "elsewhere" / "tiny_smoke"
    shutil.move(launched / "tiny_smoke", moved)
    from prefbench.cli import main

    assert main(["report", str(moved), "--out", str(tmp_path / "moved-report")]) == 0
    assert _tables(tmp_path / "moved-report" / "tiny_smoke" / "report.md") == _tables(
        serial / "reports" / "tiny_smoke" / "report.md"
    )
    assert main(["compare", str(serial / "tiny_smoke"), str(moved)]) == 0
    assert queued(output_dir=moved.parent) == [
        [],
        [],
        [],
        ["finish"],
    ]  # its evaluations hold there too (no paths in their settings)


def test_a_checkpoint_is_not_evaluated_before_the_reference_and_units_are_checked(serial, tmp_path, capsys):
    from prefbench.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(serial / "tiny_smoke", copy / "tiny_smoke")
    shutil.rmtree(copy / "tiny_smoke" / "reference")
    for unit in UNITS:
        for f in ("eval_generation.json", "eval_preference.json"):
            (copy / "tiny_smoke" / unit / f).unlink()
    args = ["evaluate", str(REPO / "recipes" / "tiny_smoke.yaml"), *GRID, "--set", f"output_dir={copy}"]
    assert main([*args, "--unit", "dpo/seed0"]) == 2
    assert "run `prefbench evaluate RECIPE --unit reference` first" in capsys.readouterr().err
    assert main([*args, "--unit", "kto/seed0"]) == 2
    assert (
        "--unit kto/seed0: not a unit of this recipe; its units are reference, dpo/seed0, dpo/seed1, ipo/seed0, ipo/seed1"
        in capsys.readouterr().err
    )


@pytest.mark.integration
def test_ray_launch_on_a_local_cluster_gives_the_serial_runs_results(serial, tmp_path):
    pytest.importorskip("ray")
    launched = tmp_path / "launched"
    _prefbench(["launch", "--executor", "ray", "--parallel", "2"], launched, tmp_path / "cache")
    assert digest(launched / "tiny_smoke") == digest(serial / "tiny_smoke")
    passes = [
        t for lines in _timings(launched / "tiny_smoke").values() for t in lines if t["stage"] == "reference pass"
    ]
    assert len(passes) == 1


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A real single-node Slurm cluster on 127.0.0.1: Debian's slurmctld, slurmd and munge (make setup installs
    them), started here as root with a configuration of the test's own, and shut down after. Its environment
    (SLURM_CONF) is what the launch and Slurm's commands run in."""
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch", "squeue")) or os.geteuid() != 0:
        pytest.skip("needs Debian's slurmctld, slurmd and munge (make setup installs them) and root to start them")
    root = tmp_path_factory.mktemp("slurm")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    host = socket.gethostname().split(".")[0]
    (root / "state").mkdir()
    (root / "spool").mkdir()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=prefbench-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}  # for the daemons and Slurm's commands here
    started_munge = bool(subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode)
    if started_munge:  # munged is not running yet: start it, and stop it at the end
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            os.makedirs(d, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True)
    deadline = time.time() + 60
    while (
        subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True).stdout.strip()
        != "idle"
    ):
        assert time.time() < deadline, (root / "slurmctld.log").read_text()[-2000:]
        time.sleep(0.5)
    yield {"SLURM_CONF": str(conf)}  # what a test adds to its own environment (not the session's PREFBENCH_CACHE)
    subprocess.run(["scontrol", "shutdown"], env=env)
    if started_munge:
        subprocess.run(["pkill", "-x", "munged"])


@pytest.mark.integration
def test_slurm_launch_with_a_unit_requeued_mid_training_gives_the_serial_runs_results(serial, slurm, tmp_path):
    launched = tmp_path / "launched"
    run = subprocess.Popen(
        _command(["launch", "--executor", "slurm", "--parallel", "2"], launched),
        cwd=REPO,
        env=_env(tmp_path / "cache", **slurm),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # dpo/seed0 a few steps past its first checkpoint: Slurm kills its job and queues it again (scontrol requeue)
    unit = launched / "tiny_smoke" / "dpo" / "seed0"
    while run.poll() is None and not (
        (unit / "metrics.jsonl").is_file() and len((unit / "metrics.jsonl").read_text().splitlines()) >= 6
    ):
        time.sleep(0.05)
    job = re.search(r"slurm job (\S+)", (launched / "tiny_smoke" / "logs" / "train-dpo-seed0.log").read_text()).group(1)
    slurm_env = {**os.environ, **slurm}
    subprocess.run(["scontrol", "requeue", job], env=slurm_env, check=True)
    # Slurm holds a requeued job back about two minutes (its begin time); this test need not wait them out
    while (
        subprocess.run(
            ["squeue", "--noheader", "--format=%T", "--jobs", job], env=slurm_env, capture_output=True, text=True
        ).stdout.strip()
        != "PENDING"
    ):
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env, check=True)
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output[-3000:]
    assert digest(launched / "tiny_smoke") == digest(serial / "tiny_smoke")
    trained = [t for t in _timings(launched / "tiny_smoke")["dpo/seed0"] if t["stage"] == "train"]
    assert len(trained) == 1 and trained[0]["from_step"] >= 4  # the requeued task resumed from a checkpoint
    log = (launched / "tiny_smoke" / "logs" / "train-dpo-seed0.log").read_text()
    assert log.count(f"slurm job {job}") == 2  # the same array task, run twice
    assert list(
        (tmp_path / "cache" / "reflogps").glob("*.pt")
    )  # the jobs used this run's own cache, as the serial run did


def test_local_slots_give_each_task_its_own_devices_and_plans_put_torchrun_in_multi_gpu_units(tmp_path):
    """The local executor's device slots, with real processes and a stated device count (no GPU here): tasks that
    run at the same time never share a device, and a task asking for more devices than the machine has is one
    line. A plan with 2 GPUs per unit runs prepare and training under torchrun, evaluation in one process."""
    from prefbench.check import load_recipe
    from prefbench.launch import LaunchError, LocalExecutor, Task, plan

    probe = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], time.time()); time.sleep(1); print(time.time())"
    tasks = [Task(f"t{i}", (sys.executable, "-c", probe), 2, tmp_path / f"t{i}.log") for i in range(4)]
    ended = []
    assert (
        LocalExecutor(parallel=3, cwd=str(tmp_path), devices=5).run(tasks, lambda t, ok, s: ended.append((t.name, ok)))
        == []
    )
    assert sorted(ended) == [(f"t{i}", True) for i in range(4)]
    runs = []
    for t in tasks:
        devices, start, end = t.log.read_text().splitlines()[-2].split() + t.log.read_text().splitlines()[-1:]
        runs.append((set(devices.split(",")), float(start), float(end)))
    assert all(len(d) == 2 for d, _, _ in runs)
    for i, (d1, s1, e1) in enumerate(runs):
        for d2, s2, e2 in runs[i + 1 :]:
            if s1 < e2 and s2 < e1:  # ran at the same time: two GPUs each of five, so at most two at once
                assert not d1 & d2
    with pytest.raises(LaunchError, match="asks for 6 GPUs; this machine has 5"):
        LocalExecutor(parallel=2, cwd=str(tmp_path), devices=5).run(
            [Task("big", (sys.executable, "-c", ""), 6, tmp_path / "big.log")], print
        )

    recipe = load_recipe(REPO / "recipes" / "tiny_smoke.yaml", GRID[1::2])
    waves = plan(str(REPO / "recipes" / "tiny_smoke.yaml"), GRID[1::2], recipe, gpus_per_unit=2)
    assert [[t.name for t in w] for w in waves] == [
        ["prepare"],
        [f"train {u}" for u in UNITS] + ["evaluate reference"],
        [f"evaluate {u}" for u in UNITS],
        ["finish"],
    ]
    for wave in waves:
        for t in wave:
            distributed = t.name == "prepare" or t.name.startswith("train")
            assert ("torch.distributed.run" in t.argv and "--nproc_per_node=2" in t.argv) == distributed and t.gpus == 2

    # a unit already trained (its summary.json) is not queued again; the reference pass goes once none is left
    recipe = load_recipe(REPO / "recipes" / "tiny_smoke.yaml", [*GRID[1::2], f"output_dir={tmp_path / 'runs'}"])
    for unit in UNITS[:3]:
        (tmp_path / "runs" / "tiny_smoke" / unit).mkdir(parents=True)
        (tmp_path / "runs" / "tiny_smoke" / unit / "summary.json").write_text("{}")
    names = lambda waves: [[t.name for t in w] for w in waves]
    assert names(plan("r.yaml", [], recipe))[:2] == [["prepare"], ["train ipo/seed1", "evaluate reference"]]
    (tmp_path / "runs" / "tiny_smoke" / UNITS[3]).mkdir(parents=True)
    (tmp_path / "runs" / "tiny_smoke" / UNITS[3] / "summary.json").write_text("{}")
    assert names(plan("r.yaml", [], recipe)) == [
        [],
        ["evaluate reference"],
        [f"evaluate {u}" for u in UNITS],
        ["finish"],
    ]
