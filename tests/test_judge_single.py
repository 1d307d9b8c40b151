"""Single-answer grading (prefbench/eval/judge/single.py), the second judging protocol, through a real local HTTP
server speaking OpenAI chat completions: its grader gives 9 to an answer containing "GOOD" and 3 to any other,
answers {"score": N} when asked for structured output and "Score: N" otherwise, and no score at all to a question
marked [mute]. Scores, paired differences and agreement are checked against the arithmetic done here."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from prefbench.check import parse_recipe
from prefbench.errors import RecipeError
from prefbench.eval.judge import single
from prefbench.eval.judge.protocols import PROTOCOLS
from prefbench.recipe import JudgeSpec


class Grader:
    """A real HTTP server: POST /v1/chat/completions grades the answer inside <answer>...</answer>."""

    def __init__(self, constant: int | None = None):
        self.constant, self.requests = constant, 0
        grader = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                answer = re.search(r"<answer>\n(.*)\n</answer>", text, re.S).group(1)
                score = grader.constant or (9 if "GOOD" in answer else 3)
                structured = "response_format" in body
                content = ("no opinion" if "[mute]" in text else json.dumps({"score": score}) if structured
                           else f"Reads fine.\nScore: {score}")  # fmt: skip
                with threading.Lock():
                    grader.requests += 1
                reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop", "logprobs": None}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}  # fmt: skip
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


PROMPTS = [f"Write about topic {i}." for i in range(12)]
# the reference never writes GOOD; dpo writes it in its first sample on even prompts, in both on prompts 0 and 4
REFERENCE = [[f"plain answer {i}-{j}" for j in range(2)] for i in range(12)]
DPO = [[f"GOOD answer {i}-{j}" if (j == 0 and i % 2 == 0) or i in (0, 4) else f"answer {i}-{j}" for j in range(2)]
       for i in range(12)]  # fmt: skip


def _spec(server: Grader, **kw) -> JudgeSpec:
    return JudgeSpec(
        base_url=server.base_url, model="grader", samples_per_prompt=2, max_concurrency=2, protocol="single", **kw
    )


def test_a_score_reads_only_from_the_asked_form_and_within_the_scale():
    assert single.parse_score('{"score": 7}', "json") == 7
    for bad in ('{"score": 11}', '{"score": 0}', '{"score": 7, "why": "x"}', '{"score": true}', "7", '{"score": "7"}'):
        assert single.parse_score(bad, "json") is None
    assert single.parse_score("Clear and correct.\nScore: 10\n", "text") == 10
    for bad in ("Score: 10 of 10", "Score: 7\nbut maybe 8", "score 7", ""):
        assert single.parse_score(bad, "text") is None


def test_grades_their_mean_scores_and_differences_are_the_arithmetic_and_a_rerun_reads_the_cache(tmp_path):
    rewards = {unit: [[1.0 if "GOOD" in a else 0.0 for a in row] for row in answers]
               for unit, answers in (("reference", REFERENCE), ("dpo", DPO))}  # fmt: skip
    with Grader() as server:
        out = single.grade_units(_spec(server), PROMPTS, {"reference": REFERENCE, "dpo": DPO}, rewards=rewards,
                                 cache_dir=tmp_path)  # fmt: skip
        asked = server.requests
        again = single.grade_units(_spec(server), PROMPTS, {"reference": REFERENCE, "dpo": DPO}, cache_dir=tmp_path)
        assert server.requests == asked  # every grade from the cache
    assert asked == 48  # 12 prompts x 2 samples x 2 units, every answer distinct
    by_hand = {unit: [np.mean([9 if "GOOD" in a else 3 for a in row]) for row in answers]
               for unit, answers in (("reference", REFERENCE), ("dpo", DPO))}  # fmt: skip
    ref, dpo = out["grades"]["reference"], out["grades"]["dpo"]
    assert ref["per_prompt_score"] == [3.0] * 12 and dpo["per_prompt_score"] == by_hand["dpo"]
    assert dpo["score"]["mean"] == pytest.approx(np.mean(by_hand["dpo"]))  # (2 x 9 + 4 x 6 + 6 x 3) / 12 = 5
    assert dpo["score"]["mean"] == pytest.approx(5.0)
    assert dpo["vs_reference"]["difference"] == pytest.approx(2.0) and dpo["vs_reference"]["ci"][0] > 0
    assert dpo["diagnostics"]["reward_agreement"]["spearman_rho"] == pytest.approx(1.0)  # scores follow the reward
    assert dpo["diagnostics"]["score_histogram"] == {"3": 16, "9": 8} and dpo["distrust"] == []
    assert ref["distrust"] == ["the judge gave every answer the same score"]  # the reference's answers are alike
    assert dpo["judge"]["forms"] == ["json"] and len(out["verdicts"]) == 48
    line = next(v for v in out["verdicts"] if v["unit"] == "dpo" and v["prompt_index"] == 0 and v["sample"] == 0)
    assert (line["score"], line["answer"], line["cached"]) == (9, "GOOD answer 0-0", False)
    assert again["grades"]["dpo"]["per_prompt_score"] == by_hand["dpo"]
    assert all(v["cached"] for v in again["verdicts"])


def test_a_grader_that_says_nothing_or_one_score_is_distrusted_and_the_report_table_says_so(tmp_path):
    mute = [f"[mute] {p}" for p in PROMPTS]
    with Grader() as server:
        silent = single.grade_units(_spec(server, prompts=4), mute, {"reference": REFERENCE, "dpo": DPO},
                                    cache_dir=tmp_path)  # fmt: skip
    with Grader(constant=5) as server:
        flat = single.grade_units(
            _spec(server), PROMPTS, {"reference": REFERENCE, "dpo": DPO}, cache_dir=tmp_path / "c"
        )
    assert silent["grades"]["dpo"]["distrust"] == ["100% of its answers got no score"]
    assert silent["grades"]["dpo"]["score"] is None and silent["grades"]["dpo"]["judge"]["prompts"] == 4
    assert flat["grades"]["dpo"]["distrust"] == ["the judge gave every answer the same score"]
    table = PROTOCOLS["single"].table(flat)
    assert table.loc["dpo", "trusted"] == "no" and table.loc["dpo", "score (1-10)"].startswith("5.00 [")
    assert table.loc["dpo", "minus reference"] == "+0.00 [+0.00, +0.00]"


def test_the_recipe_names_a_known_protocol_and_a_grading_template_that_fits_it(tmp_path):
    good = tmp_path / "grade.jinja"
    good.write_text("Grade it.\n{# user #}\n{{ question }}\n{{ answer }}\n{{ form }}\n")
    pairwise_style = tmp_path / "pairwise.jinja"
    pairwise_style.write_text("{{ question }} {{ answer_a }} {{ answer_b }}")

    def problems(**judge):
        raw = {"name": "r", "model": {"name": "tiny:small"}, "data": {"source": "embedded:paired"},
               "objectives": [{"name": "dpo"}], "eval": {"generation": {"sampling": {"n": 2}},
               "judge": {"base_url": "http://127.0.0.1:1/v1", "model": "m", **judge}}}  # fmt: skip
        try:
            parse_recipe(raw)
        except RecipeError as err:
            return err.problems
        return []

    assert problems(protocol="single", template=str(good)) == []
    assert problems(protocol="singel") == [
        "eval.judge.protocol: unknown judging protocol 'singel' (did you mean 'single'?); known: pairwise, single"
    ]
    assert problems(protocol="single", template=str(pairwise_style)) == [
        "eval.judge.template: unknown variable 'answer_a' (did you mean 'answer'?); known: question, answer, form",
        "eval.judge.template: unknown variable 'answer_b' (did you mean 'answer'?); known: question, answer, form",
        "eval.judge.template: must use answer: the judge has to see the request and the answer",
    ]
