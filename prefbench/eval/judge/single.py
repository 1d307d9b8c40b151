"""Single-answer grading, the way MT-Bench grades: the judge reads one answer with a rubric (templates/single.jinja)
and gives it a whole score from 1 to 10. Each unit is graded alone, so there is no position to be biased by;
units are compared through their scores on the same prompts.

Calls: one per (prompt, sample) of each unit, for the first samples_per_prompt samples of the first spec.prompts
prompts; the same answer to the same prompt is asked once, whichever units gave it. A reply reads as a score from
{"score": N} (structured output) or from a last line "Score: N"; anything else is no score (asked again, as the
pairwise judge's replies are: client.PARSE_ATTEMPTS).

Results (eval_judge.json "grades", one entry per unit): the mean score over prompts (each prompt's samples averaged
first) with its 95% bootstrap CI, a checkpoint's paired difference from the reference on the prompts both have
scores for, the diagnostics (parse failures, the scores' spread, their agreement with a ground-truth reward:
Spearman's rho over answers, calls, tokens, cost) and the reasons to distrust them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as st

from prefbench import models
from prefbench.eval.judge import prompts
from prefbench.eval.judge.client import VerdictCache, dry_run, judge_calls, judge_model, to_ask
from prefbench.eval.judge.prompts import CHARS_PER_TOKEN, TEMPERATURE, TOP_LOGPROBS, Template
from prefbench.recipe import JudgeSpec
from prefbench.stats import estimate, paired_difference

TEMPLATE = Path(__file__).parent / "templates" / "single.jinja"
VARIABLES = ("question", "answer", "form")
REQUIRED = ("question", "answer")
SCORES = (1, 10)  # the lowest and highest score
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": SCORES[0], "maximum": SCORES[1]}},
    "required": ["score"],
    "additionalProperties": False,
}
SCORE_LINE = re.compile(r"^\s*Score:\s*(\d+)\s*$")
MAX_PARSE_FAILURES = 0.2  # above this share of answers without a score, the scores are not to be trusted
MIN_AGREEMENT_ANSWERS = 10  # answers with both a score and a reward before agreement with the reward is judged


def parse_score(content: str, form: str) -> int | None:
    """The score in a reply, or None: {"score": N} alone (form json), or a last line "Score: N" (form text)."""
    if form == "json":
        try:
            obj = json.loads(content)
        except json.JSONDecodeError:
            return None
        value = obj.get("score") if isinstance(obj, dict) and obj.keys() == {"score"} else None
    else:
        lines = [line for line in content.strip().splitlines() if line.strip()]
        match = SCORE_LINE.match(lines[-1]) if lines else None
        value = int(match.group(1)) if match else None
    ok = isinstance(value, int) and not isinstance(value, bool) and SCORES[0] <= value <= SCORES[1]
    return value if ok else None


@dataclass(frozen=True)
class GradeCall:
    """One grading request: the question and one answer, in a template (asked as client.py asks any call)."""

    question: str
    answer: str
    template: Template

    def messages(self, form: str) -> list[dict]:
        return self.template.render({"question": self.question, "answer": self.answer, "form": form})

    def prompt_tokens_estimate(self, form: str = "json") -> int:
        return sum(len(m["content"]) for m in self.messages(form)) // CHARS_PER_TOKEN

    def options(self, form: str, logprobs: bool) -> dict:
        extra: dict = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else {}
        if form == "json":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "score", "strict": True, "schema": SCORE_SCHEMA},
            }
        return extra

    def parse(self, content: str, form: str) -> int | None:
        return parse_score(content, form)

    def probs(self, content: str, verdict: int, tokens) -> None:
        return None  # a score's probability is not kept: the mean over answers is the estimate

    def key(self, model: str, form: str, max_tokens: int) -> str:
        decoding = {"temperature": TEMPERATURE, "max_tokens": max_tokens, "form": form}
        blob = json.dumps(["single", model, self.template.sha256, self.question, self.answer, decoding], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def load_template(path: str = "") -> Template:
    """The grading template in the file at path; "": the built-in one."""
    return Template((Path(path).expanduser() if path else TEMPLATE).read_text(encoding="utf-8"))


def template_problems(path: str, at: str) -> list[str]:
    """What is wrong with a grading template file, one line each, before anything is asked."""
    return prompts.template_problems(path, at, VARIABLES, REQUIRED, "the request and the answer")


def grade_units(
    spec: JudgeSpec,
    prompts: list[str],
    answers: dict[str, list[list[str]]],
    reference: str = "reference",
    chosen: list[str] | None = None,
    rewards: dict[str, list[list[float]]] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Grade every unit's answers: {"grades": {unit: its scores' statistics}, "verdicts": one line per graded
    answer, "transport": the faults retried and answers re-asked}; with spec.dry_run, {"dry_run": ...}.
    answers[unit][i]: the unit's sampled answers to prompts[i]; rewards: the same shape (ground truth), for the
    scores' agreement with them. `chosen` (the data's chosen answers) is graded as the unit "chosen"."""
    template, model = load_template(spec.template), judge_model(spec)
    cache = VerdictCache(Path(cache_dir or models.cache_dir() / "judge") / "verdicts.jsonl")
    k, n = spec.samples_per_prompt, min(len(prompts), spec.prompts or len(prompts))
    answers = dict(answers) | ({"chosen": [[c] for c in chosen]} if chosen is not None else {})
    asked = {
        u: [[GradeCall(prompts[i], a, template) for a in per_prompt[i][:k]] for i in range(n)]
        for u, per_prompt in answers.items()
    }
    calls = list(dict.fromkeys(c for per_unit in asked.values() for row in per_unit for c in row))
    needed = to_ask(spec, calls, cache)
    if spec.dry_run:
        return {"dry_run": dry_run(spec, len(calls), needed)}
    made, transport = judge_calls(spec, needed, cache)
    grades, lines = {}, []
    for unit, per_unit in asked.items():
        records = [[cache.find(c, model, spec.max_tokens) for c in row] for row in per_unit]
        lines += [
            _line(unit, i, j, c, r, made)
            for i, row in enumerate(per_unit)
            for j, (c, r) in enumerate(zip(row, records[i]))
            if r
        ]
        grades[unit] = _unit_grades(spec, template, model, unit, records, rewards and rewards.get(unit), made)
    if reference in grades:
        ref = np.array(grades[reference]["per_prompt_score"], float)
        for unit, g in grades.items():
            mine = np.array(g["per_prompt_score"], float)
            both = ~np.isnan(mine) & ~np.isnan(ref)
            if unit != reference and both.sum():
                g["vs_reference"] = paired_difference(mine[both], ref[both]) | {"opponent": reference}
    for g in grades.values():
        g["distrust"] = distrust(g)
    return {"grades": grades, "verdicts": lines, "transport": transport}


