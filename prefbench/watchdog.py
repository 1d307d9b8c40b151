"""No orphans: stop what a prefbench process started when that process dies, however it dies.

vLLM's engine core and workers (started in-process by generation) and the vLLM servers prefbench starts
(a local judge, lm-eval's local-completions backend; each in a session of its own) are child processes.
A parent killed with SIGKILL or SIGTERM cannot stop them, and the operating system does not: they are
handed to init and keep running, an idle vLLM busy-looping on a CPU core and holding GPU memory, so that
the re-run does not fit. Linux's parent-death signal cannot be set on processes vLLM starts itself.

So the first time a process is about to start such children it calls `guard()`, which starts one watchdog
process per prefbench process: `python -m prefbench.watchdog PID`, in a session of its own (a kill of the
run's process group leaves it standing). Every POLL_S it notes the descendants of PID; once PID is gone, it
sends SIGTERM to each noted process and its process group, waits up to GRACE_S, sends SIGKILL to what is
left, and exits. It holds no resources, and exits with its parent's death or when its parent is gone at start.
psutil finds descendants across sessions (by parent id), which process groups cannot.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.5
GRACE_S = 5.0

_started: dict[int, int] = {}  # pid of the guarded process -> its watchdog's


def guard() -> None:
    """Make sure this process has a watchdog (once per process; a forked child gets its own). Spawned without a
    Popen object: nothing here waits for it, since it outlives this process by design."""
    pid = os.getpid()
    if pid in _started and _alive(_started[pid]):
        return
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    _started[pid] = os.posix_spawn(sys.executable, [sys.executable, "-m", "prefbench.watchdog", str(pid)], os.environ,
                                   file_actions=quiet, setsid=True)


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)  # not exited (and reaped if it has)
    except ChildProcessError:
        return False


def watch(parent: int) -> None:
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the run: the run's children go with the run
    me = os.getpid()
    try:
        guarded = psutil.Process(parent)
    except psutil.NoSuchProcess:
        return
    noted: dict[int, psutil.Process] = {}
    while guarded.is_running() and guarded.status() != psutil.STATUS_ZOMBIE:
        try:
            noted |= {p.pid: p for p in guarded.children(recursive=True) if p.pid != me}
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    stop(list(noted.values()))


def stop(processes: list) -> None:
    """SIGTERM to each process still running, its descendants and its process group (a server's session), then
    SIGKILL to whatever is left after GRACE_S."""
    import psutil

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
