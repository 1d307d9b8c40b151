"""AdamW with fp32 moments for bf16 weights (prefbench.optimizer): on fp32 weights it is torch's AdamW to float
rounding, step by step, with weight decay and bias correction; on bf16 weights its moments are fp32 and its weights
stay within bf16 rounding of the fp32 run's."""

from __future__ import annotations

import torch

from prefbench.optimizer import AdamWFp32Moments


def run(optimizer_class, dtype, steps: int = 6):
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3).to(dtype)), torch.nn.Parameter(torch.randn(4).to(dtype))]
    optimizer = optimizer_class(weights, lr=0.05, betas=(0.8, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for w in weights:  # the same gradients for every run (drawn in fp32)
            w.grad = torch.randn(w.shape, generator=g).to(dtype)
        optimizer.step()
    return weights, optimizer


def test_on_fp32_weights_it_is_torchs_adamw():
    ours, _ = run(AdamWFp32Moments, torch.float32)
    theirs, _ = run(torch.optim.AdamW, torch.float32)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_on_bf16_weights_the_moments_are_fp32_and_the_weights_track_the_fp32_run():
    ours, optimizer = run(AdamWFp32Moments, torch.bfloat16)
    exact, _ = run(torch.optim.AdamW, torch.float32)
    for w in ours:
        state = optimizer.state[w]
        assert w.dtype == torch.bfloat16 and state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    for a, b in zip(ours, exact):  # 6 steps of bf16 rounding (relative 2^-8 each) on weights of size ~1
        torch.testing.assert_close(a.float(), b, rtol=0, atol=6 * 2**-8 * 3)
