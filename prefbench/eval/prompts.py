"""The prompts a run generates from (eval.generation.prompts, tune.prompts): the embedded task's, the held-out or
validation split of the recipe's own data, or a JSONL file; and a prompt as one text for readers that take text."""

from __future__ import annotations

import json
from pathlib import Path

from prefbench.data.load import prompt_key
from prefbench.data.prepare import split_records
from prefbench.data.tokenize import _text
from prefbench.recipe import DataSpec, PromptSpec
from prefbench.task import make_prompts


def load_prompt_records(spec: PromptSpec, data: DataSpec | None = None, need_chosen: bool = False) -> list[dict]:
    """The first spec.n prompts, as {"prompt"} or {"prompt", "chosen"}: from a JSONL file (each line a text
    "prompt", optionally the data's text "chosen" answer), the held-out or validation split of `data` (source: data; with
    `need_chosen`, only prompts that have a chosen answer), or the embedded task's split."""
    if spec.file:
        return _file_prompt_records(spec)
    if spec.source == "data":
        return data_prompt_records(data, spec.n, spec.split, need_chosen)
    return [{"prompt": p.prompt} for p in make_prompts(spec.n, spec.split, spec.seed)]


def data_prompt_records(data: DataSpec, n: int, split: str = "heldout", need_chosen: bool = False) -> list[dict]:
    """The first n distinct prompts of the data's held-out or validation split (those the trainer makes, by
    prompt), each with the data's chosen answer: a pair's chosen completion, or (unpaired) the first desirable
    completion, when the prompt has one; with `need_chosen`, prompts without one (unpaired: only undesirable
    completions) are left out. Prompts keep their form (text, or chat messages)."""
    parts = split_records(data)
    by_prompt: dict[str, dict] = {}
    for r in parts.validation if split == "validation" else parts.held_out:
        record = by_prompt.setdefault(prompt_key(r["prompt"]), {"prompt": r["prompt"]})
        answer = r.get("chosen", r.get("completion") if r.get("label") else None)
        if answer is not None and "chosen" not in record:
            record["chosen"] = _text(answer)
    return [r for r in by_prompt.values() if "chosen" in r or not need_chosen][:n]


def _file_prompt_records(spec: PromptSpec) -> list[dict]:
    records = []
    for i, line in enumerate(Path(spec.file).expanduser().read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{spec.file}: line {i + 1} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise ValueError(f"{spec.file}: line {i + 1} has no text 'prompt'")
        if "chosen" in record and not isinstance(record["chosen"], str):
            raise ValueError(f"{spec.file}: line {i + 1}: 'chosen' must be text")
        records.append({k: record[k] for k in ("prompt", "chosen") if k in record})
        if len(records) == spec.n:
            break
    return records


def prompt_text(prompt) -> str:
    """A prompt as one text, for readers that take text (the judge, exported answers): a text prompt as is,
    a single user message as its content, a conversation as "role: content" paragraphs."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def load_prompts(spec: PromptSpec, data: DataSpec | None = None) -> list:
    return [r["prompt"] for r in load_prompt_records(spec, data)]
