"""prefbench's offline lm-eval task packs: small task directories whose data prefbench generates itself.

The real benchmarks (MMLU, GSM8k, BBH) load their data from the Hugging Face hub, so they cannot run
offline or in CI. These packs use the same three layouts and the same lm-eval code paths, on items
generated from templates with a fixed seed (nothing is taken from any dataset):

  prefbench_mc      MMLU layout (question, subject, 4 choices, answer index); multiple_choice, acc
  prefbench_arith   GSM8k layout (question, worked answer ending "#### N"); generate_until, final number, exact_match
  prefbench_bool    BBH boolean_expressions layout (input, target "True"/"False"); generate_until, exact_match

Each pack has a test split and a separate few-shot split; no question appears in both. The YAML
templates next to this file name no data files: `materialise()` writes the JSONL and the YAMLs, with
absolute paths (lm-eval resolves relative ones against the working directory), under
cache_dir()/tasks/v<VERSION>-<hash of this directory's sources>, so an edited generator or template
gets a fresh directory. VERSION is the lm-eval task version (`metadata: version`) that results
record; bump it whenever the generated items change (tests pin the content of this version).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import yaml

from prefbench.models import cache_dir
from prefbench.results import publish

VERSION = 1
SEED = 1234
HERE = Path(__file__).resolve().parent
# pack -> {split: number of docs}; the few-shot split is read with lm-eval's first_n sampler.
SPLITS = {
    "prefbench_mc": {"test": 100, "dev": 5},
    "prefbench_arith": {"test": 80, "train": 8},
    "prefbench_bool": {"test": 80, "train": 5},
}
PACKS = tuple(SPLITS)
# The real task each pack stands in for (for error messages that suggest one).
STANDS_IN_FOR = {"mmlu": "prefbench_mc", "gsm8k": "prefbench_arith", "bbh": "prefbench_bool"}

Doc = dict
WORDS = (
    "apple",
    "river",
    "garden",
    "window",
    "planet",
    "silver",
    "yellow",
    "bridge",
    "candle",
    "forest",
    "pencil",
    "rocket",
    "summer",
    "winter",
    "button",
    "island",
    "marble",
    "orange",
    "pocket",
    "tunnel",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Greg", "Hana", "Ivan", "Jo", "Kofi", "Lena")
ITEMS = ("apples", "stickers", "marbles", "cards", "shells", "books", "pencils", "stamps")


# ---- prefbench_mc: one question, one right answer, three distinct wrong ones -----------------------


def _mc_sum(rng: random.Random) -> tuple[str, str, str, list[str]]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    s = a + b
    return "arithmetic", f"What is {a} + {b}?", str(s), [str(s + 1), str(s - 1), str(s + 10)]


def _mc_product(rng: random.Random) -> tuple[str, str, str, list[str]]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    p = a * b
    return "arithmetic", f"What is {a} times {b}?", str(p), [str(p + a), str(p - b), str(p + 1)]


def _mc_largest(rng: random.Random) -> tuple[str, str, str, list[str]]:
    numbers = rng.sample(range(1, 1000), 4)
    top = max(numbers)
    return "comparison", "Which of these numbers is the largest?", str(top), [str(n) for n in numbers if n != top]


def _mc_letter(rng: random.Random) -> tuple[str, str, str, list[str]]:
    i = rng.randint(1, 23)
    wrong = [LETTERS[i - 1], LETTERS[i + 2], LETTERS[(i + 13) % 26]]
    return "alphabet", f"Which letter comes right after {LETTERS[i]} in the English alphabet?", LETTERS[i + 1], wrong


def _mc_length(rng: random.Random) -> tuple[str, str, str, list[str]]:
    word = rng.choice(WORDS)
    n = len(word)
    return "spelling", f'How many letters are in the word "{word}"?', str(n), [str(n - 1), str(n + 1), str(n + 2)]


def _mc_weekday(rng: random.Random) -> tuple[str, str, str, list[str]]:
    start, k = rng.randrange(7), rng.randint(1, 6)
    right = (start + k) % 7
    wrong = rng.sample([d for d in range(7) if d != right], 3)
    question = f"Which day of the week comes {k} day{'s' if k > 1 else ''} after {DAYS[start]}?"
    return "calendar", question, DAYS[right], [DAYS[d] for d in wrong]


def _mc_doc(rng: random.Random) -> tuple[str, Doc]:
    subject, question, right, wrong = rng.choice(
        [_mc_sum, _mc_product, _mc_largest, _mc_letter, _mc_length, _mc_weekday]
    )(rng)
    choices = [right, *wrong]
    rng.shuffle(choices)
    key = f"{question} {sorted(choices)}"  # "Which ... is the largest?" differs only in its choices
    return key, {"question": question, "subject": subject, "choices": choices, "answer": choices.index(right)}


# ---- prefbench_arith: short word problems with a worked answer ending "#### N" -----------------------


def _arith_doc(rng: random.Random) -> tuple[str, Doc]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(5, 40), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        n = a + b - c
        question = f"{name} has {a} {item}. {name} gets {b} more and then gives {c} away. How many {item} does {name} have now?"
        steps = [
            f"After getting more, {name} has {a} + {b} = {a + b} {item}.",
            f"After giving some away, {a + b} - {c} = {n}.",
        ]
    elif kind == 1:
        a, b = rng.randint(3, 15), rng.randint(2, 9)
        n = a * b
        question = f"A box holds {a} {item}. How many {item} are in {b} boxes?"
        steps = [f"{b} boxes hold {b} * {a} = {n} {item}."]
    elif kind == 2:
        a, b, c = rng.randint(5, 30), rng.randint(2, 7), rng.randint(1, 20)
        n = a * b + c
        question = (
            f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages did {name} read in all?"
        )
        steps = [f"In {b} days {name} reads {a} * {b} = {a * b} pages.", f"With the extra pages, {a * b} + {c} = {n}."]
    else:
        n, b = rng.randint(2, 12), rng.randint(2, 8)
        question = f"{n * b} {item} are shared equally among {b} children. How many {item} does each child get?"
        steps = [f"Each child gets {n * b} / {b} = {n} {item}."]
    return question, {"question": question, "answer": "\n".join(steps) + f"\n#### {n}"}


# ---- prefbench_bool: Boolean expressions over True/False with not, and, or, parentheses ------------


def _bool_expr(rng: random.Random, depth: int, top: bool = True) -> tuple[str, bool]:
    """(text, value). Every binary part is parenthesised unless it is the whole expression, so Python
    (not before and before or, as in BBH) reads the text the way it was built."""
    negate = rng.random() < 0.3
    if depth == 0 or (not top and rng.random() < 0.3):  # the whole expression has at least two operands
        value = rng.random() < 0.5
        text = str(value)
    else:
        left, lv = _bool_expr(rng, depth - 1, top=False)
        right, rv = _bool_expr(rng, depth - 1, top=False)
        op = rng.choice(["and", "or"])
        value = (lv and rv) if op == "and" else (lv or rv)
        text = f"{left} {op} {right}" if top and not negate else f"( {left} {op} {right} )"
    return (f"not {text}", not value) if negate else (text, value)


def _bool_doc(rng: random.Random) -> tuple[str, Doc]:
    text, value = _bool_expr(rng, 2)
    return text, {"input": f"{text} is", "target": str(value)}


GENERATORS: dict[str, Callable[[random.Random], tuple[str, Doc]]] = {
    "prefbench_mc": _mc_doc,
    "prefbench_arith": _arith_doc,
    "prefbench_bool": _bool_doc,
}


def generate(pack: str, seed: int = SEED) -> dict[str, list[Doc]]:
    """{split: docs} for `pack`. Every item is new within the pack (by its key: the question, plus the
    choices where a question repeats), so the few-shot and test splits are disjoint."""
    rng = random.Random(f"{pack}:{seed}")
    seen: set[str] = set()
    out: dict[str, list[Doc]] = {}
    for split, n in SPLITS[pack].items():
        docs = out[split] = []
        while len(docs) < n:
            key, doc = GENERATORS[pack](rng)
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return out


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([*HERE.glob("*.py"), *HERE.glob("*.yaml")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def materialise(root: Path | None = None) -> Path:
    """The lm-eval task directory of the packs (for TaskManager(include_path=...)), written on first use."""
    target = (root or cache_dir() / "tasks") / f"v{VERSION}-{_sources_hash()}"

    def build(tmp: Path) -> None:
        for pack in PACKS:
            files = {}
            for split, docs in generate(pack).items():
                files[split] = str(target / f"{pack}.{split}.jsonl")
                (tmp / f"{pack}.{split}.jsonl").write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in docs))
            config = yaml.safe_load((HERE / f"{pack}.yaml").read_text())
            # Arrow caches of these files stay in prefbench's cache, not ~/.cache/huggingface.
            config.update(
                task=pack,
                dataset_path="json",
                metadata={"version": VERSION},
                dataset_kwargs={"data_files": files, "cache_dir": str(target / "hf-datasets")},
            )
            (tmp / f"{pack}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    return publish(target, build)
