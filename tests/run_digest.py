"""What a run directory computed, for tests that check two runs computed the same (a killed and an uninterrupted
run, a launched and a serial one)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def digest(root: Path) -> dict[str, object]:
    """Each file's computed content (final weights by hash), without what says how it was computed (timings,
    throughput, memory, cache hits)."""
    out: dict[str, object] = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if f.name == "model.safetensors" and f.parent.name == "final":
            out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
        elif f.name in (
            "eval_preference.json",
            "eval_generation.json",
            "answers.jsonl",
            "vs_reference.json",
            "eval_claims.json",
            "eval_objectives.json",
        ):
            out[rel] = f.read_text()
        elif f.name == "eval_judge.json":
            comparisons = json.loads(f.read_text())["comparisons"]
            out[rel] = {
                k: {m: c[m] for m in ("wins", "ties", "losses", "unscored", "win_rate")} for k, c in comparisons.items()
            }
        elif f.name == "verdicts.jsonl":
            out[rel] = [
                {k: v for k, v in json.loads(line).items() if k != "cached"} for line in f.read_text().splitlines()
            ]
        elif f.parent.name == "benchmarks" and f.name.endswith("shot.json"):
            out[rel] = json.loads(f.read_text())["metrics"]
        elif f.name == "metrics.jsonl":
            out[rel] = [
                {k: v for k, v in json.loads(line).items() if not any(w in k for w in ("second", "per_s", "memory"))}
                for line in f.read_text().splitlines()
            ]
    return out
