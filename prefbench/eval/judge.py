"""Pairwise LLM judge: each checkpoint's answers against another unit's (the reference model, another
objective, the dataset's chosen response), in both answer orders, through any OpenAI-compatible endpoint.

Verdict format (JUDGE_PROMPT_VERSION)
  A system message states the criteria; the user message holds the request and the two answers in
  <answer_a> / <answer_b> tags. Where the endpoint offers structured outputs, the reply is forced to the
  JSON object {"verdict": "A" | "B" | "tie"} (response_format json_schema, strict) and must parse as exactly
  that; otherwise the reply's last line must be exactly `Verdict: A`, `Verdict: B` or `Verdict: tie`.
  Anything else is a parse failure: counted and cached, never guessed. Where the endpoint offers
  log-probabilities, the probabilities of A / B / tie at the verdict's token are kept with the verdict.
  The first call of a run settles the request form: an endpoint that answers 400 gets the next one of
  FORMS (JSON with log-probabilities, JSON, text with log-probabilities, text).

Pairs and orders
  A pair is (prompt, sample j of unit X, sample j of unit Y), judged twice: X shown as A, and X shown as B.
  X wins when both orders prefer X and loses when both prefer Y; when both parse but the orders disagree,
  or both say tie, the pair is a tie. A pair with a parse failure in either order is left out of the
  scores (and counted). Identical answers are a tie without a call.

Cache key
  sha256 of (judge model, prompt version, question, answer shown as A, answer shown as B, decoding
  settings: temperature, max_tokens, verdict form). Every verdict, parse failures and rejected requests
  included, is appended to <cache>/verdicts.jsonl and fsynced as it arrives: a killed run resumes with
  every verdict it received and asks for none twice (a line torn by the kill is ignored).

Statistics, per comparison "X vs Y"
  - win_rate: ties count half. A prompt's pairs (all its samples, both orders) are averaged first, and the
    95% CI is a percentile bootstrap over prompts (stats.estimate).
  - clopper_pearson: exact binomial 95% CI of wins / scored pairs, ties counting as non-wins (a binomial
    winrate as the KTO paper reported its GPT-4 judgments). It treats pairs as independent, which samples
    of one prompt are not: prefer win_rate's interval.
  - lc_win_rate: a logistic fit of the pair score (ties as 0.5) on tanh(d / sd(d)), d = X's answer
    length minus Y's in characters, read at d = 0; its CI is a bootstrap over prompts.
  - diagnostics: swap consistency, tie rate, parse-failure rate, position bias, verdict probability,
    calls made and from cache, tokens and cost of the comparison's verdicts.
  - reward_agreement (with ground-truth rewards): among pairs whose rewards differ, the share where the
    judge prefers the higher-reward answer, ties half, with a bootstrap CI over prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import openai

from prefbench import models
from prefbench.errors import PrefbenchError
from prefbench.eval.server import VLLMServer
from prefbench.recipe import JudgeSpec
from prefbench.stats import binomial_ci, estimate, lc_win_rate, lc_win_rate_ci

log = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = 1
VERDICTS = ("A", "B", "tie")
TEMPERATURE = 0.0
TOP_LOGPROBS = 5
CHARS_PER_TOKEN = 4  # prompt-token estimate for dry runs and the budget: characters / 4
LOCAL_KEY = "EMPTY"  # what a local server gets instead of an API key
CHOSEN = "chosen"  # the dataset's chosen responses, as a unit
# Request forms, most structured first: (verdict form, ask for log-probabilities).
FORMS = (("json", True), ("json", False), ("text", True), ("text", False))

SYSTEM = (
    "You are the referee between two answers to the same request. Decide which answer serves the person "
    "who made the request better: it does what was asked, follows every explicit instruction (format, length, "
    "wording), and is correct and clear. Extra length earns nothing by itself, and the order in which the "
    "answers appear says nothing about their quality. Call it a tie only when neither answer is better."
)
USER = "<request>\n{question}\n</request>\n\n<answer_a>\n{a}\n</answer_a>\n\n<answer_b>\n{b}\n</answer_b>\n\n{ask}"
ASK = {
    "json": 'Reply with the JSON object {"verdict": "A"}, {"verdict": "B"} or {"verdict": "tie"}.',
    "text": 'You may reason briefly first. Your last line must be exactly "Verdict: A", "Verdict: B" or "Verdict: tie".',
}
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)}},
    "required": ["verdict"],
    "additionalProperties": False,
}


class JudgeError(PrefbenchError, RuntimeError):
    pass


class JudgeBudgetError(JudgeError):
    pass


@dataclass(frozen=True)
class Call:
    """One judge request: the question and the answers as shown."""

    question: str
    a: str
    b: str

    def messages(self, form: str) -> list[dict]:
        user = USER.format(question=self.question, a=self.a, b=self.b, ask=ASK[form])
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def prompt_tokens_estimate(self, form: str = "json") -> int:
        return sum(len(m["content"]) for m in self.messages(form)) // CHARS_PER_TOKEN

    def key(self, model: str, form: str, max_tokens: int) -> str:
        decoding = {"temperature": TEMPERATURE, "max_tokens": max_tokens, "form": form}
        blob = json.dumps([model, JUDGE_PROMPT_VERSION, self.question, self.a, self.b, decoding], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class PairResult:
    """One pair's two verdicts, as the judge gave them (first: X shown as A; second: X shown as B)."""

    prompt: int
    first: str | None
    second: str | None
    len_x: int
    len_y: int
    reward_x: float | None = None
    reward_y: float | None = None
    identical: bool = False

    def order_scores(self) -> tuple[float, float] | None:
        """X's score (1 win, 0.5 tie, 0 loss) in each order; None when a verdict failed to parse."""
        if self.first is None or self.second is None:
            return None
        return {"A": 1.0, "B": 0.0, "tie": 0.5}[self.first], {"A": 0.0, "B": 1.0, "tie": 0.5}[self.second]

    def score(self) -> float | None:
        """X's score for the pair: the orders' common score, a tie where they disagree."""
        if self.identical:
            return 0.5
        orders = self.order_scores()
        return None if orders is None else orders[0] if orders[0] == orders[1] else 0.5


