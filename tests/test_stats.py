"""prefbench.stats against scipy on fixed data, against hand arithmetic, and by simulated coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from prefbench import stats as S


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    lo, hi = S.bootstrap_ci(x)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95, random_state=1)
    se = x.std(ddof=1) / math.sqrt(x.size)
    # Two Monte Carlo estimates of the same percentiles: they agree to a small share of the standard error.
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.08 * se)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.08 * se)
    assert abs((hi - lo) / 2 - 1.96 * se) < 0.1 * 1.96 * se  # and with the normal-theory half width
    assert S.bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert all(math.isnan(v) for v in S.bootstrap_ci([1.0]))


def test_estimate():
    e = S.estimate([1.0, 2.0, 3.0])
    assert e["mean"] == 2.0 and e["n"] == 3 and 1.0 <= e["ci"][0] < 2.0 < e["ci"][1] <= 3.0


def test_bootstrap_interval_covers_the_mean_95_percent_of_the_time():
    # 400 simulated data sets of 60 skewed values (exponential, mean 1): the percentile interval should
    # cover the true mean close to 95% of the time (a little under for skewed data at this size).
    rng = np.random.default_rng(123)
    covered = [lo <= 1.0 <= hi for lo, hi in (S.bootstrap_ci(rng.exponential(1.0, 60), n_boot=1000, seed=i) for i in range(400))]
    assert 0.90 <= np.mean(covered) <= 0.98


def test_paired_difference_by_hand():
    out = S.paired_difference(np.ones(10), np.zeros(10))
    # every replicate's mean is exactly 1: an interval of one point, and p = 2 (0 + 1) / (2000 + 1), never 0
    assert out["difference"] == 1.0 and out["ci"] == [1.0, 1.0] and out["n"] == 10
    assert out["p_value"] == pytest.approx(2 / 2001)
    out = S.paired_difference(np.array([1.0, -1.0, 1.0, -1.0]), np.zeros(4))
    assert out["difference"] == 0.0 and out["ci"][0] < 0 < out["ci"][1] and out["p_value"] > 0.5
    with pytest.raises(ValueError):
        S.paired_difference([], [])


def test_paired_difference_p_value_is_calibrated_under_the_null():
    # 300 null data sets (paired differences with mean 0, n 50): about 5% should have p < 0.05.
    rng = np.random.default_rng(7)
    p = np.array([S.paired_difference(rng.normal(0, 1, 50), np.zeros(50), n_boot=500, seed=i)["p_value"] for i in range(300)])
    assert 0.02 <= (p < 0.05).mean() <= 0.10
    assert p.min() > 0


def test_bootstrap_p_counts_the_observed_sample():
    # 3 of 9 replicates at or below 0: p = 2 (3 + 1) / (9 + 1) = 0.8
    assert S.bootstrap_p(np.array([-1.0, -0.5, 0.0, 1, 2, 3, 4, 5, 6])) == pytest.approx(0.8)


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04 (running max); back in input order
    assert S.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert S.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert S.holm([]) == []


@pytest.mark.parametrize("k,n", [(2, 5), (0, 5), (5, 5), (7, 20)])
def test_binomial_interval_is_clopper_pearson(k, n):
    # Clopper-Pearson from the beta quantiles: lower Beta(a/2; k, n-k+1), upper Beta(1-a/2; k+1, n-k)
    lo = sps.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = sps.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert S.binomial_ci(k, n) == pytest.approx((lo, hi), abs=1e-9)
    assert all(math.isnan(v) for v in S.binomial_ci(0, 0))


def test_mcnemar_exact_by_hand():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1])
    b = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = S.mcnemar_exact(a, b)
    # discordant: 3 documents a only, 1 b only; two-sided binomial P(X <= 1 or X >= 3 | n 4, 1/2) = 10/16
    assert (out["a_only"], out["b_only"]) == (3, 1) and out["p_value"] == pytest.approx(10 / 16)
    assert S.mcnemar_exact(b, b)["p_value"] == 1.0


def test_lc_win_rate_matches_an_unpenalised_logistic_fit():
    # A non-saturated case: the hand-written Newton fit agrees with scipy's optimiser on the same likelihood
    # (the small ridge on the slope moves it by less than 1e-3).
    rng = np.random.default_rng(3)
    d = rng.normal(0, 50, 200)
    y = (rng.random(200) < 1 / (1 + np.exp(-(0.3 + d / 60)))).astype(float)
    z = np.tanh(d / d.std())

    def nll(b):
        p = 1 / (1 + np.exp(-(b[0] + b[1] * z)))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()

    b = __import__("scipy.optimize", fromlist=["minimize"]).minimize(nll, [0.0, 0.0]).x
    assert S.lc_win_rate(y, d) == pytest.approx(1 / (1 + math.exp(-b[0])), abs=1e-3)
    lo, hi = S.lc_win_rate_ci(y, d, np.arange(200))
    assert lo < S.lc_win_rate(y, d) < hi


def test_across_seeds_by_hand():
    """The crossed two-way ANOVA of a 2 x 3 table, computed here cell by cell."""
    x = np.array([[1.0, 2.0, 4.0], [2.0, 2.5, 5.5]])
    grand = x.mean()
    ms_seeds = 3 * sum((row.mean() - grand) ** 2 for row in x) / 1
    ms_prompts = 2 * sum((col.mean() - grand) ** 2 for col in x.T) / 2
    var = (ms_seeds + ms_prompts) / 6  # the residual's share kept (stats.across_seeds' docstring)
    df = 1  # two seeds: the seeds' one degree of freedom
    out = S.across_seeds(x)
    assert out["difference"] == pytest.approx(grand) and out["df"] == pytest.approx(df)
    three = np.vstack([x, [0.5, 3.0, 4.5]])  # three seeds: Satterthwaite's degrees of freedom of the unbiased combination
    g3 = three.mean()
    m_s = 3 * sum((row.mean() - g3) ** 2 for row in three) / 2
    m_p = 3 * sum((col.mean() - g3) ** 2 for col in three.T) / 2
    m_e = sum((three[s, p] - three[s].mean() - three[:, p].mean() + g3) ** 2 for s in range(3) for p in range(3)) / 4
    unbiased = max(m_s + m_p - m_e, m_s, m_p)
    assert S.across_seeds(three)["df"] == pytest.approx(unbiased**2 / (m_s**2 / 2 + m_p**2 / 2 + m_e**2 / 4))
    half = sps.t.ppf(0.975, df) * math.sqrt(var)
    assert out["ci"] == pytest.approx([grand - half, grand + half])
    assert out["p_value"] == pytest.approx(2 * sps.t.sf(grand / math.sqrt(var), df))
    assert (out["n_seeds"], out["n_prompts"], out["seed_variance"]) == (2, 3, True)
    one = S.across_seeds(x[:1])  # one seed: the prompt bootstrap, and it says seed variance is missing
    assert one["seed_variance"] is False and one["ci"] == S.paired_difference(x[0], np.zeros(3))["ci"]


@pytest.mark.parametrize("seed_sd", [0.0, 0.15, 0.3, 1.0])
def test_across_seeds_covers_a_new_training_runs_mean_95_percent_of_the_time(seed_sd):
    """Null simulation: 3 seeds x 48 prompts, seed effects (seed_sd), prompt effects (0.1) and noise (0.3), no
    true difference. Over 1000 simulated tables the 95% interval covers 0 and p < 0.05 happens at the nominal
    rates within simulation error (3 standard errors; it may err on the wide side, up to 99.5%). A
    prompt-only bootstrap of the seed-averaged values
    ignores the seed effects: where they dominate it covers far less (why across_seeds exists)."""
    rng = np.random.default_rng(7)
    sims, covered, alarms, naive_covered = 1000, 0, 0, 0
    for _ in range(sims):
        x = rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, 0.1, (1, 48)) + rng.normal(0, 0.3, (3, 48))
        out = S.across_seeds(x)
        covered += out["ci"][0] <= 0 <= out["ci"][1]
        alarms += out["p_value"] < 0.05
        lo, hi = S.bootstrap_ci(x.mean(0), n_boot=400)
        naive_covered += lo <= 0 <= hi
    se = 3 * math.sqrt(0.05 * 0.95 / sims)
    print(f"seed sd {seed_sd}: coverage {covered / sims:.3f}, false alarms {alarms / sims:.3f}, prompt-only bootstrap {naive_covered / sims:.3f}")
    assert 0.95 - se <= covered / sims <= 0.995 and alarms / sims <= 0.05 + se
    if seed_sd >= 0.3:
        assert naive_covered / sims < 0.8
