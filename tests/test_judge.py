"""The pairwise judge: statistics against hand-computed values, the cache and fault handling through a real
local HTTP server (tests/judge_fault_server.py) and a fault-injecting proxy (tests/judge_fault_proxy.py), and a
real vLLM server answering through structured outputs, also behind that proxy."""

import collections
import hashlib
import json
import math
import os
import re
from dataclasses import replace

import pytest
from judge_fault_proxy import KINDS, FaultProxy
from judge_fault_server import FaultServer

from prefbench.eval import judge
from prefbench.eval.judge import (
    Call,
    JudgeBudgetError,
    JudgeError,
    PairResult,
    VerdictCache,
    client,
    judge_units,
    load_template,
    pair_stats,
    parse_verdict,
)
from prefbench.eval.judge.client import PARSE_ATTEMPTS, cost
from prefbench.eval.server import free_port
from prefbench.recipe import JudgeSpec
from prefbench.stats import bootstrap_ci, length_adjusted_win_rate

# ---------------------------------------------------------------- statistics


def test_win_rate_counts_ties_half_and_inconsistent_orders_as_ties():
    pairs = [
        PairResult(0, "A", "B", 5, 5),  # X preferred in both orders: win
        PairResult(1, "B", "A", 5, 5),  # loss
        PairResult(2, "tie", "tie", 5, 5),  # tie
        PairResult(3, "A", "A", 5, 5),  # always the first answer: the orders disagree, a tie
        PairResult(4, None, "A", 5, 5),  # a parse failure: left out
        PairResult(5, "A", "B", 5, 5),  # win
    ]
    s = pair_stats(pairs)
    assert (s["wins"], s["ties"], s["losses"], s["unscored"], s["prompts"]) == (2, 2, 1, 1, 5)
    assert s["win_rate"]["mean"] == pytest.approx((2 + 0.5 * 2) / 5)  # 0.6
    d = s["diagnostics"]
    assert d["swap_consistency"] == pytest.approx(4 / 5)
    assert d["tie_rate"] == pytest.approx(2 / 5)
    assert d["parse_failure_rate"] == pytest.approx(1 / 12)
    assert d["first_position_rate"] == pytest.approx(6 / 9)  # A in 6 of the 9 verdicts that pick an answer
    assert s["clopper_pearson"]["rate"] == pytest.approx(2 / 5)
    assert s["clopper_pearson"]["ci"] == pytest.approx([0.052745, 0.853367], abs=1e-6)


def _length_biased_pairs(equal_lengths: bool) -> list[PairResult]:
    """X is longer in 8 pairs and wins 6 of them; shorter in 4 and wins 1: plain win rate 7/12."""
    out = []
    for i, (longer, win) in enumerate(
        [(True, True)] * 6 + [(True, False)] * 2 + [(False, True)] + [(False, False)] * 3
    ):
        len_x = 100 if equal_lengths else (200 if longer else 100)
        len_y = 100 if equal_lengths else (100 if longer else 200)
        out.append(PairResult(i, *(("A", "B") if win else ("B", "A")), len_x, len_y))
    return out


def test_length_adjusted_win_rate():
    biased = pair_stats(_length_biased_pairs(equal_lengths=False))
    assert biased["win_rate"]["mean"] == pytest.approx(7 / 12)
    # The fit is saturated (P(win) = 3/4 at +z, 1/4 at -z, z = tanh(100 / sd) = 0.786 either side), so at
    # zero difference it is exactly 1/2: the length advantage is taken out.
    la = biased["length_adjusted_win_rate"]
    assert la["mean"] == pytest.approx(0.5, abs=1e-4) and la["converged"] and la["labels"] == "hard"
    equal = pair_stats(_length_biased_pairs(equal_lengths=True))
    assert equal["length_adjusted_win_rate"]["mean"] == pytest.approx(equal["win_rate"]["mean"], abs=1e-9)
    lo, hi = la["ci"]
    assert lo < 0.5 < hi
    assert length_adjusted_win_rate([1, 1, 1], [5, -3, 0], [0, 1, 2])["mean"] == 1.0  # all wins: no fit needed


def test_length_adjusted_win_rate_weighs_prompts_like_the_win_rate_and_reads_soft_labels():
    """Prompt 0 has three pairs (all wins), prompts 1 and 2 one each (losses); lengths equal, so the fit is the
    weighted mean: each prompt weighs 1 (1/3), not each pair (3/5). Verdict probabilities make the score soft."""
    pairs = [PairResult(0, "A", "B", 50, 50)] * 3 + [PairResult(1, "B", "A", 50, 50), PairResult(2, "B", "A", 50, 50)]
    s = pair_stats(pairs)
    assert s["win_rate"]["mean"] == pytest.approx(1 / 3)
    assert s["length_adjusted_win_rate"]["mean"] == pytest.approx(1 / 3, abs=1e-6)
    # soft: X shown as A, P(A) 0.8, P(tie) 0.2 -> 0.9; X shown as B, P(B) 0.6, P(tie) 0 -> 0.6; the pair's score (0.9 + 0.6) / 2
    soft = PairResult(
        0, "A", "B", 50, 50, probs_first={"A": 0.8, "B": 0.0, "tie": 0.2}, probs_second={"A": 0.4, "B": 0.6, "tie": 0.0}
    )
    assert soft.score() == 1.0 and soft.soft_score() == pytest.approx(0.75)
    s = pair_stats([soft, PairResult(1, "B", "A", 50, 50)])
    assert s["length_adjusted_win_rate"]["labels"] == "soft" and s["length_adjusted_win_rate"]["mean"] == pytest.approx(
        0.75 / 2, abs=1e-6
    )
    assert s["win_rate"]["mean"] == pytest.approx(0.5)  # the win rate keeps hard labels


