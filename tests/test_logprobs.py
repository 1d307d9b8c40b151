"""SequenceLogps against the plain full-logits computation: values and gradients, on both head paths; and the
shared-prompt forward (each prompt once, its completions after it) against each row run on its own."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import prefbench.logprobs as logprobs
from prefbench.data.batches import ALIGN_BLOCK, collate, dense_mask, padded_tokens, sequences, tail_cut
from prefbench.data.tokenize import Example
from prefbench.logprobs import SequenceLogps, shares_prompts


def tiny_llama(attention: str = "sdpa", dtype=torch.float64):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config).to(dtype)


def tiny_mistral(attention: str = "sdpa", dtype=torch.float32, window: int = 6):
    """Every layer attends to its last `window` positions only: shorter than the test's sequences (up to 16 tokens),
    so the window decides what a token sees."""
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, sliding_window=window,
    )  # fmt: skip
    config._attn_implementation = attention
    return MistralForCausalLM(config).to(dtype)


MODELS = {"llama": tiny_llama, "mistral_window6": tiny_mistral}


def full_logits_reference(model, ids, attention, completion):
    logp = model(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
    token = logp[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    return (token * completion[:, 1:]).sum(1)


def gradients(model, sums, weights):
    model.zero_grad()
    (sums * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("path", ["one_piece", "chunked_recomputed"])
def test_sequence_logps_match_full_logits(monkeypatch, path):
    if path == "chunked_recomputed":  # 2 rows per block, and recompute from the first logit
        monkeypatch.setattr(logprobs, "LOGITS_BLOCK_ELEMENTS", 2 * 300)
        monkeypatch.setattr(logprobs, "LOGITS_RECOMPUTE_ABOVE", 0)
    model = tiny_llama()
    ids = torch.randint(0, 300, (3, 10))
    # row 0: prompt 4, completion 6; row 1: prompt 2, completion 4, then 4 unscored tokens; row 2: 5 + 2, padded to 10
    examples = [Example(tuple(ids[0, :4].tolist()), (tuple(ids[0, 4:].tolist()),)), Example(tuple(ids[1, :2].tolist()), (tuple(ids[1, 2:6].tolist()),)),
                Example(tuple(ids[2, :5].tolist()), (tuple(ids[2, 5:7].tolist()),))]  # fmt: skip
    rows = [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
    sums, counts = SequenceLogps(model)(*collate(rows, examples, 0, "cpu"))
    assert counts.tolist() == [6, 4, 2]
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    ours = gradients(model, sums, weights)
    attention = torch.ones_like(ids)
    attention[1, 6:], attention[2, 7:] = 0, 0
    completion = torch.zeros_like(ids)
    completion[0, 4:], completion[1, 2:6], completion[2, 5:7] = 1, 1, 1
    expected = full_logits_reference(model, ids * attention, attention, completion)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-10)
    theirs = gradients(model, expected, weights)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-10, msg=name)
    # WPO's square mass: sum over each completion's positions of log sum_v p_v^2, from the same full logits; the
    # log-probs and their gradients unchanged beside it, and no gradient through it
    with_mass, counts_again, mass = SequenceLogps(model, square_mass=True)(*collate(rows, examples, 0, "cpu"))
    logp = model(input_ids=ids * attention, attention_mask=attention).logits.log_softmax(-1)[:, :-1]
    expected_mass = (torch.logsumexp(2 * logp, -1) * completion[:, 1:]).sum(1)
    torch.testing.assert_close(mass, expected_mass, rtol=0, atol=1e-10)
    assert not mass.requires_grad and counts_again.tolist() == [6, 4, 2]
    torch.testing.assert_close(with_mass, sums, rtol=0, atol=0)
    for name, grad in gradients(model, with_mass, weights).items():
        torch.testing.assert_close(grad, ours[name], rtol=0, atol=1e-10, msg=name)


def shared_prompt_rows():
    """Two pairs, one with a longer prompt; an unpaired row repeating pair 0's prompt (shared too); a row whose
    prompt is another example's (KTO's mismatched pairs); rows out of prompt order."""
    g = torch.Generator().manual_seed(1)
    tokens = lambda n: tuple(torch.randint(1, 300, (n,), generator=g).tolist())
    p0, p1 = tokens(5), tokens(9)
    examples = [Example(p0, (tokens(4), tokens(7))), Example(p1, (tokens(3), tokens(1))), Example(p0, (tokens(6),))]
    rows = [(0, 0, 0), (1, 1, 0), (0, 0, 1), (1, 1, 1), (2, 2, 0), (1, 0, 1)]
    return examples, rows


@pytest.mark.parametrize("layout", ["rows", "shared", "packed", "aligned"])
def test_tail_sums_are_the_log_probs_past_the_pairs_shorter_completion(layout):
    """LD-DPO's tails in every layout: a row's tail sum equals its whole sum minus the sum of the same row with its
    completion cut to the pair's shorter scored length (an independent forward of the shortened row), with
    gradient; whole sums and counts as without tails."""
    model = MODELS["llama"]("sdpa", torch.float32)
    examples, rows = shared_prompt_rows()
    sums, counts, tails = SequenceLogps(model)(*collate(rows, examples, 0, "cpu", layout, tails=True))
    plain, plain_counts = SequenceLogps(model)(*collate(rows, examples, 0, "cpu", layout))
    torch.testing.assert_close(sums, plain, rtol=0, atol=0)
    assert counts.tolist() == plain_counts.tolist()
    cut = [tail_cut(k, examples) for k in rows]
    assert cut == [4, 1, 4, 1, 6, 4]  # pairs (4, 7) and (3, 1) tokens; example 2 alone; row 5: example 0's pair
    shortened = [Example(examples[p].prompt, (examples[c].completions[w][:k],)) for (p, c, w), k in zip(rows, cut)]
    heads, _ = SequenceLogps(model)(*collate([(i, i, 0) for i in range(len(rows))], shortened, 0, "cpu"))
    torch.testing.assert_close(tails, sums - heads, rtol=0, atol=1e-5)
    assert tails.requires_grad and tails[[0, 3, 4]].abs().max() < 1e-6  # its pair's shorter (0, 3), or no pair (4)


def test_shared_prompts_layout():
    examples, rows = shared_prompt_rows()
    seqs = sequences(rows, examples, share=True)
    assert [indices for _, _, indices in seqs] == [[0, 2, 4], [1, 3, 5]]  # by prompt tokens, rows in order
    fwd = collate(rows, examples, 0, "cpu", layout="shared")
    assert fwd.input_ids.shape == (2, 5 + 4 + 7 + 6) and fwd.attention_mask.shape == (2, 2, 22)
    # pair 1's sequence: prompt 9, then completions of 3, 1 and (mismatched) 7 tokens; 2 padding
    mask = dense_mask(fwd.attention_mask)[1, 0]
    assert (
        mask[9:12, :9].all()
        and mask[12, 9:12].sum() == 0
        and mask[13:20, 9:13].sum() == 0
        and mask[20:, :20].sum() == 0
    )
    assert fwd.position_ids[1, :20].tolist() == list(range(9)) + [9, 10, 11] + [9] + list(range(9, 16))
    # the first token of each completion is read from the prompt's last position (8), the others from the one before
    first = fwd.predict_at[fwd.rows == 3]
    assert first.tolist() == [1 * 22 + 8]
    assert fwd.predict_at[fwd.rows == 1].tolist() == [22 + 8, 22 + 9, 22 + 10]
    # without sharing: one sequence per row, a 2-D padding mask, no position ids
    plain = collate(rows, examples, 0, "cpu")
    assert plain.input_ids.shape == (6, 9 + 7) and plain.attention_mask.shape == (6, 16) and plain.position_ids is None
    # nothing to share: the plain layout
    assert collate([(0, 0, 0), (1, 1, 0)], examples, 0, "cpu", layout="shared").attention_mask.dim() == 2


def test_packed_layout():
    """The shared sequences one after another in one row: same positions and masks per sequence, no padding."""
    examples, rows = shared_prompt_rows()
    shared = collate(rows, examples, 0, "cpu", layout="shared")
    fwd = collate(rows, examples, 0, "cpu", layout="packed")
    assert fwd.input_ids.shape == (1, 22 + 20) and fwd.attention_mask.shape == (
        1,
        2,
        42,
    )  # sequences of 22 and 20 tokens
    assert fwd.input_ids[0].tolist() == shared.input_ids[0].tolist() + shared.input_ids[1, :20].tolist()
    assert fwd.position_ids[0].tolist() == shared.position_ids[0].tolist() + shared.position_ids[1, :20].tolist()
    assert fwd.attention_mask[0, 0].tolist() == [0] * 22 + [1] * 20  # each token's sequence
    # the second sequence's reads move by its offset in the row (22), not by a row of the padded batch
    assert fwd.predict_at[fwd.rows == 1].tolist() == [22 + 8, 22 + 9, 22 + 10]
    assert fwd.targets.tolist() == shared.targets.tolist() and fwd.rows.tolist() == shared.rows.tolist()
    mask, shared_mask = dense_mask(fwd.attention_mask)[0, 0], dense_mask(shared.attention_mask)[:, 0]
    assert mask[:22, :22].equal(shared_mask[0]) and mask[22:, 22:].equal(shared_mask[1, :20, :20])
    assert not mask[22:, :22].any()  # no sequence sees another
    # on a GPU the row rounds up to a multiple of 64, the tail padding its own sequence (-1)
    assert (
        padded_tokens(rows, examples, "packed") == 42
        and padded_tokens(rows, examples, "shared") == 44
        and padded_tokens(rows, examples) == 6 * 16
    )


def test_aligned_rows_keep_every_attention_tile_to_one_sequence():
    """The aligned layout puts each sequence at a multiple of ALIGN_BLOCK (128): sequences of 22 and 20 tokens take
    128 positions each, the same tokens and positions as packed, shifted. Cut into 128 x 128 tiles (flex
    attention's blocks), the mask lets a tile's queries read keys of their own tile column only: no tile holds two
    sequences' work, so a sequence's attention sums run in the same order whatever its neighbours (the bf16
    exactness tests/test_gpu_paths.py checks on a GPU). The gap padding attends to itself only."""
    examples, rows = shared_prompt_rows()
    packed = collate(rows, examples, 0, "cpu", layout="packed")
    fwd = collate(rows, examples, 0, "cpu", layout="aligned")
    assert fwd.input_ids.shape == (1, 2 * ALIGN_BLOCK) and padded_tokens(rows, examples, "aligned") == 256
    ids, at = fwd.input_ids[0], fwd.position_ids[0]
    assert ids[:22].equal(packed.input_ids[0, :22]) and ids[128:148].equal(packed.input_ids[0, 22:])
    assert at[:22].equal(packed.position_ids[0, :22]) and at[128:148].equal(packed.position_ids[0, 22:])
    assert fwd.attention_mask[0, 0].tolist() == [0] * 128 + [1] * 128  # the gap belongs to its sequence
    assert fwd.attention_mask[0, 1, 22:128].eq(-1).all() and fwd.attention_mask[0, 1, 148:].eq(-1).all()
    shift = torch.where(packed.predict_at >= 22, 128 - 22, 0)
    assert fwd.predict_at.equal(packed.predict_at + shift) and fwd.targets.equal(packed.targets)
    mask = dense_mask(fwd.attention_mask)[0, 0]
    tiles = mask.view(2, ALIGN_BLOCK, 2, ALIGN_BLOCK).any(-1).any(1)  # [query tile, key tile]
    assert tiles.tolist() == [[True, False], [False, True]]
    gap = torch.arange(22, 128)
    assert not mask[gap][:, :22].any() and mask[gap, gap].all()


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("layout", ["shared", "packed", "aligned"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompts_give_each_rows_own_logps_and_gradients(attention, layout, kind):
    """fp32, both attention implementations that take the mask, full attention and a sliding window: the
    shared-prompt forward gives the plain one's log-probs to 1e-5 and its gradients to 1e-5 of each tensor's
    largest entry (summation order differs: the prompt's gradient arrives once, summed over its completions,
    instead of once per row)."""
    model = MODELS[kind](attention, torch.float32)
    assert shares_prompts(model)
    examples, rows = shared_prompt_rows()
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])
    plain, plain_counts = SequenceLogps(model)(*collate(rows, examples, 0, "cpu"))
    plain_grads = gradients(model, plain, weights)
    shared, shared_counts = SequenceLogps(model)(*collate(rows, examples, 0, "cpu", layout=layout))
    shared_grads = gradients(model, shared, weights)
    assert shared_counts.tolist() == plain_counts.tolist() == [4, 3, 7, 1, 6, 7]
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    for name, expected in plain_grads.items():
        torch.testing.assert_close(
            shared_grads[name], expected, rtol=0, atol=1e-5 * expected.abs().max().item(), msg=name
        )
    stats = logprobs.completion_stats(model, collate(rows, examples, 0, "cpu", layout=layout))
    expected = logprobs.completion_stats(model, collate(rows, examples, 0, "cpu"))
    for name in expected:
        torch.testing.assert_close(stats[name], expected[name], rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(expected["logp"], plain.detach(), rtol=0, atol=1e-5)

    def listed(fwd):  # log-probs of tokens listed per position (the KL's reference pass), by row, positions in order
        ids = torch.stack([fwd.targets, torch.zeros_like(fwd.targets), torch.full_like(fwd.targets, 5)], 1)
        order = torch.argsort(fwd.rows, stable=True)
        return logprobs.completion_logps_at(model, fwd, ids)[order], fwd.rows[order]

    (values, owners), (expected_values, expected_owners) = (
        listed(collate(rows, examples, 0, "cpu", layout=layout)),
        listed(collate(rows, examples, 0, "cpu")),
    )
    assert owners.tolist() == expected_owners.tolist()
    torch.testing.assert_close(values, expected_values, rtol=0, atol=1e-5)
    # the first column lists each completion's own tokens: it sums to the completion's log-prob
    torch.testing.assert_close(
        torch.zeros(len(rows), dtype=values.dtype).index_add(0, owners, values[:, 0]),
        expected["logp"],
        rtol=0,
        atol=1e-5,
    )


def test_shared_prompts_only_where_the_attention_takes_the_mask():
    from types import SimpleNamespace

    model = lambda **config: SimpleNamespace(config=SimpleNamespace(**config))
    assert shares_prompts(model(_attn_implementation="sdpa", sliding_window=None))
    assert not shares_prompts(model(_attn_implementation="flash_attention_2"))  # its kernels take no 4-D mask
    # one sliding window in every layer: the mask carries it (Mistral's configs name no layer types)
    assert shares_prompts(model(_attn_implementation="sdpa", sliding_window=4))
    assert logprobs.attention_window(model(sliding_window=4).config) == 4
    both = ["full_attention", "sliding_attention"]
    assert shares_prompts(model(_attn_implementation="sdpa", sliding_window=4, layer_types=[both[0]] * 2))
    assert logprobs.attention_window(model(sliding_window=4, layer_types=[both[0]] * 2).config) is None
    assert not shares_prompts(model(_attn_implementation="sdpa", sliding_window=4, layer_types=both))


def test_the_sliding_window_decides_what_a_shared_prompt_token_sees():
    """Without the window in the mask the shared forward of the sliding model would be a full-attention one: its
    log-probs differ from the model's own (rows) by far more than the tolerance the windowed mask meets."""
    model = tiny_mistral()
    examples, rows = shared_prompt_rows()
    with torch.no_grad():
        plain, _ = SequenceLogps(model)(*collate(rows, examples, 0, "cpu"))
        model.config.sliding_window = None  # the same weights, read as full attention
        full, _ = SequenceLogps(model)(*collate(rows, examples, 0, "cpu", layout="shared"))
    assert (full - plain).abs().max() > 1e-3


@pytest.mark.parametrize("kind", MODELS)
def test_packed_rows_through_flex_attention(kind):
    """Flex attention with the BlockMask of a packed batch (the GPU path; forward only: PyTorch's flex attention has
    no backward on CPU, the GPU check runs it, bench/gpu_check.py) gives each row's own log-probs to 1e-5 in fp32,
    with full attention and with a sliding window."""
    model = MODELS[kind]("sdpa", torch.float32)
    examples, rows = shared_prompt_rows()
    with torch.no_grad():
        plain, _ = SequenceLogps(model)(*collate(rows, examples, 0, "cpu"))
        model.set_attn_implementation("flex_attention")
        assert shares_prompts(model)
        packed, _ = SequenceLogps(model)(*collate(rows, examples, 0, "cpu", layout="packed"))
    torch.testing.assert_close(packed, plain, rtol=0, atol=1e-5)


def test_layout_follows_the_device_and_the_settings():
    model = tiny_llama("sdpa", torch.float32)
    assert logprobs.layout(model, True, True, "cpu") == "shared"  # no padding-free rows on a CPU
    assert logprobs.layout(model, False, True, "cpu") == "rows"
    assert model.config._attn_implementation == "sdpa"


def test_compiled_layers_give_the_eager_logps_and_gradients():
    """train.kernels: compile (torch.compile per decoder layer, here on CPU's inductor) against the eager model, fp32,
    shared prompts: log-probs and gradients to 1e-5."""
    from prefbench import kernels

    examples, rows = shared_prompt_rows()
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])
    eager = tiny_llama("sdpa", torch.float32)
    compiled = tiny_llama("sdpa", torch.float32)
    assert kernels.apply(compiled, "compile", "cpu") == "compile"
    for fwd in (
        collate(rows, examples, 0, "cpu", layout="shared"),
        collate(rows[:2], examples, 0, "cpu", layout="shared"),
    ):  # two widths
        expected = SequenceLogps(eager)(*fwd)[0]
        got = SequenceLogps(compiled)(*fwd)[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        w = weights[: len(expected)]
        theirs, ours = gradients(eager, expected, w), gradients(compiled, got, w)
        for name, value in theirs.items():
            torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-5 * value.abs().max().item(), msg=name)


def test_kernels_refused_where_they_cannot_run():
    from prefbench import kernels
    from prefbench.errors import TrainingError

    assert kernels.chosen("auto", "cpu") == "none" and kernels.chosen("auto", "cuda") in ("liger", "compile")
    with pytest.raises(TrainingError, match="GPU only"):
        kernels.check("liger", "cpu")
    kernels.check("compile", "cpu")
    kernels.check("auto", "cpu")
