"""The trainer end to end on a tiny random model: every objective, determinism, resume after a real
kill, data-parallel equivalence under torchrun, LoRA, divergence, bad data (gradient accumulation:
tests/test_invariances.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from prefbench.check import parse_recipe
from prefbench.errors import TrainingError
from prefbench.objectives import OBJECTIVES
from prefbench.runner import train_units

# every objective that trains on a fixed data set (GRPO samples as it trains: tests/test_online.py)
OFFLINE = [name for name, cls in OBJECTIVES.items() if not cls.online_only]

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "prefbench" / "data" / "embedded" / "smoke.jsonl"
REFERENCES = REPO / "tests" / "references" / "trajectories.json"
BIN = Path(sys.executable).parent
TIMING = {"tokens_per_s", "step_seconds", "peak_memory_mb"}


def recipe_dict(out: Path, objectives, **train) -> dict:
    return {
        "name": "t",
        "output_dir": str(out),
        "report_dir": str(out / "reports"),
        "model": {"name": "tiny:small"},
        "data": {"source": str(DATA), "eval_fraction": 0.1, "max_length": 128, "max_prompt_length": 64},
        "objectives": objectives,
        "train": {"steps": 4, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "warmup_ratio": 0.0, **train},
        "seeds": [0],
    }


def metrics(out: Path, label: str, seed: int = 0) -> list[dict]:
    path = out / "t" / label / f"seed{seed}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def all_objectives_run(tmp_path_factory):
    """Every objective trained, with a cache of its own: a run of another test on the same data may have filled the
    shared reference cache already, and this run's reference pass (its timings) is what some tests read."""
    out = tmp_path_factory.mktemp("all")
    recipe = parse_recipe(recipe_dict(out, [{"name": n} for n in OFFLINE]))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFBENCH_CACHE", str(out / "cache"))
        train_units(recipe)
    return out


# Step-1 losses are the closed forms at initialisation (policy = reference) wherever those do not
# depend on the data: a check that the cached reference log-probs match the policy's own.
STEP_ONE = {
    "dpo": math.log(2), "cdpo": math.log(2), "robust": math.log(2), "ipo": 25.0, "hinge": 1.0, "nca_pair": 2 * math.log(2),
    "bco_pair": 2 * math.log(2), "sppo_hard": 2 * 500.0**2, "aot": math.log(2), "aot_unpaired": math.log(2), "apo_zero": 1.0,
    "apo_down": 1.0, "discopop": 0.5 * math.log(2) + 0.5, "sigmoid_norm": math.log(2), "kto": 0.5, "kto_no_z0": 0.5,
    "kto_concave": math.log(2), "kto_risk_neutral": 0.0, "apo_zero_unpaired": 0.5, "bco": math.log(2),
    "fdpo": math.log(2), "ld_dpo": math.log(2), "tr_dpo": math.log(2), "dpop": math.log(2), "beta_dpo": math.log(2), "cal_dpo": math.log(2) + 0.5 * 2 * 500.0**2,
}  # fmt: skip


@pytest.mark.parametrize("name", OFFLINE)
def test_every_objective_trains_end_to_end(all_objectives_run, name):
    out = all_objectives_run
    rows = metrics(out, name)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    if name in STEP_ONE:
        assert rows[0]["loss"] == pytest.approx(STEP_ONE[name], rel=1e-5, abs=1e-5)
    summary = json.loads((out / "t" / name / "seed0" / "summary.json").read_text())
    assert summary["objective"] == name and summary["final"]["step"] == 4
    assert summary["objective_version"] == OBJECTIVES[name].version
    # The checkpoint is a plain Hugging Face directory that transformers loads without prefbench.
    model = AutoModelForCausalLM.from_pretrained(out / "t" / name / "seed0" / "final")
    assert model.config.vocab_size == 384
    # Recorded trajectory: a change to any objective, the loop or the data order shows up here.
    if os.environ.get("PREFBENCH_RECORD"):
        recorded = json.loads(REFERENCES.read_text()) if REFERENCES.exists() else {}
        recorded[name] = [r["loss"] for r in rows]
        REFERENCES.parent.mkdir(exist_ok=True)
        REFERENCES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    reference = json.loads(REFERENCES.read_text()) if REFERENCES.exists() else {}
    assert name in reference, (
        f"no recorded trajectory for {name!r}: run PREFBENCH_RECORD=1 pytest tests/test_train.py -k end_to_end and justify it in the commit"
    )
    assert [r["loss"] for r in rows] == pytest.approx(reference[name], rel=1e-4, abs=1e-5)


