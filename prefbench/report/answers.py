"""The sample viewer: a few prompts with every unit's answers, rewards and judge verdicts, as Markdown and as HTML."""

from __future__ import annotations

import html

from prefbench.errors import PrefbenchError
from prefbench.eval.judge.verdicts import PairResult
from prefbench.eval.prompts import prompt_text
from prefbench.results import (
    Run,
    read_jsonl,
)

# ---- answers ---------------------------------------------------------------------------------------


def samples(run: Run, prompts: int | list[int] = 24) -> list[dict]:
    """What the checkpoints answered: for the held-out prompts every unit answered (the first `prompts` of them, or
    the listed prompt indices), the prompt and each unit's first sampled answer with its reward (from the units'
    answers.jsonl; a stored run without them has none) and the judge's verdict on it in each comparison the unit
    stands first in (judge_words)."""
    per_unit = {}
    for u in run.units:
        path = run.root / u.name / "answers.jsonl"
        if path.is_file():
            per_unit[u.name] = {
                r["prompt_index"]: r for r in read_jsonl(path) if r["sampling"] == "sampled" and r["sample"] == 0
            }
    if not per_unit:
        return []
    first = next(iter(per_unit.values()))
    shared = set.intersection(*(set(rows) for rows in per_unit.values()))
    if not isinstance(prompts, int) and (missing := sorted(set(prompts) - shared)):
        raise PrefbenchError(
            f"prompt(s) {missing} not answered by every unit of {run.name}: they share {len(shared)} prompts, indices {min(shared)} to {max(shared)}"
            if shared
            else f"the units of {run.name} answered no prompt in common"
        )
    chosen = sorted(shared)[:prompts] if isinstance(prompts, int) else list(prompts)
    verdicts = judge_words(run, {(name, i): rows[i]["answer"] for name, rows in per_unit.items() for i in chosen})
    return [
        {
            "index": i,
            "prompt": prompt_text(first[i]["prompt"]),
            "answers": {
                name: {"answer": rows[i]["answer"], "reward": rows[i]["reward"], "judge": verdicts.get((name, i), {})}
                for name, rows in per_unit.items()
            },
        }
        for i in chosen
    ]


def judge_words(run: Run, answers: dict[tuple[str, int], str]) -> dict[tuple[str, int], dict[str, str]]:
    """The judge's verdict on unit X's first answer to prompt i in each comparison "X vs Y" of the run, in words:
    {(X, i): {Y: "wins" | "loses" | "ties" | "unreadable"}}, scored from the pair's two lines in
    <run>/judge/verdicts.jsonl as the win rates are (verdicts.PairResult). A pair the judge covered whose answers
    were identical has no lines and is a tie ("same answer"). answers[(unit, i)]: the units' first answers."""
    path = run.root / "judge" / "verdicts.jsonl"
    if not path.is_file() or not (run.judge or {}).get("comparisons"):
        return {}
    orders: dict[tuple[str, str, int], dict[str, str | None]] = {}
    for line in read_jsonl(path):
        if line["sample"] == 0:
            x, y = line["comparison"].split(" vs ")
            orders.setdefault((x, y, line["prompt_index"]), {})["first" if line["unit_a"] == x else "second"] = line[
                "verdict"
            ]
    out: dict[tuple[str, int], dict[str, str]] = {}
    for c in run.judge["comparisons"].values():
        x, y, judged = c["unit"], c["opponent"], c["judge"]["prompts"]
        for (unit, i), answer in answers.items():
            if unit != x or i >= judged:
                continue
            if (x, y, i) in orders:
                o = orders[(x, y, i)]
                score = PairResult(i, o.get("first"), o.get("second"), 0, 0).score()
                out.setdefault((x, i), {})[y] = {1.0: "wins", 0.0: "loses", 0.5: "ties", None: "unreadable"}[score]
            elif answers.get((y, i)) == answer:
                out.setdefault((x, i), {})[y] = "ties (same answer)"
    return out


def _judge_text(verdicts: dict[str, str], prefix: str = "judge: ") -> str:
    return "; ".join(f"{prefix}{word} vs {y}" for y, word in verdicts.items())


def _reward_text(reward) -> str:
    return "" if reward is None else f"reward {reward:.3f}"


def samples_markdown(items: list[dict], shown: int = 3) -> list[str]:
    """The first few prompts' answers side by side, as Markdown (the HTML report holds them all, with filters)."""
    rewarded = any(
        a["reward"] is not None for item in items for a in item["answers"].values()
    )  # eval.reward: none has none
    judged = any(a["judge"] for item in items for a in item["answers"].values())
    columns = ["unit"] + ["reward"] * rewarded + ["judge"] * judged + ["answer"]
    out = []
    for item in items[:shown]:
        out += [
            f"**Prompt {item['index']}**: {item['prompt']}",
            "",
            "| " + " | ".join(columns) + " |",
            "|---" * len(columns) + "|",
        ]
        for name, a in item["answers"].items():
            cells = (
                [name]
                + ([format(a["reward"], ".3f") if a["reward"] is not None else "-"] if rewarded else [])
                + ([_judge_text(a["judge"], prefix="")] if judged else [])
            )
            cells.append(" ".join(a["answer"].split()).replace("|", "\\|"))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def samples_html(items: list[dict]) -> str:
    """The sample viewer: each prompt with every unit's answer and reward side by side, a search box that keeps the
    prompts containing its text, and a checkbox per unit that shows or hides its answers. Plain script, no library."""
    units = list(items[0]["answers"])
    toggles = "".join(
        f"<label><input type='checkbox' class='unit-toggle' value='{html.escape(u)}' checked> {html.escape(u)}</label> "
        for u in units
    )
    cards = []
    for item in items:
        cells = "".join(
            f"<td class='answer' data-unit='{html.escape(name)}'><b>{html.escape(name)}</b> "
            f"<small>{_reward_text(a['reward'])}</small> <small class='verdict'>{html.escape(_judge_text(a['judge']))}</small>"
            f"<div>{html.escape(a['answer'])}</div></td>"
            for name, a in item["answers"].items()
        )
        cards.append(
            f"<div class='sample' data-prompt='{html.escape(item['prompt'].lower())}'>"
            f"<p class='prompt'><b>Prompt {item['index']}</b>: {html.escape(item['prompt'])}</p>"
            f"<table class='answers'><tr>{cells}</tr></table></div>"
        )
    script = (
        "<script>function applyFilters(){const q=document.getElementById('prompt-filter').value.toLowerCase();"
        "const on=new Set([...document.querySelectorAll('.unit-toggle')].filter(c=>c.checked).map(c=>c.value));"
        "document.querySelectorAll('.sample').forEach(s=>{s.style.display=s.dataset.prompt.includes(q)?'':'none'});"
        "document.querySelectorAll('td.answer').forEach(t=>{t.style.display=on.has(t.dataset.unit)?'':'none'});}"
        "document.getElementById('prompt-filter').addEventListener('input',applyFilters);"
        "document.querySelectorAll('.unit-toggle').forEach(c=>c.addEventListener('change',applyFilters));</script>"
    )
    return (
        f"<h2>Answers</h2><p>Each checkpoint's first sampled answer to {len(items)} held-out prompts, with its reward where the run "
        "has one and the judge's verdict on it against each opponent where the judge saw the pair (both answer orders: "
        "wins or loses when they agree, ties when they differ).</p>"
        f"<p class='viewer-controls'><input id='prompt-filter' type='search' placeholder='filter prompts'> {toggles}</p>"
        + "".join(cards)
        + script
    )