def test_bootstrap_resamples_a_prompts_samples_together():
    # 10 prompts, 2 samples each; a prompt's samples agree, so there are 10 independent outcomes, not 20.
    pairs = [PairResult(i, *(("A", "B") if i < 6 else ("B", "A")), 5, 5) for i in range(10) for _ in range(2)]
    s = pair_stats(pairs)
    assert s["win_rate"]["mean"] == pytest.approx(0.6) and s["win_rate"]["n"] == 10
    lo, hi = s["win_rate"]["ci"]
    flat_lo, flat_hi = bootstrap_ci([p.score() for p in pairs])
    assert hi - lo > 1.25 * (flat_hi - flat_lo)  # about sqrt(2) wider


def test_reward_agreement():
    pairs = [
        PairResult(0, "A", "B", 5, 5, reward_x=1.0, reward_y=0.0),  # judge picks X, X has more reward: agree
        PairResult(1, "B", "A", 5, 5, reward_x=1.0, reward_y=0.5),  # judge picks Y: disagree
        PairResult(2, "A", "A", 5, 5, reward_x=0.0, reward_y=1.0),  # inconsistent orders, a tie: half
        PairResult(3, "A", "B", 5, 5, reward_x=0.5, reward_y=0.5),  # equal rewards: left out
        PairResult(4, None, "B", 5, 5, reward_x=1.0, reward_y=0.0),  # parse failure: left out
    ]
    a = pair_stats(pairs)["reward_agreement"]
    assert (a["agree"], a["tie"], a["disagree"], a["pairs"]) == (1, 1, 1, 3)
    assert a["agreement"]["mean"] == pytest.approx(0.5)


def test_strict_parsing():
    assert parse_verdict('{"verdict": "A"}', "json") == "A"
    assert parse_verdict('{"verdict":"tie"}', "json") == "tie"
    for bad in ('{"verdict": "a"}', '{"verdict": "A", "why": "x"}', "A", '{"verdict": "A"', "[]"):
        assert parse_verdict(bad, "json") is None
    assert parse_verdict("B is shorter.\nVerdict: B", "text") == "B"
    assert parse_verdict("Verdict: tie\n", "text") == "tie"
    for bad in ("Verdict: B\nThanks!", "verdict: B", "Verdict: A or B", "**Verdict: A**", ""):
        assert parse_verdict(bad, "text") is None


