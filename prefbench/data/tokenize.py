"""Records -> token ids: the prompt through the model's chat template, loss on completion tokens only.

A completion's tokens are what the chat template adds after the generation prompt when the
assistant turn is appended (so the end-of-turn marker is learned too); without a chat template,
the completion text plus EOS. Prompt and completion are tokenized separately, so the prompt tokens
are the same for a pair's two completions.

Truncation policy (recorded in the manifest): with `truncate`, a prompt longer than
max_prompt_length keeps its last tokens, then completions are cut to fit max_length; with `drop`,
too-long records are bad records. Either way the counts are reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from prefbench.recipe import DataSpec


@dataclass(frozen=True)
class Example:
    """One base record, tokenized. Paired: completions = (chosen, rejected). Unpaired: (completion,)."""

    prompt: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]
    label: bool | None = None  # unpaired only

    def length(self) -> int:
        return len(self.prompt) + max(len(c) for c in self.completions)


@dataclass
class TokenizeReport:
    total: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> record indices

    def drop(self, reason: str, index: int) -> None:
        self.dropped.setdefault(reason, []).append(index)


def _messages(prompt) -> list[dict]:
    return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def _text(value) -> str:
    """A completion given as one assistant message, or as text."""
    if isinstance(value, list):
        return value[-1]["content"]
    return value


def render(tokenizer, prompt, completion: str | None, use_chat_template: bool) -> tuple[str, str | None]:
    """(prompt text, completion text) as the model sees them."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = _messages(prompt)
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if completion is None:
            return prompt_text, None
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
        if full.startswith(prompt_text):
            return prompt_text, full[len(prompt_text) :]
        # Templates that rewrite earlier turns (e.g. strip reasoning) break the prefix property.
        return prompt_text, completion + (tokenizer.eos_token or "")
    prompt_text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return prompt_text, None if completion is None else completion + (tokenizer.eos_token or "")


def tokenize_records(records: list[dict], fmt: str, tokenizer, spec: DataSpec) -> tuple[list[Example], TokenizeReport]:
    report = TokenizeReport(total=len(records))
    keys = ("chosen", "rejected") if fmt == "paired" else ("completion",)
    examples = []
    # a bar where tokenizing takes long enough to wonder (hub-sized data: tens of thousands of records)
    for i, record in enumerate(tqdm(records, desc="tokenize", unit="record", disable=len(records) < 5000)):
        prompt_text, _ = render(tokenizer, record["prompt"], None, spec.chat_template)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completions = []
        for key in keys:
            _, text = render(tokenizer, record["prompt"], _text(record[key]), spec.chat_template)
            completions.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        longest = max(len(c) for c in completions)
        if len(prompt) + longest > spec.max_length:
            if spec.truncation == "drop":
                report.drop(f"longer than max_length={spec.max_length} tokens", i)
                continue
            if len(prompt) > spec.max_prompt_length:
                prompt = prompt[-spec.max_prompt_length :]
                report.prompts_truncated += 1
            room = spec.max_length - len(prompt)
            if longest > room:
                report.completions_truncated += 1
                completions = [c[:room] for c in completions]
        # a token is scored from the one before it: without a prompt, a completion's first token has no log-prob
        if any(len(c) < (1 if prompt else 2) for c in completions):
            report.drop("completion has no tokens", i)
            continue
        examples.append(
            Example(
                tuple(prompt), tuple(tuple(c) for c in completions), record.get("label") if fmt == "unpaired" else None
            )
        )
    if report.dropped and spec.on_bad == "fail":
        details = "; ".join(
            f"{reason}: {len(idx)} record(s), e.g. index {idx[:5]}" for reason, idx in report.dropped.items()
        )
        raise ValueError(f"data: {details} (set data.on_bad: drop to train without them)")
    return examples, report


def fingerprint(examples: list[Example]) -> str:
    """sha256 of every token id and label, in order: equal fingerprints mean identical training data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.prompt, ex.completions, ex.label)).encode())
    return h.hexdigest()
