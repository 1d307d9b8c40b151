"""Asking the judge: the endpoint and its API key, the openai client's retries, bounded concurrency, the
budget, and the verdict cache every answer goes to.

Endpoint
  judge.base_url names any OpenAI-compatible endpoint; its API key is read from the environment variable
  judge.api_key_env at run time, used only in the request header and scrubbed from every error message.
  With judge.local_model instead, prefbench serves that model on 127.0.0.1 with vLLM while the calls run.

Calls
  The first call goes alone and settles the request form (prompts.FORMS); the rest go out max_concurrency
  at a time, with a progress bar (calls, rate, time left, cost so far). A 400 after the first call is the
  judge's answer to that input (e.g. too long) and is cached as a failed verdict. Before a call goes out
  its cost is reserved at an upper bound (prompt characters / 4, max_tokens out); a call that would pass
  judge.budget_usd is not made, and the run stops with JudgeBudgetError.

Transport faults
  prefbench retries, not the openai client (its retries stop at the HTTP status, and a body cut in half
  or without choices reached the caller as a JSON error): 429 (after the endpoint's retry-after), 408,
  409, 5xx, timeouts, dropped connections, a body that is not JSON or has no answer are each retried with
  capped exponential backoff, up to judge.max_retries times for one call, and counted by kind (the run's
  `transport` record). When a call's retries run out, the run stops with one line naming the endpoint,
  the calls done and the last error; every verdict received stays cached.
  An answer that parses to no verdict is asked again, up to PARSE_ATTEMPTS times in all (a judge at
  temperature 0 repeats its answer; a glitch does not), then cached as a parse failure. Parse failures
  are counted in the results, and `--retry-failed` asks them again.

Verdict cache
  Every verdict, parse failures and rejected requests included, is appended to <cache>/verdicts.jsonl
  under its key (prompts.Call.key) and fsynced as it arrives: a killed run resumes with every verdict it
  received and asks for none twice (a line torn by the kill is ignored).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import openai
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from prefbench import models
from prefbench.errors import PrefbenchError
from prefbench.eval.judge.prompts import (
    CHARS_PER_TOKEN,
    FORMS,
    TEMPERATURE,
    Call,
)
from prefbench.eval.server import VLLMServer
from prefbench.recipe import LOCAL_HOSTS, JudgeSpec
from prefbench.results import AppendLog

log = logging.getLogger(__name__)

LOCAL_KEY = "EMPTY"  # what a local server gets instead of an API key
PARSE_ATTEMPTS = 3  # asks of one call whose answers parse to no verdict, before that is its verdict
BACKOFF_S, BACKOFF_CAP_S, RETRY_AFTER_CAP_S = 0.5, 8.0, 60.0  # first wait, longest wait, longest retry-after obeyed
RETRIED_STATUS = (408, 409, 429)  # and every 5xx


class MalformedResponse(Exception):
    """A 200 whose body has no answer in it (no choices, no message)."""


class JudgeError(PrefbenchError, RuntimeError):
    pass


class JudgeBudgetError(JudgeError):
    pass


class VerdictCache:
    """Verdicts by content key, kept in an append-only JSONL (results.AppendLog): each verdict is fsynced
    before the next is counted, and a line torn by a kill is skipped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._log = AppendLog(self.path)
        self.records: dict[str, dict] = {r["key"]: r for r in self._log.read() if isinstance(r, dict) and "key" in r}

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def find(self, call: Call, model: str, max_tokens: int) -> dict | None:
        """The call's verdict in whichever verdict form it was asked, or None."""
        return next((r for form in ("json", "text") if (r := self.get(call.key(model, form, max_tokens)))), None)

    def put(self, record: dict) -> None:
        self._log.append([record])
        self.records[record["key"]] = record


def cost(spec: JudgeSpec, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * spec.price_per_1k_input + completion_tokens * spec.price_per_1k_output) / 1000


def judge_model(spec: JudgeSpec) -> str:
    """The judge's name in cache keys and at the endpoint (a local server serves it under this name)."""
    return spec.model or spec.local_model


def _api_key(spec: JudgeSpec) -> str:
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if key:
        return key
    if urlparse(spec.base_url).hostname in LOCAL_HOSTS:
        return LOCAL_KEY
    raise JudgeError(
        f"judge: the environment variable {spec.api_key_env or '(judge.api_key_env is empty)'} is not set; "
        f"it must hold the API key for {spec.base_url}"
    )


@contextlib.contextmanager
def _endpoint(spec: JudgeSpec) -> Iterator[tuple[str, str]]:
    """(base_url, API key); a local judge is served by a vLLM server on 127.0.0.1 while the calls run."""
    if spec.base_url:
        yield spec.base_url, _api_key(spec)
        return
    with VLLMServer(models.resolve(spec.local_model), name=judge_model(spec)) as server:
        yield server.base_url, LOCAL_KEY