def test_cache_ignores_a_torn_line_and_keeps_appending(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    cache = VerdictCache(path)
    cache.put({"key": "k1", "verdict": "A"})
    cache.put({"key": "k2", "verdict": None})
    with open(path, "ab") as f:
        f.write(b'{"key": "k3", "verd')  # a kill in the middle of a write
    cache = VerdictCache(path)
    assert set(cache.records) == {"k1", "k2"}
    cache.put({"key": "k4", "verdict": "tie"})
    assert set(VerdictCache(path).records) == {"k1", "k2", "k4"}


# ---------------------------------------------------------------- prompt templates


def test_the_built_in_template_renders_the_judge_messages():
    """The text the judge has been asked since the prompt lived in Python strings, to the byte."""
    system = (
        "You are the referee between two answers to the same request. Decide which answer serves the person who made "
        "the request better: it does what was asked, follows every explicit instruction (format, length, wording), and "
        "is correct and clear. Extra length earns nothing by itself, and the order in which the answers appear says "
        "nothing about their quality. Call it a tie only when neither answer is better."
    )
    user = (
        "<request>\nName a {{ color }}.\n</request>\n\n<answer_a>\n Red.\n</answer_a>\n\n<answer_b>\n\n</answer_b>\n\n"
    )
    asks = {
        "json": 'Reply with the JSON object {"verdict": "A"}, {"verdict": "B"} or {"verdict": "tie"}.',
        "text": 'You may reason briefly first. Your last line must be exactly "Verdict: A", "Verdict: B" or "Verdict: tie".',
    }
    for form, ask in asks.items():  # answers are inserted as they are: Jinja syntax and whitespace included
        assert load_template().messages("Name a {{ color }}.", " Red.", "", form) == [
            {"role": "system", "content": system},
            {"role": "user", "content": user + ask},
        ]


def test_a_template_file_splits_at_the_user_line_and_its_hash_is_its_version(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(
        "Be strict.\n{# user #}\n\nQ: {{ question }}\nA: {{ answer_a }}\nB: {{ answer_b }}\n"
        "{% if form == 'text' %}End with Verdict: A, B or tie.{% endif %}\n"
    )
    mine = load_template(str(path))
    assert mine.messages("q", "x", "y", "text") == [
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": "Q: q\nA: x\nB: y\nEnd with Verdict: A, B or tie."},
    ]
    assert mine.messages("q", "x", "y", "json")[1]["content"] == "Q: q\nA: x\nB: y"
    path.write_text("{{ question }}|{{ answer_a }}|{{ answer_b }}")  # no {# user #} line: no system message
    assert load_template(str(path)).messages("q", "x", "y", "json") == [{"role": "user", "content": "q|x|y"}]
    assert mine.sha256 == hashlib.sha256(mine.text.encode()).hexdigest() != load_template().sha256
    call = Call("q", "x", "y", mine)
    assert call.key("m", "json", 16) != replace(call, template=load_template()).key("m", "json", 16)


# ---------------------------------------------------------------- through a real HTTP server

FAULT_PROMPTS = ["q0 plain", "q1 [429]", "q2 [500]", "q3 [slow]", "q4 [malformed]", "q5 [first]"]
FAULT_ANSWERS = {
    "policy": [["GOOD one"], ["GOOD two"], ["three"], ["GOOD four"], ["GOOD five"], ["GOOD six"]],
    "reference": [["one"], ["two"], ["GOOD three"], ["GOOD 4"], ["five"], ["six"]],
}


def _counts(lines: list[dict], comparison: str) -> tuple[int, int, int, int]:
    """(wins, ties, losses, unscored) of a comparison's judged pairs, from its verdict lines alone, as a reader
    without prefbench would count them: a win when both orders prefer the unit, a tie when they disagree."""
    unit, opponent = comparison.split(" vs ")
    winners = collections.defaultdict(list)
    for line in lines:
        if line["comparison"] == comparison:
            winners[line["prompt_index"], line["sample"]].append(line["winner"])
    pairs = list(winners.values())
    assert all(len(p) == 2 for p in pairs)  # both orders of every pair
    wins, losses, unscored = pairs.count([unit, unit]), pairs.count([opponent, opponent]), sum(None in p for p in pairs)
    return wins, len(pairs) - wins - losses - unscored, losses, unscored


def _spec(server: FaultServer, **kw) -> JudgeSpec:
    return JudgeSpec(
        **{
            "base_url": server.base_url,
            "model": "fault-judge",
            "api_key_env": "PREFBENCH_TEST_NO_SUCH_KEY",
            "max_concurrency": 4,
            "max_retries": 2,
            "timeout_s": 5.0,
            "max_tokens": 16,
        }
        | kw
    )


def test_faults_retried_each_verdict_once_and_second_run_from_cache(tmp_path):
    with FaultServer(slow_s=3.0) as server:  # the slow answer comes after the client's 2 s timeout
        spec = _spec(server, timeout_s=2.0, price_per_1k_input=0.5, price_per_1k_output=1.0)
        result = judge_units(spec, FAULT_PROMPTS, FAULT_ANSWERS, cache_dir=tmp_path)
        out, lines = result["comparisons"]["policy vs reference"], result["verdicts"]
        # q0, q1 won; q2 lost; q3 a tie (both GOOD); q4 unparseable; q5 a tie (always "A": orders disagree).
        assert (out["wins"], out["ties"], out["losses"], out["unscored"]) == (2, 2, 1, 1)
        assert out["win_rate"]["mean"] == pytest.approx(0.6)
        d = out["diagnostics"]
        assert d["parse_failure_rate"] == pytest.approx(2 / 12) and d["swap_consistency"] == pytest.approx(4 / 5)
        assert (d["calls"], d["calls_made"], d["calls_cached"]) == (12, 12, 0)
        assert (
            d["completion_tokens"] == 10 * 5 + 2 * PARSE_ATTEMPTS * 5 and d["prompt_tokens"] > 0
        )  # q4's re-asks are paid too
        assert d["cost_usd"] == pytest.approx((d["prompt_tokens"] * 0.5 + d["completion_tokens"] * 1.0) / 1000)
        assert d["mean_verdict_prob"] == pytest.approx(0.8)  # from the server's log-probabilities
        assert out["judge"]["forms"] == ["json"] and out["judge"]["template_sha256"] == load_template().sha256
        # Every verdict was delivered exactly once, q4's no-verdict answers PARSE_ATTEMPTS times; each fault was
        # retried (both orders of its prompt).
        assert len(server.answered()) == 12 and sorted(server.answered().values()) == [1] * 10 + [PARSE_ATTEMPTS] * 2
        assert result["transport"] == {
            "faults": {"http 429": 2, "http 500": 2, "timeout": 2},
            "retries": 6,
            "reasked": 2 * (PARSE_ATTEMPTS - 1),
        }
        assert (server.count(429), server.count(500), server.count("slow")) == (2, 2, 2)
        records = VerdictCache(tmp_path / "verdicts.jsonl").records.values()
        assert len(records) == 12 and sum(r["verdict"] is None for r in records) == 2  # parse failures are cached too
        # one verdict line per call, and they alone give the comparison's counts
        assert len(lines) == 12 and _counts(lines, "policy vs reference") == (2, 2, 1, 1)
        assert lines[0] == {  # q0, the policy's answer shown as A
            "comparison": "policy vs reference",
            "prompt_index": 0,
            "sample": 0,
            "prompt": "q0 plain",
            "unit_a": "policy",
            "unit_b": "reference",
            "answer_a": "GOOD one",
            "answer_b": "one",
            "judge": "fault-judge",
            "template_sha256": load_template().sha256,
            "form": "json",
            "output": '{"verdict": "A"}',
            "verdict": "A",
            "winner": "policy",
            "verdict_probs": pytest.approx({"A": 0.8, "B": 0.15, "tie": 0.05}),
            "finish_reason": "stop",
            "error": None,
            "cached": False,
        }
        assert (lines[1]["unit_a"], lines[1]["answer_a"], lines[1]["verdict"], lines[1]["winner"]) == (
            "reference",
            "one",
            "B",
            "policy",
        )
        assert [
            (x["output"], x["verdict"], x["winner"], x["verdict_probs"]) for x in lines if x["prompt_index"] == 4
        ] == [("The first answer, I think.", None, None, None)] * 2  # q4: no verdict, kept as the judge wrote it

        before = {k: list(v) for k, v in server.requests.items()}
        result = judge_units(spec, FAULT_PROMPTS, FAULT_ANSWERS, cache_dir=tmp_path)
        again = result["comparisons"]["policy vs reference"]
        assert server.requests == before  # not one new request
        assert [
            line | {"cached": False} for line in result["verdicts"] if line["cached"]
        ] == lines  # every line, from the cache
        assert (again["diagnostics"]["calls_made"], again["diagnostics"]["calls_cached"]) == (0, 12)
        assert again["win_rate"] == out["win_rate"] and again["diagnostics"]["cost_usd"] == pytest.approx(d["cost_usd"])


def test_budget_stop_then_resume_judges_nothing_twice_and_never_writes_the_key(tmp_path, monkeypatch):
    secret = "sk-prefbench-test-4f1d9a7c2e"
    monkeypatch.setenv("PREFBENCH_TEST_JUDGE_KEY", secret)
    prompts = [f"question {i}" for i in range(4)]
    answers = {"policy": [[f"GOOD answer {i}"] for i in range(4)], "reference": [[f"answer {i}"] for i in range(4)]}
    per_call = (
        Call(prompts[0], answers["policy"][0][0], answers["reference"][0][0], load_template()).prompt_tokens_estimate()
        / 1000
    )
    with FaultServer() as server:
        # One call at a time, so where the budget stops is deterministic: each call is estimated at its prompt's
        # characters / 4 (more than the server's usage), and a call goes out only if it fits under the cap.
        spec = _spec(server, api_key_env="PREFBENCH_TEST_JUDGE_KEY", max_concurrency=1, price_per_1k_input=1.0)
        with pytest.raises(JudgeBudgetError, match="budget") as err:
            judge_units(replace(spec, budget_usd=2 * per_call), prompts, answers, cache_dir=tmp_path)
        first = sum(server.answered().values())
        assert 0 < first < 8 and f"{first} of 8 calls made" in str(err.value)
        with open(tmp_path / "verdicts.jsonl", "ab") as f:
            f.write(b'{"key": "torn')  # and the run was killed while writing
        out = judge_units(spec, prompts, answers, cache_dir=tmp_path)
        assert sum(server.answered().values()) == 8 == len(server.answered())  # 4 pairs x 2 orders, none twice
        assert out["comparisons"]["policy vs reference"]["diagnostics"]["calls_made"] == 8 - first
        assert out["comparisons"]["policy vs reference"]["win_rate"]["mean"] == 1.0
        assert len(VerdictCache(tmp_path / "verdicts.jsonl").records) == 8
    assert server.authorizations == {f"Bearer {secret}"}  # the key was used ...
    written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()] + [json.dumps(out), str(err.value)]
    assert not any(secret in text for text in written)  # ... and written nowhere


def test_a_template_text_of_its_own_is_asked_anew_and_the_old_verdicts_stay_cached(tmp_path):
    prompts, answers = FAULT_PROMPTS[:2], {unit: per_prompt[:2] for unit, per_prompt in FAULT_ANSWERS.items()}
    path = tmp_path / "mine.jinja"
    path.write_text(
        "Judge the substance.\n{# user #}\n<answer_a>\n{{ answer_a }}\n</answer_a>\n<answer_b>\n{{ answer_b }}\n</answer_b>\n"
        "Both answer: {{ question }}\n"
    )
    with FaultServer() as server:
        spec = _spec(server)
        default = judge_units(spec, prompts, answers, cache_dir=tmp_path)["comparisons"]["policy vs reference"]
        assert default["diagnostics"]["calls_made"] == 4 and len(server.answered()) == 4
        result = judge_units(replace(spec, template=str(path)), prompts, answers, cache_dir=tmp_path)
        out, sha256 = result["comparisons"]["policy vs reference"], hashlib.sha256(path.read_bytes()).hexdigest()
        assert out["judge"]["template_sha256"] == sha256 != default["judge"]["template_sha256"]
        assert [(line["template_sha256"], line["cached"]) for line in result["verdicts"]] == [(sha256, False)] * 4
        assert out["diagnostics"]["calls_made"] == 4 and len(server.answered()) == 8  # 4 new requests: the new text
        assert out["wins"] == default["wins"] == 2  # the server's judge reads only the answers
        again = judge_units(spec, prompts, answers, cache_dir=tmp_path)["comparisons"]["policy vs reference"]
        assert again["diagnostics"]["calls_cached"] == 4 and len(server.answered()) == 8
        path.write_text(path.read_text().replace("substance", "facts"))  # edited in place: a new version
        edited = judge_units(replace(spec, template=str(path)), prompts, answers, cache_dir=tmp_path)["comparisons"]
        assert edited["policy vs reference"]["diagnostics"]["calls_made"] == 4 and len(server.answered()) == 12
        path.write_text("{{ question }} {{ answer_a }}")
        with pytest.raises(JudgeError, match="^judge.template: must use answer_b"):
            judge_units(replace(spec, template=str(path)), prompts, answers, cache_dir=tmp_path)


def test_endpoint_without_structured_outputs_falls_back_to_the_verdict_line(tmp_path):
    with FaultServer(reject_json=True) as server:
        out = judge_units(
            _spec(server),
            FAULT_PROMPTS[:1] + ["another"],
            {"policy": [["GOOD"], ["x"]], "reference": [["y"], ["GOOD z"]]},
            cache_dir=tmp_path,
        )["comparisons"]["policy vs reference"]
        assert server.count(400) == 2  # the first call tried JSON with and without log-probabilities
        assert len(server.answered()) == 4 and set(server.answered().values()) == {1}
    assert out["judge"]["forms"] == ["text"]
    assert (out["wins"], out["losses"], out["diagnostics"]["parse_failure_rate"]) == (1, 1, 0.0)


def test_comparisons_samples_and_identical_answers(tmp_path):
    prompts = ["p0", "p1"]
    answers = {  # 3 samples each; samples_per_prompt=2 judges the first two
        "reference": [["r0", "same", "r2"], ["r3", "r4", "r5"]],
        "dpo": [["GOOD d0", "same", "x"], ["d3", "GOOD d4", "x"]],
        "kto": [["k0", "GOOD k1", "x"], ["k3", "k4", "x"]],
    }
    rewards = {"dpo": [[1.0, 0.0, 0], [0.0, 1.0, 0]], "chosen": [[0.5], [0.5]]}
    with FaultServer() as server:  # prompts=1: prompt 0 only, 2 pairs per comparison
        spec = _spec(server, against=("reference", "round_robin", "dataset_chosen"), samples_per_prompt=2, prompts=1)
        first = judge_units(
            spec, prompts, answers, chosen=["GOOD c0", "c1"], rewards=rewards, cache_dir=tmp_path / "first"
        )
        assert {name: (c["pairs"], c["judge"]["prompts"]) for name, c in first["comparisons"].items()} == {
            name: (2, 1) for name in first["comparisons"]
        }
        assert {x["prompt_index"] for x in first["verdicts"]} == {0} and first["comparisons"]["dpo vs reference"][
            "diagnostics"
        ]["calls"] == 2
        # 2 x (1 + 5 x 2) = 22 verdicts ("same" vs "same" is a tie without a call), the 4 shared ones (below) asked once
        assert len(server.answered()) == 18 and set(server.answered().values()) == {1}
    with FaultServer() as server:
        spec = _spec(server, against=("reference", "round_robin", "dataset_chosen"), samples_per_prompt=2)
        result = judge_units(spec, prompts, answers, chosen=["GOOD c0", "c1"], rewards=rewards, cache_dir=tmp_path)
        out, lines = result["comparisons"], result["verdicts"]
        assert list(out) == [
            "dpo vs reference",
            "kto vs reference",
            "dpo vs kto",
            "reference vs chosen",
            "dpo vs chosen",
            "kto vs chosen",
        ]
        # "same" vs "same" is a tie without a call: 4 pairs, 3 judged.
        dpo = out["dpo vs reference"]
        assert (dpo["pairs"], dpo["diagnostics"]["identical_pairs"], dpo["diagnostics"]["calls"]) == (4, 1, 6)
        assert (dpo["wins"], dpo["ties"], dpo["losses"]) == (2, 2, 0)
        chosen = out["dpo vs chosen"]  # GOOD vs GOOD, same vs GOOD, neither, GOOD vs neither
        assert (chosen["wins"], chosen["ties"], chosen["losses"]) == (1, 2, 1)
        # dpo's rewards 1, 0 | 0, 1 against the chosen 0.5: agree on the loss and the win, ties count half
        agreement = chosen["reward_agreement"]
        assert (agreement["agree"], agreement["tie"], agreement["disagree"]) == (2, 2, 0)
        assert agreement["agreement"]["mean"] == pytest.approx(0.75)
        assert "reward_agreement" not in out["kto vs reference"]
        # 2 x (3 + 5 x 4) = 46 verdicts, 4 of them shared ("same" vs "GOOD c0" in two comparisons, "same" vs
        # "GOOD k1" in two): asked once each.
        assert len(server.answered()) == 42 and set(server.answered().values()) == {1}
    # a line per verdict of each comparison (identical answers have none); they alone give every comparison's counts
    assert len(lines) == sum(c["diagnostics"]["calls"] for c in out.values()) == 46
    for name, c in out.items():
        assert _counts(lines, name) == (
            c["wins"],
            c["ties"] - c["diagnostics"]["identical_pairs"],
            c["losses"],
            c["unscored"],
        ), name
    # the request two comparisons share: asked once, a line in each, each naming the units it showed
    shared = [
        (x["comparison"], x["prompt_index"], x["sample"], x["unit_a"], x["winner"])
        for x in lines
        if {x["answer_a"], x["answer_b"]} == {"same", "GOOD c0"}
    ]
    assert sorted(shared) == [
        ("dpo vs chosen", 0, 1, "chosen", "chosen"),
        ("dpo vs chosen", 0, 1, "dpo", "chosen"),
        ("reference vs chosen", 0, 1, "chosen", "chosen"),
        ("reference vs chosen", 0, 1, "reference", "chosen"),
    ]


def test_dry_run_and_local_judge_server_lifecycle(tmp_path, monkeypatch):
    events = []
    with FaultServer() as server:

        class FakeVLLMServer:  # stands in for the vLLM server prefbench starts (tested in test_evaluate/test_generate)
            def __init__(self, model, name):
                self.base_url, self.name = server.base_url, name

            def __enter__(self):
                events.append(("start", self.name))
                return self

            def __exit__(self, *exc):
                events.append(("stop", self.name))

        monkeypatch.setattr(judge.client, "VLLMServer", FakeVLLMServer)
        monkeypatch.setattr(judge.models, "resolve", lambda spec: tmp_path / "no-model")
        spec = JudgeSpec(
            local_model="smollm2-135m-instruct", max_tokens=16, price_per_1k_input=2.0, price_per_1k_output=4.0
        )
        prompts, answers = ["p0", "p1"], {"policy": [["GOOD a"], ["b"]], "reference": [["c"], ["d"]]}

        est = judge_units(replace(spec, dry_run=True), prompts, answers, cache_dir=tmp_path)["dry_run"]
        calls = [
            Call(p, a[0], r[0], load_template()) for p, a, r in zip(prompts, answers["policy"], answers["reference"])
        ]
        calls += [Call(c.question, c.b, c.a, c.template) for c in calls]
        tokens = sum(c.prompt_tokens_estimate() for c in calls)
        assert (est["calls"], est["cached"], est["to_make"]) == (4, 0, 4)
        assert est["prompt_tokens_est"] == tokens and est["completion_tokens_max"] == 4 * 16
        assert est["cost_usd_est"] == pytest.approx((tokens * 2.0 + 4 * 16 * 4.0) / 1000)
        assert events == [] and server.requests == {}  # a dry run asks nothing and starts nothing

        out = judge_units(spec, prompts, answers, cache_dir=tmp_path)
        assert events == [("start", "smollm2-135m-instruct"), ("stop", "smollm2-135m-instruct")]
        assert out["comparisons"]["policy vs reference"]["judge"]["model"] == "smollm2-135m-instruct"
        judge_units(spec, prompts, answers, cache_dir=tmp_path)
        assert len(events) == 2  # everything cached: no server
        assert judge_units(replace(spec, dry_run=True), prompts, answers, cache_dir=tmp_path)["dry_run"]["to_make"] == 0


def _by_call(lines: list[dict]) -> dict:
    return {(x["comparison"], x["prompt_index"], x["unit_a"]): x["verdict"] for x in lines}


# a fault kind of the proxy -> how the judge's transport record counts it
COUNTED_AS = {
    "429": "http 429",
    "500": "http 500",
    "503": "http 503",
    "stall_504": "http 504",
    "drop": "connection",
    "truncated": "malformed body",
}


def _transport_matches(proxy: FaultProxy, transport: dict) -> None:
    """Every fault the proxy injected was retried and counted by its kind; a no-verdict answer was asked again."""
    expected = {COUNTED_AS[k]: n for k, n in proxy.injected.items() if k in COUNTED_AS}
    assert transport["faults"] == expected and transport["retries"] == sum(expected.values())
    assert transport["reasked"] == proxy.injected["garbage"]
    # only answers the judge could not use were asked of the endpoint again
    assert proxy.duplicated_upstream_calls() == proxy.injected["truncated"] + proxy.injected["garbage"]


def test_transport_faults_are_retried_and_the_verdicts_are_a_clean_runs(tmp_path, monkeypatch):
    """Behind a proxy that faults half the calls (every kind, in turn), judging gives the verdicts of a clean run,
    and the transport record counts each fault by its kind."""
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    prompts = [f"q{i}" for i in range(10)]
    answers = {
        "policy": [[f"GOOD {i}" if i % 3 else f"{i}"] for i in range(10)],
        "reference": [[f"GOOD r{i}" if i % 2 else f"r{i}"] for i in range(10)],
    }
    with FaultServer() as server:
        clean = judge_units(_spec(server), prompts, answers, cache_dir=tmp_path / "clean")
        with FaultProxy(server.base_url, rate=0.5, stall_s=0.1) as proxy:
            faulty = judge_units(
                _spec(server, base_url=proxy.base_url, max_retries=3), prompts, answers, cache_dir=tmp_path / "faulty"
            )
    assert set(proxy.injected) == set(KINDS) and sum(proxy.injected.values()) >= 10
    _transport_matches(proxy, faulty["transport"])
    assert _by_call(faulty["verdicts"]) == _by_call(clean["verdicts"]) and len(clean["verdicts"]) == 20
    assert (
        faulty["comparisons"]["policy vs reference"]["win_rate"]
        == clean["comparisons"]["policy vs reference"]["win_rate"]
    )


def test_when_retries_run_out_one_line_names_the_endpoint_and_what_was_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(client, "BACKOFF_S", 0.01)
    with FaultServer() as server, FaultProxy(server.base_url, rate=1.0, max_faults=10) as proxy:
        with pytest.raises(JudgeError) as err:
            judge_units(
                _spec(server, base_url=proxy.base_url, max_retries=2),
                ["q0"],
                {"policy": [["a"]], "reference": [["b"]]},
                cache_dir=tmp_path,
            )
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"the judge endpoint {proxy.base_url} failed one call 3 times (0 calls done"
    )
    # the kinds come in turn: 429, 500, 503; the third is the last error
    assert (
        "; last error: http 503: " in message and message.endswith("injected 503") and sum(proxy.injected.values()) == 3
    )


