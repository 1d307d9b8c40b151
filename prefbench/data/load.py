"""Loading, normalising and validating preference records, and the train/eval split.

Two record formats reach everything downstream:

    paired     {"prompt": P, "chosen": C, "rejected": R}
    unpaired   {"prompt": P, "completion": C, "label": bool}     (True = desirable)

P is a non-empty string or a list of chat messages ({"role": "system"|"user"|"assistant",
"content": str}) ending with a user message. C and R are a non-empty string or a list holding
exactly one assistant message. Records keep the form they were given in; tokenisation turns
both forms into tokens later.

Every source goes through `datasets.load_dataset`: a hub name as `load_dataset(name, split=...)`,
a local file as `load_dataset("json"|"parquet", data_files=..., split="train")`. Hub datasets
cannot be reached from the test machines, so sharing the one path is what lets the tests cover
the code real users run.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefbench.recipe import FIELDS

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

# Local file kinds (the values `data_files_format` takes) and the `datasets` builder of each.
_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
_BUILDERS = {"jsonl": "json", "json": "json", "parquet": "parquet"}


# ---- loading ----------------------------------------------------------------------------------


# The on-policy preference data that ships with prefbench (built by `prefbench generate-data recipes/embedded_data.yaml`).
EMBEDDED_DATA = Path(__file__).parent / "embedded"
# embedded:smoke is 24 text pairs (20 prompts) for the seconds-long smoke recipe and the tests, not task data.
EMBEDDED_SOURCES = {
    "embedded:paired": "paired.jsonl",
    "embedded:unpaired": "unpaired.jsonl",
    "embedded:smoke": "smoke.jsonl",
}


def resolve_source(source: str) -> str:
    """`embedded:paired` / `embedded:unpaired` -> the shipped file; anything else unchanged."""
    source = str(source)
    if source.startswith("embedded:"):
        if source not in EMBEDDED_SOURCES:
            raise ValueError(f"data source {source!r}: the shipped datasets are {sorted(EMBEDDED_SOURCES)}")
        return str(EMBEDDED_DATA / EMBEDDED_SOURCES[source])
    return source


def load_records(
    source: str,
    *,
    split: str = "train",
    data_files_format: str | None = None,
    config: str | None = None,
    data_dir: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Records from a local .jsonl/.json/.parquet file, or a Hugging Face dataset: a hub name or a local directory
    laid out like one (its configuration `config`, its sub-directory `data_dir`).

    A local file is recognised by its suffix, by existing, or by `data_files_format` ("jsonl",
    "json" or "parquet"), which also reads a file whose suffix says nothing (e.g. `data.txt`).
    A .json file holds a list of objects or `{"data": [...]}`. A local file has one split, so
    `split` must stay "train". Anything else is a dataset, loaded with
    `datasets.load_dataset(source, config, data_dir=data_dir, split=split)`.

    `columns` maps prefbench's fields to the data's own column names ({"prompt": "question", ...}); the
    columns are renamed before anything else. Paired records in the common hub layouts (full conversations in
    chosen/rejected; plain-text Human/Assistant dialogues sharing an implicit prompt) are normalised by
    `split_shared_prompt`. Nothing is validated here: call `validate`.
    """
    source = resolve_source(source)
    path = Path(source).expanduser()
    if data_files_format is not None and data_files_format not in _BUILDERS:
        raise ValueError(f"data_files_format must be one of {sorted(_BUILDERS)}, got {data_files_format!r}")
    if data_files_format is None and path.is_dir():
        from datasets.data_files import (
            EmptyDatasetError,
        )  # deferred: datasets: seconds to import; only hub and directory sources need it
        from datasets.exceptions import (
            DataFilesNotFoundError,
        )  # deferred: datasets: seconds to import; only hub and directory sources need it

        try:
            args, kwargs = _dataset_call(str(path), config, data_dir)
            return _load_dataset_records(*args, columns=columns, split=split, **kwargs)
        except (DataFilesNotFoundError, EmptyDatasetError, FileNotFoundError) as err:
            raise ValueError(
                f"data source {path}{f' (data_dir {data_dir})' if data_dir else ''} is a directory with no data "
                f"files datasets can read (.jsonl, .json, .parquet, ...): {err}"
            ) from None
    if data_files_format is None and not is_local_source(source):
        args, kwargs = _dataset_call(source, config, data_dir)
        return _load_dataset_records(*args, columns=columns, split=split, **kwargs)

    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if config or data_dir:
        raise ValueError(f"{path}: config and data_dir apply to a dataset (a hub name or a directory), not to a file")
    kind = data_files_format or _SUFFIXES.get(path.suffix)
    if kind is None:
        raise ValueError(
            f"{path}: unknown data file type {path.suffix!r}; use .jsonl, .json or .parquet, or pass data_files_format"
        )
    if split != "train":
        raise ValueError(
            f"{path}: a local file has a single split ('train'); split={split!r} only applies to hub datasets"
        )

    data_files = str(path.resolve())
    if kind == "parquet":
        return _load_dataset_records("parquet", columns=columns, data_files=data_files, split="train")
    try:
        records = _load_dataset_records("json", columns=columns, data_files=data_files, split="train")
    except Exception as err:
        # datasets' own error here is "An error occurred while generating the dataset"; find the line.
        reason = _explain_json_failure(path)
        if reason is None:
            raise
        raise ValueError(f"{path}: {reason}") from err
    data = records[0].get("data") if kind == "json" and len(records) == 1 else None
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        # {"data": [...]} reads as one row with a "data" column; read the list inside instead.
        records = _load_dataset_records("json", columns=columns, data_files=data_files, split="train", field="data")
    return records