class VerdictCache:
    """Append-only JSONL of verdicts by content key; each verdict is fsynced before the next is counted."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        for line in data.splitlines():
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill
        if data and not data.endswith(b"\n"):
            self._append(b"\n")  # end the torn line, so the next verdict starts a line of its own

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, record: dict) -> None:
        with self._lock:
            self._append(json.dumps(record).encode() + b"\n")
            self.records[record["key"]] = record

    def _append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def parse_verdict(content: str, form: str) -> str | None:
    """The verdict in a reply of the given form, or None: nothing is guessed."""
    if form == "json":
        try:
            obj = json.loads(content)
        except ValueError:
            return None
        ok = isinstance(obj, dict) and obj.keys() == {"verdict"} and obj["verdict"] in VERDICTS
        return obj["verdict"] if ok else None
    lines = content.strip().splitlines()
    match = re.fullmatch(r"Verdict: (A|B|tie)", lines[-1].strip()) if lines else None
    return match.group(1) if match else None


def verdict_probs(content: str, verdict: str, tokens) -> dict[str, float] | None:
    """P(A), P(B), P(tie) at the verdict's token, from its top log-probabilities (normalized over the three).

    The verdict is the last thing in either form, so its first character is content.rfind(verdict);
    alternatives are read from that character on (a token may start before it, e.g. ` "A`).
    """
    pos, start = content.rfind(verdict), 0
    for token in tokens:
        end = start + len(token.token)
        if start <= pos < end:
            cut, probs = pos - start, dict.fromkeys(VERDICTS, 0.0)
            for alt in token.top_logprobs or []:
                rest = alt.token[cut:] if alt.token[:cut] == token.token[:cut] else ""
                label = next((v for v in VERDICTS if rest and v.startswith(rest[:1])), None)
                if label:
                    probs[label] += math.exp(alt.logprob)
            total = sum(probs.values())
            return {v: p / total for v, p in probs.items()} if total > 0 else None
        start = end
    return None


def pair_stats(pairs: list[PairResult]) -> dict:
    """Win rates, CIs and judge diagnostics of one comparison's pairs (module docstring)."""
    scored = [(p, s) for p in pairs if (s := p.score()) is not None]
    scores = np.array([s for _, s in scored])
    prompts = np.array([p.prompt for p, _ in scored])
    per_prompt = [scores[prompts == g].mean() for g in np.unique(prompts)]
    wins, losses = int((scores == 1).sum()), int((scores == 0).sum())
    diffs = np.array([p.len_x - p.len_y for p, _ in scored], float)

    judged = [p for p in pairs if not p.identical]
    both = [p for p in judged if p.first is not None and p.second is not None]
    verdicts = [v for p in judged for v in (p.first, p.second)]
    decided = [v for v in verdicts if v in ("A", "B")]
    judged_scores = [p.score() for p in both]
    out = {
        "prompts": len(per_prompt),
        "pairs": len(pairs),
        "wins": wins,
        "ties": len(scored) - wins - losses,
        "losses": losses,
        "unscored": len(pairs) - len(scored),
        "win_rate": estimate(per_prompt),
        "clopper_pearson": {"rate": wins / len(scored) if scored else float("nan"), "ci": list(binomial_ci(wins, len(scored))),
                            "wins": wins, "n": len(scored), "counts": "wins / scored pairs; ties count as non-wins"},
        "lc_win_rate": {"mean": lc_win_rate(scores, diffs), "ci": lc_win_rate_ci(scores, diffs, prompts),
                        "length": "characters"},
        "diagnostics": {
            "swap_consistency": _share([a == b for a, b in (p.order_scores() for p in both)]),
            "tie_rate": _share([s == 0.5 for s in judged_scores]),
            "parse_failure_rate": _share([v is None for v in verdicts]),
            "first_position_rate": _share([v == "A" for v in decided]),  # 0.5: no position bias
            "identical_pairs": len(pairs) - len(judged),
        },
    }
    rated = [(p, s) for p, s in scored if p.reward_x is not None and p.reward_y is not None and abs(p.reward_x - p.reward_y) > 1e-9]
    if rated:
        agree = np.array([0.5 if s == 0.5 else float((s == 1) == (p.reward_x > p.reward_y)) for p, s in rated])
        groups = np.array([p.prompt for p, _ in rated])
        out["reward_agreement"] = {
            "agreement": estimate([agree[groups == g].mean() for g in np.unique(groups)]),
            "agree": int((agree == 1).sum()), "tie": int((agree == 0.5).sum()), "disagree": int((agree == 0).sum()),
            "pairs": len(rated), "counts": "pairs whose rewards differ; a judge tie counts half",
        }
    return out


