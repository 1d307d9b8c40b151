"""The optimizer a unit trains with (`make`): torch's AdamW; AdamWFp32Moments for weights held in bf16
(train.weights: bf16), its two moments in fp32, 12 bytes a parameter (bf16 weight and gradient, two fp32 moments)
instead of 16; OffloadedAdamW (train.optimizer_offload); bitsandbytes' 8-bit AdamW (train.optimizer: adamw_8bit).

AdamWFp32Moments is written here because torch.optim.AdamW keeps its moments in the weights' dtype (bf16 moments
lose the small second-moment values) and torchao's optimizers that keep fp32 moments run on CUDA only, where the
CPU tests cannot hold them to torch's arithmetic. Its update is torch's AdamW (decoupled weight decay,
bias-corrected moments), computed in fp32 from the bf16 weight and gradient; the new weight is then rounded to
bf16 (tests/test_optimizer.py: equal to torch.optim.AdamW on fp32 weights).
"""

from __future__ import annotations

import torch


class AdamWFp32Moments(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                weight, grad = p.float(), p.grad.float()
                weight.mul_(1 - lr * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denominator = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
                weight.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - b1**t))
                p.copy_(weight)
        return loss


class OffloadedAdamW(torch.optim.Optimizer):
    """torch's AdamW with its moments and fp32 master weights in CPU memory (train.optimizer_offload): the device
    keeps only the weights and their gradients. Each step copies the gradients to the CPU, steps AdamW there on the
    masters, and copies the weights back (rounded to their dtype: with bf16 weights the masters keep fp32's
    precision). For units whose optimizer states do not fit the device; the update then runs at the CPU's speed.

    Written here because torch has no offloading optimizer and torchao's runs on CUDA only, where the CPU tests
    cannot hold it to torch's arithmetic (tests/test_optimizer.py holds this one to it)."""

    def __init__(self, params, **adamw):
        self.weights = list(params)
        self.masters = [w.detach().to("cpu", torch.float32, copy=True) for w in self.weights]
        self.inner = torch.optim.AdamW(self.masters, **adamw)
        super().__init__(self.weights, self.inner.defaults)
        self.param_groups = self.inner.param_groups  # the schedule sets the learning rate here
        self.state = self.inner.state

    @torch.no_grad()
    def step(self, closure=None):
        for w, m in zip(self.weights, self.masters):
            m.grad = None if w.grad is None else w.grad.to("cpu", torch.float32)
        self.inner.step()
        for w, m in zip(self.weights, self.masters):
            w.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for w in self.weights:
            if set_to_none:
                w.grad = None
            elif w.grad is not None:
                w.grad.zero_()

    def state_dict(self) -> dict:
        return {"adamw": self.inner.state_dict(), "masters": [m.clone() for m in self.masters]}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["adamw"])
        self.param_groups, self.state = self.inner.param_groups, self.inner.state  # loading made new ones
        for m, saved in zip(self.masters, state["masters"]):
            m.copy_(saved)


def make(params, t, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of a training unit's `params` at train settings `t`: OffloadedAdamW (train.optimizer_offload),
    bitsandbytes' 8-bit AdamW
    (train.optimizer: adamw_8bit: its moments quantized in blocks of 256, tensors under 4096 entries kept in fp32);
    else torch's AdamW (fused on a GPU: one kernel for every parameter's update, the same arithmetic to rounding),
    or AdamWFp32Moments where the trained weights are bf16."""
    if t.optimizer_offload:
        return OffloadedAdamW(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    if t.optimizer == "adamw_8bit":
        import bitsandbytes  # deferred: an optional dependency (pip install prefbench[optim])

        return bitsandbytes.optim.AdamW8bit(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    if any(p.dtype == torch.bfloat16 for p in params):
        return AdamWFp32Moments(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    return torch.optim.AdamW(
        params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay, fused=device.type == "cuda"
    )
