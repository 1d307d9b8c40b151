"""Every interval and test prefbench reports: one bootstrap, one p-value rule, objective-level intervals across
seeds and prompts and the objectives' contrasts, Holm, exact binomial intervals, McNemar, and the length-adjusted win rate. Evaluation stores what these return; reports only format it.

The unit of resampling is whatever the caller passes one value per: a held-out prompt (its samples averaged
first), a benchmark document, or a judged prompt with all its pairs. Draws are seeded, so a stored result
and the report rendered from it reproduce to the digit.

Why the bootstrap is written here rather than taken from `scipy.stats.bootstrap`: scipy's percentile
interval is the same estimator, but its resampling draws differ from the ones every stored result was
computed with; keeping our draws keeps old results and new runs comparable to the digit. The tests check
that the two agree within Monte Carlo error. Holm is written here because scipy has no Holm correction
(statsmodels has, but is a large dependency for ten lines).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import expit, ndtri, stdtr, stdtrit
from scipy.stats import binomtest

N_BOOT = 2000
LEVEL = 0.95
POWER = 0.8  # the power a "detectable" difference and a planned design are stated at
SLOPE_RIDGE = 1e-3  # keeps the length slope of the LC fit finite when lengths separate the outcomes


def resample(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n] indices drawn with replacement: the one bootstrap every interval here uses."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentile(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    return float(np.quantile(replicates, (1 - level) / 2)), float(np.quantile(replicates, (1 + level) / 2))


def bootstrap_ci(values, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; NaN with fewer than two values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return (float("nan"), float("nan"))
    return _percentile(x[resample(x.size, n_boot, seed)].mean(1), level)


def estimate(values) -> dict:
    """{"mean", "ci": [lo, hi], "n"} of one value per resampling unit."""
    x = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(x)
    return {"mean": float(x.mean()) if x.size else float("nan"), "ci": [lo, hi], "n": int(x.size)}


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "the mean is 0" from bootstrap replicates of the mean: twice the smaller count on
    either side of 0, each side counting the observed sample once ((k + 1) / (B + 1)), capped at 1. It is never
    0: with B replicates the smallest p it can give is 2 / (B + 1)."""
    below, above = int((replicates <= 0).sum()), int((replicates >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (replicates.size + 1))


def paired_difference(x, y, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """mean(x - y) over the same units, its percentile interval and bootstrap_p, from one set of draws."""
    d = np.asarray(x, float) - np.asarray(y, float)
    if d.size == 0:
        raise ValueError("no unit to compare: both sides are empty")
    means = d[resample(d.size, n_boot, seed)].mean(1)
    lo, hi = _percentile(means, level) if d.size >= 2 else (float("nan"), float("nan"))
    return {"difference": float(d.mean()), "ci": [lo, hi], "p_value": bootstrap_p(means), "n": int(d.size)}


def family_n_boot(m: int, level: float = LEVEL) -> int:
    """Bootstrap replicates for a family of m tests: bootstrap p-values are multiples of 1 / (B + 1), so Holm's
    strictest level (1 - level) / m needs B to grow with m (40 replicates' worth below that level)."""
    return max(N_BOOT, math.ceil(40 * m / (1 - level)))


def across_seeds(table, level: float = LEVEL, n_boot: int = N_BOOT) -> dict:
    """The mean of a [seeds, prompts] table (one objective's values, or a contrast between two objectives paired
    on seed and prompt: seeds are shared, so seed k of both saw the same examples in the same order), with an
    interval that holds for a new training run, not only for these checkpoints.

    Model: value[s, p] = mu + seed effect a_s + prompt effect b_p + residual, all three random (a crossed
    random-effects model). Var(mean) = sigma_a^2 / S + sigma_b^2 / P + sigma_e^2 / (S P). From the two-way
    ANOVA without replication, MS_seeds / (S P) estimates the first and last terms together, on S - 1 degrees
    of freedom, and (MS_prompts - MS_residual) / (S P) the middle one, on many; the standard error is the root
    of their sum (the second floored at 0), and the t quantile takes the seeds' S - 1 degrees of freedom, the
    fewest of the two parts: for a sum of independent mean squares that is conservative whatever their ratio
    (the minimum-df bound of the Behrens-Fisher problem). Why not Satterthwaite's degrees of freedom: they are
    estimated from the same few seeds, and where those happen to agree the degrees of freedom rise just when the
    standard error is too small; in null simulations with 3 seeds that doubled the false alarms at Holm's
    smaller levels (p < 0.05 / 6: 1.5-3.9% instead of 0.83%). The price: where seeds do not matter the interval
    is wider than it needs to be (t on 2 degrees of freedom with 3 seeds); more seeds is the remedy. Why not a
    bootstrap over seeds: a handful of distinct draws cannot show the t tail few seeds imply. With one seed,
    seed variance cannot be estimated: the prompt bootstrap of paired_difference describes that training run
    only (`seed_variance` False).

    Returns {"difference", "ci", "p_value", "n_seeds", "n_prompts", "df", "seed_variance"}; p is the t test's,
    floored at the smallest positive float (never 0)."""
    x = np.asarray(table, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected a [seeds, prompts] table, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the [seeds, prompts] table holds NaN or infinite values")
    n_seeds, n_prompts = x.shape
    if n_seeds == 1:
        single = paired_difference(x[0], np.zeros(n_prompts), n_boot=n_boot, level=level)
        return single | {"n_seeds": 1, "n_prompts": n_prompts, "df": None, "seed_variance": False}
    grand = x.mean()
    ms_seeds = n_prompts * ((x.mean(1) - grand) ** 2).sum() / (n_seeds - 1)
    se = float(np.sqrt(ms_seeds / (n_seeds * n_prompts) + _prompt_part(x)))
    return _t_test(float(grand), se, float(n_seeds - 1), level) | {"n_seeds": n_seeds, "n_prompts": n_prompts}


def _t_test(diff: float, se: float, df: float, level: float) -> dict:
    """{"difference", "ci", "p_value", "df", "seed_variance"} of a t test of `diff` against 0: the interval and
    p on df degrees of freedom, p floored at the smallest positive float (never 0). se 0: every value is the
    same; a nonzero constant is a difference no seed or prompt varies (resolved)."""
    # scipy.special's t quantile and cdf (what scipy.stats.t.ppf and .sf call): the simulations call this thousands
    # of times, and a frozen scipy.stats distribution costs a millisecond to build
    half = float(stdtrit(df, (1 + level) / 2)) * se
    p = float(2 * stdtr(df, -abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return {
        "difference": diff,
        "ci": [diff - half, diff + half],
        "p_value": max(p, np.finfo(float).tiny),
        "df": df,
        "seed_variance": True,
    }


def across_seed_groups(a, b, level: float = LEVEL) -> dict:
    """mean(a) - mean(b) for two [seeds, prompts] tables on the same prompts whose seeds are not paired (a candidate
    trained with other seeds against a stored baseline's), with each side's own seed variance in the interval.

    Model as in across_seeds, each side with its own training runs: Var = v_a / S_a + v_b / S_b + the
    prompt-level part, v the variance of one training run's mean over these prompts, estimated on each side
    from its own run means (S - 1 degrees of freedom each), never pooled: a candidate whose runs vary more than
    the baseline's (KTO's KL across seeds 12.7 / 11.5 / 8.1 against re-weighted KTO's 4.5 / 5.1 / 5.9) would
    borrow the baseline's steadiness (pooled, a candidate 3x as variable gave 24% false alarms). t on Welch and
    Satterthwaite's degrees of freedom. The prompt-level part is the variance over prompts of the per-prompt
    difference of seed means less its residual share, floored at 0, over P (prompt main effects cancel: the
    prompts are shared). Needs 2 seeds on each side: with one, that side's run-to-run variation is unknown."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise ValueError(f"expected two [seeds, prompts] tables on the same prompts, got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("one seed on a side: its run-to-run variation cannot be estimated")
    n_prompts = a.shape[1]

    def resid_ss(x):  # the seeds x prompts residual's sum of squares of one table
        return ((x - x.mean(1)[:, None] - x.mean(0)[None, :] + x.mean()) ** 2).sum()

    share_a, share_b = a.mean(1).var(ddof=1) / a.shape[0], b.mean(1).var(ddof=1) / b.shape[0]
    df_resid = (a.shape[0] - 1 + b.shape[0] - 1) * (n_prompts - 1)
    ms_resid = (resid_ss(a) + resid_ss(b)) / df_resid
    per_prompt = a.mean(0) - b.mean(0)
    prompt_part = max(per_prompt.var(ddof=1) - ms_resid * (1 / a.shape[0] + 1 / b.shape[0]), 0.0) / n_prompts
    run_part = share_a + share_b
    se = float(np.sqrt(run_part + prompt_part))
    df = (
        run_part**2 / (share_a**2 / (a.shape[0] - 1) + share_b**2 / (b.shape[0] - 1))
        if run_part > 0
        else float(a.shape[0] + b.shape[0] - 2)
    )
    return _t_test(float(per_prompt.mean()), se, float(df), level) | {
        "n_seeds": a.shape[0] + b.shape[0],
        "n_prompts": n_prompts,
    }


def expected_max(scores) -> list[float]:
    """E[the best of n trials] for n = 1..len(scores): the expected maximum of n draws, with replacement, from the
    trials' scores (Dodge et al. 2019, "Show Your Work", Eq. 1): sum_i v_(i) [(i/N)^n - ((i-1)/N)^n] over the sorted
    scores. A curve still rising at N says a wider search could have found more. Written here: no library has it."""
    v = np.sort(np.asarray(scores, dtype=float))
    big_n, i = len(v), np.arange(1, len(v) + 1)
    return [float(np.sum(v * ((i / big_n) ** n - ((i - 1) / big_n) ** n))) for n in range(1, big_n + 1)]


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest p times (m - i), running maximum, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def holm_family(tests: list[dict], level: float = LEVEL) -> list[dict]:
    """Marks each test (a dict with "p_value") with "p_holm", Holm-adjusted across the list as one family, and
    "resolved" (p_holm < 1 - level); returns the list."""
    for result, p_holm in zip(tests, holm([r["p_value"] for r in tests])):
        result["p_holm"], result["resolved"] = p_holm, p_holm < 1 - level
    return tests


def _estimate_of(result: dict) -> dict:
    """A contrast's result as an estimate: mean and interval (a p against 0 means nothing for one objective's own values)."""
    return {
        "mean": result["difference"],
        "ci": result["ci"],
        "n_seeds": result["n_seeds"],
        "n_prompts": result["n_prompts"],
        "seed_variance": result["seed_variance"],
    } | ({"df": result["df"]} if result.get("df") is not None else {})


SPREAD_POWER = 3  # how fast the pooled degrees of freedom fall as seed spreads grow unlike: _spread_df


def _spread_df(variances: np.ndarray, df_each: float) -> float:
    """Degrees of freedom of a mean of k independent variance estimates (df_each each), cut as they grow unlike.

    Satterthwaite's plug-in degrees of freedom of the sum, (sum v)^2 / sum(v^2 / df_each), run from k df_each
    when the estimates agree down to df_each when one dominates; but where the true spreads are equal, the
    estimates' shares w = v / sum v are Dirichlet(df_each / 2, ...) (gamma variables of one scale; Lukacs) and
    sum w^2 averages (a + 1) / (k a + 1), a = df_each / 2, so the plug-in value sits well below k df_each even
    then (5 of 8 at 4 objectives x 3 seeds): that costs the power pooling is for. So the pooled degrees of
    freedom are k df_each times (typical / observed sum w^2) ** SPREAD_POWER, capped at 1: alike spreads keep
    every degree of freedom, unlike ones fall fast, never below one objective's own (df_each). The power 3 is
    the simulations' choice (tests/test_stats.py and docs/statistics.md): 1 held the family-wise rate to
    0.06-0.08 with one objective at 3x the others' seed sd, 3 to 0.05, at 0.78-0.81 power either way."""
    k, total = len(variances), float(np.sum(variances))
    if k < 2 or total <= 0:
        return float(k * df_each)
    shares = np.asarray(variances, float) / total
    a = df_each / 2
    typical = (a + 1) / (k * a + 1)
    return float(max(df_each, k * df_each * min(1.0, typical / float((shares**2).sum())) ** SPREAD_POWER))


def _partly_pooled(variances: np.ndarray, df_each: float) -> dict:
    """{"variance": one per objective, "df"}: the pooled variance where spreads look alike; as they grow unlike
    (_spread_df falls from k df_each to df_each), an objective whose own variance is above the pool moves toward
    its own, in proportion; one below keeps the pool (never lent a smaller spread than the grid's)."""
    k, pooled = len(variances), float(np.mean(variances))
    df = _spread_df(variances, df_each)
    nominal = k * df_each
    toward_own = (nominal - df) / (nominal - df_each) if nominal > df_each else 0.0
    return {"variance": [pooled + toward_own * max(float(v) - pooled, 0.0) for v in variances], "df": df}


def grid_error(tables: dict[str, np.ndarray]) -> dict:
    """The run-to-run error term of a grid of objectives x seeds x prompts, estimated from every objective at once.

    Model: value[o, s, p] = mu_o + a_s + u_os + b_p + c_op + e_osp: a seed effect a_s shared by every objective
    (seed s saw the same examples in the same order), each training run's own effect u_os, prompt effects, an
    objective x prompt interaction and noise. A training run's mean over the prompts moves by u_os (+ a_s, + the
    noise's mean). Estimated per objective from its S run means, each spread has S - 1 degrees of freedom: a
    pair of objectives contrasted alone has 2 with 3 seeds, and Holm's strictest level over 6 pairs then needs
    |t| > 10.9. Where the objectives' seed spreads are alike, every objective's runs tell of the same spread, so
    it is pooled:

      contrasts between objectives   the objective x seed interaction of the run means (a_s cancels: seeds are
                                     paired), mean square on (k - 1)(S - 1) degrees of freedom
      an objective alone, or minus   the run means' variance around each objective's own mean (a_s included),
      the reference                  averaged over the objectives, on k (S - 1)

    Where spreads are unlike, pooling would lend the steady objectives' small spread to the unsteady one: the
    degrees of freedom fall with the spreads' disagreement (_spread_df), down to one objective's own, so each t
    quantile widens as far as the evidence of unlike spreads asks, and an objective whose spread is above the
    pool carries that share of its own (_partly_pooled): at the floor, a pair's term is Welch's, each side's own. Why not a per-pair Welch term switched on by a
    test of equal spreads: with 3 seeds no such test can see a 3x spread reliably, and the simulations measured
    the switch either costing the power (0.69 at a test level of 0.2) or missing the unsteady objective
    (family-wise false alarms 0.06-0.09): docs/statistics.md.

    Written by hand (mean squares of the run means, a few lines): scipy has no crossed random-effects ANOVA, and
    statsmodels' MixedLM (not a dependency) gives Wald z tests, whose tails are far too light with 3 seeds.

    Returns {"pairs": {"variance", "df"}, "single": {"variance", "df"}: each the variance of one training run's
    mean (pairs: per objective of a contrast, so a pair's run term is 2 variance / S), "pooled_df" (what alike
    spreads would give), "alike" (df == pooled_df), "spread": {label: sd of its run means}, "widest" (the label
    of the largest spread), "n_seeds"}; None with one seed (no seed variance to estimate)."""
    labels = list(tables)
    means = np.array([np.asarray(tables[o], float).mean(1) for o in labels])  # [objectives, seeds]
    k, n_seeds = means.shape
    if n_seeds < 2:
        return None
    own = means.var(1, ddof=1)  # each objective's run means around its own mean, S - 1 df
    single = _partly_pooled(own, n_seeds - 1)
    single["variance"] = dict(zip(labels, single["variance"]))
    if k >= 2:
        inter = means - means.mean(1, keepdims=True) - means.mean(0, keepdims=True) + means.mean()
        df_each = (k - 1) * (n_seeds - 1) / k  # each objective's share of the interaction's degrees of freedom
        per = (inter**2).sum(1) / df_each
        pairs = (
            _partly_pooled(per, df_each) if k > 2 else {"variance": [float(per.mean())] * k, "df": float(n_seeds - 1)}
        )
        pairs["variance"] = dict(zip(labels, pairs["variance"]))
        pooled_df = float((k - 1) * (n_seeds - 1))
    else:
        pairs, pooled_df = None, float(n_seeds - 1)
    spread = {o: float(np.sqrt(v)) for o, v in zip(labels, own)}
    df_now = pairs["df"] if pairs else single["df"]
    return {
        "pairs": pairs,
        "single": single,
        "pooled_df": pooled_df,
        "alike": bool(df_now >= pooled_df - 1e-9),
        "spread": spread,
        "widest": max(spread, key=spread.get),
        "n_seeds": n_seeds,
    }


def _prompt_part(table: np.ndarray) -> float:
    """The prompt-level part of the variance of a [seeds, prompts] table's mean: the prompts' mean square less
    the residual's, over S P, floored at 0 (across_seeds' middle term)."""
    n_seeds, n_prompts = table.shape
    if n_prompts < 2:
        return 0.0
    grand, seed_means, prompt_means = table.mean(), table.mean(1), table.mean(0)
    ms_prompts = n_seeds * ((prompt_means - grand) ** 2).sum() / (n_prompts - 1)
    resid = table - seed_means[:, None] - prompt_means[None, :] + grand
    df_resid = (n_seeds - 1) * (n_prompts - 1)
    ms_resid = (resid**2).sum() / df_resid if df_resid else 0.0
    return float(max(ms_prompts - ms_resid, 0.0) / (n_seeds * n_prompts))


def grid_contrast(table, run_variance: float, df: float, level: float = LEVEL) -> dict:
    """The mean of a [seeds, prompts] table (an objective's values, minus the reference's, or one objective's
    minus another's) with the grid's run term (grid_error: run_variance per seed of the table, on df) and the
    table's own prompt-level part; t on df (the prompt part's degrees of freedom are many: the fewer bound it).
    Returns across_seeds' fields."""
    x = np.asarray(table, float)
    se = float(np.sqrt(run_variance / x.shape[0] + _prompt_part(x)))
    return _t_test(float(x.mean()), se, float(df), level) | {"n_seeds": x.shape[0], "n_prompts": x.shape[1]}


def with_detectable(family: list[dict], level: float = LEVEL) -> list[dict]:
    """Marks each contrast of a Holm family with "detectable": the smallest |difference| it had POWER to resolve
    at Holm's strictest level over the family, (1 - level) / m: (t(1 - alpha / 2m) + t(POWER)) standard errors on
    its degrees of freedom (normal quantiles for the one-seed bootstrap, which has none). What a report prints
    beside "not resolved"."""
    for c in family:
        c["detectable"] = detectable(c["ci"], c.get("df"), len(family), level)
    return family


def detectable(ci, df: float | None, m: int, level: float = LEVEL) -> float:
    """The smallest |difference| a test with this interval had POWER to resolve at Holm's strictest level over a
    family of m, (1 - level) / m: (t(1 - alpha / 2m) + t(POWER)) standard errors, the standard error read back
    from the interval; t on df, normal quantiles where there is none (a prompt bootstrap). NaN for no interval."""
    quantile = (lambda q: stdtrit(df, q)) if df else ndtri  # t on df, or the normal (scipy.special: see _t_test)
    se = (ci[1] - ci[0]) / (2 * quantile((1 + level) / 2))
    return float((quantile(1 - (1 - level) / (2 * m)) + quantile(POWER)) * se) if math.isfinite(se) else float("nan")


def objective_level(
    tables: dict[str, np.ndarray], reference: np.ndarray | None, higher: bool | None, level: float = LEVEL
) -> dict:
    """One metric at objective level from each objective's [seeds, prompts] table (seeds shared across objectives,
    prompts shared with the reference's per-prompt values), the grid analysed as one model (grid_error): each
    objective's estimate; with a direction (`higher` not None), each objective minus the reference (Holm across
    the objectives) and every pair of objectives (Holm across the pairs), each marked "resolved" at Holm
    p < 1 - level; the leader (best mean) and "best": the leader when each of its contrasts is resolved in its
    favour, else None. "error" says which error term was used (grid_error's fields, without "n_seeds").

    With one seed there is no run-to-run variation to estimate: each contrast is the prompt bootstrap of that
    training run (across_seeds' one-seed branch, "seed_variance" False).

    Why every pair and not only the leader's contrasts: the leader is chosen by the same data, and the
    leader-against-last contrast is the range of k means, which a Holm family of k - 1 leader contrasts does not
    cover; Holm over all k (k - 1) / 2 pairs does (the null simulations in tests/test_stats.py)."""
    k = len(tables)
    error = grid_error(tables)
    if error is None:  # one seed: the prompt bootstrap, fine enough for Holm's levels
        n_boot = family_n_boot(max(k, k * (k - 1) // 2), level)

        def single(t, *_):
            return across_seeds(t, level, n_boot)

        pair = single
    else:

        def single(t, label):
            return grid_contrast(t, error["single"]["variance"][label], error["single"]["df"], level)

        def pair(t, a, b):
            return grid_contrast(
                t, error["pairs"]["variance"][a] + error["pairs"]["variance"][b], error["pairs"]["df"], level
            )

    own = {label: single(t, label) for label, t in tables.items()}
    out: dict = {"higher_is_better": higher, "objectives": {label: _estimate_of(r) for label, r in own.items()}}
    if error is not None:
        out["error"] = {key: v for key, v in error.items() if key != "n_seeds"}
    if higher is None:
        return out
    if reference is not None:
        out["vs_reference"] = with_detectable(
            holm_family(
                [{"objective": label, **single(t - reference[None, :], label)} for label, t in tables.items()], level
            ),
            level,
        )
    out["pairs"] = with_detectable(
        holm_family(
            [{"a": a, "b": b, **pair(tables[a] - tables[b], a, b)} for a, b in itertools.combinations(tables, 2)], level
        ),
        level,
    )
    out["leader"] = leader = max(tables, key=lambda label: own[label]["difference"] * (1 if higher else -1))
    theirs = [c for c in out["pairs"] if leader in (c["a"], c["b"])]
    wins = [
        c["resolved"] and ((c["difference"] > 0) == higher) == (c["a"] == leader) for c in theirs
    ]  # resolved, for the leader
    out["best"] = leader if theirs and all(wins) else None
    return out


def claim_contrast(grid: dict, better: str, worse: str) -> dict | None:
    """A claim's better - worse from an objective_level result: the contrast with the reference, or the pair in
    either order (flipped: difference and interval negated); None where either side was left out of the grid."""
    if worse == "reference":
        found = [c for c in grid.get("vs_reference", []) if c["objective"] == better]
        return {k: v for k, v in found[0].items() if k not in ("objective", "p_holm", "resolved")} if found else None
    for c in grid.get("pairs", []):
        if (c["a"], c["b"]) in ((better, worse), (worse, better)):
            out = {k: v for k, v in c.items() if k not in ("a", "b", "p_holm", "resolved")}
            if c["a"] == worse:
                out["difference"], out["ci"] = -c["difference"], [-c["ci"][1], -c["ci"][0]]
            return out
    return None


def variance_components(tables: dict[str, np.ndarray]) -> dict:
    """The grid's variance components from k objectives' [seeds, prompts] tables (k >= 2, S >= 2, P >= 2), by the
    expected mean squares of the three-way layout objectives x seeds x prompts (seeds and prompts random):

      residual        e_osp: the three-way residual's mean square, on (k-1)(S-1)(P-1) df
      run             u_os, a training run's own shift: (MS_objective x seed - residual) / P
      interaction     c_op, an objective x prompt effect: (MS_objective x prompt - residual) / S

    (the latter two floored at 0). A pair's contrast over S seeds and P prompts then has variance
    2 (run / S + interaction / P + residual / (S P)): what `plan` reads. Seed and prompt main effects, shared by
    every objective, cancel in contrasts and are not needed."""
    y = np.array([np.asarray(t, float) for t in tables.values()])  # [objectives, seeds, prompts]
    k, n_seeds, n_prompts = y.shape
    if k < 2 or n_seeds < 2 or n_prompts < 2:
        raise ValueError(
            f"variance components need 2+ objectives, 2+ seeds and 2+ prompts; this grid has {k} x {n_seeds} x {n_prompts}"
        )
    m_os, m_op, m_sp = y.mean(2), y.mean(1), y.mean(0)
    m_o, m_s, m_p, grand = y.mean((1, 2)), y.mean((0, 2)), y.mean((0, 1)), y.mean()
    resid = (
        y
        - m_os[:, :, None]
        - m_op[:, None, :]
        - m_sp[None]
        + m_o[:, None, None]
        + m_s[None, :, None]
        + m_p[None, None, :]
        - grand
    )
    ms_e = float((resid**2).sum() / ((k - 1) * (n_seeds - 1) * (n_prompts - 1)))
    ms_os = float(n_prompts * ((m_os - m_o[:, None] - m_s[None, :] + grand) ** 2).sum() / ((k - 1) * (n_seeds - 1)))
    ms_op = float(n_seeds * ((m_op - m_o[:, None] - m_p[None, :] + grand) ** 2).sum() / ((k - 1) * (n_prompts - 1)))
    return {
        "run": max(ms_os - ms_e, 0.0) / n_prompts,
        "interaction": max(ms_op - ms_e, 0.0) / n_seeds,
        "residual": ms_e,
        "objectives": k,
        "seeds": n_seeds,
        "prompts": n_prompts,
    }


def pair_power(
    effect: float, components: dict, seeds: int, prompts: int, objectives: int, level: float = LEVEL
) -> float:
    """The chance that a pair of objectives truly `effect` apart is resolved at Holm's strictest level over the
    k (k - 1) / 2 pairs, (1 - level) / m two-sided (Holm resolves at least that often), with the grid's pooled
    error term on (k - 1)(S - 1) degrees of freedom: a noncentral t (the spreads assumed alike, as pooling is)."""
    from scipy import (
        stats as st,
    )  # deferred: scipy: half a second to import; prefbench check and the CLI's help do without

    m = max(1, objectives * (objectives - 1) // 2)
    se = math.sqrt(
        2
        * (components["run"] / seeds + components["interaction"] / prompts + components["residual"] / (seeds * prompts))
    )
    df = (objectives - 1) * (seeds - 1)
    crit = st.t.ppf(1 - (1 - level) / (2 * m), df)
    ncp = abs(effect) / se if se > 0 else math.inf
    if not math.isfinite(ncp):
        return 1.0
    # the far tail (a resolved difference of the wrong sign) is vanishingly small where scipy's nct.cdf gives NaN
    return float(st.nct.sf(crit, df, ncp) + np.nan_to_num(st.nct.cdf(-crit, df, ncp)))


def smallest_resolvable(
    components: dict, seeds: int, prompts: int, objectives: int, power: float = POWER, level: float = LEVEL
) -> float:
    """The smallest pairwise difference resolved with `power` at this design (pair_power solved for the effect)."""
    from scipy.optimize import (
        brentq,
    )  # deferred: scipy: half a second to import; prefbench check and the CLI's help do without

    hi = 1.0
    while pair_power(hi, components, seeds, prompts, objectives, level) < power:
        hi *= 2
    return float(
        brentq(lambda e: pair_power(e, components, seeds, prompts, objectives, level) - power, 0.0, hi, xtol=1e-6)
    )


def plan(components: dict, effect: float, power: float = POWER, level: float = LEVEL, max_seeds: int = 64) -> dict:
    """Designs that resolve a pairwise difference of `effect` with `power` (pair_power), for this many objectives:
    the fewest seeds at the run's prompts and at 2x and 4x as many, and the smallest effect the run as it stands
    could resolve. {"effect", "power", "now": {"seeds", "prompts", "power", "smallest"}, "designs": [{"prompts",
    "seeds" (None: more than max_seeds), "power"}]}."""
    if effect <= 0:
        raise ValueError(f"--effect {effect}: must be a positive difference in the metric's units")
    k, s_now, p_now = components["objectives"], components["seeds"], components["prompts"]
    designs = []
    for prompts in (p_now, 2 * p_now, 4 * p_now):
        seeds = next(
            (s for s in range(2, max_seeds + 1) if pair_power(effect, components, s, prompts, k, level) >= power), None
        )
        designs.append(
            {
                "prompts": prompts,
                "seeds": seeds,
                "power": pair_power(effect, components, seeds, prompts, k, level) if seeds else None,
            }
        )
    return {
        "effect": effect,
        "power": power,
        "designs": designs,
        "now": {
            "seeds": s_now,
            "prompts": p_now,
            "power": pair_power(effect, components, s_now, p_now, k, level),
            "smallest": smallest_resolvable(components, s_now, p_now, k, power, level),
        },
    }


def matched_kl(points: dict[str, list[tuple]], level: float = LEVEL) -> dict:
    """Objectives' reward at matched KL: an analysis of covariance over every training run they have, each run a
    point (seed, its mean KL, its mean reward[, the recipe label it was trained under]) of its objective (a swept
    objective's points at every setting).

    Model: reward = alpha_objective + f(KL) + seed block + error, f a quadratic in KL shared by the objectives
    (linear with only 3 distinct KLs), fitted by least squares on the runs inside the KL range every objective
    covers (no extrapolation). alpha_a - alpha_b is the reward difference of two objectives at any one KL, with
    t on the residual's degrees of freedom; the residual is run-to-run variation less what KL and the seed
    explain, the right error for objectives compared by training runs. Holm across the pairs.

    Why not interpolate each seed's frontier at a few target KLs (the statistics before): that needs every seed
    of every objective to cover the target, and with beta moving KL by 0.2-0.3 nat and seeds by sd 0.45 a
    comparison existed in 0.3% of simulated grids; the regression uses every run in the common range. Why seeds
    as fixed blocks rather than a random effect: with 3 seeds the seed variance is barely estimable, and blocks
    remove a seed's shift shared by the objectives (the same examples in the same order) either way. The curves
    are assumed parallel (one f for all): the report shows each run's point beside the fitted curves.

    Returns {"range": [lo, hi] or None (with "reason"), "runs": [{"objective", "label", "seed", "kl", "reward", "used"}],
    "model", "df", "objectives": {name: {"mean", "ci"} at the range's middle}, "pairs": [...], "curve": {"kl":
    [...], name: [...]}}."""
    from scipy import (
        stats as st,
    )  # deferred: scipy: half a second to import; prefbench check and the CLI's help do without

    runs = [
        {
            "objective": name,
            "label": str(p[3]) if len(p) > 3 else name,
            "seed": int(p[0]),
            "kl": float(p[1]),
            "reward": float(p[2]),
        }
        for name, pts in points.items()
        for p in pts
    ]
    spans = {name: (min(p[1] for p in pts), max(p[1] for p in pts)) for name, pts in points.items() if pts}
    out: dict = {"range": None, "runs": runs, "objectives": {}, "pairs": []}
    if len(spans) < 2:
        return out | {"reason": "fewer than two objectives with evaluated runs"}
    lo, hi = max(a for a, _ in spans.values()), min(b for _, b in spans.values())
    for r in runs:
        r["used"] = lo <= r["kl"] <= hi
    used = [r for r in runs if r["used"]]
    names = list(spans)
    seeds = sorted({r["seed"] for r in used})
    degree = min(2, len({round(r["kl"], 9) for r in used}) - 2) if used else 0
    n_params = len(names) + max(degree, 0) + len(seeds) - 1
    if not lo < hi:
        return out | {"reason": f"the objectives' KL ranges do not overlap ({lo:.3f} >= {hi:.3f})"}
    if {r["objective"] for r in used} != set(names) or degree < 1 or len(used) - n_params < 2:
        return out | {
            "reason": f"too few runs inside the shared KL range [{lo:.3f}, {hi:.3f}] ({len(used)}) for the model's {n_params} terms"
        }
    mid, half = (lo + hi) / 2, (hi - lo) / 2

    def design(objective: str, seed: int | None, kl: float) -> list[float]:  # seed None: the blocks' average
        z = (kl - mid) / half
        blocks = [1.0 / len(seeds)] * (len(seeds) - 1) if seed is None else [float(seed == s) for s in seeds[1:]]
        return [float(objective == n) for n in names] + [z**d for d in range(1, degree + 1)] + blocks

    x = np.array([design(r["objective"], r["seed"], r["kl"]) for r in used])
    y = np.array([r["reward"] for r in used])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    df = len(used) - np.linalg.matrix_rank(x)
    sigma2 = float(((y - x @ coef) ** 2).sum() / df)
    cov = sigma2 * np.linalg.pinv(x.T @ x)
    t = float(st.t.ppf((1 + level) / 2, df))

    def estimate(c: np.ndarray) -> tuple[float, float]:
        return float(c @ coef), float(np.sqrt(c @ cov @ c))

    for name in names:
        mean, se = estimate(np.array(design(name, None, mid)))
        out["objectives"][name] = {
            "mean": mean,
            "ci": [mean - t * se, mean + t * se],
            "runs": sum(r["objective"] == name for r in used),
        }
    for a, b in itertools.combinations(names, 2):
        diff, se = estimate(np.array(design(a, None, mid)) - np.array(design(b, None, mid)))
        out["pairs"].append({"a": a, "b": b, **_t_test(diff, se, float(df), level)})
    with_detectable(holm_family(out["pairs"], level), level)
    grid = np.linspace(lo, hi, 25)
    out["curve"] = {"kl": grid.tolist()} | {
        name: [float(np.array(design(name, None, k)) @ coef) for k in grid] for name in names
    }
    return out | {
        "range": [float(lo), float(hi)],
        "df": int(df),
        "model": f"reward ~ objective + {'quadratic' if degree == 2 else 'linear'} KL + seed block",
    }


def binomial_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for k successes in n trials; NaN when n is 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar_exact(a, b) -> dict:
    """Exact McNemar test of two 0/1 score vectors on the same items: a two-sided binomial test at 1/2 of the
    discordant items (p 1 when there is none)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a_only, b_only = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = binomtest(b_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}


def _length_fit(y: np.ndarray, d: np.ndarray, weights: np.ndarray, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """P(win) at d = 0 from a logistic fit of y (a score in [0, 1]: soft labels are fine) on tanh(d / sd(d)),
    one fit per row of pair weights; and whether each row's fit converged.

    Written by hand because the bootstrap needs 2000 small weighted fits at once: Newton's method on all
    rows together (a replicate is a row of prompt counts) takes milliseconds, a loop of scipy/statsmodels
    fits takes minutes. A row whose pairs all score alike needs no fit (its intercept would run off to
    infinity): it is that score. The slope carries a small ridge (SLOPE_RIDGE). A row has converged when
    Newton's last step moved neither coefficient by more than 1e-8 within `iters` steps."""
    lo, hi = np.where(weights > 0, y, np.inf).min(1), np.where(weights > 0, y, -np.inf).max(1)
    out, fit = lo.copy(), lo < hi
    converged = np.ones(len(weights), dtype=bool)
    w = weights[fit]
    total = w.sum(1, keepdims=True)
    sd = np.sqrt((w * (d - (w * d).sum(1, keepdims=True) / total) ** 2).sum(1, keepdims=True) / total)
    z = np.tanh(np.divide(d, sd, out=np.zeros_like(w), where=sd > 0))
    b0, b1 = np.zeros(len(w)), np.zeros(len(w))
    step = np.full(len(w), np.inf)
    for _ in range(iters):
        p = expit(b0[:, None] + b1[:, None] * z)
        r, v = w * (y - p), w * p * (1 - p)
        g0, g1 = r.sum(1), (r * z).sum(1) - SLOPE_RIDGE * b1
        h00, h01, h11 = v.sum(1), (v * z).sum(1), (v * z * z).sum(1) + SLOPE_RIDGE
        det = h00 * h11 - h01**2
        s0, s1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        b0, b1 = b0 + s0, b1 + s1
        step = np.maximum(np.abs(s0), np.abs(s1))
        if len(w) == 0 or step.max() < 1e-10:
            break
    out[fit] = expit(b0)
    converged[fit] = (step < 1e-8) & np.isfinite(b0)
    return out, converged


def length_adjusted_win_rate(
    scores, length_diffs, groups, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> dict:
    """Length-adjusted win rate: a logistic fit of the pair score (ties 0.5; verdict probabilities where the
    judge gave them) on tanh(d / sd(d)), d the two answers' length difference, read at d = 0. Each prompt weighs
    1, its pairs sharing that weight, as in the win rate; the interval resamples prompts, each with all its
    pairs. Not AlpacaEval's length-controlled win rate: that fit has an instruction term and model terms over
    a leaderboard; this one has only the length term of one comparison.

    Returns {"mean", "ci", "converged": the point fit converged, "bootstrap_converged": the share of replicate
    fits that did, "weighting"}."""
    y, d = np.asarray(scores, float), np.asarray(length_diffs, float)
    names, member, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if y.size == 0:
        return {
            "mean": float("nan"),
            "ci": [float("nan"), float("nan")],
            "converged": False,
            "bootstrap_converged": float("nan"),
            "weighting": "each prompt weighs 1",
        }
    per_pair = 1.0 / sizes[member]
    point, point_ok = _length_fit(y, d, per_pair[None, :])
    ci, share = [float("nan"), float("nan")], float("nan")
    if len(names) >= 2:
        counts = np.zeros((n_boot, len(names)))
        np.add.at(counts, (np.arange(n_boot)[:, None], resample(len(names), n_boot, seed)), 1)
        replicates, ok = _length_fit(y, d, counts[:, member] * per_pair[None, :])
        ci, share = list(_percentile(replicates, level)), float(ok.mean())
    return {
        "mean": float(point[0]),
        "ci": ci,
        "converged": bool(point_ok[0]),
        "bootstrap_converged": share,
        "weighting": "each prompt weighs 1",
    }