def _dataset_call(source: str, config: str | None, data_dir: str | None) -> tuple[tuple, dict]:
    """load_dataset's arguments for a dataset: its name (or directory), its configuration and data_dir where
    given, so a plain name is loaded exactly as `load_dataset(name, split=...)`."""
    return ((source, config) if config else (source,)), ({"data_dir": data_dir} if data_dir else {})


def is_local_source(source: str) -> bool:
    """A local file (by suffix, existence or path form) rather than a hub dataset name."""
    path = Path(source).expanduser()
    return path.suffix in _SUFFIXES or path.exists() or source.startswith(("/", "./", "../", "~"))


def _load_dataset_records(*args: Any, columns: dict[str, str] | None = None, **kwargs: Any) -> list[dict]:
    """The one loading path: `datasets.load_dataset(*args, **kwargs)`, the `columns` renamed to prefbench's
    fields -> normalised record dicts."""
    import datasets  # imported here: it takes a second, and most commands never load data

    dataset = datasets.load_dataset(*args, **kwargs)
    if columns:
        if missing := [f"{ours}: {theirs!r}" for ours, theirs in columns.items() if theirs not in dataset.column_names]:
            raise ValueError(
                f"data.columns: no such column in the data ({', '.join(missing)}); its columns are "
                f"{', '.join(dataset.column_names)}"
            )
        # a column already bearing one of the names given to others goes (the mapping says which column is meant)
        shadowed = [ours for ours in columns if ours in dataset.column_names and ours not in columns.values()]
        dataset = dataset.remove_columns(shadowed).rename_columns(
            {theirs: ours for ours, theirs in columns.items() if theirs != ours}
        )
    return [split_shared_prompt(_drop_nulls(r)) for r in dataset.to_list()]


def _drop_nulls(record: dict) -> dict:
    """Remove the None values Arrow adds for keys that only other rows (or other messages) have.

    A column is the union of every row's keys, so a paired row of a mixed file comes back with
    "label": None, and a message gets "name": None when another message has a name. Without
    them the record reads as it was written; an explicit null in the file reads as missing,
    which is what `validate` makes of it anyway.
    """
    out = {}
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            value = [{k: v for k, v in m.items() if v is not None} for m in value]
        out[key] = value
    return out


