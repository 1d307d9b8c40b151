"""The data layer: loading (local files through the same `datasets` path as hub names), the
full-conversation normaliser, validation messages, the split by prompt, and the transforms' exact
counts and determinism.

Fixtures in tests/data/: paired_text.jsonl (a link to the shipped smoke set, `embedded:smoke`; 24 pairs, 20
distinct prompts: prompts 0-3 come back as pairs 20-23), paired_chat.jsonl (12 chat pairs), unpaired_text.jsonl (20 rows: 12 desirable,
8 undesirable), bad_records.jsonl (one record per defect; `case_format` and `expect` say how
each must be judged). Parquet and the hub layouts are written from them into tmp dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefbench.data import (
    DataReport,
    drop_fraction,
    flip_labels,
    kto_class_weights,
    load_records,
    paired_to_unpaired,
    prompt_key,
    split_shared_prompt,
    train_eval_split,
    validate,
)

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def read_jsonl(name: str) -> list[dict]:
    """The fixture as written, read without prefbench or datasets: the reference for load_records."""
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_datasets_cache")


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(hf_cache, monkeypatch):
    # load_dataset reads this at call time; keeps the tests' Arrow caches out of ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache))


PAIRED = read_jsonl("paired_text.jsonl")
CHAT = read_jsonl("paired_chat.jsonl")
UNPAIRED = read_jsonl("unpaired_text.jsonl")


# ---- loading ----------------------------------------------------------------------------------


def test_fixtures_have_the_documented_shape():
    assert len(PAIRED) == 24 and len({r["prompt"] for r in PAIRED}) == 20
    assert [r["prompt"] for r in PAIRED[20:]] == [r["prompt"] for r in PAIRED[:4]]
    assert len(CHAT) == 12
    assert len(UNPAIRED) == 20 and sum(r["label"] for r in UNPAIRED) == 12


@pytest.mark.parametrize("name", ["paired_text.jsonl", "paired_chat.jsonl", "unpaired_text.jsonl"])
def test_load_jsonl_gives_the_records_as_written(name):
    records = load_records(str(DATA / name))
    assert records == read_jsonl(name)
    fmt = "unpaired" if name.startswith("unpaired") else "paired"
    kept, report = validate(records, fmt)
    assert kept == records and report == DataReport(total=len(records), kept=len(records), bad={})


@pytest.mark.parametrize("rows", [PAIRED, CHAT, UNPAIRED], ids=["text", "chat", "unpaired"])
def test_parquet_and_json_load_the_same_records_as_jsonl(tmp_path, rows):
    assert load_records(str(write_parquet(tmp_path / "d.parquet", rows))) == rows
    (tmp_path / "list.json").write_text(json.dumps(rows))
    assert load_records(str(tmp_path / "list.json")) == rows
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows, "version": "1"}))
    assert load_records(str(tmp_path / "wrapped.json")) == rows


def test_data_files_format_reads_a_file_whose_suffix_says_nothing(tmp_path):
    path = write_jsonl(tmp_path / "pairs.txt", PAIRED)
    with pytest.raises(
        ValueError, match=r"unknown data file type '\.txt'; use \.jsonl, \.json or \.parquet, or pass data_files_format"
    ):
        load_records(str(path))
    assert load_records(str(path), data_files_format="jsonl") == PAIRED
    pq_path = write_parquet(tmp_path / "pairs.bin", PAIRED)
    assert load_records(str(pq_path), data_files_format="parquet") == PAIRED
    with pytest.raises(ValueError, match="data_files_format must be one of"):
        load_records(str(path), data_files_format="csv")


def test_missing_file_directory_and_split_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        load_records(str(missing))
    assert str(err.value) == f"data file not found: {missing}"
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_records("./no_such_dir/no_such_file")  # a path, not a hub name, though it has no suffix
    with pytest.raises(ValueError, match=f"data source {tmp_path} is a directory with no data files datasets can read"):
        load_records(
            str(tmp_path)
        )  # a directory is read as a dataset laid out like a hub one (tests/test_data_forms.py)
    with pytest.raises(ValueError, match=r"a local file has a single split \('train'\); split='test'"):
        load_records(str(DATA / "paired_text.jsonl"), split="test")


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "broken.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": oops}\n',
            r"line 3: invalid JSON \(Expecting value\)",
        ),
        (
            "list_line.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n["a", "b"]\n',
            "line 2: expected one JSON object per line, got a JSON list",
        ),
        ("scalar.json", '"just a string"', r"expected a list of objects or \{\"data\": \[\.\.\.\]\}, got a JSON str"),
        ("items.json", '[{"prompt": "a", "chosen": "b", "rejected": "c"}, 7]', "item 1 is not a JSON object"),
        ("empty.jsonl", "\n", "the file is empty"),
        ("latin1.jsonl", '{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'.encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_unreadable_json_names_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as err:
        load_records(str(tmp_path / name))
    assert str(err.value).startswith(str(tmp_path / name) + ": ")


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset for hub names, backed by a local file: records each call's arguments."""
    real = datasets.load_dataset
    calls: list[tuple] = []
    files: dict[str, Path] = {}

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] in ("json", "parquet"):
            return real(*args, **kwargs)
        return real("json", data_files=str(files[args[0]]), split="train")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, files


