"""Evaluation metrics: hand-computed statistics, and the KL estimate against an exact enumeration on a
model small enough to list every continuation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from prefbench.eval import metrics as M
from prefbench.eval.generate import Completion, HFEngine, Sampling


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
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                         num_key_value_heads=1, max_position_embeddings=32, eos_token_id=EOS, pad_token_id=EOS,
                         bos_token_id=1, tie_word_embeddings=False)
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


def test_kl_estimate_from_samples_matches_the_exact_kl(tmp_path):
    reference = _tiny(0)
    policy = _tiny(1, base=reference, noise=0.4)
    prompts = [[1, 2], [3, 4, 5], [2]]
    ys = _continuations()
    exact = []
    for prompt in prompts:
        lp = np.array([_exact_logp(policy, prompt, y) for y in ys])
        lq = np.array([_exact_logp(reference, prompt, y) for y in ys])
        assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)  # the list covers every outcome
        exact.append(float((np.exp(lp) * (lp - lq)).sum()))

    policy.save_pretrained(tmp_path / "policy")
    engine = HFEngine()
    engine.load(tmp_path / "policy")
    sampling = Sampling("sampled", n=3000, temperature=1.0, max_tokens=MAX_TOKENS, seed=0)
    gens = engine.generate(prompts, sampling, _Ids(), [EOS])
    stats = M.sequence_stats(policy, prompts, gens, batch_rows=512, reference=reference)
    lp, lq, ent, counts = stats["logp"], stats["ref_logp"], stats["entropy"], stats["tokens"]

    # Sequence log-probs are the exact ones of each sampled continuation, under both models.
    for i in (0, 1):
        y = gens[0][i].token_ids
        assert lp[0, i] == pytest.approx(_exact_logp(policy, prompts[0], y), abs=1e-5)
        assert lq[0, i] == pytest.approx(_exact_logp(reference, prompts[0], y), abs=1e-5)
        assert counts[0, i] == len(y)
    # The per-token KL of one sample, by hand: KL of the two next-token distributions at each of its positions.
    y = gens[2][0].token_ids
    with torch.no_grad():
        p_log = policy(torch.tensor([prompts[2] + list(y)])).logits[0, len(prompts[2]) - 1 : -1].log_softmax(-1)
        q_log = reference(torch.tensor([prompts[2] + list(y)])).logits[0, len(prompts[2]) - 1 : -1].log_softmax(-1)
    assert stats["kl"][2, 0] == pytest.approx(float((p_log.exp() * (p_log - q_log)).sum()), abs=1e-5)
    # Both estimators are unbiased: per prompt within 4 standard errors of the exact KL. (The per-token one
    # need not have the smaller variance: on this 6-token vocabulary it has it on some prompts, not all.)
    for k, prompt in enumerate(prompts):
        assert exact[k] > 0.05  # a KL worth estimating
        monte_carlo, per_token = lp[k] - lq[k], stats["kl"][k]
        for d in (monte_carlo, per_token):
            se = d.std(ddof=1) / math.sqrt(d.size)
            assert abs(d.mean() - exact[k]) < 4 * se, (k, d.mean(), exact[k], se)
        assert (per_token >= -1e-6).all()  # each term is a KL: never negative, unlike log pi - log pi_ref
    # Entropy: the first sample's per-token entropies, summed, from the full distributions.
    y = gens[1][0].token_ids
    with torch.no_grad():
        logits = policy(torch.tensor([prompts[1] + list(y)])).logits[0, len(prompts[1]) - 1 : -1].log_softmax(-1)
    assert ent[1, 0] == pytest.approx(float(-(logits.exp() * logits).sum()), abs=1e-5)
    # Without a reference, no KL fields.
    assert set(M.sequence_stats(policy, prompts[:1], gens[:1], batch_rows=512)) == {"logp", "entropy", "tokens"}


def test_evaluate_checkpoint_on_a_reward_with_known_values(tmp_path):
    """rewards_of, the paired difference and win/tie/loss, on generations chosen by hand."""
    class CountX:  # a reward: half the number of x's in the answer
        def score(self, prompts, texts):
            return np.array([t.count("x") / 2 for t in texts])

    reward = CountX()
    prompts = ["p1", "p2", "p3"]
    pol = [[Completion("xx", (5, 0), "stop"), Completion("x", (5, 0), "stop")], [Completion("", (0,), "stop")] * 2,
           [Completion("x", (5, 0), "stop")] * 2]
    ref = [[Completion("x", (5, 0), "stop")] * 2, [Completion("x", (5, 0), "stop")] * 2, [Completion("x", (5,), "length")] * 2]
    r_pol = M.rewards_of(prompts, pol, reward).mean(1)
    r_ref = M.rewards_of(prompts, ref, reward).mean(1)
    np.testing.assert_allclose(r_pol, [0.75, 0.0, 0.5])
    np.testing.assert_allclose(r_ref, [0.5, 0.5, 0.5])
    wtl = M.win_tie_loss(r_pol, r_ref)
    assert (wtl["win"], wtl["tie"], wtl["loss"]) == (1, 1, 1)

    model = _tiny(0)
    model.save_pretrained(tmp_path / "m")
    out = M.evaluate_checkpoint(tmp_path / "m", tmp_path / "m", prompts, [[1, 2]] * 3, {"sampled": pol},
                                {"sampled": M.rewards_of(prompts, pol, reward)}, {"sampled": M.rewards_of(prompts, ref, reward)},
                                [Sampling("sampled", n=2, temperature=1.0, max_tokens=2)])
    assert out["sampled"]["reward"]["mean"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert out["sampled"]["reward_minus_reference"]["mean"] == pytest.approx((0.25 - 0.5 + 0) / 3)
    assert out["sampled"]["per_sample_reward"] == [[1.0, 0.5], [0.0, 0.0], [0.5, 0.5]]
    assert out["sampled"]["truncated_share"] == 0.0 and out["kl"]["mean"] == 0.0
    assert out["sampled"]["length_tokens"]["mean"] == pytest.approx((2 + 1 + 2) / 3)
