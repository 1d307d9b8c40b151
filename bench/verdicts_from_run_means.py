"""The grid's verdicts from a committed report's run means (reports/NAME/results.csv), for reports whose run
directories were not committed: each claim of recipes/NAME.yaml and the comparison at matched KL, with the
statistics of prefbench.stats. Each training run enters as one value (its mean over the prompts), so the
objective x prompt share of a contrast's error is left out: an approximation, quoted as such in docs/claims.md.

    .venv/bin/python bench/verdicts_from_run_means.py [NAME ...]   # default: the four claim and sweep recipes
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from prefbench import stats  # noqa: E402


def first(cell: str) -> float:
    """The mean of a report cell written as 'mean [lo, hi]'."""
    return float(cell.split()[0])


def verdicts(name: str) -> None:
    rows = list(csv.DictReader(open(ROOT / "reports" / name / "results.csv")))
    recipe = yaml.safe_load(open(ROOT / "recipes" / f"{name}.yaml"))
    reward: dict[str, dict[int, float]] = {}
    kl: dict[str, dict[int, float]] = {}
    ref = None
    for r in rows:
        if r["unit"] == "reference":
            ref = first(r["reward"])
            continue
        label, seed = r["unit"].split("/seed")
        reward.setdefault(label, {})[int(seed)] = first(r["reward"])
        kl.setdefault(label, {})[int(seed)] = first(r["KL to ref"])
    tables = {label: np.array([[v[s]] for s in sorted(v)]) for label, v in reward.items()}  # [seeds, 1 "prompt"]
    out = stats.objective_level(tables, np.array([ref]), higher=True)
    err = out["error"]
    print(
        f"== {name}: spreads alike {err['alike']}, pair df {err['pairs']['df']:.2f} of {err['pooled_df']:g}, widest "
        f"{err['widest']}; leader {out['leader']}, best {out['best']}"
    )
    for c in out["vs_reference"]:
        print(
            f"   {c['objective']} - reference {c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] p {c['p_value']:.3g} "
            f"Holm {c['p_holm']:.3g}, could resolve {c['detectable']:.3f}"
        )
    resolved = [c for c in out["pairs"] if c["resolved"]]
    print(f"   pairs resolved: {len(resolved)} of {len(out['pairs'])}")
    found = []
    for claim in recipe.get("claims") or []:
        found.append({"text": claim["text"], **stats.claim_contrast(out, claim["better"], claim["worse"])})
    for f in stats.with_detectable(stats.holm_family(found)):
        print(
            f"   claim {f['text']!r}: {f['difference']:+.3f} [{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}] p {f['p_value']:.3g} "
            f"Holm {f['p_holm']:.3g} df {f['df']:.1f}: {'resolved' if f['resolved'] else 'not resolved'} "
            f"(could resolve {f['detectable']:.3f})"
        )
    groups: dict[str, list] = {}
    for label in reward:  # a sweep's settings pool under the objective's name
        group = label.split("_b")[0] if name == "beta_sweep" else label
        groups.setdefault(group, []).extend((s, kl[label][s], reward[label][s]) for s in reward[label])
    m = stats.matched_kl(groups)
    if m["range"] is None:
        print(f"   matched KL: {m['reason']}")
    for c in m["pairs"]:
        print(
            f"   matched KL {c['a']} - {c['b']}: {c['difference']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] p {c['p_value']:.3g} "
            f"Holm {c['p_holm']:.3g}, df {m['df']}, {sum(r['used'] for r in m['runs'])} of {len(m['runs'])} runs in {m['range']}"
        )


if __name__ == "__main__":
    for name in sys.argv[1:] or ("label_noise", "imbalance", "kto_ablations", "beta_sweep"):
        verdicts(name)