def test_hub_name_calls_load_dataset_with_name_and_split(fake_hub):
    calls, files = fake_hub
    files["someorg/prefs"] = DATA / "paired_chat.jsonl"
    records = load_records("someorg/prefs", split="test")
    assert calls == [(("someorg/prefs",), {"split": "test"})]
    assert records == CHAT
    assert load_records("someorg/prefs", config="en", data_dir="v2") == CHAT  # a configuration and a sub-directory
    assert calls[-1] == (("someorg/prefs", "en"), {"split": "train", "data_dir": "v2"})


def test_local_files_go_through_load_dataset_too(fake_hub, tmp_path):
    calls, _ = fake_hub
    load_records(str(DATA / "paired_text.jsonl"))
    load_records(str(write_parquet(tmp_path / "p.parquet", PAIRED)))
    assert calls == [
        (("json",), {"data_files": str((DATA / "paired_text.jsonl").resolve()), "split": "train"}),  # (a link)
        (("parquet",), {"data_files": str(tmp_path / "p.parquet"), "split": "train"}),
    ]


# ---- the full-conversation layout ---------------------------------------------------------------


def full_conversations(records: list[dict]) -> list[dict]:
    """Hub-style rows without a prompt: chosen/rejected are the whole conversation (as message lists)."""
    return [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in records]


def test_split_shared_prompt_recovers_prompt_and_last_messages():
    row = {
        "chosen": [u("Hi"), a("Hello!"), u("Joke?"), a("Why did...")],
        "rejected": [u("Hi"), a("Hello!"), u("Joke?"), a("No.")],
        "id": 7,
    }
    before = json.dumps(row)
    assert split_shared_prompt(row) == {
        "prompt": [u("Hi"), a("Hello!"), u("Joke?")],
        "chosen": [a("Why did...")],
        "rejected": [a("No.")],
        "id": 7,
    }
    assert json.dumps(row) == before  # input untouched


def test_split_shared_prompt_strips_a_repeated_prompt():
    # UltraFeedback-binarized style: a string prompt, repeated as the first user message of each side.
    row = {"prompt": "2+2?", "chosen": [u("2+2?"), a("4")], "rejected": [u("2+2?"), a("5")]}
    assert split_shared_prompt(row) == {"prompt": "2+2?", "chosen": [a("4")], "rejected": [a("5")]}
    listed = {"prompt": [u("2+2?")], "chosen": [u("2+2?"), a("4")], "rejected": [u("2+2?"), a("5")]}
    assert split_shared_prompt(listed) == {"prompt": [u("2+2?")], "chosen": [a("4")], "rejected": [a("5")]}


@pytest.mark.parametrize(
    "row",
    [
        {"chosen": [u("Hi"), a("A")], "rejected": [u("Hey"), a("B")]},  # differ before the last message
        {"chosen": [u("Hi"), u("A")], "rejected": [u("Hi"), a("B")]},  # last message not the assistant's
        {"chosen": [a("A")], "rejected": [a("B")]},  # nothing to split off
        {"prompt": "other", "chosen": [u("Hi"), a("A")], "rejected": [u("Hi"), a("B")]},  # prompt is not the prefix
        {"prompt": "p", "chosen": "A", "rejected": "B"},
        {"prompt": "p", "completion": "A", "label": True},
    ],
)
def test_split_shared_prompt_leaves_other_records_alone(row):
    assert split_shared_prompt(row) is row


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_load_normalises_full_conversations(tmp_path, suffix):
    rows = full_conversations(CHAT)
    path = tmp_path / f"hh.{suffix}"
    write_jsonl(path, rows) if suffix == "jsonl" else write_parquet(path, rows)
    records = load_records(str(path))
    assert records == CHAT
    assert validate(records, "paired")[1].kept == 12