def _explain_json_failure(path: Path) -> str | None:
    """Why a JSON / JSON Lines file failed to load, as one line with its line number; None if no idea."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text ({e.reason} at byte {e.start})"
    if not text.strip():
        return "the file is empty"
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        pass  # not one JSON document: read it as JSON Lines below
    else:
        items = whole["data"] if isinstance(whole, dict) and "data" in whole else whole
        if not isinstance(items, list):
            return f'expected a list of objects or {{"data": [...]}}, got a JSON {type(items).__name__}'
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                return f"item {i} is not a JSON object (got {type(item).__name__})"
        return None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {lineno}: invalid JSON ({e.msg})"
        if not isinstance(obj, dict):
            return f"line {lineno}: expected one JSON object per line, got a JSON {type(obj).__name__}"
    return None


def _is_missing(record: dict, key: str) -> bool:
    # Arrow-backed loaders fill a key absent from some rows with None, so None means missing.
    return record.get(key) is None


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def _role_content(messages: list[dict]) -> list[tuple[Any, Any]]:
    # Compare messages on role and content only: other keys (a name, Arrow's None fillers) do not make a different turn.
    return [(m.get("role"), m.get("content")) for m in messages]


def split_shared_prompt(record: Any) -> Any:
    """Normalise the common hub layout where chosen/rejected are full conversations.

    Without a prompt (whole conversations in chosen/rejected): when they are message lists that agree
    on every message but their last, which is an assistant message in both, the shared messages
    become the prompt and each side keeps its last message (as a one-message list).

    With a prompt (UltraFeedback-binarized style: prompt is a string, chosen/rejected repeat it
    as their first user message): when the shared messages are exactly the prompt (the same
    message list, or a single user message whose content is the prompt string), chosen and
    rejected are cut to their last message.

    Plain-text pairs without a prompt go to `split_implicit_prompt`. Anything else is returned unchanged, for
    `validate` to judge. Returns a new dict when it changes something; never mutates its input.
    """
    if not isinstance(record, dict):
        return record
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if record.get("prompt") is None and isinstance(chosen, str) and isinstance(rejected, str):
        return split_implicit_prompt(record)
    if not (_is_message_list(chosen) and _is_message_list(rejected)):
        return record
    if len(chosen) < 2 or len(rejected) < 2:
        return record
    if chosen[-1].get("role") != "assistant" or rejected[-1].get("role") != "assistant":
        return record
    shared = chosen[:-1]
    if _role_content(shared) != _role_content(rejected[:-1]):
        return record
    prompt = record.get("prompt")
    if prompt is None:
        return {**record, "prompt": shared, "chosen": [chosen[-1]], "rejected": [rejected[-1]]}
    same_prompt = (isinstance(prompt, list) and _role_content(prompt) == _role_content(shared)) or (
        isinstance(prompt, str) and _role_content(shared) == [("user", prompt)]
    )
    if same_prompt:
        return {**record, "chosen": [chosen[-1]], "rejected": [rejected[-1]]}
    return record


_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")  # a turn of an Anthropic HH-RLHF style dialogue


def split_implicit_prompt(record: dict) -> dict:
    """A plain-text pair in the Anthropic HH-RLHF layout: chosen and rejected are whole dialogues
    ("\n\nHuman: ...\n\nAssistant: ...") that agree up to the last assistant turn. The shared turns become
    the prompt, as chat messages (Human -> user, Assistant -> assistant), and each side keeps its last
    answer as text. Written by hand: `datasets` and TRL leave this split to each user's own code.
    A record in any other shape comes back unchanged, for `validate` to judge."""
    chosen, rejected = record["chosen"], record["rejected"]
    turns = [_dialogue(text) for text in (chosen, rejected)]
    if not all(t and t[-1][0] == "assistant" and len(t) >= 2 for t in turns):
        return record
    (c, r) = turns
    if c[:-1] != r[:-1] or c[-2][0] != "user":
        return record
    prompt = [{"role": role, "content": content} for role, content in c[:-1]]
    return {**record, "prompt": prompt, "chosen": c[-1][1], "rejected": r[-1][1]}


def _dialogue(text: str) -> list[tuple[str, str]] | None:
    """[(role, content)] of an HH-style dialogue, or None when the text is not one (it must open with a turn)."""
    marks = list(_TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        (roles[m.group(1)], text[m.end() : nxt.start() if nxt else len(text)].strip())
        for m, nxt in zip(marks, marks[1:] + [None])
    ]


# ---- validation -------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What `validate` saw: `bad` maps each reason to the indices (0-based, into its input) it rejected.

    Each bad record is listed once, under the first problem found, so `kept + sum of counts == total`.
    """

    total: int
    kept: int
    bad: dict[str, list[int]] = field(default_factory=dict)

    def summary(self, fmt: str, shown: int = 5) -> str:
        n_bad = self.total - self.kept
        lines = [f"{n_bad} of {self.total} records are not valid {fmt} records:"]
        for reason, indices in self.bad.items():
            more = ", ..." if len(indices) > shown else ""
            lines.append(f"  {reason}: {len(indices)} (records {', '.join(map(str, indices[:shown]))}{more})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "bad": {k: list(v) for k, v in self.bad.items()}}


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return sum(len(m["content"]) for m in value)


def _check_messages(name: str, value: list) -> str | None:
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"'{name}' has a message that is not {{role: string, content: string}}"
        if m["role"] not in ROLES:
            return f"'{name}' has a message whose role is not system, user or assistant"
    return None


def _check_prompt(value: Any) -> str | None:
    if isinstance(value, str):
        return "empty 'prompt'" if not value.strip() else None
    if not isinstance(value, list):
        return "'prompt' is neither a string nor a list of messages"
    if not value:
        return "empty 'prompt'"
    problem = _check_messages("prompt", value)
    if problem:
        return problem
    if value[-1]["role"] != "user":
        return "'prompt' messages do not end with a user message"
    # Earlier turns may be blank (many chat sets carry an empty system slot); the question may not.
    return "empty 'prompt'" if not value[-1]["content"].strip() else None


def _check_completion(name: str, value: Any) -> str | None:
    if isinstance(value, str):
        return f"empty '{name}'" if not value.strip() else None
    if not isinstance(value, list):
        return f"'{name}' is neither a string nor a list of messages"
    if not value:
        return f"empty '{name}'"
    problem = _check_messages(name, value)
    if problem:
        return problem
    if len(value) != 1 or value[0]["role"] != "assistant":
        return f"'{name}' is a message list but not exactly one assistant message"
    return f"empty '{name}'" if not value[0]["content"].strip() else None


def _check_label(value: Any) -> str | None:
    # bool is the format; 0/1 ints are accepted because many datasets store labels that way.
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return None
    return "'label' is not a bool (or 0/1)"


def _wrong_format(record: dict, fmt: str) -> str | None:
    """The record has the other format's fields and none of the declared format's own."""
    other = "unpaired" if fmt == "paired" else "paired"
    own = [f for f in FIELDS[fmt] if f != "prompt"]
    theirs = [f for f in FIELDS[other] if f != "prompt"]
    if all(_is_missing(record, f) for f in own) and any(not _is_missing(record, f) for f in theirs):
        return f"looks like {other} data ({', '.join(FIELDS[other])}); the recipe says {fmt}"
    return None


def _record_problem(record: Any, fmt: str, max_chars: int | None) -> str | None:
    """The first problem with one record, as a reason string shared by every record it applies to."""
    if not isinstance(record, dict):
        return "record is not an object"
    wrong = _wrong_format(record, fmt)
    if wrong:
        return wrong
    for name in FIELDS[fmt]:
        if _is_missing(record, name):
            if name == "prompt" and _is_message_list(record.get("chosen")) and len(record["chosen"]) > 1:
                # The full-conversation layout that split_shared_prompt could not split.
                return "missing field 'prompt', and chosen/rejected are conversations that differ before their last message"
            return f"missing field '{name}'"
    if fmt == "paired":
        problem = (
            _check_prompt(record["prompt"])
            or _check_completion("chosen", record["chosen"])
            or _check_completion("rejected", record["rejected"])
        )
    else:
        problem = (
            _check_prompt(record["prompt"])
            or _check_completion("completion", record["completion"])
            or _check_label(record["label"])
        )
    if problem:
        return problem
    if fmt == "paired" and record["chosen"] == record["rejected"]:
        return "chosen and rejected are identical"
    if max_chars is not None:
        completions = [record[n] for n in FIELDS[fmt][1:] if n != "label"]
        if _text_length(record["prompt"]) + max(map(_text_length, completions)) > max_chars:
            return f"longer than max_chars={max_chars} (prompt + longest completion)"
    return None


def validate(
    records: list[dict], fmt: str, *, on_bad: str = "fail", max_chars: int | None = None
) -> tuple[list[dict], DataReport]:
    """Check every record against format `fmt` ("paired" or "unpaired"); return the good ones and a report.

    Problems: not an object, the other format altogether, a missing (or None) field, an empty
    prompt or completion (blank after strip), a wrong type (a label that is not a bool or 0/1,
    a prompt/completion that is neither a string nor a message list), malformed messages (not
    {role, content} strings, an unknown role, a prompt not ending with a user message, a
    completion list that is not exactly one assistant message), chosen identical to rejected
    (no preference to learn), and, with `max_chars`, prompt + longest completion longer than
    `max_chars` characters (message contents only). Unknown extra fields are ignored.

    on_bad="fail" raises one ValueError with the count and first indices per reason;
    on_bad="drop" drops the bad records, logs a warning and lists them in the report. Either
    way it raises if no record is left. Kept records are shallow copies, with a 0/1 label
    turned into a bool; the input is not modified.
    """
    if fmt not in FIELDS:
        raise ValueError(f"format must be 'paired' or 'unpaired', got {fmt!r}")
    if on_bad not in ("fail", "drop"):
        raise ValueError(f"on_bad must be 'fail' or 'drop', got {on_bad!r}")
    if not records:
        raise ValueError(f"no records to validate (expected {fmt} records)")

    kept: list[dict] = []
    bad: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        problem = _record_problem(record, fmt, max_chars)
        if problem:
            bad.setdefault(problem, []).append(i)
            continue
        record = dict(record)
        if fmt == "unpaired":
            record["label"] = bool(record["label"])
        kept.append(record)

    report = DataReport(total=len(records), kept=len(kept), bad=bad)
    if bad and (on_bad == "fail" or not kept):
        hint = "set on_bad to 'drop' to train on the rest" if kept else "no record is valid"
        raise ValueError(f"{report.summary(fmt)}\n{hint}")
    if bad:
        log.warning("dropped bad records\n%s", report.summary(fmt))
    return kept, report


# ---- train/eval split ---------------------------------------------------------------------------


def prompt_key(prompt: Any) -> str:
    """A string identifying a prompt: the text itself, or canonical JSON of its messages' role/content."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(_role_content(prompt), ensure_ascii=False)


def train_eval_split(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by prompt: every record of a prompt lands on the same side, so no prompt is in both.

    The distinct prompts (in order of first appearance) are shuffled with `random.Random(seed)`
    and the first round(eval_fraction * n_prompts) go to eval, at least one when eval_fraction > 0.
    No set or hash() is involved, so the split depends on the seed only, not on PYTHONHASHSEED.
    Records keep their input order on each side. eval_fraction is a fraction of prompts.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    keys = [prompt_key(r["prompt"]) for r in records]
    prompts = list(dict.fromkeys(keys))  # distinct, first-appearance order
    if eval_fraction == 0:
        return list(records), []
    n_eval = max(1, round(eval_fraction * len(prompts)))
    if n_eval >= len(prompts):
        raise ValueError(
            f"eval_fraction={eval_fraction} leaves no training prompts ({len(prompts)} distinct prompts in {len(records)} records)"
        )
    random.Random(seed).shuffle(prompts)
    eval_prompts = set(prompts[:n_eval])  # membership tests only; never iterated
    train = [r for r, k in zip(records, keys) if k not in eval_prompts]
    evaluation = [r for r, k in zip(records, keys) if k in eval_prompts]
    return train, evaluation


def detect_format(records: list[dict]) -> str:
    """'paired' or 'unpaired', from the fields of the records (all must agree)."""
    formats = set()
    for r in records:
        if not isinstance(r, dict):
            raise ValueError("records must be dicts")
        if not _is_missing(r, "chosen"):
            formats.add("paired")
        elif not _is_missing(r, "completion"):
            formats.add("unpaired")
        else:
            raise ValueError("record has neither chosen/rejected nor completion/label fields")
    if len(formats) != 1:
        raise ValueError("records mix paired and unpaired formats" if formats else "no records")
    return formats.pop()
