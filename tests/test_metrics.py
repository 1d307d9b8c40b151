"""Evaluation metrics: hand-computed statistics, and the KL and entropy estimates against an exact enumeration
on a model small enough to list every continuation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prefbench.eval import metrics as M
from prefbench.eval.engines import Completion, HFEngine, Sampling


def test_win_tie_loss_counts_ties_as_half():
    out = M.win_tie_loss(np.array([1.0, 0.5, 0.0, 0.5]), np.array([0.5, 0.5, 0.5, 0.0]))
    assert (out["win"], out["tie"], out["loss"]) == (2, 1, 1)
    assert out["win_rate"]["mean"] == (1 + 0.5 + 0 + 1) / 4


def test_distinct_n_and_self_similarity_by_hand():
    texts = ["the sea is blue", "the sea is green"]
    # unigrams: 8 in all, unique {the, sea, is, blue, green} = 5; bigrams: 6, unique 4.
    assert M.distinct_n(texts, 1) == 5 / 8 and M.distinct_n(texts, 2) == 4 / 6
    gens = [[Completion(t, (), "stop") for t in texts], [Completion("a b", (), "stop"), Completion("c d", (), "stop")]]
    # prompt 1: |{the,sea,is}| / |{the,sea,is,blue,green}| = 3/5; prompt 2: 0/4.
    assert M.self_similarity(gens) == pytest.approx((3 / 5 + 0) / 2)


VOCAB, EOS, MAX_TOKENS = 6, 0, 3


def _tiny(seed: int, base=None, noise: float = 0.0):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=32,
        eos_token_id=EOS,
        pad_token_id=EOS,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if base is not None:
                p.copy_(dict(base.named_parameters())[name] + noise * torch.randn(p.shape, generator=g))
            elif p.ndim > 1:
                p.normal_(0.0, 0.6, generator=g)  # peaked next-token distributions, so the KL is not tiny
    return model.eval()


def _exact_logp(model, prompt: list[int], y: tuple[int, ...]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(y)])).logits[0].log_softmax(-1)
    return sum(logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(y))


def _continuations():
    """Every way generation can end within MAX_TOKENS: stopped at EOS, or cut at MAX_TOKENS."""
    other = [t for t in range(VOCAB) if t != EOS]
    ys = []
    for length in range(1, MAX_TOKENS + 1):
        for head in itertools.product(other, repeat=length - 1):
            ys.append(head + (EOS,))
            if length == MAX_TOKENS:
                ys.extend(head + (t,) for t in other)
    return ys


class _Ids:
    """What the engine needs of a tokenizer for a vocabulary without text."""

    pad_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _per_token(model, prompt: list[int], y: tuple[int, ...]) -> torch.Tensor:
    """[len(y), vocab] next-token log-probs of `model` at each position of y after prompt."""
    with torch.no_grad():
        return model(torch.tensor([prompt + list(y)])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)


def _top(c: Completion, k: int) -> Completion:
    """The completion as an engine listing only its k most likely tokens per position would have kept it."""
    return dataclasses.replace(
        c, top_ids=tuple(t[:k] for t in c.top_ids), top_logprobs=tuple(t[:k] for t in c.top_logprobs)
    )


@pytest.mark.integration
def test_kl_and_entropy_from_the_engines_log_probs_match_the_exact_values(tmp_path):
    reference = _tiny(0)
    policy = _tiny(1, base=reference, noise=0.4)
    prompts = [[1, 2], [3, 4, 5], [2]]
    ys = _continuations()
    exact_kl, exact_entropy = [], []
    for prompt in prompts:
        lp = np.array([_exact_logp(policy, prompt, y) for y in ys])
        lq = np.array([_exact_logp(reference, prompt, y) for y in ys])
        assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)  # the list covers every outcome
        exact_kl.append(float((np.exp(lp) * (lp - lq)).sum()))
        exact_entropy.append(float(-(np.exp(lp) * lp).sum()))  # by the chain rule, E[sum_t H_t] along the samples

    policy.save_pretrained(tmp_path / "policy")
    engine = HFEngine()
    engine.load(tmp_path / "policy")
    sampling = Sampling("sampled", n=3000, temperature=1.0, max_tokens=MAX_TOKENS, seed=0)
    gens = engine.generate(prompts, sampling, _Ids(), [EOS])

    # What the engine kept is the policy's own log-probs: of each sampled token, and its top tokens in order
    # (here the whole 6-token vocabulary: the listed tokens cover it, so every term is exact).
    c, prompt = gens[2][0], prompts[2]
    full = _per_token(policy, prompt, c.token_ids)
    np.testing.assert_allclose(c.logprobs, [full[t, tok].item() for t, tok in enumerate(c.token_ids)], atol=1e-5)
    assert [list(ids) for ids in c.top_ids] == full.argsort(-1, descending=True).tolist()
    np.testing.assert_allclose(np.array(c.top_logprobs), full.sort(-1, descending=True).values.numpy(), atol=1e-5)

    # Every token listed: the per-token KL and entropy of a sample, by hand from both models' full distributions.
    q = _per_token(reference, prompt, c.token_ids)
    stats = M.kl_sums(reference, prompts, gens, batch_rows=512)
    assert stats["kl"][2, 0] == pytest.approx(float((full.exp() * (full - q)).sum()), abs=1e-5)
    assert M.entropy_sums(gens)[2, 0] == pytest.approx(float(-(full.exp() * full).sum()), abs=1e-5)
    assert stats["max_diff"].max() > 0.1  # the reference is another model: its log-probs of the listed tokens differ

    # Two tokens listed per position: the rest of the vocabulary is estimated by the sampled token, still unbiased:
    # per prompt within 4 standard errors of the exact KL and sequence entropy, for both listings.
    two = [[_top(c, 2) for c in comps] for comps in gens]
    for listing in (gens, two):
        kl, entropy = M.kl_sums(reference, prompts, listing, batch_rows=512)["kl"], M.entropy_sums(listing)
        for k in range(len(prompts)):
            assert exact_kl[k] > 0.05  # a KL worth estimating
            for values, exact in ((kl[k], exact_kl[k]), (entropy[k], exact_entropy[k])):
                se = values.std(ddof=1) / math.sqrt(values.size)
                assert abs(values.mean() - exact) < 4 * se, (k, values.mean(), exact, se)
    tail = [not any(t == y for t in ids) for comps in two for c in comps for ids, y in zip(c.top_ids, c.token_ids)]
    assert 0.1 < np.mean(tail) < 0.9  # the sampled-tail term was exercised

    # The policy scored against itself (its engine's log-probs and transformers agree): KL 0, no difference.
    itself = M.kl_sums(policy, prompts, gens, batch_rows=512)
    assert np.abs(itself["kl"]).max() < 1e-5 and itself["max_diff"].max() < 1e-4  # fp32: cached vs full forward
    with pytest.raises(ValueError, match="without the engine's log-probs"):
        M.entropy_sums([[Completion("x", (5, 0), "stop")]])


def test_evaluate_checkpoint_on_a_reward_with_known_values(tmp_path):
    """rewards_of, the paired difference and win/tie/loss, on generations chosen by hand."""

    class CountX:  # a reward: half the number of x's in the answer
        def score(self, prompts, texts):
            return np.array([t.count("x") / 2 for t in texts])

    reward = CountX()
    prompts = ["p1", "p2", "p3"]
    pol = [
        [Completion("xx", (5, 0), "stop"), Completion("x", (5, 0), "stop")],
        [Completion("", (0,), "stop")] * 2,
        [Completion("x", (5, 0), "stop")] * 2,
    ]
    ref = [
        [Completion("x", (5, 0), "stop")] * 2,
        [Completion("x", (5, 0), "stop")] * 2,
        [Completion("x", (5,), "length")] * 2,
    ]
    r_pol = M.rewards_of(prompts, pol, reward).mean(1)
    r_ref = M.rewards_of(prompts, ref, reward).mean(1)
    np.testing.assert_allclose(r_pol, [0.75, 0.0, 0.5])
    np.testing.assert_allclose(r_ref, [0.5, 0.5, 0.5])
    wtl = M.win_tie_loss(r_pol, r_ref)
    assert (wtl["win"], wtl["tie"], wtl["loss"]) == (1, 1, 1)

    model = _tiny(0)
    model.save_pretrained(tmp_path / "m")

    def kept(c: Completion) -> Completion:  # with the log-probs an engine serving `model` keeps, every token listed
        full = _per_token(model, [1, 2], c.token_ids)
        order = full.sort(-1, descending=True)
        return dataclasses.replace(
            c,
            logprobs=tuple(full[t, tok].item() for t, tok in enumerate(c.token_ids)),
            top_ids=tuple(map(tuple, order.indices.tolist())),
            top_logprobs=tuple(map(tuple, order.values.tolist())),
        )

    pol = [[kept(c) for c in comps] for comps in pol]
    out = M.evaluate_checkpoint(
        tmp_path / "m",
        tmp_path / "m",
        prompts,
        [[1, 2]] * 3,
        {"sampled": pol},
        {"sampled": M.rewards_of(prompts, pol, reward)},
        {"sampled": M.rewards_of(prompts, ref, reward)},
        [Sampling("sampled", n=2, temperature=1.0, max_tokens=2)],
    )
    assert out["sampled"]["reward"]["mean"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert out["sampled"]["reward_minus_reference"]["mean"] == pytest.approx((0.25 - 0.5 + 0) / 3)
    assert out["sampled"]["per_sample_reward"] == [[1.0, 0.5], [0.0, 0.0], [0.5, 0.5]]
    assert out["sampled"]["truncated_share"] == 0.0 and out["kl"]["mean"] == 0.0
    assert out["sampled"]["length_tokens"]["mean"] == pytest.approx((2 + 1 + 2) / 3)
    # the reference against itself: KL 0 by definition, and its engine check (engine vs transformers) near 0
    check = out["kl"]["engine_check"]
    assert abs(check["kl_to_itself"]["mean"]) < 1e-6 and check["max_token_logp_diff"] < 1e-4
    # entropy per token: a prompt's summed per-token entropies over its summed tokens, from the full distributions
    entropy = lambda c: float(
        -(_per_token(model, [1, 2], c.token_ids).exp() * _per_token(model, [1, 2], c.token_ids)).sum()
    )
    per_prompt = [sum(map(entropy, comps)) / sum(len(c.token_ids) for c in comps) for comps in pol]
    assert out["sampled"]["entropy_per_token"]["mean"] == pytest.approx(np.mean(per_prompt), abs=1e-6)
    # samples not drawn from the policy: no KL and no entropy, each with the reason, and no model is run
    warm = M.evaluate_checkpoint(
        tmp_path / "m",
        tmp_path / "missing",
        prompts,
        [[1, 2]] * 3,
        {"sampled": pol},
        None,
        None,
        [Sampling("sampled", n=2, temperature=0.7, max_tokens=2)],
    )
    assert warm["kl"]["mean"] is None and "temperature 0.7" in warm["kl"]["reason"]
    assert warm["sampled"]["entropy_per_token"]["mean"] is None and "reward" not in warm["sampled"]
