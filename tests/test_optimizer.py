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


def test_the_offloaded_adamw_is_torchs_adamw_and_resumes_from_its_state():
    """train.optimizer_offload (moments and fp32 masters in CPU memory; on this CPU the copies are the same
    device's): on fp32 weights it is torch's AdamW exactly, step by step, with a learning-rate schedule acting on
    it; on bf16 weights the weights are the fp32 run's rounded to bf16 (the masters keep fp32's precision). A state
    saved after 3 steps and loaded into a new one continues as if never stopped."""
    from prefbench.optimizer import OffloadedAdamW

    def run(cls, dtype, steps=6, stop_at=None):
        torch.manual_seed(0)
        start = [torch.randn(5, 3), torch.randn(4)]  # bf16-representable, so that every run starts alike
        weights = [torch.nn.Parameter(w.to(torch.bfloat16).to(dtype)) for w in start]
        make = lambda: cls(weights, lr=0.05, betas=(0.8, 0.95), weight_decay=0.1)
        optimizer = make()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
        g = torch.Generator().manual_seed(1)
        for step in range(steps):
            if step == stop_at:
                saved = optimizer.state_dict()
                optimizer = make()
                optimizer.load_state_dict(saved)
                schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s), last_epoch=step - 1)
            for w in weights:  # bf16-representable gradients, the same for every run
                w.grad = torch.randn(w.shape, generator=g).to(torch.bfloat16).to(dtype)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            assert all(w.grad is None for w in weights)
        return weights

    exact = run(torch.optim.AdamW, torch.float32)
    for ours in (run(OffloadedAdamW, torch.float32), run(OffloadedAdamW, torch.float32, stop_at=3)):
        for a, b in zip(ours, exact):
            assert torch.equal(a, b)
    for a, b in zip(run(OffloadedAdamW, torch.bfloat16), exact):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16))
