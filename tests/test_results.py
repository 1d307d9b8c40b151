"""results.py's file writes: all or nothing, build-once directories, the append-only cache after a kill."""

from __future__ import annotations

import json

import pytest

from prefbench.results import AppendLog, atomic, publish, read_json, write_json


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    f = tmp_path / "a.json"
    write_json(f, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic(f) as tmp:
            tmp.write_text('{"x": 2')  # half written, then the writer fails
            raise RuntimeError("killed")
    assert read_json(f) == {"x": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_directory_is_replaced_whole_and_a_killed_build_is_cleaned_up(tmp_path):
    target = tmp_path / "checkpoint-2"
    (tmp_path / ".checkpoint-2.dead").mkdir()  # what a SIGKILL mid-build leaves behind
    (tmp_path / ".checkpoint-20.live").mkdir()  # another directory's build: not touched
    with atomic(target, directory=True) as tmp:
        (tmp / "old").write_text("1")
    with atomic(target, directory=True) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-20.live", "checkpoint-2"]
    assert oct(target.stat().st_mode & 0o777) == "0o755"  # readable by a server running as another user


def test_publish_builds_once(tmp_path):
    built = []

    def build(tmp):
        built.append(tmp)
        (tmp / "config.json").write_text("{}")

    assert publish(tmp_path / "m", build) == publish(tmp_path / "m", build) == tmp_path / "m"
    assert len(built) == 1 and (tmp_path / "m" / "config.json").is_file()


def test_append_log_keeps_every_record_and_skips_a_torn_line(tmp_path):
    log = AppendLog(tmp_path / "c.jsonl")
    log.append([{"key": "a"}, {"key": "é"}])
    with open(log.path, "ab") as f:
        f.write(b'{"key": "b", "val')  # a kill mid-line
    assert log.read() == [{"key": "a"}, {"key": "é"}]
    log.append([{"key": "c"}])  # starts a line of its own after the torn one
    assert log.read() == [{"key": "a"}, {"key": "é"}, {"key": "c"}]
    assert all(json.loads(line) for line in log.path.read_text().splitlines()[:2])
