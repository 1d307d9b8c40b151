"""The memory estimate (prefbench.memory) against what a CPU run of tiny models holds: the bytes of the weights,
gradients and AdamW states after a real step, and the bytes autograd saves during the forward for the backward
(every saved tensor's storage once, weights left out), within 15% in every configuration: three shapes (MHA and
GQA, wide and narrow MLPs, small and large vocabularies), gradient checkpointing, LoRA, and bf16 weights (alone and under LoRA)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prefbench.data.batches import collate
from prefbench.data.tokenize import Example
from prefbench.logprobs import SequenceLogps
from prefbench.memory import Shape, estimate
from prefbench.optimizer import make as make_optimizer
from prefbench.recipe import TrainSpec

SHAPES = {
    "mha": dict(vocab_size=384, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024),
    "gqa": dict(vocab_size=384, hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "vocab": dict(vocab_size=4000, hidden_size=192, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, intermediate_size=384),
}  # fmt: skip


def measured(
    config: dict,
    rows: int,
    length: int,
    checkpointing: bool = False,
    lora: int = 0,
    bf16: bool = False,
    optimizer: str = "adamw",
) -> dict[str, float]:
    """One training step (fp32, or bf16 weights) of a random model on `rows` rows of `length` tokens (half prompt,
    half completion), with the optimizer prefbench trains with."""
    torch.manual_seed(0)
    c = LlamaConfig(**config)
    c._attn_implementation = "sdpa"
    model = LlamaForCausalLM(c).to(torch.bfloat16 if bf16 else torch.float32).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora, lora_alpha=2 * lora, target_modules="all-linear"))
    weights = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    g = torch.Generator().manual_seed(1)
    tokens = lambda n: tuple(torch.randint(1, config["vocab_size"], (n,), generator=g).tolist())
    examples = [Example(tokens(length // 2), (tokens(length // 2),)) for _ in range(rows)]
    forward = collate([(i, i, 0) for i in range(rows)], examples, 0, "cpu")
    trained = [p for p in model.parameters() if p.requires_grad]
    settings = TrainSpec(lr=1e-3, optimizer=optimizer)
    optimizer = make_optimizer(trained, settings, torch.device("cpu"))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        sums, _ = SequenceLogps(model)(*forward)
    sums.sum().backward()
    optimizer.step()
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    return {
        "weights": size(model.parameters()),
        "gradients": size(p.grad for p in trained),
        "optimizer": size(
            v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0
        ),
        "activations": sum(saved.values()),
        "tokens": forward.input_ids.numel(),
        "completion_tokens": int(forward.targets.numel()),
    }


@pytest.mark.parametrize(
    "name, checkpointing, lora, bf16",
    [("mha", False, 0, False), ("gqa", False, 0, False), ("vocab", False, 0, False), ("gqa", True, 0, False),
     ("mha", False, 8, False), ("mha", False, 0, True), ("gqa", False, 8, True)],
)  # fmt: skip
def test_the_estimate_is_within_15_percent_of_a_measured_step(name, checkpointing, lora, bf16):
    got = measured(SHAPES[name], rows=4, length=64, checkpointing=checkpointing, lora=lora, bf16=bf16)
    e = estimate(
        Shape.from_config(SHAPES[name]), tokens=got["tokens"], completion_tokens=got["completion_tokens"], gpu=False,
        lora_r=lora, checkpointing=checkpointing, bf16_weights=bf16,
    )  # fmt: skip
    assert e.weights == got["weights"] and e.gradients == got["gradients"] and e.optimizer == got["optimizer"]
    assert e.activations == pytest.approx(got["activations"], rel=0.15), (e.activations, got["activations"])
    if checkpointing:  # the one layer a recompute keeps: what a layer keeps without checkpointing, measured so
        shape, full = Shape.from_config(SHAPES[name]), measured(SHAPES[name], rows=4, length=64)
        plain = estimate(shape, tokens=got["tokens"], completion_tokens=got["completion_tokens"], gpu=False)
        outside_layers = plain.activations - got["tokens"] * shape.layers * shape.saved_per_token(4)
        assert e.recompute == pytest.approx((full["activations"] - outside_layers) / shape.layers, rel=0.15)
    else:
        assert e.recompute == 0
        kept = sum(got[k] for k in ("weights", "gradients", "optimizer", "activations"))
        assert e.total == pytest.approx(kept, rel=0.15)


def test_the_shape_counts_the_models_parameters():
    for config in SHAPES.values():
        for tied in (True, False):
            model = LlamaForCausalLM(LlamaConfig(**config, tie_word_embeddings=tied))
            assert Shape.from_config({**config, "tie_word_embeddings": tied}).parameters() == sum(
                p.numel() for p in model.parameters()
            )


def test_check_refuses_a_unit_that_does_not_fit_the_stated_device_in_one_line(tmp_path, capsys):
    """tiny:body (4.3M parameters: 17 MB of fp32 weights, 69 MB with gradients and AdamW states) against a stated
    device of 0.01 GiB: refused before any training, naming what lowers it; 1 GiB passes, and check prints the
    estimate. LoRA trains 2% of the parameters, so its states shrink accordingly."""
    import yaml

    from prefbench.check import memory_estimate, parse_recipe
    from prefbench.cli import main
    from prefbench.errors import RecipeError

    raw = {
        "name": "fit", "output_dir": str(tmp_path), "model": {"name": "tiny:body"},
        "data": {"source": "embedded:smoke", "max_length": 128, "max_prompt_length": 64},
        "objectives": [{"name": "dpo"}], "train": {"micro_batch_size": 4, "batch_size": 8, "device_memory_gb": 0.01},
    }  # fmt: skip
    from prefbench import models

    assert memory_estimate(parse_recipe({**raw, "train": {"micro_batch_size": 4}}, lookups=True))[0] is None or (
        models.built("tiny:body") is not None
    )  # check builds no model: no estimate before the model is on the machine
    models.resolve("tiny:body")
    with pytest.raises(RecipeError) as refused:
        parse_recipe(raw, lookups=True)
    (line,) = refused.value.problems
    assert line.startswith("train: a training unit needs about 0.") and "more than the device's 0.01 GiB" in line
    assert "model.lora, train.gradient_checkpointing" in line
    fits = {**raw, "train": {**raw["train"], "device_memory_gb": 1}}
    full, limit = memory_estimate(parse_recipe(fits, lookups=True))
    body = Shape.from_config({**SHAPES["mha"], "tie_word_embeddings": True})  # tiny:body's shape
    assert limit == 1 and full.weights == full.gradients == 4 * body.parameters() and full.optimizer == 2 * full.weights
    lora, _ = memory_estimate(parse_recipe({**fits, "model": {"name": "tiny:body", "lora": {"r": 8}}}, lookups=True))
    assert lora.optimizer < 0.05 * full.optimizer and lora.gradients < 0.05 * full.gradients
    offloaded, _ = memory_estimate(parse_recipe({**fits, "train": {**fits["train"], "optimizer_offload": True}}))
    assert offloaded.optimizer == 0 and offloaded.weights == full.weights
    with pytest.raises(RecipeError, match="optimizer_offload: with optimizer adamw and without fsdp only"):
        parse_recipe({**fits, "train": {**fits["train"], "optimizer_offload": True, "optimizer": "adamw_8bit"}})
    (path := tmp_path / "r.yaml").write_text(yaml.safe_dump(fits))
    assert main(["check", str(path)]) == 0
    line = f"a training unit needs {full.line()} of 1 GiB"
    assert f"prefbench: memory: {line}" in capsys.readouterr().err and full.line().startswith("about 0.13 GiB")


@pytest.mark.parametrize("lora", [0, 8])
def test_the_8bit_optimizers_states_are_counted_to_the_byte(lora):
    """train.optimizer: adamw_8bit (bitsandbytes, on the CPU here): its states for every trained tensor, as the
    estimate counts them (2 bytes an entry, block scales and maps; fp32 moments for tensors under 4096 entries)."""
    got = measured(SHAPES["gqa"], rows=2, length=32, lora=lora, optimizer="adamw_8bit")
    e = estimate(
        Shape.from_config(SHAPES["gqa"]), tokens=got["tokens"], completion_tokens=got["completion_tokens"], gpu=False,
        lora_r=lora, eight_bit=True,
    )  # fmt: skip
    assert e.optimizer == got["optimizer"]
    if not lora:  # a full fine-tune's states at under 30% of fp32 AdamW's (LoRA's small adapters stay fp32)
        assert e.optimizer < 0.3 * 8 * (got["gradients"] / 4)


def test_a_moving_reference_adds_one_copy_of_the_weights():
    """TR-DPO's reference in memory: the estimate's weights grow by the model's parameters in their dtype."""
    shape = Shape.from_config(SHAPES[next(iter(SHAPES))])
    for bf16 in (False, True):
        fixed = estimate(shape, tokens=256, completion_tokens=128, gpu=False, bf16_weights=bf16)
        moving = estimate(shape, tokens=256, completion_tokens=128, gpu=False, bf16_weights=bf16, moving_reference=True)
        assert moving.weights - fixed.weights == (2 if bf16 else 4) * shape.parameters()
        assert (moving.gradients, moving.activations) == (fixed.gradients, fixed.activations)