def test_hub_layout_is_normalised_on_the_hub_path(fake_hub, tmp_path):
    _, files = fake_hub
    files["org/hh-style"] = write_jsonl(tmp_path / "hh.jsonl", full_conversations(CHAT))
    files["org/ultrafeedback-style"] = write_jsonl(
        tmp_path / "uf.jsonl",
        [
            {
                "prompt": r["prompt"],
                "chosen": [u(r["prompt"]), a(r["chosen"])],
                "rejected": [u(r["prompt"]), a(r["rejected"])],
            }
            for r in PAIRED
        ],
    )
    assert load_records("org/hh-style") == CHAT
    assert load_records("org/ultrafeedback-style") == [
        {"prompt": r["prompt"], "chosen": [a(r["chosen"])], "rejected": [a(r["rejected"])]} for r in PAIRED
    ]


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, n, n_bad", [("paired", 16, 15), ("unpaired", 6, 5)])
def test_each_defect_gets_its_reason(fmt, n, n_bad):
    records = [r for r in load_records(str(DATA / "bad_records.jsonl")) if r["case_format"] == fmt]
    assert len(records) == n
    expected: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("expect"):
            expected.setdefault(r["expect"], []).append(i)
    kept, report = validate(records, fmt, on_bad="drop", max_chars=200)
    assert report.bad == expected
    assert (report.total, report.kept) == (n, n - n_bad)
    assert report.kept + sum(len(v) for v in report.bad.values()) == report.total
    assert [r.get("expect") for r in kept] == [None]


def test_fail_lists_counts_and_first_indices_in_one_message():
    records = [r for r in load_records(str(DATA / "bad_records.jsonl")) if r["case_format"] == "unpaired"]
    with pytest.raises(ValueError) as err:
        validate(records, "unpaired")
    assert str(err.value) == (
        "5 of 6 records are not valid unpaired records:\n"
        "  'label' is not a bool (or 0/1): 2 (records 1, 2)\n"
        "  missing field 'label': 1 (records 3)\n"
        "  empty 'completion': 1 (records 4)\n"
        "  looks like paired data (prompt, chosen, rejected); the recipe says unpaired: 1 (records 5)\n"
        "set on_bad to 'drop' to train on the rest"
    )


def test_drop_keeps_the_rest_and_warns(caplog):
    records = PAIRED[:5] + [{"prompt": "x", "chosen": " ", "rejected": "y"}] + PAIRED[5:]
    with caplog.at_level("WARNING", logger="prefbench.data.load"):
        kept, report = validate(records, "paired", on_bad="drop")
    assert kept == PAIRED
    assert report == DataReport(total=25, kept=24, bad={"empty 'chosen'": [5]})
    assert report.to_dict() == {"total": 25, "kept": 24, "bad": {"empty 'chosen'": [5]}}
    assert (
        "1 of 25 records are not valid paired records" in caplog.text and "empty 'chosen': 1 (records 5)" in caplog.text
    )


def test_whole_file_of_the_wrong_format_says_so():
    message = (
        "20 of 20 records are not valid paired records:\n"
        "  looks like unpaired data (prompt, completion, label); the recipe says paired: 20 (records 0, 1, 2, 3, 4, ...)\n"
    )
    for on_bad in ("fail", "drop"):  # dropping every record leaves no data set either
        with pytest.raises(ValueError) as err:
            validate(UNPAIRED, "paired", on_bad=on_bad)
        assert str(err.value) == message + "no record is valid"
    with pytest.raises(
        ValueError, match=r"looks like paired data \(prompt, chosen, rejected\); the recipe says unpaired: 24"
    ):
        validate(PAIRED, "unpaired")