def to_ask(spec: JudgeSpec, calls: list, cache: VerdictCache) -> list:
    """The calls (of any protocol) the judge must be asked: those not in the cache and, with spec.retry_failed,
    the cached parse failures; says how many the cache answers, and warns of parse failures it keeps."""
    model = judge_model(spec)
    found = {c: cache.find(c, model, spec.max_tokens) for c in calls}
    failed = [c for c, r in found.items() if r is not None and r["verdict"] is None and r["error"] is None]
    needed = [c for c, r in found.items() if r is None or (spec.retry_failed and c in failed)]
    log.info("judge %s: %d calls, %d from the cache", model, len(calls), len(calls) - len(needed))
    if failed and not spec.retry_failed:
        log.warning(
            "judge %s: %d cached verdicts are parse failures (answers that were no verdict, %d times each); "
            "--retry-failed asks them again",
            model,
            len(failed),
            PARSE_ATTEMPTS,
        )
    return needed


def dry_run(spec: JudgeSpec, calls: int, needed: list) -> dict:
    """What judging would ask: the calls not in the cache, their estimated tokens and cost."""
    prompt_tokens, completion_tokens = sum(c.prompt_tokens_estimate() for c in needed), len(needed) * spec.max_tokens
    return {
        "judge": judge_model(spec),
        "calls": calls,
        "cached": calls - len(needed),
        "to_make": len(needed),
        "prompt_tokens_est": prompt_tokens,
        "completion_tokens_max": completion_tokens,
        "cost_usd_est": cost(spec, prompt_tokens, completion_tokens),
        "estimate": "prompt tokens as characters / 4; completion tokens at max_tokens (an upper bound)",
    }


def judge_calls(spec: JudgeSpec, calls: list, cache: VerdictCache) -> tuple[set[str], dict]:
    """Ask the judge for each call (none of them cached): (the cache keys of the verdicts it gave, the transport
    record: faults by kind, retries, parse re-asks). No call: nothing asked, no endpoint opened."""
    if not calls:
        return set(), {"faults": {}, "retries": 0, "reasked": 0}
    with (
        _endpoint(spec) as (base_url, api_key),
        openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=spec.timeout_s) as client,
    ):
        judge = _Judge(spec, client, judge_model(spec), base_url, api_key, cache)
        with tqdm(total=len(calls), desc=f"judge {judge.model}", unit="call") as judge.progress:
            judge.run(calls)
        return judge.made, {
            "faults": dict(judge.faults),
            "retries": sum(judge.faults.values()),
            "reasked": judge.reasked,
        }


