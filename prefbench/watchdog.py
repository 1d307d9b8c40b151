"""No orphans: stop what a prefbench process started when that process dies, however it dies.

vLLM's engine core and workers (started in-process by generation) and the vLLM servers prefbench starts
(a local judge, lm-eval's local-completions backend; each in a session of its own) are child processes.
A parent killed with SIGKILL or SIGTERM cannot stop them, and the operating system does not: they are
handed to init and keep running, an idle vLLM busy-looping on a CPU core and holding GPU memory, so that
the re-run does not fit. Linux's parent-death signal cannot be set on processes vLLM starts itself.

So the first time a process is about to start such children it calls `guard()`, which marks the process's
environment (MARKER=pid, inherited by every child it starts from then on) and starts one watchdog process:
`python -m prefbench.watchdog PID`, in a session of its own (a kill of the run's process group leaves it
standing). The watchdog is PID's direct child: once its parent id is no longer PID, PID is gone; every POLL_S
it also notes PID's descendants. Then it sends SIGTERM to every process it noted or that carries the marker,
with their process groups, waits up to GRACE_S, sends SIGKILL to what is left, and exits. The marker finds
children started just before the end or before the watchdog's first look; psutil finds descendants across
sessions (by parent id), which process groups cannot.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0
MARKER = "PREFBENCH_WATCHED_BY"  # environment variable: the pid of the prefbench process that started this one

_started: dict[int, int] = {}  # pid of the guarded process -> its watchdog's


def guard() -> None:
    """Make sure this process has a watchdog (once per process; a forked child gets its own). Spawned without a
    Popen object: nothing here waits for it, since it outlives this process by design."""
    pid = os.getpid()
    if pid in _started and _alive(_started[pid]):
        return
    os.environ[MARKER] = str(pid)  # inherited by every child started from here on
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _started[pid] = os.posix_spawn(
        sys.executable,
        [sys.executable, "-m", "prefbench.watchdog", str(pid)],
        os.environ,
        file_actions=quiet,
        setsid=True,
    )


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)  # not exited (and reaped if it has)
    except ChildProcessError:
        return False


def watch(parent: int) -> None:

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the run: the run's children go with the run
    me = os.getpid()
    noted: dict[int, psutil.Process] = {}
    while os.getppid() == parent:  # reparented once the parent is gone (also if it was gone before this started)
        try:
            noted |= {p.pid: p for p in psutil.Process(parent).children(recursive=True) if p.pid != me}
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    stop([*noted.values(), *_marked(parent, me)])


def _marked(parent: int, me: int) -> list:
    """Running processes whose environment says `parent` started them (MARKER); readable for the same user."""

    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != me and p.environ().get(MARKER) == str(parent):
                out.append(p)
        except psutil.Error:
            continue
    return out


def stop(processes: list) -> None:
    """SIGTERM to each process still running, its descendants and its process group (a server's session), then
    SIGKILL to whatever is left after GRACE_S."""

    alive = []
    for p in processes:
        try:
            alive += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive:
            try:
                if p.is_running():
                    p.send_signal(sig)
                    if os.getpgid(p.pid) == p.pid:  # a session or group leader: its whole group
                        os.killpg(p.pid, sig)
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                continue
        _, alive = psutil.wait_procs(alive, timeout=GRACE_S if sig == signal.SIGTERM else 1.0)
        if not alive:
            return


if __name__ == "__main__":
    watch(int(sys.argv[1]))
