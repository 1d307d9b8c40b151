"""SequenceLogps against the plain full-logits computation: values and gradients, on both head paths."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import prefbench.logprobs as logprobs
from prefbench.logprobs import SequenceLogps


def full_logits_reference(model, ids, attention, completion):
    logp = model(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
    token = logp[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    return (token * completion[:, 1:]).sum(1)


@pytest.mark.parametrize("path", ["one_piece", "chunked_recomputed"])
def test_sequence_logps_match_full_logits(monkeypatch, path):
    if path == "chunked_recomputed":  # 2 rows per block, and recompute from the first logit
        monkeypatch.setattr(logprobs, "LOGITS_BLOCK_ELEMENTS", 2 * 300)
        monkeypatch.setattr(logprobs, "LOGITS_RECOMPUTE_ABOVE", 0)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128)
    model = LlamaForCausalLM(config).double()
    ids = torch.randint(0, 300, (3, 10))
    attention = torch.ones_like(ids)
    attention[2, 7:] = 0  # right padding
    completion = torch.zeros_like(ids)
    completion[0, 4:], completion[1, 2:6], completion[2, 5:7] = 1, 1, 1
    sums, counts = SequenceLogps(model)(ids, attention, completion)
    assert counts.tolist() == [6, 4, 2]
    (sums * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected = full_logits_reference(model, ids, attention, completion)
    torch.testing.assert_close(sums, expected, rtol=0, atol=1e-10)
    (expected * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=0, atol=1e-10, msg=name)