def test_labels_accept_bool_and_0_1_only_and_become_bool():
    rows = [{"prompt": "p", "completion": "c", "label": v} for v in (True, False, 1, 0, 1.0, "true", 2, None)]
    before = json.dumps(rows)
    kept, report = validate(rows, "unpaired", on_bad="drop")
    assert [r["label"] for r in kept] == [True, False, True, False]
    assert all(type(r["label"]) is bool for r in kept)
    assert report.bad == {"'label' is not a bool (or 0/1)": [4, 5, 6], "missing field 'label'": [7]}
    assert json.dumps(rows) == before  # the input is not modified


def test_max_chars_counts_prompt_plus_longest_completion():
    rows = [
        {"prompt": "abcd", "chosen": "123456", "rejected": "1"},  # 4 + 6 = 10
        {"prompt": [u("ab"), a("cd"), u("ef")], "chosen": [a("1234")], "rejected": "12345"},  # 6 + 5 = 11
    ]
    assert validate(rows, "paired", max_chars=11)[1].kept == 2
    kept, report = validate(rows, "paired", max_chars=10, on_bad="drop")
    assert kept == rows[:1] and report.bad == {"longer than max_chars=10 (prompt + longest completion)": [1]}


def test_validate_arguments_and_non_objects():
    with pytest.raises(ValueError, match="format must be 'paired' or 'unpaired', got 'pairs'"):
        validate(PAIRED, "pairs")
    with pytest.raises(ValueError, match="on_bad must be 'fail' or 'drop', got 'skip'"):
        validate(PAIRED, "paired", on_bad="skip")
    with pytest.raises(ValueError, match="no records to validate"):
        validate([], "paired")
    _, report = validate(PAIRED[:2] + ["text"], "paired", on_bad="drop")
    assert report.bad == {"record is not an object": [2]}


# ---- train/eval split -------------------------------------------------------------------------


def test_split_by_prompt():
    train, evaluation = train_eval_split(PAIRED, eval_fraction=0.25, seed=0)
    train_prompts, eval_prompts = {r["prompt"] for r in train}, {r["prompt"] for r in evaluation}
    assert len(eval_prompts) == 5 and len(train_prompts) == 15  # round(0.25 * 20 distinct prompts)
    assert not train_prompts & eval_prompts
    assert len(train) + len(evaluation) == 24
    # each side keeps input order, and every record sits on its prompt's side
    assert train == [r for r in PAIRED if r["prompt"] in train_prompts]
    assert evaluation == [r for r in PAIRED if r["prompt"] in eval_prompts]


def test_split_is_deterministic_and_seeded():
    assert train_eval_split(PAIRED, 0.25, seed=3) == train_eval_split(PAIRED, 0.25, seed=3)
    assert train_eval_split(PAIRED, 0.25, seed=3)[1] != train_eval_split(PAIRED, 0.25, seed=4)[1]


def test_split_after_conversion_does_not_leak_prompts():
    both, _ = paired_to_unpaired(PAIRED, mode="both")
    train, evaluation = train_eval_split(both, 0.3, seed=1)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evaluation}
    # chat prompts are keyed on their messages
    chat_train, chat_eval = train_eval_split(CHAT + CHAT, 0.25, seed=0)
    assert len(chat_eval) == 6 and not {prompt_key(r["prompt"]) for r in chat_train} & {
        prompt_key(r["prompt"]) for r in chat_eval
    }


def test_split_fraction_edges():
    assert train_eval_split(PAIRED, 0.0, seed=0) == (PAIRED, [])
    train, evaluation = train_eval_split(PAIRED, 0.001, seed=0)  # rounds to 0 prompts: at least one
    assert len({r["prompt"] for r in evaluation}) == 1
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"eval_fraction must be in \[0, 1\)"):
            train_eval_split(PAIRED, bad, seed=0)
    with pytest.raises(ValueError, match="leaves no training prompts"):
        train_eval_split(PAIRED[:2], 0.9, seed=0)


