"""A real local HTTP server speaking OpenAI chat completions, for the judge's fault tests.

Its judge prefers the answer containing "GOOD" (a tie when both or neither do). Markers in the question
make it misbehave, once per distinct request unless said otherwise:
  [429]        rate limited (with retry-after-ms, as real endpoints send it), then answers
  [500]        an internal error, then answers
  [slow]       answers only after `slow_s` seconds (beyond the client's timeout), then answers at once
  [malformed]  always answers with something that is no verdict
  [first]      always prefers answer A (a position-biased judge)
With reject_json, requests with response_format get 400 (an endpoint without structured outputs).
`requests[key]` lists what each distinct request (messages + form) was answered: 200, 400, 429, 500 or
"slow" (an answer the client had stopped waiting for).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, reject_json: bool = False, slow_s: float = 1.5):
        self.reject_json, self.slow_s = reject_json, slow_s
        self.requests: dict[str, list] = collections.defaultdict(list)
        self.authorizations: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answered(self) -> dict[str, int]:
        """Verdicts delivered per distinct request."""
        with self.lock:
            return {k: v.count(200) for k, v in self.requests.items() if 200 in v}

    def count(self, status) -> int:
        with self.lock:
            return sum(v.count(status) for v in self.requests.values())

    def reply(self, body: dict) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) for one chat-completions request."""
        user = body["messages"][-1]["content"]
        json_form = "response_format" in body
        key = hashlib.sha256((json.dumps(body["messages"], sort_keys=True) + str(json_form)).encode()).hexdigest()
        with self.lock:
            seen = list(self.requests[key])
            status = 400 if json_form and self.reject_json else 200
            fault = next((f for f in ("429", "500", "slow") if f"[{f}]" in user), None)
            if status == 200 and fault and not seen:
                status = int(fault) if fault != "slow" else "slow"
            self.requests[key].append(status)
        if status == "slow":
            time.sleep(self.slow_s)
        if status == 400:
            return (
                400,
                {},
                {"error": {"message": "response_format is not supported here", "type": "invalid_request_error"}},
            )
        if status in (429, 500):
            return status, {"retry-after-ms": "10"}, {"error": {"message": f"fault {status}", "type": "server_error"}}
        a, b = (re.search(f"<answer_{t}>\n(.*?)\n</answer_{t}>", user, re.S).group(1) for t in "ab")
        verdict = (
            "A"
            if "[first]" in user
            else {(True, False): "A", (False, True): "B"}.get(("GOOD" in a, "GOOD" in b), "tie")
        )
        if "[malformed]" in user:
            content = "The first answer, I think."
        elif json_form:
            content = json.dumps({"verdict": verdict})
        else:
            content = f"Both answers are short.\nVerdict: {verdict}"
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and json_form and "[malformed]" not in user:
            others = [v for v in ("A", "B", "tie") if v != verdict]
            top = [(verdict, 0.8), (others[0], 0.15), (others[1], 0.05)]
            tokens = ['{"verdict": "', verdict, '"}']
            choice["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": 0.0 if t != verdict else math.log(0.8),
                        "bytes": None,
                        "top_logprobs": [{"token": v, "logprob": math.log(p), "bytes": None} for v, p in top]
                        if t == verdict
                        else [],
                    }
                    for t in tokens
                ]
            }
        usage = {"prompt_tokens": len(user) // 4, "completion_tokens": 5, "total_tokens": len(user) // 4 + 5}
        return (
            200,
            {},
            {
                "id": "chatcmpl-fault",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            },
        )

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.authorizations.add(self.headers.get("Authorization", ""))
                status, headers, payload = server.reply(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in {
                        "Content-Type": "application/json",
                        "Content-Length": str(len(data)),
                        **headers,
                    }.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped waiting (the slow fault)

            def log_message(self, *args):
                pass

        return Handler