def _unit_grades(spec, template, model, unit, records, rewards, made) -> dict:
    """One unit's scores: per prompt the mean of its samples' scores (NaN: none scored), their estimate over the
    prompts with a score, and the diagnostics."""
    flat = [r for row in records for r in row if r]
    scores = np.array(
        [[np.nan if not r or r["verdict"] is None else r["verdict"] for r in row] for row in records], float
    )
    per_prompt = [float(np.nanmean(row)) if (~np.isnan(row)).any() else float("nan") for row in scores]
    scored = [v for v in per_prompt if not np.isnan(v)]
    values = scores[~np.isnan(scores)]
    agreement = None
    if rewards is not None:
        pairs = [(s, rewards[i][j]) for i, row in enumerate(scores) for j, s in enumerate(row) if not np.isnan(s)]
        if len(pairs) >= MIN_AGREEMENT_ANSWERS and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
            rho, p = st.spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
            agreement = {"spearman_rho": float(rho), "p_value": float(p), "answers": len(pairs)}
    return {
        "unit": unit,
        "judge": {"model": model, "template_sha256": template.sha256, "temperature": TEMPERATURE,
                  "max_tokens": spec.max_tokens, "forms": sorted({r["form"] for r in flat}),
                  "samples_per_prompt": spec.samples_per_prompt, "prompts": len(records)},
        "score": estimate(scored) if scored else None,
        "per_prompt_score": per_prompt,
        "diagnostics": {
            "answers": int(scores.size),
            "parse_failure_rate": float(np.isnan(scores).mean()) if scores.size else float("nan"),
            "score_sd": float(values.std(ddof=1)) if values.size >= 2 else float("nan"),
            "score_histogram": {str(s): int((values == s).sum()) for s in range(SCORES[0], SCORES[1] + 1) if (values == s).any()},
            "reward_agreement": agreement,
            "calls": len(flat),
            "calls_made": sum(r["key"] in made for r in flat),
            "prompt_tokens": sum(r["prompt_tokens"] for r in flat),
            "completion_tokens": sum(r["completion_tokens"] for r in flat),
            "cost_usd": sum(r["cost_usd"] for r in flat),
        },
    }  # fmt: skip


def distrust(grades: dict) -> list[str]:
    """Why a unit's scores should not be read, one reason each (none: nothing seen against them)."""
    d, out = grades["diagnostics"], []
    if d["parse_failure_rate"] > MAX_PARSE_FAILURES:
        out.append(f"{d['parse_failure_rate']:.0%} of its answers got no score")
    if d["score_sd"] == 0:
        out.append("the judge gave every answer the same score")
    if (agree := d["reward_agreement"]) and agree["spearman_rho"] <= 0:
        out.append(f"its scores do not rise with the reward (Spearman's rho {agree['spearman_rho']:+.2f})")
    return out


def _line(unit: str, i: int, j: int, call: GradeCall, record: dict, made: set[str]) -> dict:
    """One graded answer's verdict line, for <run>/judge/verdicts.jsonl."""
    return {
        "unit": unit, "prompt_index": i, "sample": j, "prompt": call.question, "answer": call.answer,
        "judge": record["model"], "template_sha256": record["template_sha256"], "form": record["form"],
        "output": record["content"], "score": record["verdict"], "finish_reason": record["finish_reason"],
        "error": record["error"], "cached": record["key"] not in made,
    }  # fmt: skip


def table(judge: dict):
    """The report's table of stored grades (eval_judge.json): per unit, its mean score and its difference from the
    reference's, with the diagnostics that say how far to trust them."""
    import pandas as pd  # deferred: pandas is the report's; grading itself does without it

    def shown(est) -> str:
        return "n/a" if not est else f"{est['mean']:.2f} [{est['ci'][0]:.2f}, {est['ci'][1]:.2f}]"

    rows = []
    for unit, g in (judge.get("grades") or {}).items():
        d, vs, agree = g["diagnostics"], g.get("vs_reference"), g["diagnostics"]["reward_agreement"]
        rows.append({
            "unit": unit,
            "score (1-10)": shown(g["score"]),
            "minus reference": "" if not vs else f"{vs['difference']:+.2f} [{vs['ci'][0]:+.2f}, {vs['ci'][1]:+.2f}]",
            "parse failures": f"{d['parse_failure_rate']:.2f}",
            "score sd": f"{d['score_sd']:.2f}",
            "rho with reward": "n/a" if not agree else f"{agree['spearman_rho']:+.2f}",
            "trusted": "no" if g["distrust"] else "yes",
            "tokens": d["prompt_tokens"] + d["completion_tokens"],
            "cost $": f"{d['cost_usd']:.4f}",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("unit") if rows else None