DETERMINISM_SCRIPT = """
import json, sys
from prefbench.data import train_eval_split, paired_to_unpaired, drop_fraction, flip_labels
paired = [json.loads(l) for l in open(sys.argv[1])]
chat = [json.loads(l) for l in open(sys.argv[2])]
both, _ = paired_to_unpaired(paired, mode="both")
out = {
    "split": train_eval_split(paired, 0.25, seed=7),
    "split_chat": train_eval_split(chat, 0.25, seed=7),
    "one_per_prompt": paired_to_unpaired(paired, mode="one_per_prompt", seed=7)[0],
    "drop": drop_fraction(both, "desirable", 0.5, seed=7)[1]["dropped_indices"],
    "flip": flip_labels(paired, 0.25, seed=7)[1]["flipped_indices"],
}
print(json.dumps(out))
"""


def test_same_seed_same_output_under_any_hash_seed():
    def run(hash_seed: str) -> dict:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        args = [
            sys.executable,
            "-c",
            DETERMINISM_SCRIPT,
            str(DATA / "paired_text.jsonl"),
            str(DATA / "paired_chat.jsonl"),
        ]
        return json.loads(subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout)

    first, second = run("0"), run("12345")
    assert first == second
    assert first["split"] == [list(side) for side in train_eval_split(PAIRED, 0.25, seed=7)]
    assert first["one_per_prompt"] == paired_to_unpaired(PAIRED, mode="one_per_prompt", seed=7)[0]


# ---- transforms -------------------------------------------------------------------------------


def test_paired_to_unpaired_both():
    rows = [{**r, "id": i} for i, r in enumerate(PAIRED)]
    out, report = paired_to_unpaired(rows, mode="both", seed=0)
    assert len(out) == 48
    assert out[0] == {"prompt": PAIRED[0]["prompt"], "completion": PAIRED[0]["chosen"], "label": True, "id": 0}
    assert out[1] == {"prompt": PAIRED[0]["prompt"], "completion": PAIRED[0]["rejected"], "label": False, "id": 0}
    assert [r["completion"] for r in out[::2]] == [r["chosen"] for r in PAIRED]
    assert report == {
        "name": "paired_to_unpaired",
        "params": {"mode": "both", "seed": 0},
        "before": {"records": 24, "prompts": 20},
        "after": {"records": 48, "desirable": 24, "undesirable": 24},
    }
    assert validate(out, "unpaired")[1].kept == 48


@pytest.mark.parametrize("rows, n_prompts, n_desirable", [(PAIRED, 20, 10), (PAIRED[:19], 19, 10), (CHAT, 12, 6)])
def test_one_per_prompt_keeps_one_completion_per_prompt(rows, n_prompts, n_desirable):
    out, report = paired_to_unpaired(rows, mode="one_per_prompt", seed=0)
    keys = [prompt_key(r["prompt"]) for r in out]
    assert len(out) == len(set(keys)) == n_prompts  # no prompt has both a desirable and an undesirable row
    assert keys == list(dict.fromkeys(prompt_key(r["prompt"]) for r in rows))  # first-appearance order
    assert sum(r["label"] for r in out) == n_desirable  # ceil(n / 2)
    assert report["after"] == {"records": n_prompts, "desirable": n_desirable, "undesirable": n_prompts - n_desirable}
    for r in out:  # each completion is its prompt's chosen (True) or rejected (False) answer
        side = "chosen" if r["label"] else "rejected"
        assert any(p[side] == r["completion"] and p["prompt"] == r["prompt"] for p in rows)
    assert out == paired_to_unpaired(rows, mode="one_per_prompt", seed=0)[0]
    assert out != paired_to_unpaired(rows, mode="one_per_prompt", seed=1)[0]


def test_drop_fraction_exact_counts():
    # 12 desirable, 8 undesirable: dropping 90% of the desirable drops round(10.8) = 11.
    out, report = drop_fraction(UNPAIRED, "desirable", 0.9, seed=0)
    assert len(out) == 9 and sum(r["label"] for r in out) == 1
    assert report["dropped_count"] == 11 and len(report["dropped_indices"]) == 11
    assert all(UNPAIRED[i]["label"] for i in report["dropped_indices"])
    assert out == [r for i, r in enumerate(UNPAIRED) if i not in report["dropped_indices"]]
    assert report["before"] == {"records": 20, "desirable": 12, "undesirable": 8}
    assert report["after"] == {"records": 9, "desirable": 1, "undesirable": 8}
    assert report["params"] == {"which": "desirable", "fraction": 0.9, "seed": 0}

    out, report = drop_fraction(UNPAIRED, "undesirable", 0.5, seed=0)  # round(4.0) = 4
    assert report["after"] == {"records": 16, "desirable": 12, "undesirable": 4}
    # Python's round: 0.5 * 5 = 2.5 -> 2, 0.3 * 5 = 1.5 -> 2
    five = [{"prompt": f"p{i}", "completion": "c", "label": True} for i in range(5)]
    assert drop_fraction(five, "desirable", 0.5, seed=0)[1]["dropped_count"] == 2
    assert drop_fraction(five, "desirable", 0.3, seed=0)[1]["dropped_count"] == 2
    assert drop_fraction(UNPAIRED, "desirable", 0.9, seed=0) == drop_fraction(UNPAIRED, "desirable", 0.9, seed=0)