def test_manifest_records_provenance_and_the_data_fingerprint(all_objectives_run):
    manifest = json.loads((all_objectives_run / "t" / "manifest.json").read_text())
    assert manifest["recipe"]["model"]["name"] == "tiny:small"
    assert {"torch", "transformers", "prefbench"} <= set(manifest["versions"])
    assert (
        len(manifest["data"]["fingerprint"]) == 64
        and manifest["data"]["train_examples"] + manifest["data"]["eval_examples"] == 24
    )
    assert manifest["data"]["truncation"]["policy"] == "truncate"
    assert manifest["git_commit"] and manifest["hardware"]["world_size"] == 1
    passes = [
        json.loads(line) for line in (all_objectives_run / "t" / "reference" / "timings.jsonl").read_text().splitlines()
    ]
    assert [t["stage"] for t in passes] == ["reference pass"] and passes[0]["seconds"] > 0 and passes[0]["rows"] > 0
    unit = [
        json.loads(line)
        for line in (all_objectives_run / "t" / "dpo" / "seed0" / "timings.jsonl").read_text().splitlines()
    ]
    assert (
        [t["stage"] for t in unit] == ["train"]
        and unit[0]["processes"] == 1
        and unit[0]["device"] == "cpu"
        and unit[0]["host"]
    )


@pytest.mark.parametrize("layout", ["rows", "packed", "aligned"])
def test_shared_prompts_give_every_objectives_first_step(all_objectives_run, tmp_path, monkeypatch, layout):
    """Every objective's first step with each prompt computed once per pair (the default on CPU) and with each
    row its own copy of the prompt, or packed into one row without padding (the GPU default, here with a dense
    mask), or packed with each sequence at a 128-token tile (train.align_packed): the same loss, log-probs and
    gradient norm to 1e-5 (fp32), the reference log-probs included (each layout computes its own cache)."""
    import prefbench.logprobs
    import prefbench.train
    from prefbench import models
    from prefbench.logprobs import shares_prompts

    assert shares_prompts(models.load_model("tiny:small"))  # else both runs would be the plain path
    packed = layout in ("packed", "aligned")
    if packed:
        monkeypatch.setattr(prefbench.logprobs, "PACKED_DEVICES", ("cuda", "cpu"))
        seen = []
        collate = prefbench.train.collate
        monkeypatch.setattr(prefbench.train, "collate", lambda *a, **k: seen.append(a[-1]) or collate(*a, **k))
    objectives = [{"name": n} for n in OFFLINE]
    knobs = dict(steps=1, share_prompts=layout != "rows", align_packed=layout == "aligned")
    train_units(parse_recipe(recipe_dict(tmp_path, objectives, **knobs)))
    if packed:
        assert set(seen) == {layout}
    for name in OFFLINE:
        shared, plain = metrics(all_objectives_run, name)[0], metrics(tmp_path, name)[0]
        assert shared.keys() == plain.keys()
        for key in plain.keys() - TIMING:
            if key == "rewards/accuracies" and abs(plain.get("rewards/margins", 1.0)) < 1e-4:
                continue  # first step: the policy is the reference, margins are rounding noise, and so is their sign
            assert shared[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-5), (name, key)


def test_tr_dpo_moves_its_reference_by_the_rule(tmp_path):
    """A hard copy after every step (mixup_alpha 1, sync_steps 1): each step starts at policy = reference, so every
    step's loss is log 2 although the policy trains. With sync_steps past the run's end the reference never moves,
    and the run is DPO's, its reference computed in the step equal to the cached one (1e-5)."""
    objectives = [
        {"name": "tr_dpo", "label": "hard", "mixup_alpha": 1.0, "sync_steps": 1},
        {"name": "tr_dpo", "label": "still", "sync_steps": 100},
        {"name": "dpo"},
    ]
    train_units(parse_recipe(recipe_dict(tmp_path, objectives)))
    hard = metrics(tmp_path, "hard")
    assert [r["loss"] for r in hard] == pytest.approx([math.log(2)] * 4, abs=1e-6)
    assert hard[-1]["grad_norm"] > 0  # it trains: the gradient at policy = reference is DPO's first one
    still, dpo = without_timing(metrics(tmp_path, "still")), without_timing(metrics(tmp_path, "dpo"))
    for a, b in zip(still, dpo):
        # at step 1 the margins are rounding noise (the cached pass grouped rows otherwise), and so is their sign
        noise = {"rewards/accuracies"} if abs(b["rewards/margins"]) < 1e-4 else set()
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5) for k in b.keys() - noise), (a, b)
    assert dpo[-1]["loss"] < math.log(2) - 1e-3  # the fixed reference lets DPO's loss fall


