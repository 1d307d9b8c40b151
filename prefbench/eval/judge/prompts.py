"""What the judge is asked: the versioned prompt text, the request forms, and the cache key of a request.

Verdict format (JUDGE_PROMPT_VERSION)
  A system message states the criteria; the user message holds the request and the two answers in
  <answer_a> / <answer_b> tags. Where the endpoint offers structured outputs, the reply is forced to the
  JSON object {"verdict": "A" | "B" | "tie"} (response_format json_schema, strict); otherwise the reply's
  last line must be `Verdict: A`, `Verdict: B` or `Verdict: tie` (verdicts.py reads both, strictly).
  Where the endpoint offers log-probabilities, the top alternatives at each token are asked for too.
  The first call of a run settles the request form: an endpoint that answers 400 gets the next one of
  FORMS (JSON with log-probabilities, JSON, text with log-probabilities, text).

Cache key
  sha256 of (judge model, prompt version, question, answer shown as A, answer shown as B, decoding
  settings: temperature, max_tokens, verdict form). Changing any text here changes what the judge is
  asked: bump JUDGE_PROMPT_VERSION, so that no cached verdict of the old text is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

JUDGE_PROMPT_VERSION = 1
VERDICTS = ("A", "B", "tie")
TEMPERATURE = 0.0
TOP_LOGPROBS = 5
CHARS_PER_TOKEN = 4  # prompt-token estimate for dry runs and the budget: characters / 4
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


def request_options(form: str, logprobs: bool) -> dict:
    """The chat-completion arguments of a request form beyond the messages: log-probabilities, structured output."""
    extra: dict = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
    if form == "json":
        extra["response_format"] = {"type": "json_schema",
                                    "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA}}
    return extra


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