class _Judge:
    """Makes the calls: bounded concurrency, the budget, the request form, transport retries; every verdict goes
    to the cache."""

    def __init__(
        self, spec: JudgeSpec, client: openai.OpenAI, model: str, base_url: str, api_key: str, cache: VerdictCache
    ):
        self.spec, self.client, self.model, self.base_url, self.api_key, self.cache = (
            spec,
            client,
            model,
            base_url,
            api_key,
            cache,
        )
        self.form: tuple[str, bool] | None = None
        self.lock = threading.Lock()
        self.spent = self.reserved = 0.0
        self.made: set[str] = set()
        self.over_budget = self.failed = False
        self.faults: Counter = Counter()  # transport faults retried, by kind
        self.reasked = 0  # answers that parsed to no verdict and were asked again
        self.progress = None

    def run(self, calls: list[Call]) -> None:
        """Judge every call; the first alone, to settle the request form."""
        self.one(calls[0], probe=True)
        with ThreadPoolExecutor(max_workers=max(1, self.spec.max_concurrency)) as pool:
            list(pool.map(self.one, calls[1:]))
        if self.over_budget:
            raise JudgeBudgetError(
                f"judge budget of ${self.spec.budget_usd:.4f} reached: {len(self.made)} of {len(calls)} calls made "
                f"(${self.spent:.4f} spent); their verdicts are kept in {self.cache.path}. Raise judge.budget_usd "
                f"and run again to judge the other {len(calls) - len(self.made)}."
            )

    def one(self, call: Call, probe: bool = False) -> None:
        try:
            record = self.ask(call, probe)
        except BaseException:
            self.failed = True
            raise
        if record is None:  # stopped by the budget (or another call's failure) before its first ask
            return
        self.cache.put(record)
        with self.lock:
            self.made.add(record["key"])
            if self.progress is not None:
                self.progress.update()
                self.progress.set_postfix_str(f"${self.spent:.4f}", refresh=False)

    def ask(self, call: Call, probe: bool) -> dict | None:
        """The call's verdict record: an answer that parses to no verdict is asked again (PARSE_ATTEMPTS in all);
        the record's tokens and cost are those of every ask. Each ask first reserves its estimated cost against
        the budget (prompt characters / 4 and max_tokens: an estimate, not a bound); None when the budget (or
        another call's failure) stops an ask, a re-ask included, so the call is asked afresh next run rather
        than cached as a parse failure (what its asks cost is counted as spent)."""
        estimated = cost(self.spec, call.prompt_tokens_estimate(), self.spec.max_tokens)  # an upper bound on the output
        paid = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        for attempt in range(PARSE_ATTEMPTS):
            if not self.reserve(estimated):
                return None
            try:
                record = self.request(call, probe and attempt == 0)
            except BaseException:
                with self.lock:
                    self.reserved -= estimated
                raise
            with self.lock:  # one step: another thread never sees the ask neither held nor spent
                self.reserved -= estimated
                self.spent += record["cost_usd"]
            paid = {k: paid[k] + record[k] for k in paid}
            if record["verdict"] is not None or record["error"] is not None or attempt + 1 == PARSE_ATTEMPTS:
                return record | paid | {"attempts": attempt + 1}
            with self.lock:
                self.reasked += 1

    def reserve(self, estimated: float) -> bool:
        """Hold `estimated` dollars of the budget for one ask; False (and the budget marked reached) when it does
        not fit beside what is spent and held, or when another call has failed."""
        with self.lock:
            if self.failed or self.over_budget:
                return False
            if self.spec.budget_usd is not None and self.spent + self.reserved + estimated > self.spec.budget_usd:
                self.over_budget = True
                return False
            self.reserved += estimated
            return True

    def request(self, call: Call, probe: bool) -> dict:
        """One verdict record; the probe tries each request form until the endpoint accepts one (module docstring)."""
        forms = FORMS if probe else (self.form,)
        for i, (form, logprobs) in enumerate(forms):
            try:
                response = self.send(call, form, logprobs)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as err:
                if probe and i + 1 < len(forms):
                    continue
                if probe:
                    raise JudgeError(
                        f"the judge endpoint {self.base_url} rejected every request form (structured outputs, "
                        f"log-probabilities, plain text) for model {self.model!r}: {self.scrub(err.message)}"
                    ) from None
                return self.record(call, form, error=self.scrub(err.message))
            self.form = (form, logprobs)
            return self.record(call, form, response)

    def send(self, call: Call, form: str, logprobs: bool):
        """One chat completion with a usable answer, through transport faults (module docstring)."""
        kind, error = "none", None
        for attempt in range(max(0, self.spec.max_retries) + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=call.messages(form),
                    temperature=TEMPERATURE,
                    max_tokens=self.spec.max_tokens,
                    **call.options(form, logprobs),
                )
                if (
                    not isinstance(response, ChatCompletion)
                    or not response.choices
                    or response.choices[0].message is None
                ):
                    raise MalformedResponse("a 200 without an answer (not a chat completion, or no choices)")
                return response
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                raise
            except openai.APIStatusError as err:
                if err.status_code not in RETRIED_STATUS and err.status_code < 500:
                    raise JudgeError(
                        f"the judge endpoint {self.base_url} answered HTTP {err.status_code} for model {self.model!r}: "
                        f"{self.scrub(err.message)}"
                    ) from None
                kind, error, wait = f"http {err.status_code}", err, _retry_after(err.response)
            except openai.APITimeoutError as err:
                kind, error, wait = "timeout", err, None
            except openai.APIConnectionError as err:
                kind, error, wait = "connection", err, None
            except (json.JSONDecodeError, openai.APIResponseValidationError, MalformedResponse) as err:
                kind, error, wait = "malformed body", err, None
            with self.lock:
                self.faults[kind] += 1
            if attempt == self.spec.max_retries:
                break
            time.sleep(
                wait if wait is not None else min(BACKOFF_S * 2**attempt, BACKOFF_CAP_S) * random.uniform(0.5, 1.0)
            )
        raise JudgeError(
            f"the judge endpoint {self.base_url} failed one call {self.spec.max_retries + 1} times ({len(self.made)} calls "
            f"done, their verdicts kept in {self.cache.path}); last error: {kind}: {self.scrub(str(error))[:200]}"
        )

    def record(self, call: Call, form: str, response=None, error: str | None = None) -> dict:
        content, verdict, probs, finish = None, None, None, None
        prompt_tokens, completion_tokens = 0, 0
        if response is not None:
            choice = response.choices[0]
            content, finish = choice.message.content or "", choice.finish_reason
            verdict = call.parse(content, form)
            if verdict and choice.logprobs and choice.logprobs.content:
                probs = call.probs(content, verdict, choice.logprobs.content)
            usage = response.usage
            prompt_tokens = usage.prompt_tokens if usage else call.prompt_tokens_estimate(form)
            completion_tokens = usage.completion_tokens if usage else len(content) // CHARS_PER_TOKEN
        return {
            "key": call.key(self.model, form, self.spec.max_tokens),
            "model": self.model,
            "template_sha256": call.template.sha256,
            "form": form,
            "verdict": verdict,
            "probs": probs,
            "content": content,
            "finish_reason": finish,
            "error": error,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost(self.spec, prompt_tokens, completion_tokens),
        }

    def scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


def _retry_after(response) -> float | None:
    """The wait an endpoint asks for (retry-after-ms, or retry-after in seconds), capped; None when it asks none."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return min(float(headers[name]) * scale, RETRY_AFTER_CAP_S)
        except (KeyError, ValueError, TypeError):
            continue
    return None
