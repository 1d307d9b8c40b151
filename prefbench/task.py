"""The embedded task: short answers with verifiable instructions, and its score.

The task asks for a short text about a topic under one or two instructions that a
program can check (letter case, a required or forbidden word, the ending, word and sentence
counts, commas, the first word, quotes, bullets, digits). Prompts come from templates with a
fixed seed; train, validation and held-out (test) prompts use disjoint topics.

The score is the share of instructions met, times a quality gate: the answer must mention the
topic, have at least MIN_WORDS words, and read as words (mostly alphabetic tokens with vowels,
not one token repeated). A failed gate keeps only GATE_FLOOR of the score. Without it, a
feasibility probe on this task found DPO collapsing answers to quoted fragments and gibberish
that met the instructions (shared/ENVIRONMENT.md): the gate makes those hacks lose.

Pure Python at the bottom of the package: the reward (prefbench.eval.rewards.InstructionReward) and the prompt
loaders (prefbench.eval.prompts) read it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TASK_VERSION = 1
MIN_WORDS = 4
GATE_FLOOR = 0.2

TOPICS = [
    "the ocean", "bicycles", "coffee", "winter", "volcanoes", "libraries", "honeybees", "trains", "the moon",
    "gardening", "chess", "rain", "bread", "mountains", "owls", "music", "bridges", "deserts", "tea", "kites",
    "rivers", "elephants", "candles", "forests", "snow", "pianos", "islands", "clocks", "penguins", "autumn",
    "castles", "robots", "whales", "lighthouses", "apples", "thunderstorms", "maps", "dolphins", "cheese", "rockets",
    "butterflies", "caves", "soup", "lanterns", "wolves", "glaciers", "markets", "sailboats", "cactus plants", "painting",
    "football", "spiders", "rainbows", "tomatoes", "hospitals", "camels", "newspapers", "fireworks", "pumpkins", "tigers",
    "waterfalls", "umbrellas", "bees", "the desert wind", "farms", "violins", "comets", "foxes", "mushrooms", "harbors",
    "tulips", "sharks", "museums", "blankets", "parrots", "puzzles", "lakes", "kangaroos", "gardens", "stars",
    "chocolate", "helicopters", "frogs", "oranges", "schools", "turtles", "storms", "pyramids", "rice", "horses",
]  # fmt: skip

# Validation topics: neither train nor held-out (test) ones, for tuning (a keyword is the last word's first
# five letters less a plural s, so each is chosen to appear in an answer that names the topic).
VALIDATION_TOPICS = [
    "volleyball", "sunflowers", "canoes", "bakers", "zebras", "telescopes", "orchards", "tents", "meadows",
    "canals", "koalas", "quilts", "beaches", "squirrels", "carnivals", "lemons", "airplanes", "seashells",
]  # fmt: skip

WORDS = ["bright", "quiet", "happy", "small", "green", "cold", "ancient", "gentle", "fast", "golden"]
STOP_WORDS = ["the", "and", "is", "a", "very"]
OPENERS = ["Yes", "Today", "Imagine", "Honestly", "Look"]
FRAMES = ["Write a short text about {topic}.", "Tell me something about {topic}.", "Describe {topic} briefly."]


@dataclass(frozen=True)
class Instruction:
    kind: str
    arg: str | int | None = None

    def text(self) -> str:
        a = self.arg
        return {
            "lowercase": "Use only lowercase letters.",
            "uppercase": "Write everything in capital letters.",
            "include": f"Include the word '{a}'.",
            "exclude": f"Do not use the word '{a}'.",
            "end_with": f"End your answer with '{a}'.",
            "max_words": f"Use at most {a} words.",
            "min_words": f"Use at least {a} words.",
            "no_commas": "Do not use any commas.",
            "start_with": f"Start your answer with the word '{a}'.",
            "quotes": "Wrap your whole answer in double quotes.",
            "sentences": f"Write exactly {a} sentences.",
            "bullets": f"Answer with exactly {a} bullet points, each on its own line starting with '- '.",
            "digits": "Include at least one number written in digits.",
        }[self.kind]

    def check(self, response: str) -> bool:
        r, a = response.strip(), self.arg
        letters = [c for c in r if c.isalpha()]
        if self.kind == "lowercase":
            return bool(letters) and all(c.islower() for c in letters)
        if self.kind == "uppercase":
            return bool(letters) and all(c.isupper() for c in letters)
        if self.kind == "include":
            return re.search(rf"\b{re.escape(a)}\b", r, re.IGNORECASE) is not None
        if self.kind == "exclude":
            return re.search(rf"\b{re.escape(a)}\b", r, re.IGNORECASE) is None
        if self.kind == "end_with":
            return r.rstrip("\"' ").endswith(a)
        if self.kind == "max_words":
            return 0 < len(words(r)) <= a
        if self.kind == "min_words":
            return len(words(r)) >= a
        if self.kind == "no_commas":
            return "," not in r
        if self.kind == "start_with":
            first = words(r)[:1]
            return first == [a.lower()]
        if self.kind == "quotes":
            return len(r) > 2 and r[0] == r[-1] == '"'
        if self.kind == "sentences":
            return len(sentences(r)) == a
        if self.kind == "bullets":
            lines = [line.strip() for line in r.splitlines() if line.strip()]
            return len(lines) == a and all(line.startswith("- ") and len(line) > 2 for line in lines)
        if self.kind == "digits":
            return re.search(r"\d", r) is not None
        raise ValueError(f"unknown instruction kind {self.kind!r}")


def words(text: str) -> list[str]:
    """Lowercased words: letters, digits and inner apostrophes; punctuation and quotes dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip().strip('"'))
    return [p for p in parts if re.search(r"[A-Za-z0-9]", p)]


