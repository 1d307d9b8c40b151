"""The on-policy data builder: pairing, labelling and statistics by hand, the generate-data command end to
end on a tiny model, its recipe's validation, and the dataset that ships with the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from prefbench.check import load_datagen
from prefbench.cli import main
from prefbench.data.load import EMBEDDED_DATA
from prefbench.errors import RecipeError
from prefbench.eval.prompts import load_prompts
from prefbench.eval.rewards import InstructionReward
from prefbench.onpolicy import build_preferences
from prefbench.recipe import PromptSpec


def test_pairs_are_best_vs_worst_ties_dropped_and_labels_use_the_threshold():
    prompts = ["p1", "p2", "p3"]
    texts = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    rewards = np.array([[0.5, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 1.0, 1.0]])
    paired, unpaired, stats = build_preferences(prompts, texts, rewards, desirable_at_least=0.5)
    assert paired == [
        {"prompt": "p1", "chosen": "b", "rejected": "c", "reward_chosen": 1.0, "reward_rejected": 0.0},
        {
            "prompt": "p3",
            "chosen": "h",
            "rejected": "g",
            "reward_chosen": 1.0,
            "reward_rejected": 0.0,
        },  # first of the best
    ]
    assert [u["label"] for u in unpaired] == [True, True, False, True, True, True, False, True, True]
    assert stats["prompts_dropped_as_ties"] == 1 and stats["pairs"] == 2 and stats["desirable"] == 7
    assert stats["mean_reward"] == pytest.approx(rewards.mean()) and stats["mean_margin"] == 1.0
    assert stats["reward_histogram"] == {"0": 2, "0.5": 4, "1": 3}
    # With a floor on the chosen answer: p1's best (1.0) and p3's best (1.0) pass 1.0; a floor above drops both.
    assert len(build_preferences(prompts, texts, rewards, 0.5, min_chosen_reward=1.0)[0]) == 2
    kept, _, s2 = build_preferences(
        prompts, texts, np.array([[0.2, 0.1, 0.0], [0.5, 0.5, 0.5], [0.0, 1.0, 1.0]]), 0.5, 0.5
    )
    assert [p["prompt"] for p in kept] == ["p3"] and s2["pairs_dropped_weak_chosen"] == 1


def test_prompts_from_a_file_or_the_embedded_task(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "one"}\n\n{"prompt": "two"}\n{"prompt": "three"}\n')
    assert load_prompts(PromptSpec(file=str(f), n=2)) == ["one", "two"]
    f.write_text('{"prompt": "one"}\n{"text": "two"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_prompts(PromptSpec(file=str(f), n=5))
    train = load_prompts(PromptSpec(split="train", n=5))
    assert len(train) == 5 and train == load_prompts(PromptSpec(split="train", n=5))  # fixed seed


def test_a_bad_datagen_recipe_lists_every_problem(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"reward": "instruction", "generation": {"sampling": {"temperature": 0, "top_p": 2}}}))
    with pytest.raises(RecipeError) as e:
        load_datagen(f)
    text = str(e.value)
    assert "reward: unknown reward 'instruction'" in text and "did you mean 'instructions'" in text
    assert "sampling.temperature: must be > 0" in text and "sampling.top_p" in text and "out: required" in text


def test_generate_data_end_to_end_on_a_tiny_model(tmp_path, capsys):
    recipe = tmp_path / "data.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "tiny:small",
                "reward": "instructions",
                "desirable_at_least": 0.5,
                "out": str(tmp_path / "out"),
                "generation": {
                    "engine": "hf",
                    "prompts": {"split": "train", "n": 6},
                    "sampling": {"n": 3, "max_tokens": 12},
                },
            }
        )
    )
    assert main(["generate-data", str(recipe)]) == 0
    out = tmp_path / "out"
    stats = json.loads((out / "stats.json").read_text())
    unpaired = [json.loads(line) for line in (out / "unpaired.jsonl").read_text().splitlines()]
    paired = [json.loads(line) for line in (out / "paired.jsonl").read_text().splitlines()]
    assert stats["prompts"] == 6 and stats["samples"] == 18 and len(unpaired) == 18 and len(paired) == stats["pairs"]
    # The stored rewards are the reward function's values of the stored texts.
    reward = InstructionReward()
    for u in unpaired:
        assert u["reward"] == reward(u["prompt"], u["completion"]) and u["label"] == (u["reward"] >= 0.5)
    assert "pairs" in capsys.readouterr().out
    assert stats["model"]["path"] is None and stats["engine"].startswith("hf-")


def test_the_shipped_dataset_is_consistent_with_its_rewards_and_recipe():
    stats = json.loads((EMBEDDED_DATA / "stats.json").read_text())
    paired = [json.loads(line) for line in (EMBEDDED_DATA / "paired.jsonl").read_text().splitlines()]
    unpaired = [json.loads(line) for line in (EMBEDDED_DATA / "unpaired.jsonl").read_text().splitlines()]
    reward = InstructionReward()
    assert len(paired) == stats["pairs"] > 100 and len(unpaired) == stats["unpaired"] == stats["samples"]
    for p in paired:
        assert (
            reward(p["prompt"], p["chosen"])
            == p["reward_chosen"]
            > p["reward_rejected"]
            == reward(p["prompt"], p["rejected"])
        )
    threshold = stats["desirable_at_least"]
    assert all(u["label"] == (reward(u["prompt"], u["completion"]) >= threshold) for u in unpaired)
    assert 0.05 < stats["desirable_share"] < 0.95  # both classes present: room to learn, room to improve
    assert stats["model"]["spec"] == load_datagen("recipes/embedded_data.yaml").model


def test_held_out_prompts_of_the_recipes_own_data(tmp_path, toy_reward_model):
    """prompts.source: data takes the distinct prompts of the split the trainer holds out, in the data's order,
    in their own form (chat messages here), each with its first desirable completion as the chosen answer;
    with need_chosen, a prompt with only undesirable completions is left out. The reward model and the judge's
    text form take such prompts."""
    from prefbench.data.load import load_records, prompt_key, train_eval_split
    from prefbench.eval.prompts import load_prompt_records, prompt_text
    from prefbench.eval.rewards import RewardModel
    from prefbench.recipe import DataSpec, RewardModelSpec

    rows = []
    for i in range(20):
        prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Name a colour, {i}."}]
        rows += [
            {"prompt": prompt, "completion": "Red.", "label": i % 3 != 0},
            {"prompt": prompt, "completion": f"Blue {i}.", "label": True}
            if i % 2
            else {"prompt": prompt, "completion": "No.", "label": False},
        ]
    source = tmp_path / "u.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataSpec(source=str(source), format="unpaired", eval_fraction=0.5, split_seed=3)
    _, held_out = train_eval_split(load_records(str(source)), 0.5, 3)
    keys = list(dict.fromkeys(prompt_key(r["prompt"]) for r in held_out))
    expected_chosen = {
        k: next((r["completion"] for r in held_out if prompt_key(r["prompt"]) == k and r["label"]), None) for k in keys
    }

    records = load_prompt_records(PromptSpec(source="data", n=100), data)
    assert [prompt_key(r["prompt"]) for r in records] == keys and len(keys) == 10
    assert [r.get("chosen") for r in records] == [expected_chosen[k] for k in keys]
    assert None in expected_chosen.values()  # some held-out prompt has no desirable completion
    kept = load_prompt_records(PromptSpec(source="data", n=100), data, need_chosen=True)
    assert [prompt_key(r["prompt"]) for r in kept] == [k for k in keys if expected_chosen[k] is not None]
    assert len(load_prompt_records(PromptSpec(source="data", n=3), data)) == 3

    first = records[0]["prompt"]
    assert (
        prompt_text(first) == "system: Be brief.\n\nuser: " + first[1]["content"]
        and prompt_text(first[1:]) == first[1]["content"]
    )
    rm = RewardModel(RewardModelSpec(model=str(toy_reward_model)))
    assert rm.text(first, "Red.").startswith("<|system|>Be brief.")
    assert np.isfinite(rm.score([r["prompt"] for r in records], ["Red."] * len(records))).all()