def _cost(spec: JudgeSpec, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * spec.price_per_1k_input + completion_tokens * spec.price_per_1k_output) / 1000


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else float("nan")


class _Judge:
    """Makes the calls: bounded concurrency, the budget, the request form; every verdict goes to the cache."""

    def __init__(self, spec: JudgeSpec, client: openai.OpenAI, model: str, base_url: str, api_key: str, cache: VerdictCache):
        self.spec, self.client, self.model, self.base_url, self.api_key, self.cache = spec, client, model, base_url, api_key, cache
        self.form: tuple[str, bool] | None = None
        self.lock = threading.Lock()
        self.spent = self.reserved = 0.0
        self.made: set[str] = set()
        self.over_budget = self.failed = False

    def run(self, calls: list[Call]) -> None:
        """Judge every call; the first alone, to settle the request form."""
        self.one(calls[0], probe=True)
        with ThreadPoolExecutor(max_workers=max(1, self.spec.max_concurrency)) as pool:
            list(pool.map(self.one, calls[1:]))
        if self.over_budget:
            raise JudgeBudgetError(
                f"judge budget of ${self.spec.budget_usd:.4f} reached: {len(self.made)} of {len(calls)} calls made "
                f"(${self.spent:.4f} spent); their verdicts are kept in {self.cache.path}. Raise judge.budget_usd "
                f"and run again to judge the other {len(calls) - len(self.made)}.")

    def one(self, call: Call, probe: bool = False) -> None:
        estimated = _cost(self.spec, call.prompt_tokens_estimate(), self.spec.max_tokens)  # an upper bound on the output
        with self.lock:
            if self.failed or self.over_budget:
                return
            if self.spec.budget_usd is not None and self.spent + self.reserved + estimated > self.spec.budget_usd:
                self.over_budget = True
                return
            self.reserved += estimated
        try:
            record = self.request(call, probe)
        except BaseException:
            self.failed = True
            raise
        finally:
            with self.lock:
                self.reserved -= estimated
        self.cache.put(record)
        with self.lock:
            self.spent += record["cost_usd"]
            self.made.add(record["key"])

    def request(self, call: Call, probe: bool) -> dict:
        """One verdict record. The openai client retries 429, 5xx and timeouts with backoff; a 400 after the
        first call is the judge's answer to this input (e.g. too long) and is cached as a failed verdict."""
        forms = FORMS if probe else (self.form,)
        for i, (form, logprobs) in enumerate(forms):
            extra = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
            if form == "json":
                extra["response_format"] = {"type": "json_schema",
                                            "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
            try:
                response = self.client.chat.completions.create(model=self.model, messages=call.messages(form), temperature=TEMPERATURE,
                                                               max_tokens=self.spec.max_tokens, **extra)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as err:
                if probe and i + 1 < len(forms):
                    continue
                if probe:
                    raise JudgeError(f"the judge endpoint {self.base_url} rejected every request form (structured outputs, "
                                     f"log-probabilities, plain text) for model {self.model!r}: {self.scrub(err.message)}") from None
                return self.record(call, form, error=self.scrub(err.message))
            except openai.APIConnectionError as err:  # timeouts included
                raise JudgeError(f"no answer from the judge endpoint {self.base_url} after {self.spec.max_retries} retries: "
                                 f"{self.scrub(str(err))}") from None
            except openai.APIStatusError as err:
                raise JudgeError(f"the judge endpoint {self.base_url} answered HTTP {err.status_code} for model {self.model!r}: "
                                 f"{self.scrub(err.message)}") from None
            self.form = (form, logprobs)
            return self.record(call, form, response)

    def record(self, call: Call, form: str, response=None, error: str | None = None) -> dict:
        content, verdict, probs, finish = None, None, None, None
        prompt_tokens, completion_tokens = 0, 0
        if response is not None:
            choice = response.choices[0]
            content, finish = choice.message.content or "", choice.finish_reason
            verdict = parse_verdict(content, form)
            if verdict and choice.logprobs and choice.logprobs.content:
                probs = verdict_probs(content, verdict, choice.logprobs.content)
            usage = response.usage
            prompt_tokens = usage.prompt_tokens if usage else call.prompt_tokens_estimate(form)
            completion_tokens = usage.completion_tokens if usage else len(content) // CHARS_PER_TOKEN
        return {"key": call.key(self.model, form, self.spec.max_tokens), "model": self.model, "prompt_version": JUDGE_PROMPT_VERSION,
                "form": form, "verdict": verdict, "probs": probs, "content": content, "finish_reason": finish, "error": error,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "cost_usd": _cost(self.spec, prompt_tokens, completion_tokens)}

    def scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


def judge_model(spec: JudgeSpec) -> str:
    """The judge's name in cache keys and at the endpoint (a local server serves it under this name)."""
    return spec.model or spec.local_model


def _api_key(spec: JudgeSpec) -> str:
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if key:
        return key
    if urlparse(spec.base_url).hostname in ("127.0.0.1", "localhost", "::1"):
        return LOCAL_KEY
    raise JudgeError(f"judge: the environment variable {spec.api_key_env or '(judge.api_key_env is empty)'} is not set; "
                     f"it must hold the API key for {spec.base_url}")


@contextlib.contextmanager
def _endpoint(spec: JudgeSpec) -> Iterator[tuple[str, str]]:
    """(base_url, API key); a local judge is served by a vLLM server on 127.0.0.1 while the calls run."""
    if spec.base_url:
        yield spec.base_url, _api_key(spec)
        return
    with VLLMServer(models.resolve(spec.local_model), name=judge_model(spec)) as server:
        yield server.base_url, LOCAL_KEY


def _comparisons(spec: JudgeSpec, units: list[str], reference: str, chosen: bool) -> list[tuple[str, str]]:
    others = [u for u in units if u not in (reference, CHOSEN)]
    out: list[tuple[str, str]] = []
    for kind in spec.against:
        if kind == "reference":
            if reference not in units:
                raise JudgeError(f"judge.against has reference, but there are no answers of {reference!r}")
            out += [(u, reference) for u in others]
        elif kind == "round_robin":
            out += list(itertools.combinations(others, 2))
        elif kind == "dataset_chosen":
            if not chosen:
                raise JudgeError("judge.against has dataset_chosen, but the data has no chosen responses")
            out += [(u, CHOSEN) for u in units if u != CHOSEN]
        else:
            raise JudgeError(f"judge.against: unknown {kind!r}; one of reference, round_robin, dataset_chosen")
    return list(dict.fromkeys(out))


# A pair to judge: (prompt index, X's answer, Y's answer, X's reward, Y's reward).
Pair = tuple[int, str, str, float | None, float | None]


def _plan(spec: JudgeSpec, prompts: list[str], answers: dict[str, list[list[str]]], reference: str,
          chosen: list[str] | None, rewards: dict[str, list[list[float]]] | None) -> dict[tuple[str, str], list[Pair]]:
    """The pairs of each comparison: sample j of X against sample j of Y, for the first samples_per_prompt."""
    k = spec.samples_per_prompt
    answers = dict(answers) | ({CHOSEN: [[c] * k for c in chosen]} if chosen is not None else {})
    rewards = dict(rewards or {})
    if CHOSEN in rewards:
        rewards[CHOSEN] = [list(r) * k if len(r) == 1 else list(r) for r in rewards[CHOSEN]]
    for unit, per_prompt in answers.items():
        if len(per_prompt) != len(prompts):
            raise ValueError(f"answers[{unit!r}] has {len(per_prompt)} prompts, not {len(prompts)}")
    return {
        (x, y): [(i, ax, ay, rewards[x][i][j] if x in rewards else None, rewards[y][i][j] if y in rewards else None)
                 for i in range(len(prompts)) for j, (ax, ay) in enumerate(zip(answers[x][i][:k], answers[y][i][:k]))]
        for x, y in _comparisons(spec, list(answers), reference, chosen is not None)
    }


def judge_units(spec: JudgeSpec, prompts: list[str], answers: dict[str, list[list[str]]], reference: str = "reference",
                chosen: list[str] | None = None, rewards: dict[str, list[list[float]]] | None = None,
                cache_dir: Path | None = None) -> dict[str, dict]:
    """Judge each comparison that spec.against asks for; {"X vs Y": statistics (module docstring)}.

    answers[unit][i]: the unit's sampled answers to prompts[i] (the first spec.samples_per_prompt are judged,
    sample j against sample j). chosen[i]: the dataset's chosen response, the unit "chosen". rewards: the same
    shape as answers (rewards["chosen"][i] may hold one value), for the judge's agreement with them.
    With spec.dry_run: {"dry_run": the calls not in the cache, their estimated tokens and cost}; nothing is asked.
    Raises JudgeBudgetError when the budget stops the run (what was judged stays cached), JudgeError otherwise.
    """
    if not spec.base_url and not spec.local_model:
        raise JudgeError("judge: set base_url (an OpenAI-compatible endpoint) or local_model (served locally by prefbench)")
    if spec.base_url and not spec.model:
        raise JudgeError(f"judge.model: the judge model's name at {spec.base_url} is required")
    model = judge_model(spec)
    cache = VerdictCache(Path(cache_dir or models.cache_dir() / "judge") / "verdicts.jsonl")

    def lookup(call: Call) -> dict | None:
        return next((r for form in ("json", "text") if (r := cache.get(call.key(model, form, spec.max_tokens)))), None)

    plan = _plan(spec, prompts, answers, reference, chosen, rewards)
    calls = {Call(prompts[i], a, b): None for pairs in plan.values() for i, ax, ay, _, _ in pairs if ax != ay
             for a, b in ((ax, ay), (ay, ax))}
    needed = [c for c in calls if lookup(c) is None]
    log.info("judge %s: %d calls, %d from the cache", model, len(calls), len(calls) - len(needed))

    if spec.dry_run:
        prompt_tokens, completion_tokens = sum(c.prompt_tokens_estimate() for c in needed), len(needed) * spec.max_tokens
        return {"dry_run": {
            "judge": model, "comparisons": [f"{x} vs {y}" for x, y in plan],
            "calls": len(calls), "cached": len(calls) - len(needed), "to_make": len(needed),
            "prompt_tokens_est": prompt_tokens, "completion_tokens_max": completion_tokens,
            "cost_usd_est": _cost(spec, prompt_tokens, completion_tokens),
            "estimate": "prompt tokens as characters / 4; completion tokens at max_tokens (an upper bound)"}}

    made: set[str] = set()
    if needed:
        with _endpoint(spec) as (base_url, api_key), \
                openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=spec.max_retries, timeout=spec.timeout_s) as client:
            judge = _Judge(spec, client, model, base_url, api_key, cache)
            judge.run(needed)
            made = judge.made

    results = {}
    for (x, y), pairs in plan.items():
        records, results_pairs = [], []
        for i, ax, ay, rx, ry in pairs:
            first, second = (lookup(Call(prompts[i], ax, ay)), lookup(Call(prompts[i], ay, ax))) if ax != ay else (None, None)
            records += [r for r in (first, second) if r]
            results_pairs.append(PairResult(i, first and first["verdict"], second and second["verdict"], len(ax), len(ay), rx, ry,
                                            identical=ax == ay))
        stats = pair_stats(results_pairs)
        probs = [r["probs"][r["verdict"]] for r in records if r["probs"]]
        stats["diagnostics"] |= {
            "calls": len(records),
            "calls_made": sum(r["key"] in made for r in records),
            "calls_cached": sum(r["key"] not in made for r in records),
            "rejected": sum(r["error"] is not None for r in records),  # 400s after the first call, counted as parse failures
            "mean_verdict_prob": float(np.mean(probs)) if probs else float("nan"),
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
            "cost_usd": sum(r["cost_usd"] for r in records),
        }
        results[f"{x} vs {y}"] = {"unit": x, "opponent": y, "judge": {
            "model": model, "prompt_version": JUDGE_PROMPT_VERSION, "temperature": TEMPERATURE, "max_tokens": spec.max_tokens,
            "forms": sorted({r["form"] for r in records}), "samples_per_prompt": spec.samples_per_prompt}} | stats
    return results
