"""The GPU training paths against the plain one, in fp32 on a GPU: padding-free rows through flex attention, Liger's
kernels, torch.compile per decoder layer, and the fused AdamW. Each must give the plain path's log-probs to 1e-5 and
its gradients to 1e-5 of each tensor's largest entry (per token: fp32 sums over long rows round by more). Skipped without a GPU (run on one by bench/gpu_run.sh; the CPU
tests check the same layouts with SDPA's dense masks: tests/test_logprobs.py)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench import kernels
from prefbench.data.batches import collate
from prefbench.data.tokenize import Example
from prefbench.logprobs import SequenceLogps, layout

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def llama(heads: int, kv: int):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32 * heads,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=256,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to("cuda", torch.float32)


def rows_and_examples():
    """Three pairs whose sequences cross flex attention's 128-token blocks, and a prompt-less row: 7 rows over 4
    sequences."""
    g = torch.Generator().manual_seed(2)
    tokens = lambda n: tuple(torch.randint(1, 300, (n,), generator=g).tolist())
    examples = [Example(tokens(150), (tokens(90), tokens(140))), Example(tokens(40), (tokens(200), tokens(7))),
                Example(tokens(5), (tokens(60), tokens(61))), Example((), (tokens(12),))]  # fmt: skip
    rows = [(0, 0, 0), (1, 1, 0), (2, 2, 0), (0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 0)]
    return examples, rows


def logps_and_grads(model, fwd, weights):
    model.zero_grad()
    sums, counts = SequenceLogps(model)(*fwd)
    (sums * weights).sum().backward()
    return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(autouse=True)
def exact_matmuls():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("heads,kv", [(4, 2), (3, 1)])  # flex's GQA path, and the repeated-heads one (not a power of 2)
@pytest.mark.parametrize("setting", ["none", "liger", "compile"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_gpu_path_matches_the_plain_rows(heads, kv, setting, padding_free, monkeypatch):
    import transformers.models.llama.modeling_llama as llama_module

    # Liger swaps the rotary function and the norm and MLP classes module-wide: restored after this test, so the
    # models of the next are plain (a first GPU run without this compiled Liger's modules in the compile case)
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(llama_module, name, getattr(llama_module, name))
    examples, rows = rows_and_examples()
    plain, model = llama(heads, kv), llama(heads, kv)
    chosen = layout(model, True, padding_free, "cuda")
    assert chosen == ("packed" if padding_free else "shared")
    kernels.apply(model, setting, "cuda")
    for batch in (rows, rows[:3], rows):  # another width in between: compiled code must follow the shapes
        weights = torch.linspace(-2, 2, len(batch), device="cuda")
        expected, expected_counts, expected_grads = logps_and_grads(plain, collate(batch, examples, 0, "cuda"), weights)
        fwd = collate(batch, examples, 0, "cuda", chosen)
        assert fwd.input_ids.shape[0] == (1 if padding_free else 3 if len(batch) == 3 else 4)
        got, counts, grads = logps_and_grads(model, fwd, weights)
        assert counts.tolist() == expected_counts.tolist()
        # per token: sums of ~200 fp32 log-probs of -6 carry ~1e-5 of rounding from the kernels' summation order
        torch.testing.assert_close(got / counts, expected / counts, rtol=0, atol=1e-5)
        for name, value in expected_grads.items():
            torch.testing.assert_close(grads[name], value, rtol=0, atol=1e-5 * value.abs().max().item(), msg=name)


def test_fused_adamw_matches_the_loop():
    a, b = llama(4, 2), llama(4, 2)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, fused=fused) for m, fused in ((a, False), (b, True))]
    examples, rows = rows_and_examples()
    fwd = collate(rows, examples, 0, "cuda")
    for _ in range(3):
        for model, opt in zip((a, b), opts):
            opt.zero_grad()
            SequenceLogps(model)(*fwd)[0].sum().backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("setting", ["none", "compile"])
def test_aligned_rows_give_a_sequence_the_same_bf16_logps_whatever_its_neighbours(setting):
    """bf16 autocast, flex attention: example 0's two rows, packed first with every other sequence, then alone,
    then after the others (the reference pass and training pack a sequence with different neighbours). In the
    aligned layout (train.align_packed) its log-probs must be equal to the bit, so DPO's step 1 is exactly log 2.
    (Reported beside it: how far the plain packed layout moves them.)"""
    examples, _ = rows_and_examples()
    model = llama(4, 2)
    assert layout(model, True, True, "cuda", align=True) == "aligned"
    kernels.apply(model, setting, "cuda")
    mine = [(0, 0, 0), (0, 0, 1)]
    others = [(1, 1, 0), (2, 2, 0), (1, 1, 1), (2, 2, 1), (3, 3, 0)]
    spread = {}
    for name in ("aligned", "packed"):
        seen = []
        for batch, at in ((mine + others, slice(0, 2)), (mine, slice(0, 2)), (others + mine, slice(5, 7))):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                seen.append(SequenceLogps(model)(*collate(batch, examples, 0, "cuda", name))[0][at])
        spread[name] = max((s - seen[0]).abs().max().item() for s in seen)
    print(f"largest change of a sequence's bf16 log-prob with its neighbours: {spread}")
    assert spread["aligned"] == 0.0


def test_a_tensor_already_on_the_gpu_moves_as_it_is():
    """to_device pins host tensors for an asynchronous copy; a tensor on the GPU already (a moving reference's
    log-probs, computed in the step: TR-DPO) cannot be pinned and is passed through."""
    from prefbench.data.batches import to_device

    on_gpu = torch.arange(3.0, device="cuda")
    assert to_device(on_gpu, "cuda") is on_gpu
    assert to_device(torch.arange(3.0), "cuda").equal(on_gpu)
