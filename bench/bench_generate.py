"""Generation benchmark: vLLM vs transformers `generate`, and N checkpoints on one engine vs N engine starts.

    .venv/bin/python bench/bench_generate.py [--model smollm2-135m-instruct] [--prompts 16] [--n 4]
                                             [--max-tokens 48] [--checkpoints 3]

Both parts run side by side in one process on the same prompts and sampling, with empty generation
caches, and print ratios (this machine is shared: absolute times move, ratios less so).
A: throughput of the sampled pass (new tokens / generation seconds; engine start excluded, shown apart).
B: N checkpoints of one base (perturbed copies): one generate() call (one engine start, N - 1 in-place
   reloads, each verified against transformers) vs N calls that start an engine each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--checkpoints", type=int, default=3)
    args = ap.parse_args()

    from prefbench import models
    from prefbench.eval.engines import Sampling
    from prefbench.eval.generate import GenerationCache, generate
    from prefbench.task import make_prompts

    base = models.resolve(args.model)
    prompts = [p.prompt for p in make_prompts(args.prompts, "heldout")]
    sampled = Sampling("sampled", args.n, 1.0, 1.0, args.max_tokens, 0)
    tmp = Path(tempfile.mkdtemp(prefix="prefbench-bench-gen-"))
    print(
        f"model {args.model}, {args.prompts} prompts x {args.n} samples, max {args.max_tokens} new tokens, "
        f"torch threads {torch.get_num_threads()}"
    )

    rows = {}
    for engine in ("vllm", "hf"):
        started = time.perf_counter()
        _, st = generate(
            [base], prompts, [sampled], engine=engine, cache=GenerationCache(tmp / f"a-{engine}"), max_model_len=512
        )
        rows[engine] = (
            st.tokens_per_second,
            st.new_tokens,
            st.generate_seconds,
            st.engine_start_seconds,
            time.perf_counter() - started,
        )
    print("\nA. sampled-pass throughput")
    print(f"{'engine':<8}{'tokens/s':>10}{'new tokens':>12}{'gen s':>8}{'start s':>9}{'wall s':>8}")
    for engine, (tps, tok, gs, ss, wall) in rows.items():
        print(f"{engine:<8}{tps:>10.1f}{tok:>12d}{gs:>8.1f}{ss:>9.1f}{wall:>8.1f}")
    print(f"vLLM / transformers throughput: {rows['vllm'][0] / rows['hf'][0]:.2f}x")

    # B: perturbed copies of the base, so each reload really changes the weights.
    model, tokenizer = models.load(args.model)
    paths = [base]
    g = torch.Generator().manual_seed(0)
    for k in range(1, args.checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        out = tmp / f"ckpt{k}"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        paths.append(out)
    del model
    small = [prompts[:8], Sampling("greedy", 1, 0.0, 1.0, 16, 0)]
    started = time.perf_counter()
    _, one = generate(
        paths, small[0], [small[1]], engine="vllm", cache=GenerationCache(tmp / "b-one"), max_model_len=512
    )
    one_wall = time.perf_counter() - started
    started = time.perf_counter()
    starts = 0.0
    for k, path in enumerate(paths):
        _, st = generate(
            [path], small[0], [small[1]], engine="vllm", cache=GenerationCache(tmp / f"b-sep{k}"), max_model_len=512
        )
        starts += st.engine_start_seconds
    sep_wall = time.perf_counter() - started
    print(f"\nB. {args.checkpoints} checkpoints, 8 prompts greedy x 16 tokens each")
    print(
        f"one engine, in-place reloads: wall {one_wall:.1f} s ({one.engine_starts} start {one.engine_start_seconds:.1f} s, "
        f"{one.reloads} reloads, probe max |diff| {one.probe_max_diff:.1e})"
    )
    print(f"one engine per checkpoint:    wall {sep_wall:.1f} s ({args.checkpoints} starts {starts:.1f} s)")
    print(
        f"separate starts / one engine: {sep_wall / one_wall:.2f}x; "
        f"marginal cost of a checkpoint: {(one_wall - one.engine_start_seconds) / args.checkpoints:.1f} s vs {sep_wall / args.checkpoints:.1f} s"
    )


if __name__ == "__main__":
    main()