def test_a_no_verdict_answer_is_asked_again_and_a_recorded_failure_on_retry_failed(tmp_path, caplog):
    """[malformed] always answers with no verdict: asked PARSE_ATTEMPTS times, then cached as a parse failure; the
    next run asks nothing and says so; with retry_failed it asks again."""
    prompts, answers = ["q [malformed]"], {"policy": [["GOOD a"]], "reference": [["b"]]}
    with FaultServer() as server:
        first = judge_units(_spec(server), prompts, answers, cache_dir=tmp_path)
        assert server.count(200) == 2 * PARSE_ATTEMPTS and first["transport"]["reasked"] == 2 * (PARSE_ATTEMPTS - 1)
        assert first["comparisons"]["policy vs reference"]["unscored"] == 1
        judge_units(_spec(server), prompts, answers, cache_dir=tmp_path)
        assert server.count(200) == 2 * PARSE_ATTEMPTS and "2 cached verdicts are parse failures" in caplog.text
        again = judge_units(_spec(server, retry_failed=True), prompts, answers, cache_dir=tmp_path)
        assert (
            server.count(200) == 4 * PARSE_ATTEMPTS
            and again["comparisons"]["policy vs reference"]["diagnostics"]["calls_made"] == 2
        )


def test_unreachable_endpoint_and_missing_key_are_one_clear_error(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    spec = JudgeSpec(base_url=url, model="m", max_retries=1, timeout_s=1.0)
    with pytest.raises(
        JudgeError, match=f"the judge endpoint {url} failed one call 2 times \\(0 calls done, .*last error: connection"
    ):
        judge_units(spec, ["p"], {"policy": [["a"]], "reference": [["b"]]}, cache_dir=tmp_path)
    monkeypatch.delenv("PREFBENCH_TEST_NO_SUCH_KEY", raising=False)
    remote = JudgeSpec(base_url="https://judge.example.invalid/v1", model="m", api_key_env="PREFBENCH_TEST_NO_SUCH_KEY")
    with pytest.raises(JudgeError, match="PREFBENCH_TEST_NO_SUCH_KEY is not set"):
        judge_units(remote, ["p"], {"policy": [["a"]], "reference": [["b"]]}, cache_dir=tmp_path)


# ---------------------------------------------------------------- a real vLLM server


@pytest.mark.integration
def test_real_vllm_judge_through_structured_outputs(vllm_server, tmp_path):
    spec = JudgeSpec(
        base_url=vllm_server.base_url, model=vllm_server.name, max_tokens=24, max_concurrency=3, timeout_s=120
    )
    prompts = ["Write one sentence about the ocean.", "What is the capital of France?", "Name a primary color."]
    answers = {
        "policy": [["The ocean covers most of the Earth."], ["Paris."], ["Red."]],
        "reference": [["ocean ocean ocean"], ["The capital of France is Berlin."], ["I like trains."]],
    }
    out = judge_units(
        spec, prompts, answers, rewards={"policy": [[1.0]] * 3, "reference": [[0.0]] * 3}, cache_dir=tmp_path
    )["comparisons"]["policy vs reference"]
    d = out["diagnostics"]
    assert out["judge"]["forms"] == ["json"] and d["parse_failure_rate"] == 0.0 and out["unscored"] == 0
    assert d["calls"] == d["calls_made"] == 6 and d["prompt_tokens"] > 6 * 100 and d["completion_tokens"] >= 6 * 5
    assert 1 / 3 <= d["mean_verdict_prob"] <= 1  # log-probabilities of the constrained verdict token
    assert out["wins"] + out["ties"] + out["losses"] == 3 and 0 <= out["win_rate"]["mean"] <= 1
    assert set(out) >= {
        "win_rate",
        "clopper_pearson",
        "length_adjusted_win_rate",
        "diagnostics",
        "reward_agreement",
        "judge",
    }
    assert set(d) >= {"swap_consistency", "tie_rate", "parse_failure_rate", "cost_usd", "calls_cached"}
    assert not math.isnan(out["reward_agreement"]["agreement"]["mean"])
    assert os.path.getsize(tmp_path / "verdicts.jsonl") > 0


@pytest.mark.integration
def test_a_real_vllm_judge_behind_a_faulty_proxy_gives_a_clean_runs_verdicts(vllm_server, tmp_path, monkeypatch):
    """Issue 13's acceptance: 30% of calls faulted (every kind), the judge phase completes and every verdict
    equals a clean run's against the same server (temperature 0, one call at a time: the same batches)."""
    monkeypatch.setattr(client, "BACKOFF_S", 0.05)
    prompts = [
        "Name a primary color.",
        "What is 2 + 2?",
        "Say hello in French.",
        "Name a planet.",
        "What is the capital of Italy?",
        "Name an ocean.",
        "What do bees make?",
        "Name a fruit that is yellow.",
        "How many legs has a cat?",
        "What is ice made of?",
    ]
    answers = {
        "policy": [
            ["Red."],
            ["4."],
            ["Bonjour."],
            ["Mars."],
            ["Rome."],
            ["The Pacific."],
            ["Honey."],
            ["A banana."],
            ["Four."],
            ["Water."],
        ],
        "reference": [
            ["Seven."],
            ["5."],
            ["Hola."],
            ["The sun."],
            ["Paris."],
            ["A lake."],
            ["Milk."],
            ["A cherry."],
            ["Six."],
            ["Glass."],
        ],
    }
    spec = JudgeSpec(
        base_url=vllm_server.base_url,
        model=vllm_server.name,
        max_tokens=24,
        max_concurrency=1,
        timeout_s=120,
        max_retries=4,
    )
    clean = judge_units(spec, prompts, answers, cache_dir=tmp_path / "clean")
    with FaultProxy(vllm_server.base_url, rate=0.3) as proxy:
        faulty = judge_units(replace(spec, base_url=proxy.base_url), prompts, answers, cache_dir=tmp_path / "faulty")
    print(
        f"faults injected {dict(proxy.injected)}, transport {faulty['transport']}, duplicated upstream calls "
        f"{proxy.duplicated_upstream_calls()}"
    )
    assert sum(proxy.injected.values()) >= len(KINDS) and set(proxy.injected) == set(KINDS)
    _transport_matches(proxy, faulty["transport"])
    assert _by_call(faulty["verdicts"]) == _by_call(clean["verdicts"]) and len(clean["verdicts"]) == 20


def test_a_re_ask_reserves_its_estimate_and_a_stopped_call_is_asked_afresh(tmp_path):
    """[malformed] never gives a verdict, so each call would be asked PARSE_ATTEMPTS times. Priced so that an ask
    costs close to its estimate (output tokens dominate, and the server's 5 are max_tokens), one call's three asks
    would cost more than a budget of 1.1 estimates; re-asks reserve their estimate like first asks, so only the
    first goes out and what is spent stays under the budget. The call the budget stopped is not cached as a parse
    failure: the next run, with room, asks it afresh. A larger budget (4.5 estimates) also stays under."""
    prompts, answers = (
        ["q [malformed]", "r [malformed]"],
        {"policy": [["GOOD a"], ["GOOD c"]], "reference": [["b"], ["d"]]},
    )
    for asks in (1.1, 4.5):
        with FaultServer() as server:
            spec = _spec(server, max_concurrency=1, price_per_1k_input=1.0, price_per_1k_output=100.0, max_tokens=5)
            per_ask = max(
                cost(spec, Call(p, a[0], b[0], load_template()).prompt_tokens_estimate(), spec.max_tokens)
                for p, a, b in zip(prompts, answers["policy"], answers["reference"])
            )
            with pytest.raises(JudgeBudgetError, match="budget") as err:
                judge_units(replace(spec, budget_usd=asks * per_ask), prompts, answers, cache_dir=tmp_path / str(asks))
            records = list(VerdictCache(tmp_path / str(asks) / "verdicts.jsonl").records.values())
            assert all(r["attempts"] == PARSE_ATTEMPTS for r in records)  # only calls asked in full are cached
            spent = float(re.search(r"\(\$([0-9.]+) spent\)", str(err.value)).group(1))
            assert spent <= asks * per_ask and server.count(200) < 4 * PARSE_ATTEMPTS
            if asks == 1.1:  # room for one ask: the first call's re-asks are not sent, and nothing is cached
                assert server.count(200) == 1 and records == [] and "0 of 4 calls made" in str(err.value)
                judge_units(spec, prompts, answers, cache_dir=tmp_path / str(asks))  # no budget: asked afresh, in full
                assert server.count(200) == 1 + 4 * PARSE_ATTEMPTS
                one_ask = spent  # what the single ask cost: three of them would have passed the budget
                assert PARSE_ATTEMPTS * one_ask > asks * per_ask


def test_distrust_names_position_bias_unread_verdicts_and_chance_agreement():
    """A judge that always names the first answer keeps no verdict when the answers swap, and agrees with the reward
    at chance: both are said. A judge that follows the reward keeps its verdicts and is trusted, also where its
    agreement interval still includes 0.5. Unreadable verdicts beyond 20% are said."""
    from prefbench.eval.judge.verdicts import distrust, pair_stats

    rewards = [(float(i % 2), 1.0 - i % 2) for i in range(24)]  # X better on odd prompts, worse on even ones
    biased = pair_stats([PairResult(i, "A", "A", 5, 5, rx, ry) for i, (rx, ry) in enumerate(rewards)])
    assert biased["diagnostics"]["swap_consistency"] == 0.0 and biased["diagnostics"]["first_position_rate"] == 1.0
    said = distrust(biased)
    assert (
        len(said) == 2
        and "0% of pairs" in said[0]
        and "first answer 100%" in said[0]
        and "no better than chance" in said[1]
    )

    follows = [
        PairResult(i, "A" if rx > ry else "B", "B" if rx > ry else "A", 5, 5, rx, ry)
        for i, (rx, ry) in enumerate(rewards)
    ]
    good = pair_stats(follows)
    assert good["diagnostics"]["swap_consistency"] == 1.0 and good["reward_agreement"]["agreement"]["mean"] == 1.0
    assert distrust(good) == []
    mixed = pair_stats(follows[:3] + [PairResult(3, "B", "A", 5, 5, 1.0, 0.0)])  # 3 of 4 prompts agree, orders kept
    assert mixed["reward_agreement"]["agreement"]["ci"][0] < 0.5 < mixed["reward_agreement"]["agreement"]["ci"][1]
    assert distrust(mixed) == []  # chance inside the interval: shown in the table, not held against the judge

    unread = pair_stats([PairResult(i, None if i < 8 else "A", "B", 5, 5) for i in range(24)])
    assert unread["diagnostics"]["parse_failure_rate"] == pytest.approx(8 / 48)  # under 20%: not said
    assert not any("could not be read" in r for r in distrust(unread))
    unread = pair_stats([PairResult(i, None if i < 12 else "A", "B", 5, 5) for i in range(24)])
    assert any(r.startswith("25% of its verdicts could not be read") for r in distrust(unread))
