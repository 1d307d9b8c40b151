"""prefbench.models: specs resolve to plain checkpoints that transformers loads without prefbench."""

import concurrent.futures
import hashlib
import os
import pathlib
import time

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefbench import models

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="session")
def session_cache():
    """The test session's cache (tests/conftest.py), shared with the training tests: SmolLM2 converts once."""
    return pathlib.Path(os.environ["PREFBENCH_CACHE"])


@pytest.fixture(autouse=True)
def cache(session_cache, monkeypatch):
    """Every test uses the session's cache, so the slow builds (above all SmolLM2's conversion) happen once."""
    monkeypatch.setenv("PREFBENCH_CACHE", str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def embedded(session_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFBENCH_CACHE", str(session_cache))
        start = time.perf_counter()
        path = models.resolve(models.EMBEDDED)
        print(f"\nSmolLM2 GGUF -> safetensors conversion: {time.perf_counter() - start:.1f} s")
    return path


def fresh_cache(tmp_path, monkeypatch, name="fresh"):
    monkeypatch.setenv("PREFBENCH_CACHE", str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("preset, vocab", [("head", 49152), ("body", 384), ("small", 384)])
def test_tiny_preset_is_a_plain_checkpoint(preset, vocab):
    path = models.resolve(f"tiny:{preset}")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    assert config.vocab_size == len(tokenizer) == vocab
    assert config.hidden_size // config.num_attention_heads >= 32 and config.head_dim >= 32  # vLLM needs it
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert config.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert "Be brief." in text and "Name a colour." in text
    assert text.rstrip().endswith("assistant") or text.endswith("<|assistant|>")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], vocab) and torch.isfinite(logits).all()


def test_head_and_body_dominated_shapes():
    for preset, embedding_share in [("head", (0.9, 1.0)), ("body", (0.0, 0.05))]:
        info = models.describe(f"tiny:{preset}")
        path = models.resolve(f"tiny:{preset}")
        hidden = AutoModelForCausalLM.from_pretrained(path).config.hidden_size
        share = info["vocab_size"] * hidden / info["parameters"]
        assert embedding_share[0] <= share <= embedding_share[1], (preset, share)


def test_byte_tokenizer_encodes_any_text():
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("tiny:small"))
    text = "Ünïcödé, emoji 🙂, tabs\tand CJK 漢字 — all bytes."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # the trained merges compress English at least a little
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False) == (
        "<|system|>Be brief.<|eos|>\n<|user|>Name a colour.<|eos|>\n"
    )


def test_tiny_is_deterministic_cached_and_keeps_caller_rng(tmp_path, monkeypatch):
    path = models.resolve("tiny:small")
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert models.resolve("tiny:small") == path and weights.stat().st_mtime_ns == mtime  # not rebuilt

    fresh_cache(tmp_path, monkeypatch)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rebuilt = models.resolve("tiny:small")  # a second machine, in effect
    assert torch.equal(torch.rand(3), expected), "building a model changed the caller's random stream"
    assert rebuilt != path and rebuilt.name == path.name
    a, b = safetensors.torch.load_file(weights), safetensors.torch.load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (path / "tokenizer.json").read_bytes() == (rebuilt / "tokenizer.json").read_bytes()


def test_build_is_atomic_and_race_safe(tmp_path, monkeypatch):
    cache = fresh_cache(tmp_path, monkeypatch)

    def crashing_build(preset, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as mp:
        mp.setattr(models, "_build_tiny", crashing_build)
        with pytest.raises(RuntimeError, match="simulated crash"):
            models.resolve("tiny:small")
    assert [p for p in (cache / "models").iterdir() if p.is_dir()] == []  # no half checkpoint left

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(models.resolve, ["tiny:small", "tiny:small"]))
    assert paths[0] == paths[1]
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == [paths[0].name]


def test_embedded_converts_once(embedded):
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in embedded.iterdir()
    }
    mtime = (embedded / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert models.resolve(models.EMBEDDED) == embedded
    assert time.perf_counter() - start < 1.0 and (embedded / "model.safetensors").stat().st_mtime_ns == mtime
    info = models.describe(models.EMBEDDED)
    assert info["source"] == "embedded" and info["vocab_size"] == 49152
    assert 130e6 < info["parameters"] < 140e6  # SmolLM2-135M, lm_head tied to the embeddings


def test_embedded_logits_match_gguf(embedded):
    directory, gguf_file = models._gguf_location()
    gguf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    model, tokenizer = models.load(models.EMBEDDED)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = gguf(ids).logits, model(ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_load_sets_dtype_and_pad_token():
    model, tokenizer = models.load("tiny:small", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and tokenizer.pad_token == "<|pad|>"
    assert model.config._attn_implementation == "sdpa"


def test_local_directory_and_describe():
    path = models.resolve("tiny:small")
    assert models.resolve(str(path)) == path
    info = models.describe(str(path))
    assert info["source"] == "local" and info["path"] == str(path)
    assert info["sha256_of_config"] == hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    tiny = models.describe("tiny:small")
    assert set(tiny) == {"spec", "path", "source", "parameters", "vocab_size", "sha256_of_config"}
    assert tiny["spec"] == "tiny:small" and tiny["source"] == "tiny" and tiny["vocab_size"] == 384
    assert tiny["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        models.resolve(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve(str(tmp_path))  # exists, but holds no checkpoint
    with pytest.raises(ValueError, match="Did you mean 'tiny:small'"):
        models.resolve("tiny:smal")

    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(RuntimeError, match=r"'someone/some-model'.*unreachable.*tiny:small") as error:
        models.resolve("someone/some-model")
    assert "\n" not in str(error.value)
