"""A fault-injecting HTTP proxy (127.0.0.1 only) in front of a real OpenAI-compatible endpoint, for the judge's
transport tests: it forwards chat completions and, on a share of calls, answers instead with one of the faults
real endpoints produce, in turn:

  429        rate limited, with retry-after-ms
  500, 503   server errors
  stall_504  nothing for `stall_s` seconds, then a gateway timeout
  drop       the connection closed without an answer
  truncated  the endpoint's real answer, its JSON body cut in half (a consistent Content-Length)
  garbage    the endpoint's real answer with its content replaced by text that is no verdict

Which call is faulted is decided by a hash of the request body and how often it was seen (so a retry is a new
draw), and one request is faulted at most `max_faults` times (2: fewer than the judge's 3 asks of a no-verdict
answer, so a faulted request always ends in the endpoint's own answer); the kinds come in turn, so with one
call at a time the same requests meet the same faults in every run. Counts: `injected[kind]`,
`upstream_calls[body hash]` (calls that reached the endpoint).
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("429", "500", "503", "stall_504", "drop", "truncated", "garbage")
GARBAGE = "I cannot decide. ~~~"


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.3, stall_s: float = 0.3, max_faults: int = 2, seed: int = 0):
        self.upstream = upstream.rstrip("/").removesuffix(
            "/v1"
        )  # the endpoint's root; paths are forwarded as they come
        self.rate, self.stall_s, self.max_faults, self.seed = rate, stall_s, max_faults, seed
        self.lock = threading.Lock()
        self.seen: collections.Counter = collections.Counter()  # arrivals per body
        self.upstream_calls: collections.Counter = collections.Counter()  # forwards per body
        self.injected: collections.Counter = collections.Counter()
        self.faults = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def duplicated_upstream_calls(self) -> int:
        """Calls that reached the endpoint again for a request it had already answered."""
        return sum(n - 1 for n in self.upstream_calls.values())

    def decide(self, body: bytes) -> str | None:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            n = self.seen[digest]
            self.seen[digest] += 1
            draw = int(hashlib.sha256(f"{self.seed}:{n}:{digest}".encode()).hexdigest()[:8], 16) / 16**8
            if n >= self.max_faults or draw >= self.rate:
                return None
            kind = KINDS[self.faults % len(KINDS)]  # in turn: every kind is met once enough calls are faulted
            self.faults += 1
            self.injected[kind] += 1
            return kind

    def forward(self, path: str, body: bytes, headers) -> tuple[int, bytes]:
        with self.lock:
            self.upstream_calls[hashlib.sha256(body).hexdigest()] += 1
        request = urllib.request.Request(
            self.upstream + path,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": headers.get("Authorization", "")},
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fault = proxy.decide(body)
                if fault == "drop":
                    self.close_connection = True
                    return  # no status line at all: the client sees the connection end
                if fault in ("429", "500", "503", "stall_504"):
                    if fault == "stall_504":
                        time.sleep(proxy.stall_s)
                    status = 504 if fault == "stall_504" else int(fault)
                    self.send(
                        status,
                        json.dumps({"error": {"message": f"injected {fault}", "type": "server_error"}}).encode(),
                        {"retry-after-ms": "50"} if fault == "429" else {},
                    )
                    return
                status, data = proxy.forward(self.path, body, self.headers)
                if status == 200 and fault == "truncated":
                    data = data[: len(data) // 2]
                elif status == 200 and fault == "garbage":
                    answer = json.loads(data)
                    answer["choices"][0]["message"]["content"] = GARBAGE
                    answer["choices"][0]["logprobs"] = None
                    data = json.dumps(answer).encode()
                self.send(status, data)

            def send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for name, value in {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(data)),
                    **(headers or {}),
                }.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