def test_drop_fraction_needs_unpaired_records():
    with pytest.raises(
        ValueError, match="drop_fraction needs unpaired records.*convert them with paired_to_unpaired first"
    ):
        drop_fraction(PAIRED, "desirable", 0.5, seed=0)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], got 1.5"):
        drop_fraction(UNPAIRED, "desirable", 1.5, seed=0)


def test_flip_labels_paired_and_unpaired():
    before = json.dumps(PAIRED)
    out, report = flip_labels(PAIRED, 0.25, seed=0)  # round(6.0) = 6 pairs
    flipped = report["flipped_indices"]
    assert report["flipped_count"] == len(flipped) == 6 and report["before"] == report["after"] == {"records": 24}
    for i, (old, new) in enumerate(zip(PAIRED, out)):
        if i in flipped:
            assert (new["chosen"], new["rejected"]) == (old["rejected"], old["chosen"])
        else:
            assert new == old
    assert json.dumps(PAIRED) == before

    out, report = flip_labels(UNPAIRED, 0.1, seed=0)  # round(2.0) = 2 rows
    assert report["flipped_count"] == 2
    assert [i for i, (o, n) in enumerate(zip(UNPAIRED, out)) if o["label"] != n["label"]] == report["flipped_indices"]
    d_flips = sum(UNPAIRED[i]["label"] for i in report["flipped_indices"])
    assert report["after"]["desirable"] == 12 - d_flips + (2 - d_flips)


def test_kto_class_weights():
    def rows(n_d: int, n_u: int) -> list[dict]:
        return [{"prompt": f"p{i}", "completion": "c", "label": i < n_d} for i in range(n_d + n_u)]

    # 10 desirable, 90 undesirable: lambda_D = 90 / 10 = 9, lambda_U = 1; ratio 9 * 10 / (1 * 90) = 1.
    assert kto_class_weights(rows(10, 90)) == (9.0, 1.0)
    # 90 desirable, 10 undesirable: lambda_D = 1, lambda_U = 3 * 90 / (4 * 10) = 6.75; ratio 90 / 67.5 = 4/3.
    assert kto_class_weights(rows(90, 10)) == (1.0, 6.75)
    # already in [1, 4/3] with unit weights: 12 / 10 = 1.2, and the edges 1 and 4/3
    assert (
        kto_class_weights(rows(12, 10))
        == kto_class_weights(rows(10, 10))
        == kto_class_weights(rows(40, 30))
        == (1.0, 1.0)
    )
    for n_d, n_u in [(1, 7), (3, 5), (5, 3), (50, 1), (7, 6)]:
        w_d, w_u = kto_class_weights(rows(n_d, n_u))
        assert 1 <= w_d * n_d / (w_u * n_u) <= 4 / 3 + 1e-12 and min(w_d, w_u) == 1.0
    # the paper's imbalance setup on the fixture: both sides of 24 pairs, 90% of desirable dropped
    both, _ = paired_to_unpaired(PAIRED, mode="both")
    fewer, _ = drop_fraction(both, "desirable", 0.9, seed=0)  # 24 - round(21.6) = 2 desirable, 24 undesirable
    assert kto_class_weights(fewer) == (12.0, 1.0)
    with pytest.raises(
        ValueError,
        match="kto_class_weights: no desirable records \\(0 desirable, 8 undesirable\\); KTO needs both classes",
    ):
        kto_class_weights([r for r in UNPAIRED if not r["label"]])
