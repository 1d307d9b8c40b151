"""Rewards. `REWARDS` is the registry recipes name (eval.reward); `make_reward` builds one. A reward scores a batch
of (prompt, answer) pairs at once, `score(prompts, answers) -> array`, and declares `ground_truth` (a verifiable
score: the judge's verdicts are checked against it). Three are built in:

  instructions   the embedded task's checker (prefbench/task.py), a score in [0, 1]; only for the task's own prompts
  reward_model   a sequence-classification reward model's score (RewardModel), for any prompts
  none           no reward: runs judged by the LLM judge and benchmarks only (metrics leave reward out)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from prefbench import models
from prefbench.recipe import EMBEDDED_REWARD
from prefbench.task import TASK_VERSION, TaskPrompt, instruction_score, make_prompts


class InstructionReward:
    """The embedded task's reward: looks the prompt up among the task's generated prompts."""

    name = EMBEDDED_REWARD
    version = TASK_VERSION
    ground_truth = True  # a verifiable score: the judge's verdicts are checked against it

    def __init__(self, prompts: list[TaskPrompt] | None = None):
        prompts = (
            prompts
            if prompts is not None
            else make_prompts(2000, "train") + make_prompts(500, "heldout") + make_prompts(500, "validation")
        )
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
            raise ValueError(
                f"{at}: instructions scores only the embedded task's prompts; {len(foreign)} of {len(prompts)} "
                f"are not (first: {str(foreign[0])[:60]!r}); use reward_model or none"
            )


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
        import torch  # deferred: torch: a second to import; prefbench check and report do without
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )  # deferred: transformers: seconds to import; prefbench check does without

        self.spec, self.path = spec, models.resolve(spec.model)
        if problem := architecture_problem(self.path, spec.trust_remote_code):
            raise ValueError(f"eval.reward_model.model: {spec.model}: {problem}")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        options = {"trust_remote_code": spec.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, truncation_side="left", padding_side="right", **options
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(self.path, dtype=dtype, **options).to(self.device).eval()
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @classmethod
    def check_prompts(cls, prompts: list, at: str = "eval.reward") -> None:
        """A reward model scores any prompt."""

    @staticmethod
    def identity(spec) -> dict:
        """What decides its scores, for the results' settings: the model, how much of each conversation it
        sees, and the checkpoint's content hash (hashed once per process: a reward model's weights are GBs)."""
        return {
            "model": spec.model,
            "max_length": spec.max_length,
            "trust_remote_code": spec.trust_remote_code,
            "checkpoint": _checkpoint_id(models.resolve(spec.model)),
        }

    def text(self, prompt, answer: str) -> str:
        """The conversation the model scores: the prompt's messages (a text prompt as one user message) and the
        answer as the assistant's turn, through the chat template."""
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": answer}], tokenize=False
            )
        return "\n".join(m["content"] for m in messages) + f"\n\n{answer}"

    def score(self, prompts: list, answers: list[str]) -> np.ndarray:
        import torch  # deferred: torch: a second to import; prefbench check and report do without

        texts = [self.text(p, a) for p, a in zip(prompts, answers)]
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes its own special tokens
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros(len(texts))
        with torch.inference_mode():
            for start in range(0, len(order), self.spec.batch_size):
                batch = order[start : start + self.spec.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self.spec.max_length,
                    add_special_tokens=not templated,
                    return_tensors="pt",
                ).to(self.device)
                result = self.model(**enc)
                values = result.score if getattr(result, "score", None) is not None else result.logits[:, 0]
                out[batch] = values.float().flatten().cpu().numpy()
        return out


def architecture_problem(path, trust_remote_code: bool) -> str | None:
    """Why the checkpoint at `path` is not a one-score reward model, from its config.json alone (nothing
    loads): a causal LM would get a random head, a many-label classifier would be read at its first label.
    Models with their own modelling code (trust_remote_code) are taken at their word."""

    config = json.loads((Path(path) / "config.json").read_text())
    if trust_remote_code:
        return None
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return f"not a sequence-classification model (architectures: {', '.join(architectures) or 'none'})"
    labels = (
        len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
    )  # transformers' default: 2
    return None if labels == 1 else f"has {labels} labels; a reward model has one score"


_checkpoint_id = functools.cache(models.checkpoint_id)  # a reward model's weights are GBs: hashed once per process


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
    flat = reward.score(
        [p for p, texts in zip(prompts, answers) for _ in texts], [t for texts in answers for t in texts]
    )
    return flat.reshape(len(prompts), -1) if len(prompts) else flat


def make_reward(name: str, reward_model=None):
    """The reward a recipe names, ready to score; None for `none`."""
    if name == "none":
        return None
    return RewardModel(reward_model) if name == "reward_model" else REWARDS[name]()
