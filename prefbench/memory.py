"""How much memory one training unit needs on one device, known before any model loads: weights, gradients,
AdamW's states and the activations a forward keeps for its backward, from the model's configuration (a Llama-style
decoder: Llama, Mistral, Qwen2, SmolLM) and the recipe's training settings. `prefbench check` prints it and refuses
a recipe whose units cannot fit the device memory stated (train.device_memory_gb) or detected (nvidia-smi).

Written here because no library estimates it for prefbench's own loop (accelerate's estimate-memory counts weights
only). tests/test_memory.py holds the estimate to what a CPU run of tiny models measures: the tensors that weights,
gradients and optimizer states hold, and the bytes autograd saves during a forward (saved_tensors_hooks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """The sizes of a Llama-style decoder that memory depends on."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict) -> Shape:
        heads = c["num_attention_heads"]
        return cls(
            c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], heads, c.get("num_key_value_heads") or heads,
            c["intermediate_size"], c.get("head_dim") or c["hidden_size"] // heads, bool(c.get("tie_word_embeddings")),
        )  # fmt: skip

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers, (inputs, outputs)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    def tensors(self, lora_r: int = 0) -> list[int]:
        """The sizes of the tensors that train: every weight (embeddings, each layer's linears and norms, the final
        norm, an untied head), or under LoRA each adapter's A (r x in) and B (out x r)."""
        if lora_r:
            return [n for a, b in self.linears().values() for n in (lora_r * a, b * lora_r)] * self.layers
        layer = [a * b for a, b in self.linears().values()] + [self.hidden] * 2
        head = [self.vocab * self.hidden] * (1 if self.tied else 2)
        return head + layer * self.layers + [self.hidden]

    def parameters(self, lora_r: int = 0) -> int:
        """The model's parameters, or with `lora_r` its LoRA adapters' (on every linear layer: "all-linear")."""
        return sum(self.tensors(lora_r))

    def saved_per_token(self, compute: int, bf16_weights: bool = False, lora_r: int = 0) -> int:
        """Bytes one decoder layer keeps per token for its backward: what autograd saves for each operation, with
        `compute` bytes for what matmuls take and give (2 under bf16 autocast or bf16 weights, else 4). Norms: their
        fp32 input and normalised output, and the matmul's copy of that output (fp32 weights), or the fp32 upcast
        and the bf16 output (bf16 weights); attention: q, k and v before and after the rotary embedding, and its
        output; MLP: gate and up projections, the activation, the product (down_proj's input). LoRA adds each
        adapter's fp32 rank-r output, and under bf16 weights the fp32 copy of each distinct input its adapters
        read (the attention's and the MLP's inputs, o_proj's and down_proj's)."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if bf16_weights:
            norms = 2 * (4 * h + 2 * h)
        else:
            norms = 2 * (4 * h + 4 * h + (compute * h if compute != 4 else 0))
        attention = compute * 2 * (q + 2 * kv) + compute * q
        mlp = compute * 4 * i
        lora = 4 * lora_r * len(self.linears()) + (4 * (2 * h + q + i) if bf16_weights else 0) if lora_r else 0
        return norms + attention + mlp + lora


@dataclass(frozen=True)
class Estimate:
    weights: float  # bytes on one device
    gradients: float
    optimizer: float
    activations: float  # kept from the forward for the backward
    recompute: float = 0.0  # with checkpointing: one layer's activations, alive again during its recompute

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.recompute

    def line(self) -> str:
        names = ("weights", "gradients", "optimizer", "activations", "recompute")
        parts = ", ".join(f"{k} {getattr(self, k) / GIB:.2f}" for k in names if getattr(self, k))
        return f"about {self.total / GIB:.2f} GiB a device ({parts} GiB)"


def estimate(
    shape: Shape,
    *,
    tokens: int,
    completion_tokens: int,
    gpu: bool,
    lora_r: int = 0,
    checkpointing: bool = False,
    shards: int = 1,
    bf16_weights: bool = False,
    eight_bit: bool = False,
    offload: bool = False,
    moving_reference: bool = False,
) -> Estimate:
    """One device's memory for a training step whose forward holds `tokens` tokens, `completion_tokens` of them
    scored: fp32 weights (bf16 with `bf16_weights`, the frozen base too under LoRA), gradients of the trained
    weights' dtype and two fp32 AdamW moments for what trains (8-bit ones with `eight_bit`; none on the device
    with `offload`), split over `shards` under FSDP; activations for the forward's tokens, bf16 autocast on a
    GPU. With checkpointing each layer keeps only its input, and one layer's activations live again during its
    recompute. A moving reference (TR-DPO) adds a copy of the weights, in their dtype.
    The head's logits (fp32, and their log-softmax) for the scored tokens, or one recomputed block of them
    (logprobs.LOGITS_RECOMPUTE_ABOVE, block_elements) when there are more."""
    from prefbench.logprobs import LOGITS_BLOCK_ELEMENTS, LOGITS_BLOCK_ELEMENTS_CUDA, LOGITS_RECOMPUTE_ABOVE

    params, trained = shape.parameters(), shape.parameters(lora_r)  # (without LoRA, every parameter trains)
    w = 2 if bf16_weights else 4  # bytes of a weight; LoRA's adapters stay fp32, and AdamW's moments always are
    weights, gradients = w * params + 4 * trained if lora_r else w * params, 4 * trained if lora_r else w * trained
    weights += w * params if moving_reference else 0
    per_layer = shape.saved_per_token(2 if gpu or bf16_weights else 4, bf16_weights, lora_r)
    activations = tokens * shape.layers * (4 * shape.hidden if checkpointing else per_layer)
    logits = completion_tokens * shape.vocab
    if logits > LOGITS_RECOMPUTE_ABOVE:
        logits = LOGITS_BLOCK_ELEMENTS_CUDA if gpu else LOGITS_BLOCK_ELEMENTS
    activations += logits * (10 if gpu else 8) + tokens * 4 * shape.hidden  # and the final norm's input
    recompute = tokens * per_layer if checkpointing else 0
    optimizer = sum(map(adamw_8bit_bytes, shape.tensors(lora_r))) if eight_bit else 8 * trained
    optimizer = 0 if offload else optimizer  # moments and masters in CPU memory
    return Estimate(weights / shards, gradients / shards, optimizer / shards, float(activations), float(recompute))


def adamw_8bit_bytes(n: int) -> int:
    """bitsandbytes' 8-bit AdamW's states for a tensor of n entries: two fp32 moments under 4096 entries (its
    min_8bit_size), else two uint8 moments, an fp32 scale per block of 256 for each, and two 256-entry fp32 maps."""
    return 8 * n if n < 4096 else 2 * n + 8 * -(-n // 256) + 2 * 256 * 4


def model_shape(path: str | Path) -> Shape | None:
    """The shape in a checkpoint directory's config.json, or None where there is none or it is not a Llama-style
    decoder (no estimate then, and no refusal)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return Shape.from_config(json.loads(config.read_text()))
    except (KeyError, TypeError, ValueError):
        return None


def detected_gib() -> float | None:
    """The first GPU's memory in GiB as nvidia-smi reports it, or None without one (then nothing is refused)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return int(out.stdout.split()[0]) / 1024 if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None
