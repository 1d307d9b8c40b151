"""Rewards, and the embedded task: short answers with verifiable instructions.

`REWARDS` is the registry recipes name (eval.reward); `make_reward` builds one. A reward scores a batch of
(prompt, answer) pairs at once, `score(prompts, answers) -> array`, and declares `ground_truth` (a verifiable
score: the judge's verdicts are checked against it). Three are built in:

  instructions   the embedded task's checker, a score in [0, 1]; only for the task's own prompts
  reward_model   a sequence-classification reward model's score (RewardModel), for any prompts
  none           no reward: runs judged by the LLM judge and benchmarks only (metrics leave reward out)

The embedded task asks for a short text about a topic under one or two instructions that a
program can check (letter case, a required or forbidden word, the ending, word and sentence
counts, commas, the first word, quotes, bullets, digits). Prompts come from templates with a
fixed seed; train, validation and held-out (test) prompts use disjoint topics.

The score is the share of instructions met, times a quality gate: the answer must mention the
topic, have at least MIN_WORDS words, and read as words (mostly alphabetic tokens with vowels,
not one token repeated). A failed gate keeps only GATE_FLOOR of the score. Without it, a
feasibility probe on this task found DPO collapsing answers to quoted fragments and gibberish
that met the instructions (shared/ENVIRONMENT.md): the gate makes those hacks lose.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

import numpy as np

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


KINDS = ["lowercase", "uppercase", "include", "exclude", "end_with", "max_words", "min_words", "no_commas", "start_with", "quotes", "sentences", "bullets", "digits"]


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


class InstructionReward:
    """The embedded task's reward: looks the prompt up among the task's generated prompts."""

    name = "instructions"
    version = TASK_VERSION
    ground_truth = True  # a verifiable score: the judge's verdicts are checked against it

    def __init__(self, prompts: list[TaskPrompt] | None = None):
        prompts = prompts if prompts is not None else make_prompts(2000, "train") + make_prompts(500, "heldout") + make_prompts(500, "validation")
        self.by_prompt = {p.prompt: p for p in prompts}

    def __call__(self, prompt: str, response: str) -> float:
        task = self.by_prompt.get(prompt)
        if task is None:
            raise KeyError(f"prompt is not one of the embedded task's prompts: {prompt[:80]!r}")
        return instruction_score(task, response)

    def score(self, prompts: list, answers: list[str]) -> np.ndarray:
        return np.array([self(p, a) for p, a in zip(prompts, answers)], dtype=float)

    @classmethod
    def check_prompts(cls, prompts: list, at: str = "eval.reward") -> None:
        """Refuses prompts it cannot score, before any answer is generated for them (at: the recipe key)."""
        known = cls().by_prompt
        foreign = [p for p in prompts if not isinstance(p, str) or p not in known]
        if foreign:
            raise ValueError(f"{at}: instructions scores only the embedded task's prompts; {len(foreign)} of {len(prompts)} "
                             f"are not (first: {str(foreign[0])[:60]!r}); use reward_model or none")


class RewardModel:
    """A sequence-classification reward model: each (prompt, answer) conversation through the model's chat
    template (plain "prompt\n\nanswer" without one), scored in right-padded batches of similar length; bf16
    on a GPU, fp32 on a CPU. The score is the single logit (num_labels 1), or the `score` output of models
    with their own head (ArmoRM, with trust_remote_code). Too-long conversations keep their end.

    transformers reads the score at the last token that is not padding; a tokenizer without a pad token
    pads with eos, so where a chat template ends the answer with eos, the score is read one token earlier
    (the same way for every answer)."""

    name = "reward_model"
    version = 1
    ground_truth = False

    def __init__(self, spec):  # a recipe.RewardModelSpec (recipe imports this module, not the reverse)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from prefbench import models

        self.spec, self.path = spec, models.resolve(spec.model)
        if problem := architecture_problem(self.path, spec.trust_remote_code):
            raise ValueError(f"eval.reward_model.model: {spec.model}: {problem}")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        options = {"trust_remote_code": spec.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, truncation_side="left", padding_side="right", **options)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=dtype, **options).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @classmethod
    def check_prompts(cls, prompts: list, at: str = "eval.reward") -> None:
        """A reward model scores any prompt."""

    @staticmethod
    def identity(spec) -> dict:
        """What decides its scores, for the results' settings: the model, how much of each conversation it
        sees, and the checkpoint's content hash (hashed once per process: a reward model's weights are GBs)."""
        from prefbench import models

        return {"model": spec.model, "max_length": spec.max_length, "trust_remote_code": spec.trust_remote_code,
                "checkpoint": _checkpoint_id(models.resolve(spec.model))}

    def text(self, prompt, answer: str) -> str:
        """The conversation the model scores: the prompt's messages (a text prompt as one user message) and the
        answer as the assistant's turn, through the chat template."""
        messages = (list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        return "\n".join(m["content"] for m in messages) + f"\n\n{answer}"

    def score(self, prompts: list, answers: list[str]) -> np.ndarray:
        import torch

        texts = [self.text(p, a) for p, a in zip(prompts, answers)]
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes its own special tokens
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros(len(texts))
        with torch.inference_mode():
            for start in range(0, len(order), self.spec.batch_size):
                batch = order[start : start + self.spec.batch_size]
                enc = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=self.spec.max_length,
                                     add_special_tokens=not templated, return_tensors="pt").to(self.device)
                result = self.model(**enc)
                values = result.score if getattr(result, "score", None) is not None else result.logits[:, 0]
                out[batch] = values.float().flatten().cpu().numpy()
        return out


def architecture_problem(path, trust_remote_code: bool) -> str | None:
    """Why the checkpoint at `path` is not a one-score reward model, from its config.json alone (nothing
    loads): a causal LM would get a random head, a many-label classifier would be read at its first label.
    Models with their own modelling code (trust_remote_code) are taken at their word."""
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "config.json").read_text())
    if trust_remote_code:
        return None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return f"not a sequence-classification model (architectures: {', '.join(architectures) or 'none'})"
    labels = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)  # transformers' default: 2
    return None if labels == 1 else f"has {labels} labels; a reward model has one score"


@functools.cache
def _checkpoint_id(path) -> str:
    from prefbench.models import checkpoint_id

    return checkpoint_id(path)


class NoReward:
    """No reward (eval.reward: none): the registry's entry, never built (make_reward gives None); generation
    metrics keep lengths, diversity and KL, and the judge and benchmarks do the rest."""

    name = "none"
    version = 1
    ground_truth = False

    @classmethod
    def check_prompts(cls, prompts: list, at: str = "eval.reward") -> None:
        """Nothing to score."""


REWARDS = {"instructions": InstructionReward, "reward_model": RewardModel, "none": NoReward}


def score_all(reward, prompts: list, answers: list[list[str]]) -> np.ndarray:
    """[prompts, answers per prompt] scores of every prompt's answers, in one batched call of the reward."""
    flat = reward.score([p for p, texts in zip(prompts, answers) for _ in texts], [t for texts in answers for t in texts])
    return flat.reshape(len(prompts), -1) if len(prompts) else flat


def make_reward(name: str, reward_model=None):
    """The reward a recipe names, ready to score; None for `none`."""
    if name == "none":
        return None
    return RewardModel(reward_model) if name == "reward_model" else REWARDS[name]()
