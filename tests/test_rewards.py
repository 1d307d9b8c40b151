"""The embedded task's checks on hand-written answers, its anti-hack gate, and its prompt sets; the reward-model scorer."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from conftest import TOY_RM_TRAIN_PAIRS

from prefbench.data.load import load_records
from prefbench.eval.rewards import REWARDS, InstructionReward, RewardModel, make_reward, score_all
from prefbench.recipe import RewardModelSpec
from prefbench.stats import paired_difference
from prefbench.task import (
    GATE_FLOOR,
    TOPICS,
    VALIDATION_TOPICS,
    Instruction,
    TaskPrompt,
    instruction_score,
    make_prompts,
)

CASES = [
    # (instruction, answer, holds?)
    (Instruction("lowercase"), "the ocean is deep and wide.", True),
    (Instruction("lowercase"), "The ocean is deep.", False),
    (Instruction("lowercase"), "123 456", False),  # no letters: not lowercase text
    (Instruction("uppercase"), "THE OCEAN IS DEEP!", True),
    (Instruction("uppercase"), "THE OCEAN IS dEEP!", False),
    (Instruction("include", "bright"), "A Bright morning by the sea.", True),
    (Instruction("include", "bright"), "Brightness fills the sea.", False),  # whole words only
    (Instruction("exclude", "and"), "Salt, sand, and waves.", False),
    (Instruction("exclude", "and"), "Salt, sand, waves.", True),
    (Instruction("end_with", "!"), 'What a sea!"', True),  # a closing quote does not hide the ending
    (Instruction("end_with", "?"), "Is the sea blue.", False),
    (Instruction("max_words", 5), "One two three four five.", True),
    (Instruction("max_words", 5), "One two three four five six.", False),
    (Instruction("min_words", 6), "One two three four five six.", True),
    (Instruction("min_words", 6), "One two three four five.", False),
    (Instruction("no_commas"), "No commas here.", True),
    (Instruction("no_commas"), "Commas, here.", False),
    (Instruction("start_with", "Today"), '"Today the sea is calm."', True),
    (Instruction("start_with", "Today"), "Yesterday the sea was calm.", False),
    (Instruction("quotes"), '"The sea is calm."', True),
    (Instruction("quotes"), "The sea is calm.", False),
    (Instruction("sentences", 2), "The sea is calm. The sky is blue!", True),
    (Instruction("sentences", 2), "The sea is calm. The sky is blue. Birds fly.", False),
    (Instruction("bullets", 2), "- calm water\n- blue sky", True),
    (Instruction("bullets", 2), "Here:\n- calm water\n- blue sky", False),
    (Instruction("digits"), "The sea covers 71% of Earth.", True),
    (Instruction("digits"), "The sea covers most of Earth.", False),
]


@pytest.mark.parametrize("instruction, answer, holds", CASES, ids=[f"{c[0].kind}-{i}" for i, c in enumerate(CASES)])
def test_each_instruction_check(instruction, answer, holds):
    assert instruction.check(answer) is holds


def test_score_is_the_share_met_times_the_gate():
    task = TaskPrompt(
        "Describe the ocean briefly. Use only lowercase letters. Do not use any commas.",
        "the ocean",
        (Instruction("lowercase"), Instruction("no_commas")),
    )
    assert instruction_score(task, "the ocean is deep and full of quiet life.") == 1.0
    assert instruction_score(task, "the ocean is deep, and full of quiet life.") == 0.5  # 1 of 2 met
    assert instruction_score(task, "The ocean is deep, and full of quiet life.") == 0.0
    # Hacks that meet both instructions but lose the gate keep only GATE_FLOOR of the score:
    assert instruction_score(task, "the sea is deep and calm.") == GATE_FLOOR  # off topic (no "ocean")
    assert instruction_score(task, "ocean ocean ocean ocean ocean ocean") == GATE_FLOOR  # one word repeated
    assert instruction_score(task, "ocean xq zzkt pfft grr") == GATE_FLOOR  # not words
    assert instruction_score(task, "the ocean") == GATE_FLOOR  # too short


def test_prompt_sets_are_deterministic_disjoint_and_conflict_free():
    train, held, valid = make_prompts(300, "train"), make_prompts(100, "heldout"), make_prompts(100, "validation")
    assert [p.prompt for p in make_prompts(300, "train")] == [p.prompt for p in train]
    topics = [{p.topic for p in split} for split in (train, held, valid)]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(topics, 2))
    assert topics[0] | topics[1] <= set(TOPICS) and topics[2] <= set(VALIDATION_TOPICS)
    assert len({p.prompt for p in train}) == 300
    # A validation answer that names its topic passes the gate's topic check (the keyword is in it).
    assert all(p.keyword() in f"I like {p.topic} a lot" for p in valid)
    assert all(
        InstructionReward()(p.prompt, "x") == instruction_score(p, "x") for p in valid[:5]
    )  # scored like the others
    for p in train + held + valid:
        assert 1 <= len(p.instructions) <= 2 and p.topic in p.prompt
        assert all(i.text() in p.prompt for i in p.instructions)
        kinds = {i.kind for i in p.instructions}
        assert len(kinds) == len(p.instructions) and not {"lowercase", "uppercase"} <= kinds
        assert p.keyword() in p.prompt.lower()
    assert len({i.kind for p in train for i in p.instructions}) == 13  # every kind is used


def test_registered_reward_looks_prompts_up_and_refuses_unknown_ones():
    reward = REWARDS["instructions"]()
    task = make_prompts(1, "heldout")[0]
    assert 0.0 <= reward(task.prompt, "some answer about nothing") <= 1.0
    with pytest.raises(KeyError, match="not one of the embedded task's prompts"):
        reward("Write a poem.", "roses")
    assert isinstance(reward, InstructionReward) and reward.version >= 1
    with pytest.raises(
        ValueError,
        match="^eval.reward: instructions scores only the embedded task's prompts; 1 of 2 are not .*use reward_model or none",
    ):
        reward.check_prompts([task.prompt, "Write a poem."])
    with pytest.raises(ValueError, match="^reward: instructions"):  # a generate-data recipe's key
        InstructionReward.check_prompts([[{"role": "user", "content": task.prompt}]], at="reward")
    InstructionReward.check_prompts([task.prompt])
    assert reward.score([task.prompt] * 2, ["x", "y"]).tolist() == [reward(task.prompt, "x"), reward(task.prompt, "y")]


def test_reward_model_scores_in_batches_what_the_model_scores_one_at_a_time(toy_reward_model):
    """Batching (sorted by length, right padding) changes no score: each equals the model's logit on the
    conversation alone, rendered through the chat template."""
    import torch

    rm = RewardModel(RewardModelSpec(model=str(toy_reward_model), batch_size=3))
    pairs = load_records("embedded:paired")[TOY_RM_TRAIN_PAIRS:][:7]
    prompts, answers = (
        [p["prompt"] for p in pairs],
        [p["chosen"] if i % 2 else p["rejected"] + " more words" * i for i, p in enumerate(pairs)],
    )
    conversation = rm.text(prompts[0], answers[0])
    assert conversation.startswith("<|user|>" + prompts[0]) and conversation.endswith(
        "<|assistant|>" + answers[0] + "<|eos|>\n"
    )
    with torch.inference_mode():
        alone = [
            rm.model(**rm.tokenizer(rm.text(p, a), add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
            for p, a in zip(prompts, answers)
        ]
    assert rm.score(prompts, answers) == pytest.approx(alone, abs=1e-4)
    assert score_all(rm, prompts[:2], [answers[:3], answers[3:6]]).shape == (2, 3)


def test_a_trained_reward_model_prefers_the_policys_answers_to_random_strings(toy_reward_model):
    """The toy reward model (trained on the embedded task's labels: its first pairs, and chosen answers against
    their own shuffled characters) ranks the pairs it was trained on, and on the prompts it never saw scores
    the policy's own answers (the data's chosen samples of SmolLM2) above uniformly random strings of letters
    of the same length, by a paired difference whose 95% interval is above 0."""
    rm = make_reward("reward_model", RewardModelSpec(model=str(toy_reward_model)))
    seen, unseen = (
        load_records("embedded:paired")[:TOY_RM_TRAIN_PAIRS],
        load_records("embedded:paired")[TOY_RM_TRAIN_PAIRS:],
    )
    accuracy = np.mean(
        rm.score(*zip(*[(p["prompt"], p["chosen"]) for p in seen]))
        > rm.score(*zip(*[(p["prompt"], p["rejected"]) for p in seen]))
    )
    assert accuracy > 0.8
    rng = random.Random(0)
    junk = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(len(p["chosen"]))) for p in unseen]
    prompts = [p["prompt"] for p in unseen]
    difference = paired_difference(rm.score(prompts, [p["chosen"] for p in unseen]), rm.score(prompts, junk))
    assert difference["ci"][0] > 0, difference