def test_same_seed_same_data_same_losses(tmp_path):
    for run in ("a", "b"):
        train_units(parse_recipe(recipe_dict(tmp_path / run, [{"name": "dpo"}, {"name": "kto"}])))
    for label in ("dpo", "kto"):
        assert without_timing(metrics(tmp_path / "a", label)) == without_timing(metrics(tmp_path / "b", label))
    fingerprints = {json.loads((tmp_path / r / "t" / "manifest.json").read_text())["data"]["fingerprint"] for r in "ab"}
    assert len(fingerprints) == 1


def test_bf16_weights_train_with_fp32_moments_and_lora_keeps_its_adapters_in_fp32(tmp_path):
    """train.weights: bf16: the saved weights are bf16, the optimizer keeps fp32 moments, and the losses follow the
    fp32 run's to bf16's precision, as they do with train.optimizer: adamw_8bit, and exactly with the optimizer
    offloaded; under LoRA the frozen base is bf16 and the adapters, which train, fp32."""
    from safetensors.torch import load_file

    from prefbench.optimizer import AdamWFp32Moments
    from prefbench.optimizer import make as make_optimizer
    from prefbench.train import _load_model

    settings = {
        "fp32": {}, "bf16": {"weights": "bf16"}, "8bit": {"optimizer": "adamw_8bit"}, "offload": {"optimizer_offload": True},
    }  # fmt: skip
    for name, train in settings.items():
        (tmp_path / name).mkdir()
        train_units(parse_recipe(recipe_dict(tmp_path / name, [{"name": "dpo"}], **train)))
    saved = load_file(tmp_path / "bf16" / "t" / "dpo" / "seed0" / "final" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    losses = {name: [r["loss"] for r in metrics(tmp_path / name, "dpo")] for name in settings}
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.02) and losses["bf16"] != losses["fp32"]
    assert losses["8bit"] == pytest.approx(losses["fp32"], abs=0.02) and losses["8bit"] != losses["fp32"]
    assert losses["offload"] == pytest.approx(losses["fp32"], abs=1e-6)  # the same AdamW, its state elsewhere
    cpu = torch.device("cpu")
    full = parse_recipe(recipe_dict(tmp_path, [{"name": "dpo"}], weights="bf16"))
    lm, _ = _load_model(full, None, cpu)
    assert isinstance(make_optimizer(list(lm.parameters()), full.train, cpu), AdamWFp32Moments)
    lora = parse_recipe(
        {**recipe_dict(tmp_path, [{"name": "dpo"}], weights="bf16"), "model": {"name": "tiny:small", "lora": {"r": 4}}}
    )
    lm, _ = _load_model(lora, None, cpu)
    trained = {p.dtype for p in lm.parameters() if p.requires_grad}
    frozen = {p.dtype for p in lm.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    assert type(make_optimizer([p for p in lm.parameters() if p.requires_grad], lora.train, cpu)) is torch.optim.AdamW


def test_an_objective_trains_at_its_own_settings_and_the_card_and_report_say_so(tmp_path):
    """dpo at its own learning rate and length (constant schedule, no warm-up: every step's rate is the set one),
    kto at the run's: each unit's steps and rates follow its entry, its summary and card record them, and the
    report's settings table sets them side by side."""
    from prefbench.report import write_report

    objectives = [{"name": "dpo", "train": {"lr": 2e-3, "steps": 3}}, {"name": "kto"}]
    train_units(parse_recipe(recipe_dict(tmp_path, objectives, schedule="constant")))
    assert [(r["step"], r["lr"]) for r in metrics(tmp_path, "dpo")] == [(1, 2e-3), (2, 2e-3), (3, 2e-3)]
    assert [(r["step"], r["lr"]) for r in metrics(tmp_path, "kto")] == [(s, 1e-3) for s in (1, 2, 3, 4)]
    summary = json.loads((tmp_path / "t" / "dpo" / "seed0" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["train"]["lr"] == 2e-3 and summary["train"]["schedule"] == "constant"
    report = (write_report(tmp_path / "t", tmp_path / "reports") / "report.md").read_text()
    table = report[report.index("## Settings per objective") :]
    assert "| dpo         | defaults          | 0.002 |       3 |" in table
    assert "| kto         | defaults          | 0.001 |       4 |" in table
    card = (tmp_path / "t" / "dpo" / "seed0" / "final" / "README.md").read_text()
    assert "0.002" in card and "0.001" not in card


def cli(args, env=None, **kw):
    return subprocess.run(
        [str(BIN / "prefbench"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kw,
    )


@pytest.mark.integration
@pytest.mark.parametrize("label", ["dpo", "bco", "tr_dpo"])
def test_a_killed_run_resumes_and_ends_with_the_same_metrics(tmp_path, label):
    """SIGKILL after step 3 (checkpoint at step 2): the same command again redoes step 3 onward and
    ends exactly where an uninterrupted run ends. bco also carries state (its running reward mean), tr_dpo its
    moving reference (moved after every step here)."""
    objectives = [{"name": label, **({"sync_steps": 1} if label == "tr_dpo" else {})}]
    killed = tmp_path / "killed.yaml"
    killed.write_text(yaml.safe_dump(recipe_dict(tmp_path / "k", objectives, steps=6, save_every=2)))
    whole = tmp_path / "whole.yaml"
    whole.write_text(yaml.safe_dump(recipe_dict(tmp_path / "w", objectives, steps=6, save_every=2)))
    args = ["train", str(killed), "--objective", label, "--seed", "0"]
    first = cli(args, env={"PREFBENCH_FAULT_KILL_AT_STEP": "3"})
    assert first.returncode == -9, first.stderr[-2000:]
    assert [r["step"] for r in metrics(tmp_path / "k", label)] == [1, 2, 3]
    assert (tmp_path / "k" / "t" / label / "seed0" / "checkpoint-2" / "COMPLETE").exists()
    second = cli(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert cli(["train", str(whole), "--objective", label, "--seed", "0"]).returncode == 0
    resumed, uninterrupted = metrics(tmp_path / "k", label), metrics(tmp_path / "w", label)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    # Equal to fp32 rounding, not bit for bit: the two processes' first forwards, from the same weights on the
    # same batch, once differed by 4e-7 in a summed log-prob of -331 (MKL's kernels may round differently with
    # memory alignment, which differs between processes). A resume that replayed the wrong data, learning rate
    # or objective state moves these numbers by orders of magnitude more.
    assert len(resumed) == len(uninterrupted)
    for a, b in zip(without_timing(resumed), without_timing(uninterrupted)):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-4) for k in a), (a, b)
    summary = json.loads((tmp_path / "k" / "t" / label / "seed0" / "summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2"
    # Running the finished command again trains nothing.
    again = cli(args)
    assert (
        again.returncode == 0 and "reference log-probs" not in again.stderr and len(metrics(tmp_path / "k", label)) == 6
    )


def torchrun(recipe: Path, label: str) -> subprocess.CompletedProcess:
    args = [
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "prefbench.cli",
        "train",
        str(recipe),
        "--objective",
        label,
        "--seed",
        "0",
    ]
    return subprocess.run(
        [str(BIN / "torchrun"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.integration
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 CPU processes on gloo, each taking half of every step's examples, follow the same loss
    trajectory as one process with the same global batch (KTO's z0 included: the mean over both processes'
    mismatched pairs, as one process computes it over the whole step; and BCO's reward mean, summed over both)."""
    objectives = [{"name": "dpo"}, {"name": "kto"}, {"name": "bco"}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path / "ddp", objectives, micro_batch_size=2)))
    for label in ("dpo", "kto", "bco"):
        run = torchrun(path, label)
        assert run.returncode == 0, run.stderr[-3000:]
    train_units(parse_recipe(recipe_dict(tmp_path / "single", objectives, micro_batch_size=2)))
    for label in ("dpo", "kto", "bco"):
        ddp, single = metrics(tmp_path / "ddp", label), metrics(tmp_path / "single", label)
        assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], abs=2e-5)
        assert [r["grad_norm"] for r in ddp] == pytest.approx([r["grad_norm"] for r in single], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "t" / "dpo" / "seed0" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.integration
def test_torchrun_fsdp2_matches_one_process_and_saves_full_checkpoints(tmp_path):
    """FSDP2 (fully_shard per decoder layer) on 2 CPU processes: the same trajectory, and the final
    checkpoint is gathered into one plain Hugging Face directory."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path / "fsdp", [{"name": "dpo"}], fsdp=True, save_every=2)))
    run = torchrun(path, "dpo")
    assert run.returncode == 0, run.stderr[-3000:]
    train_units(parse_recipe(recipe_dict(tmp_path / "single", [{"name": "dpo"}])))
    sharded, single = metrics(tmp_path / "fsdp", "dpo"), metrics(tmp_path / "single", "dpo")
    assert [r["loss"] for r in sharded] == pytest.approx([r["loss"] for r in single], abs=2e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "t" / "dpo" / "seed0" / "final")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "t" / "dpo" / "seed0" / "final")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=name)


def test_lora_trains_adapters_and_saves_a_merged_plain_checkpoint(tmp_path):
    d = recipe_dict(tmp_path, [{"name": "dpo"}], steps=3)
    d["model"]["lora"] = {"r": 4, "alpha": 8}
    train_units(parse_recipe(d))
    rows = metrics(tmp_path, "dpo")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[-1]["loss"] != rows[0]["loss"]
    final = tmp_path / "t" / "dpo" / "seed0" / "final"
    from safetensors.torch import load_file

    weights = load_file(final / "model.safetensors")
    assert not any("lora" in k for k in weights)
    from prefbench import models

    base = load_file(models.resolve("tiny:small") / "model.safetensors")
    changed = [k for k in base if not torch.equal(base[k], weights[k])]
    assert changed and all("proj" in k for k in changed)  # only the LoRA-wrapped linear layers moved


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    d = recipe_dict(
        tmp_path, [{"name": "kto_risk_neutral"}], steps=8, lr=1e30, max_grad_norm=0.0, save_every=1, schedule="constant"
    )
    with pytest.raises(TrainingError, match=r"stopped before the update\. Last good checkpoint: .*checkpoint-\d+") as e:
        train_units(parse_recipe(d))
    step = int(str(e.value).split(" at step ")[1].split(";")[0])
    ckpt = tmp_path / "t" / "kto_risk_neutral" / "seed0" / f"checkpoint-{step - 1}"
    assert (ckpt / "COMPLETE").exists()
    assert all(torch.isfinite(p).all() for p in AutoModelForCausalLM.from_pretrained(ckpt).parameters())


@pytest.mark.integration
def test_bad_data_is_reported_by_index_through_the_cli(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = DATA.read_text().splitlines()
    bad.write_text(
        "\n".join(
            good[:10]
            + ['{"prompt": "q", "chosen": "", "rejected": "b"}', '{"prompt": "q2", "chosen": "a"}']
            + good[10:]
        )
        + "\n"
    )
    d = recipe_dict(tmp_path, [{"name": "dpo"}])
    d["data"]["source"] = str(bad)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(d))
    run = cli(["run", str(path)])
    assert run.returncode == 2
    assert "10" in run.stderr and "11" in run.stderr and "prefbench: error:" in run.stderr
    d["data"]["on_bad"] = "drop"
    path.write_text(yaml.safe_dump(d))
    assert cli(["run", str(path)]).returncode == 0
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert sorted(i for idx in manifest["data"]["validation"]["bad"].values() for i in idx) == [10, 11]


def test_too_long_records_follow_the_truncation_policy(tmp_path):
    d = recipe_dict(tmp_path / "drop", [{"name": "dpo"}])
    d["data"].update(max_length=40, max_prompt_length=20, truncation="drop", on_bad="fail")
    with pytest.raises(ValueError, match=r"longer than max_length=40 tokens: \d+ record\(s\), e\.g\. index \[\d+"):
        train_units(parse_recipe(d))
    d = recipe_dict(tmp_path / "cut", [{"name": "dpo"}])
    d["data"].update(max_length=40, max_prompt_length=20)
    train_units(parse_recipe(d))
    report = json.loads((tmp_path / "cut" / "t" / "manifest.json").read_text())["data"]["tokenize"]["train"]
    assert report["prompts_truncated"] > 0 and report["dropped"] == {}


@pytest.mark.integration
def test_the_embedded_smollm2_trains(tmp_path):
    """Two DPO steps on the real embedded model (SmolLM2-135M-Instruct, its chat template) on CPU."""
    d = recipe_dict(tmp_path, [{"name": "dpo"}], steps=2, batch_size=2, micro_batch_size=2, lr=1e-5)
    d["model"]["name"] = "smollm2-135m-instruct"
    d["data"]["limit"] = 8
    train_units(parse_recipe(d))
    rows = metrics(tmp_path, "dpo")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert (
        rows[1]["logps_per_token/chosen"] > -6
    )  # an instruct model finds plain answers likely: a working tokenizer and template
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "embedded" and manifest["model"]["vocab_size"] == 49152


def test_a_run_directory_refuses_a_different_recipe_or_changed_data(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(DATA.read_text())
    d = recipe_dict(tmp_path, [{"name": "dpo"}], steps=1)
    d["data"]["source"] = str(data)
    train_units(parse_recipe(d))
    with pytest.raises(TrainingError, match=r"holds a run of a different recipe \(differs in: train\)"):
        train_units(parse_recipe({**d, "train": {**d["train"], "lr": 0.5}}))
    # a run started before a setting existed (its manifest lacks it) goes on: the setting is read at its default
    manifest = tmp_path / "t" / "manifest.json"
    old = json.loads(manifest.read_text())
    del (
        old["recipe"]["tune"],
        old["recipe"]["train"]["snapshot_every"],
        old["recipe"]["train"]["gradient_checkpointing"],
    )
    manifest.write_text(json.dumps(old))
    train_units(parse_recipe(d))
    with pytest.raises(TrainingError, match=r"differs in: train\)"):  # ... at its default only
        train_units(parse_recipe({**d, "train": {**d["train"], "gradient_checkpointing": True}}))
    data.write_text(DATA.read_text().replace(".", "!"))  # every completion changes
    with pytest.raises(TrainingError, match="the training data changed since this run started"):
        train_units(parse_recipe(d))


def test_mismatched_pairs_never_reuse_the_rows_own_prompt():
    """Unpaired data with repeated prompts (e.g. after paired_to_unpaired "both"): rows 0 and 1
    share a prompt, so row 1's mismatched completion must come from row 3's other prompt... cyclically."""
    from prefbench.data.batches import _mismatched
    from prefbench.data.tokenize import Example

    examples = [
        Example((1, 2), ((5,),), True),
        Example((1, 2), ((6,),), False),
        Example((3,), ((7,),), True),
        Example((1, 2), ((8,),), True),
    ]
    rows = [(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 3, 0)]
    assert [_mismatched(rows, j, examples) for j in range(4)] == [(0, 2, 0), (1, 2, 0), (2, 1, 0), (3, 2, 0)]
    with pytest.raises(TrainingError, match="at least two prompts per step"):
        _mismatched(rows[:2], 0, examples)


def test_reference_cache_key_follows_the_weights_and_precision(tmp_path):
    import shutil

    from prefbench import models
    from prefbench.data.prepare import Prepared
    from prefbench.reference import ref_cache_path
    from prefbench.train import latest_checkpoint

    local = tmp_path / "model"
    shutil.copytree(models.resolve("tiny:small"), local)
    recipe = parse_recipe({**recipe_dict(tmp_path, [{"name": "dpo"}]), "model": {"name": str(local)}})
    prepared = Prepared("paired", [], [], {}, "f" * 64, [])
    cpu = torch.device("cpu")
    before = ref_cache_path(recipe, prepared, cpu)
    assert ref_cache_path(recipe, prepared, cpu) == before
    os.utime(local / "model.safetensors", ns=(1, 1))  # rewritten weights, same config
    assert ref_cache_path(recipe, prepared, cpu) != before
    bf16 = parse_recipe({**recipe_dict(tmp_path, [{"name": "dpo"}], dtype="bf16"), "model": {"name": str(local)}})
    assert ref_cache_path(bf16, prepared, cpu) != ref_cache_path(recipe, prepared, cpu)
    # A checkpoint directory left half-renamed by a kill is never taken for a step number.
    (tmp_path / "c" / "checkpoint-4.tmp").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint-4.tmp" / "COMPLETE").touch()
    (tmp_path / "c" / "checkpoint-2").mkdir()
    (tmp_path / "c" / "checkpoint-2" / "COMPLETE").touch()
    assert latest_checkpoint(tmp_path / "c").name == "checkpoint-2"


def test_dropout_in_the_model_config_is_off_while_training(tmp_path):
    """policy = reference at step 1 even for a model whose config asks for attention dropout."""
    import shutil

    from prefbench import models

    local = tmp_path / "model"
    shutil.copytree(models.resolve("tiny:small"), local)
    config = json.loads((local / "config.json").read_text())
    config["attention_dropout"] = 0.5
    (local / "config.json").write_text(json.dumps(config))
    d = recipe_dict(tmp_path, [{"name": "dpo"}], steps=1)
    d["model"]["name"] = str(local)
    train_units(parse_recipe(d))
    row = metrics(tmp_path, "dpo")[0]
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6) and row["lr"] == pytest.approx(1e-3)


def test_real_tokens_counts_what_collate_attends():
    """The step's token count is taken on the host (no GPU sync); it must equal the attention mask's sum."""
    from prefbench.data.batches import collate, real_tokens
    from prefbench.data.tokenize import Example

    examples = [Example((1, 2, 3), ((4, 5), (6,))), Example((7,), ((8, 9, 10, 11), (12, 13)))]
    rows = [(0, 0, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0)]  # (prompt of, completion of, which)
    fwd = collate(rows, examples, pad_id=0, device="cpu")
    assert real_tokens(rows, examples) == int(fwd.attention_mask.sum()) == 5 + 5 + 4 + 2 + 7
    assert fwd.input_ids.shape == (5, 7)  # on CPU the width is the longest row, no rounding
    assert torch.bincount(fwd.rows).tolist() == [2, 4, 1, 1, 4]


def test_token_budget_splits_only_wide_micro_batches_into_length_runs():
    from prefbench.data.batches import _within_budget, padded_tokens, view
    from prefbench.data.prepare import Prepared
    from prefbench.data.tokenize import Example

    # example i: its own prompt of 2 tokens, completions of (i + 1) and 1 tokens -> width i + 3, two rows per pair
    train = [Example((1, 10 + i), (tuple([2] * (i + 1)), (3,))) for i in range(6)]
    prepared = Prepared("paired", train, [], {}, "f", [0] * 6)
    dpo, kto = OBJECTIVES["dpo"](), OBJECTIVES["kto"]()
    # [5, 0, 3, 1]: widths 8, 3, 6, 4 -> 4 pairs x 2 rows x 8 = 64 padded tokens; within 64 nothing is split
    assert _within_budget(dpo, prepared, [5, 0, 3, 1], "both", 64) == [[5, 0, 3, 1]]
    # budget 12, in length order 0 (w3), 1 (w4), 3 (w6), 5 (w8): [0] = 1 x 2 x 3 = 6; [0, 1] = 2 x 2 x 4 = 16 > 12;
    # [1, 3] = 24 > 12; [3, 5] = 32 > 12: so [0] (6), [1] (8), [3] (12), [5] (16: alone, over the budget)
    runs = _within_budget(dpo, prepared, [5, 0, 3, 1], "both", 12)
    assert runs == [[0], [1], [3], [5]]
    assert [padded_tokens(view(dpo, prepared, r, "both").rows, train) for r in runs] == [6, 8, 12, 16]
    # budget 16 over [5, 0, 3, 1, 2]: [0, 1] = 16 fits, [0, 1, 2] = 30 does not; [2, 3] = 24; [3, 5] = 32
    assert _within_budget(dpo, prepared, [5, 0, 3, 1, 2], "both", 16) == [[0, 1], [2], [3], [5]]
    # KTO is cut like any objective: its mismatched pairs come from the whole step, not from the run
    assert _within_budget(kto, prepared, [5, 0, 3, 1], "both", 12) == runs


def test_token_budget_keeps_the_gradient_of_the_step_mean(tmp_path):
    """Splitting micro-batches by a token budget changes which rows share a forward, not the step's
    gradient: losses and grad norms match the unsplit run; the steps really were split."""
    train_units(parse_recipe(recipe_dict(tmp_path / "whole", [{"name": "dpo"}], micro_batch_size=4)))
    train_units(
        parse_recipe(recipe_dict(tmp_path / "split", [{"name": "dpo"}], micro_batch_size=4, max_tokens_per_forward=300))
    )
    whole, split = metrics(tmp_path / "whole", "dpo"), metrics(tmp_path / "split", "dpo")
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], abs=1e-5)
    assert [r["grad_norm"] for r in split] == pytest.approx([r["grad_norm"] for r in whole], rel=1e-4)
    assert [r["tokens"] for r in split] == [r["tokens"] for r in whole]

    from prefbench import models
    from prefbench.data.batches import micro_batches, padded_tokens, schedule
    from prefbench.data.prepare import prepare_data

    recipe = parse_recipe(
        recipe_dict(tmp_path / "split", [{"name": "dpo"}], micro_batch_size=4, max_tokens_per_forward=300)
    )
    prepared = prepare_data(recipe, models.load_tokenizer("tiny:small"))
    plan = schedule([e.length() for e in prepared.train], 4, 4, 0, recipe.train.bucket_batches)
    pieces = [micro_batches(OBJECTIVES["dpo"](), prepared, step, recipe, 0, 1) for step in plan]
    assert sum(len(p) for p in pieces) > len(plan)  # at least one step was split
    assert any(
        len({len(mb.rows) for mb in p}) > 1 for p in pieces
    )  # unequal pieces: the old per-batch mean would differ
    assert all(padded_tokens(mb.rows, prepared.train) <= 300 or len(mb.rows) == 2 for p in pieces for mb in p)


def test_reference_keys_cover_the_layout_training_cuts_by():
    """With a token budget, a step is cut by the tokens of the layout training runs in (shared prompts here); KTO's
    mismatched pairs come from the whole step, so every cut reads the same rows, and the reference keys computed
    before training hold them all."""
    from prefbench import models
    from prefbench.data.batches import micro_batches, schedule
    from prefbench.data.prepare import prepare_data
    from prefbench.reference import reference_keys

    recipe = parse_recipe(
        recipe_dict(Path("/unused"), [{"name": "kto"}], micro_batch_size=4, max_tokens_per_forward=150)
    )
    prepared = prepare_data(recipe, models.load_tokenizer("tiny:small"))
    plan = schedule([e.length() for e in prepared.train], 4, 4, 0, recipe.train.bucket_batches)
    kto = OBJECTIVES["kto"]()
    cut = lambda layout: {
        k
        for step in plan
        for mb in micro_batches(kto, prepared, step, recipe, 0, 1, layout)
        for k in mb.rows + mb.kl_rows
    }
    shared, rows = (
        [[len(mb.rows) for mb in micro_batches(kto, prepared, step, recipe, 0, 1, layout)] for step in plan]
        for layout in ("shared", "rows")
    )
    assert shared != rows  # the budget cuts the two layouts differently here
    assert cut("shared") == cut("rows") == reference_keys(recipe, prepared, recipe.objectives, [0], 1)


def test_a_steps_metrics_reach_the_host_in_one_copy():
    """_read_once: the gradient norm and every metric sum (tensors, or floats an objective gave) in one list, their
    example counts kept, values as float() of each would read them."""
    from prefbench.train import _read_once

    sums = {"loss": (torch.tensor(2.5, dtype=torch.float64), 4), "beta": (0.75, 2), "kl": (torch.tensor([-1.0]), 3)}
    norm, read = _read_once(torch.tensor(0.125), sums)
    assert norm == 0.125 and read == {"loss": (2.5, 4), "beta": (0.75, 2), "kl": (-1.0, 3)}
    assert all(type(v) is float for v, _ in read.values())


def test_the_reference_cache_never_replaces_a_value_units_trained_on(tmp_path):
    """A row whose sum is cached and whose tail is asked later (LD-DPO added to a run) is computed again for its
    tail, but its cached sum stays what earlier units read, in memory and on disk; the tail is the new forward's."""
    from contextlib import nullcontext

    from prefbench.data.tokenize import Example
    from prefbench.recipe import TrainSpec
    from prefbench.reference import RefLogps, tail_key

    examples = [Example((5, 6, 7), ((8, 9, 10, 11), (12, 13)))]
    ref = RefLogps(tmp_path / "ref.pt")
    ref.values = {(0, 0, 0): -123.0}  # a value some unit already trained against
    wanted = {(0, 0, 0), (0, 0, 1), tail_key((0, 0, 0)), tail_key((0, 0, 1))}
    seconds, rows = ref.ensure(wanted, "tiny:small", examples, 0, 4, torch.device("cpu"), nullcontext(), TrainSpec())
    assert rows == 2 and ref.values[(0, 0, 0)] == -123.0
    assert ref.values[tail_key((0, 0, 1))] == 0.0  # the shorter completion of the pair: an empty tail
    assert ref.values[tail_key((0, 0, 0))] < 0 and ref.values[(0, 0, 1)] < 0
    assert torch.load(tmp_path / "ref.pt", weights_only=True)[(0, 0, 0)] == -123.0
