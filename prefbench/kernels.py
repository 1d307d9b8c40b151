"""Fused elementwise work for training on a GPU (`train.kernels`).

Transformers runs a decoder layer's RMSNorm, rotary embedding and SwiGLU as separate element-wise kernels,
each a round trip through GPU memory. Two ways to fuse them, both applied to the model as loaded:

    liger     Liger-Kernel's Triton kernels for RMSNorm, rotary and SwiGLU swapped into the model's modules
              (its fused cross-entropy heads are not used: prefbench's chunked head already reads only completion
              positions). Needs the `liger-kernel` package (`pip install prefbench[gpu]`) and a model type it
              knows; GPU only. It also replaces transformers' rotary function and norm and MLP classes for the
              model type in the whole process (Liger's design): models built later in the same process get them.
    compile   torch.compile on each decoder layer (one compiled graph, reused by every layer). The data-dependent
              work (which positions predict a completion token, the head in chunks) stays outside.
    auto      on a GPU, `AUTO_CUDA` (the faster in bench/bench_gpu.py on an H100; compile where liger is not
              installed); on a CPU, nothing.
    none      the model's own modules.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from prefbench.errors import TrainingError
from prefbench.logprobs import causal_lm

AUTO_CUDA = "compile"  # bench/bench_gpu.py on an H100, 135M shapes: compile 118.7k tokens/s, liger 80.2k (docs/performance.md#on-one-gpu)


def chosen(setting: str, device) -> str:
    """What `setting` means on `device`: liger, compile or none."""
    if setting != "auto":
        return setting
    if torch.device(device).type != "cuda":
        return "none"
    return AUTO_CUDA if AUTO_CUDA != "liger" or importlib.util.find_spec("liger_kernel") else "compile"


def check(setting: str, device) -> None:
    """Refuse a setting this machine cannot run, before any model loads."""
    kind = chosen(setting, device)
    if kind == "liger":
        if torch.device(device).type != "cuda":
            raise TrainingError(
                "train.kernels: liger runs Triton kernels on a GPU only; use compile or none on this machine"
            )
        try:
            import liger_kernel.transformers  # noqa: F401
        except ImportError as err:
            raise TrainingError(
                f"train.kernels: liger needs the liger-kernel package (pip install 'prefbench[gpu]'): {err}"
            ) from None


def apply(lm: nn.Module, setting: str, device) -> str:
    """Apply `setting` to the causal LM `lm` (in place); returns what was applied."""
    kind = chosen(setting, device)
    model = causal_lm(lm)
    if kind == "liger":
        check(setting, device)
        # The per-instance entry point (the one TRL and transformers' Trainer call): it picks the patch for the
        # model's type and swaps this instance's modules (and, by Liger's design, the module-wide classes: above).
        from liger_kernel.transformers.monkey_patch import (
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )

        if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
            raise TrainingError(
                f"train.kernels: liger has no kernels for model type {model.config.model_type!r}; use compile or none"
            )
        _apply_liger_kernel_to_instance(
            model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
        )
    elif kind == "compile":
        for layer in model.get_decoder().layers:
            layer.compile()
    return kind
