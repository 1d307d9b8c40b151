"""What the judge is asked: the prompt template, the request forms, and the cache key of a request.

Template
  The prompt is a Jinja2 template file: the built-in templates/pairwise.jinja, or the recipe's own
  (eval.judge.template). A line that reads `{# user #}` (a Jinja2 comment) splits it: the text above is
  the system message, the text below the user message; without that line the whole text is the user
  message and no system message is sent. Each part is rendered on its own (no Jinja2 tag may span the
  line; an undefined variable is an error) and stripped of leading and trailing whitespace. Its variables:
    question   the request both answers reply to (required)
    answer_a   the answer shown first (required)
    answer_b   the answer shown second (required)
    form       "json" or "text": the verdict form this request asks for (below)
  A template is versioned by the sha256 of its text, stored with every verdict and result.

Verdict format
  Where the endpoint offers structured outputs, the reply is forced to the JSON object
  {"verdict": "A" | "B" | "tie"} (response_format json_schema, strict); otherwise the reply's last line
  must be `Verdict: A`, `Verdict: B` or `Verdict: tie` (verdicts.py reads both, strictly), and the
  template has to ask for that line when form is "text", as the built-in one does. Where the endpoint
  offers log-probabilities, the top alternatives at each token are asked for too. The first call of a
  run settles the request form: an endpoint that answers 400 gets the next one of FORMS (JSON with
  log-probabilities, JSON, text with log-probabilities, text).

Cache key
  sha256 of (judge model, template sha256, question, answer shown as A, answer shown as B, decoding
  settings: temperature, max_tokens, verdict form). Editing a template changes its sha256, so no cached
  verdict of the old text is reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import meta

from prefbench.errors import did_you_mean
from prefbench.eval.judge.verdicts import VERDICTS, parse_verdict, verdict_probs

TEMPERATURE = 0.0
TOP_LOGPROBS = 5
CHARS_PER_TOKEN = 4  # prompt-token estimate for dry runs and the budget: characters / 4
# Request forms, most structured first: (verdict form, ask for log-probabilities).
FORMS = (("json", True), ("json", False), ("text", True), ("text", False))

BUILTIN_TEMPLATE = Path(__file__).parent / "templates" / "pairwise.jinja"
VARIABLES = ("question", "answer_a", "answer_b", "form")
REQUIRED = ("question", "answer_a", "answer_b")
USER_LINE = re.compile(r"^\{#\s*user\s*#\}[ \t]*$", re.M)
JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined)
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)}},
    "required": ["verdict"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Template:
    """A judge prompt template's text (module docstring); its sha256 is its version."""

    text: str

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @functools.cached_property
    def parts(self) -> list[jinja2.Template]:
        """The system part (when there is one) and the user part, compiled."""
        return [JINJA.from_string(part) for part in USER_LINE.split(self.text, maxsplit=1)]

    def messages(self, question: str, a: str, b: str, form: str) -> list[dict]:
        return self.render({"question": question, "answer_a": a, "answer_b": b, "form": form})

    def render(self, values: dict) -> list[dict]:
        """The chat messages of these values (any protocol's): the system part, where there is one, and the user's."""
        roles = ("system", "user")[-len(self.parts) :]
        return [{"role": role, "content": part.render(values).strip()} for role, part in zip(roles, self.parts)]


def load_template(path: str = "") -> Template:
    """The template in the file at path (relative to the working directory); "": the built-in one."""
    return Template((Path(path).expanduser() if path else BUILTIN_TEMPLATE).read_text(encoding="utf-8"))


def template_problems(
    path: str,
    at: str,
    variables: tuple[str, ...] = VARIABLES,
    required: tuple[str, ...] = REQUIRED,
    sees: str = "the request (question) and both answers (answer_a, answer_b)",
) -> list[str]:
    """What is wrong with a template file, one line each, before anything is asked: a protocol's template uses
    only its `variables` and every `required` one (`sees`: what those show the judge, for the message)."""
    file = Path(path).expanduser()
    if not file.is_file():
        return [f"{at}: file not found: {path}"]
    try:
        text = file.read_text(encoding="utf-8")
        JINJA.parse(text)  # the whole file first, for the line number of a syntax error
    except UnicodeDecodeError:
        return [f"{at}: not UTF-8 text: {path}"]
    except jinja2.TemplateSyntaxError as err:
        return [f"{at}: not a valid Jinja2 template: {err.message} (line {err.lineno})"]
    try:
        parts = [JINJA.parse(part) for part in USER_LINE.split(text, maxsplit=1)]
    except jinja2.TemplateSyntaxError as err:
        return [
            f"{at}: a Jinja2 tag spans the {{# user #}} line, which splits the system and user messages: {err.message}"
        ]
    used = set().union(*map(meta.find_undeclared_variables, parts)) - set(JINJA.globals)
    out = [
        f"{at}: unknown variable {name!r}{did_you_mean(name, variables)}; known: {', '.join(variables)}"
        for name in sorted(used - set(variables))
    ]
    if missing := [name for name in required if name not in used]:
        out.append(f"{at}: must use {', '.join(missing)}: the judge has to see {sees}")
    return out


def request_options(form: str, logprobs: bool) -> dict:
    """The chat-completion arguments of a request form beyond the messages: log-probabilities, structured output."""
    extra: dict = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
    if form == "json":
        extra["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "verdict", "strict": True, "schema": VERDICT_SCHEMA},
        }
    return extra


@dataclass(frozen=True)
class Call:
    """One pairwise judge request: the question and the answers as shown, in a template. The client
    (client.py) asks any call the same way: its messages, its cache key, the request options of a form, and
    how a reply's content reads (a verdict, its probabilities); another judging protocol brings calls of its
    own (protocols.py)."""

    question: str
    a: str
    b: str
    template: Template

    def messages(self, form: str) -> list[dict]:
        return self.template.messages(self.question, self.a, self.b, form)

    def prompt_tokens_estimate(self, form: str = "json") -> int:
        return sum(len(m["content"]) for m in self.messages(form)) // CHARS_PER_TOKEN

    def options(self, form: str, logprobs: bool) -> dict:
        return request_options(form, logprobs)

    def parse(self, content: str, form: str) -> str | None:
        return parse_verdict(content, form)

    def probs(self, content: str, verdict: str, tokens) -> dict[str, float] | None:
        return verdict_probs(content, verdict, tokens)

    def key(self, model: str, form: str, max_tokens: int) -> str:
        decoding = {"temperature": TEMPERATURE, "max_tokens": max_tokens, "form": form}
        blob = json.dumps([model, self.template.sha256, self.question, self.a, self.b, decoding], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()
