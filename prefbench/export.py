"""A run's generated answers in the layouts the field's judges read, so AlpacaEval or Arena-Hard can judge them.

DIR/alpaca_eval/<model>/model_outputs.json       per unit, for `alpaca_eval evaluate --model_outputs`
DIR/arena_hard/<run>/question.jsonl              the prompts, for arena-hard-auto's gen_judgment.py
DIR/arena_hard/<run>/model_answer/<model>.jsonl  per unit
DIR/<format>/export.json                         which pass and sample were taken, from which run

One answer per prompt per unit: the greedy pass where every unit has one, else sample 0 of the sampled pass.
The judges key answers by prompt text (AlpacaEval merges on the instruction, Arena-Hard on an id of it), so a
prompt repeated in the evaluation set is exported once, its first occurrence.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

from prefbench.eval.prompts import prompt_text
from prefbench.results import (
    ResultsError,
    Run,
    load_run,
    read_jsonl,
    versions,
    write_json,
    write_jsonl,
)


def pick_answers(run: Run, sampling: str | None = None, sample: int | None = None) -> tuple[str, int, dict, list[str]]:
    """(sampling, sample, {unit: {prompt text: answers.jsonl line}}, units without answers). Checks everything
    before anything is written: a pass or sample that one unit lacks would make the units incomparable."""
    lines = {u.name: read_jsonl(p) for u in run.units if (p := run.root / u.name / "answers.jsonl").is_file()}
    if not lines:
        raise ResultsError(
            f"{run.root}: no unit has answers.jsonl; run `prefbench evaluate RECIPE --stage generation` first"
        )
    if sampling is None:
        has_greedy = all(any(r["sampling"] == "greedy" for r in rows) for rows in lines.values())
        sampling = "greedy" if has_greedy and sample is None else "sampled"
    sample = sample or 0
    answers = {}
    for name, rows in lines.items():
        rows = [r for r in rows if r["sampling"] == sampling]
        if not rows:
            raise ResultsError(f"{name}: no {sampling} answers in answers.jsonl")
        n = min(Counter(r["prompt_index"] for r in rows).values())
        if not 0 <= sample < n:
            raise ResultsError(
                f"--sample {sample}: out of range; {name}'s {sampling} pass has {n} answer(s) per prompt"
            )
        first: dict[str, dict] = {}
        for r in sorted(rows, key=lambda r: r["prompt_index"]):
            if r["sample"] == sample:
                first.setdefault(prompt_text(r["prompt"]), r)
        answers[name] = first
    if len({frozenset(first) for first in answers.values()}) > 1:  # the judges pair answers by prompt
        raise ResultsError(
            f"{run.root}: the units' answers are to different prompts; re-run `prefbench evaluate` so that they share them"
        )
    return sampling, sample, answers, [u.name for u in run.units if u.name not in lines]


def model_name(run: Run, unit: str) -> str:
    """'<run>-<label>-seed<k>' or '<run>-reference', safe as a file name: the judges name files after models."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{run.name}-{unit.replace('/', '-')}")


def question_id(text: str) -> str:
    """The same prompt gets the same id in every export, whatever its position in the evaluation set."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_alpaca_eval(run: Run, answers: dict, out: Path) -> list[Path]:
    """Per unit a JSON list of {instruction, output, generator, dataset}; the reference's is the one to pass
    as --reference_outputs."""
    files = []
    for unit, picked in answers.items():
        name = model_name(run, unit)
        files.append(out / name / "model_outputs.json")
        write_json(
            files[-1],
            [
                {"instruction": text, "output": r["answer"], "generator": name, "dataset": run.name}
                for text, r in picked.items()
            ],
        )
    return files


def write_arena_hard(run: Run, answers: dict, out: Path) -> list[Path]:
    """arena-hard-auto's current (v2.0) layout, which its gen_judgment.py reads: questions {uid, category,
    prompt}; answers {uid, model, messages} whose last message's content is {"answer": text}. The category is
    the bench name: gen_judgment looks the baseline model up by category (utils/judge_utils.py)."""
    bench = out / re.sub(r"[^A-Za-z0-9._-]+", "_", run.name)
    texts = next(iter(answers.values()))
    files = [bench / "question.jsonl"]
    write_jsonl(files[0], [{"uid": question_id(t), "category": bench.name, "prompt": t} for t in texts])
    for unit, picked in answers.items():
        model = model_name(run, unit)
        files.append(bench / "model_answer" / f"{model}.jsonl")
        write_jsonl(
            files[-1],
            [
                {
                    "uid": question_id(text),
                    "model": model,
                    "messages": (
                        r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
                    )
                    + [{"role": "assistant", "content": {"answer": r["answer"]}}],
                }
                for text, r in picked.items()
            ],
        )
    return files


FORMATS = {"alpaca_eval": write_alpaca_eval, "arena_hard": write_arena_hard}


def export(
    run_dir: str | Path, fmt: str, out: str | Path, sampling: str | None = None, sample: int | None = None
) -> dict:
    """Write the run's answers in `fmt` under out/<fmt>/ and return its export.json."""
    run = load_run(run_dir)
    sampling, sample, answers, skipped = pick_answers(run, sampling, sample)
    out = Path(out) / fmt
    files = FORMATS[fmt](run, answers, out)
    manifest = {
        "run": run.name,
        "run_dir": str(Path(run_dir).resolve()),
        "format": fmt,
        "units": list(answers),
        "units_without_answers": skipped,
        "sampling": sampling,
        "sample": sample,
        "prompts": len(next(iter(answers.values()))),
        "prefbench": versions().get("prefbench"),
        "files": [str(f.relative_to(out)) for f in files],
    }
    write_json(out / "export.json", manifest)
    return manifest