# Pairs that cannot both hold, or make each other trivial.
CONFLICTS = {
    frozenset({"lowercase", "uppercase"}), frozenset({"max_words", "min_words"}), frozenset({"quotes", "bullets"}),
    frozenset({"sentences", "bullets"}), frozenset({"start_with", "bullets"}), frozenset({"end_with", "bullets"}),
}  # fmt: skip


def _instruction(kind: str, rng: random.Random) -> Instruction:
    arg = {
        "include": lambda: rng.choice(WORDS),
        "exclude": lambda: rng.choice(STOP_WORDS),
        "end_with": lambda: rng.choice(["!", "?"]),
        "max_words": lambda: rng.choice([8, 10, 12, 15]),
        "min_words": lambda: rng.choice([25, 30, 40]),
        "start_with": lambda: rng.choice(OPENERS),
        "sentences": lambda: rng.choice([2, 3]),
        "bullets": lambda: rng.choice([2, 3]),
    }.get(kind, lambda: None)()
    return Instruction(kind, arg)


KINDS = [
    "lowercase",
    "uppercase",
    "include",
    "exclude",
    "end_with",
    "max_words",
    "min_words",
    "no_commas",
    "start_with",
    "quotes",
    "sentences",
    "bullets",
    "digits",
]


@dataclass(frozen=True)
class TaskPrompt:
    prompt: str
    topic: str
    instructions: tuple[Instruction, ...]

    def keyword(self) -> str:
        word = self.topic.split()[-1].lower()  # "the ocean" -> "ocean", "honeybees" -> "honey", "chess" -> "ches"
        return (word[:-1] if word.endswith("s") else word)[:5]


def make_prompts(n: int, split: str, seed: int = 0) -> list[TaskPrompt]:
    """n prompts for `split`: "train", "validation" (for tuning) or "heldout" (the test prompts reported
    figures come from); the three splits' topics are disjoint."""
    cut = int(len(TOPICS) * 0.8)
    topics = {"train": TOPICS[:cut], "heldout": TOPICS[cut:], "validation": VALIDATION_TOPICS}[split]
    rng = random.Random(f"{split}-{seed}-{TASK_VERSION}")
    out, seen = [], set()
    while len(out) < n:
        topic = rng.choice(topics)
        chosen: list[Instruction] = []
        for _ in range(rng.choice([1, 2, 2])):
            kind = rng.choice(KINDS)
            if all(kind != c.kind and frozenset({kind, c.kind}) not in CONFLICTS for c in chosen):
                chosen.append(_instruction(kind, rng))
        text = " ".join([rng.choice(FRAMES).format(topic=topic)] + [i.text() for i in chosen])
        if text in seen:
            continue
        seen.add(text)
        out.append(TaskPrompt(text, topic, tuple(chosen)))
    return out


def quality_ok(task: TaskPrompt, response: str) -> bool:
    """The anti-hack gate: on topic, long enough, made of words."""
    ws = words(response)
    if len(ws) < MIN_WORDS or task.keyword() not in response.lower():
        return False
    wordlike = [w for w in ws if w.isdigit() or (w.isalpha() and re.search(r"[aeiouy]", w) and len(w) <= 15)]
    return len(wordlike) >= 0.8 * len(ws) and len(set(ws)) >= 0.5 * len(ws)


def instruction_score(task: TaskPrompt, response: str) -> float:
    met = sum(i.check(response) for i in task.instructions) / len(task.instructions)
    return met if quality_ok(task, response) else GATE_FLOOR * met
