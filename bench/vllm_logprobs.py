"""What keeping log-probs costs vLLM's generation: the main job's sampled pass with none, with a dict per position,
and with flat lists (what prefbench asks for), alternating, on one engine.

    .venv/bin/python bench/vllm_logprobs.py [RECIPE]

Prints each way's seconds per round and whether the sampled tokens are the same (they must be: log-probs are
read off the sampler, not fed back into it).
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from prefbench import models
    from prefbench.check import load_recipe
    from prefbench.eval.engines import TOP_LOGPROBS, VLLMEngine, prompt_ids, request_seed, stop_ids
    from prefbench.eval.stages import base as eval_run

    recipe = load_recipe(sys.argv[1] if len(sys.argv) > 1 else "recipes/kto_vs_dpo.yaml", [])
    s = recipe.eval.generation.sampling
    prompts = [r["prompt"] for r in eval_run.prompt_records(recipe)]
    path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model.name)
    ids, stops = prompt_ids(tokenizer, prompts), stop_ids(path, tokenizer)
    engine = VLLMEngine(path, max_model_len=recipe.eval.generation.max_model_len)

    def generate(way: str) -> tuple[float, list]:
        kept = {} if way == "none" else {"logprobs": TOP_LOGPROBS, "flat_logprobs": way == "flat"}
        params = [
            SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=0,
                max_tokens=s.max_tokens,
                stop_token_ids=stops,
                seed=request_seed(s.seed, i),
                **kept,
            )
            for i in ids
        ]
        started = time.perf_counter()
        outs = engine.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False)
        return time.perf_counter() - started, [tuple(o.token_ids) for out in outs for o in out.outputs]

    seconds, tokens = {}, {}
    for order in (("none", "dict", "flat"), ("flat", "dict", "none")):
        for way in order:
            took, tokens[way] = generate(way)
            seconds.setdefault(way, []).append(took)
    engine.close()
    for way, took in seconds.items():
        print(f"{way:5s} {' '.join(f'{t:.1f} s' for t in took)}  mean {sum(took) / len(took):.1f} s")
    print(
        f"{len(prompts)} prompts x {s.n} samples; the same tokens every way: {tokens['none'] == tokens['dict'] == tokens['flat']}"
    )


if __name__ == "__main__":
    main()
