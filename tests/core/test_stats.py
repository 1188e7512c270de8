"""mltm.stats: the paired seed test against scipy and brute force, the clustered bootstrap
against enumeration, a closed form and its coverage."""

from __future__ import annotations

import itertools
import time
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from mltm.stats import clustered_bootstrap, paired_seed_test

# -- paired seed test -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_matches_scipy_permutation_test(n, alternative):
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.7, 1.0, n), rng.normal(0.0, 1.0, n)
    ours = paired_seed_test(a, b, alternative=alternative)
    ref = sps.permutation_test((a - b,), np.mean, permutation_type="samples",
                               n_resamples=np.inf, alternative=alternative)
    assert ours.exact and ours.n_patterns == 2 ** n
    assert ours.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert ours.mean == pytest.approx(np.mean(a - b), abs=1e-12)


def test_sign_flip_counts_float_ties_by_brute_force():
    # d = (1, 2, 3, 6): several sign patterns reach exactly the observed |mean| or 0; exact
    # rational arithmetic over all 16 patterns is the oracle for how ties are counted.
    d = [1, 2, 3, 6]
    b = np.array([0.1, 0.7, 0.2, 0.3])
    res = paired_seed_test(b + np.array(d, dtype=float), b)
    means = [Fraction(sum(s * x for s, x in zip(signs, d)), len(d))
             for signs in itertools.product((1, -1), repeat=len(d))]
    t = Fraction(sum(d), len(d))
    assert res.p_greater == sum(m >= t for m in means) / 16
    assert res.p_less == sum(m <= t for m in means) / 16
    assert res.p_value == sum(abs(m) >= abs(t) for m in means) / 16
    # a third case: observed mean 0 exactly, so every pattern is as extreme two-sided
    zero = paired_seed_test([1.0, 2.0, 3.0], [2.0, 3.0, 1.0])
    assert zero.mean == 0 and zero.p_value == 1.0


def test_sign_flip_smallest_p_with_every_seed_agreeing():
    # All five seeds favour a: the observed pattern is the most extreme of 2^5.
    res = paired_seed_test([5.0, 6, 7, 8, 9], [1.0, 1, 2, 2, 3], alternative="greater")
    assert res.p_greater == 1 / 32 and res.p_less == 1.0
    assert paired_seed_test([5.0, 6, 7, 8, 9], [1.0, 1, 2, 2, 3]).p_value == 2 / 32


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_paired_t_interval_matches_scipy(confidence):
    rng = np.random.default_rng(3)
    a, b = rng.normal(2, 1, 6), rng.normal(1, 1, 6)
    ours = paired_seed_test(a, b, confidence=confidence)
    ref = sps.ttest_rel(a, b).confidence_interval(confidence_level=confidence)
    assert ours.interval == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert ours.sd == pytest.approx(np.std(a - b, ddof=1), abs=1e-12)
    one = paired_seed_test([1.0], [0.0])
    assert np.isnan(one.interval).all() and one.p_value == 1.0 and one.p_greater == 0.5


def test_randomised_sign_flip_above_the_exact_limit_agrees_with_enumeration():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.4, 1, 18), rng.normal(0, 1, 18)
    exact = paired_seed_test(a, b, max_exact=18)
    drawn = paired_seed_test(a, b, max_exact=16, n_random=200_000, seed=1)
    assert exact.exact and not drawn.exact and drawn.n_patterns == 200_000
    # Monte Carlo error of a p near 0.1 from 200,000 patterns: sd ≈ 0.0007
    assert drawn.p_value == pytest.approx(exact.p_value, abs=0.004)
    assert paired_seed_test(a, b, max_exact=16, n_random=200_000, seed=1) == drawn
    assert "randomised sign-flip (200,000 random patterns)" in drawn.test


@pytest.mark.parametrize("a,b,alternative,message", [
    ([1.0, 2.0], [1.0], "two-sided", "paired values must be two 1-d sequences of the same "
                                     "length, got shapes (2,) and (1,)"),
    ([], [], "two-sided", "no paired values"),
    ([1.0, float("nan")], [0.0, 0.0], "two-sided", "paired values contain NaN or infinity"),
    ([1.0], [0.0], "bigger", "alternative must be one of"),
])
def test_paired_seed_test_bad_input(a, b, alternative, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        paired_seed_test(a, b, alternative=alternative)


# -- clustered bootstrap ----------------------------------------------------------------------


def clustered_data(rng, *, delta=0.0, n_clusters=40, size=10, seeds=3, cluster_sd=1.0,
                   noise_sd=1.0):
    """Outcomes whose difference a - b is delta + a cluster effect + query noise; a and b also
    share a large per-query level (what pairing must cancel)."""
    clusters = np.repeat(np.arange(n_clusters), size)
    level = rng.normal(0, 5, clusters.size)
    shift = rng.normal(0, cluster_sd, n_clusters)[clusters]
    b = level + rng.normal(0, noise_sd, (seeds, clusters.size))
    a = level + delta + shift + rng.normal(0, noise_sd, (seeds, clusters.size))
    return a, b, clusters


def test_identical_methods_give_a_zero_width_interval():
    rng = np.random.default_rng(0)
    a = rng.random((4, 300))
    res = clustered_bootstrap(a, a.copy(), rng.integers(0, 30, 300), n_resamples=2000)
    assert res.statistic == 0 and res.interval == (0.0, 0.0) and res.p_value == 1.0


def test_pairing_cancels_what_both_methods_share():
    # Outcomes vary wildly between queries and clusters, the difference is a constant 0.1:
    # resampling a and b together (paired) leaves only the constant.
    rng = np.random.default_rng(1)
    clusters = rng.integers(0, 25, 500)
    b = rng.normal(0, 100, (3, 500)) + 50 * clusters
    res = clustered_bootstrap(b + 0.1, b, clusters, n_resamples=2000)
    assert res.interval == pytest.approx((0.1, 0.1), abs=1e-9)
    assert res.statistic == pytest.approx(0.1, abs=1e-12)
    assert res.p_value == pytest.approx(2 / 2001)


def test_equal_sized_clusters_give_the_closed_form_bootstrap_spread():
    # With equal cluster sizes the replicate is the mean of K drawn cluster means, whose
    # bootstrap variance is var(cluster means, ddof=0) / K; resampling single queries would give
    # var(queries, ddof=0) / Q instead, several times smaller for these clustered data.
    rng = np.random.default_rng(2)
    a, b, clusters = clustered_data(rng, n_clusters=50, size=8, seeds=1, cluster_sd=1.0,
                                    noise_sd=0.5)
    d = (a - b)[0]
    cluster_means = d.reshape(50, 8).mean(axis=1)
    sd_clusters = np.sqrt(cluster_means.var() / 50)
    assert np.sqrt(d.var() / d.size) < 0.6 * sd_clusters  # the two really differ here
    res = clustered_bootstrap(a, b, clusters, n_resamples=40_000, confidence=0.6827, seed=3)
    half_width = (res.interval[1] - res.interval[0]) / 2  # ≈ one sd for a near-normal mean
    assert half_width == pytest.approx(sd_clusters, rel=0.05)


def test_interval_equals_the_enumerated_bootstrap_quantiles():
    # Four clusters of unequal sizes: the 4^4 equally likely draws give the exact bootstrap
    # distribution of the ratio sum(drawn sums) / sum(drawn sizes).
    sizes = np.array([1, 2, 3, 5])
    clusters = np.repeat(np.arange(4), sizes)
    d = np.array([3.0, -1.0, 0.5, 2.0, 0.25, -2.0, 1.0, 0.0, 4.0, -0.5, 1.5])
    sums = np.bincount(clusters, weights=d)
    values = np.array(sorted(sums[list(draw)].sum() / sizes[list(draw)].sum()
                             for draw in itertools.product(range(4), repeat=4)))
    # (the sums are exact in binary, so equal draws in any order give equal floats)
    support, counts = np.unique(values, return_counts=True)
    cdf = np.cumsum(counts) / values.size
    lo = support[np.searchsorted(cdf, 0.025)]
    hi = support[np.searchsorted(cdf, 0.975)]
    # The premise: no jump of the exact CDF lies near 2.5 % or 97.5 %, so the order
    # statistics of 50,000 replicates there are these values (CDF sd there ≈ 0.0007).
    assert np.min(np.abs(cdf - 0.025)) > 0.004 and np.min(np.abs(cdf - 0.975)) > 0.004
    res = clustered_bootstrap(d, np.zeros_like(d), clusters, n_resamples=50_000, seed=4)
    assert res.interval == pytest.approx((lo, hi), abs=1e-12)
    assert res.n_clusters == 4 and res.n_queries == 11 and res.n_seeds == 1


def test_coverage_of_a_known_difference_needs_the_clusters():
    # 200 synthetic experiments with true difference 0.3 and strongly clustered queries:
    # the clustered 95 % interval covers the truth about 95 % of the time; treating the
    # queries as independent (clusters=None) does not come close.
    rng = np.random.default_rng(5)
    covered = {"clusters": 0, "queries": 0}
    for i in range(200):
        a, b, clusters = clustered_data(rng, delta=0.3, n_clusters=60, size=10, seeds=2,
                                        cluster_sd=1.0, noise_sd=1.0)
        for name, ids in (("clusters", clusters), ("queries", None)):
            lo, hi = clustered_bootstrap(a, b, ids, n_resamples=1000, seed=i).interval
            covered[name] += lo <= 0.3 <= hi
    assert 0.90 <= covered["clusters"] / 200 <= 0.99
    assert covered["queries"] / 200 < 0.75


def test_clustering_widens_the_interval_of_clustered_data():
    rng = np.random.default_rng(6)
    a, b, clusters = clustered_data(rng, delta=0.2, n_clusters=100, size=10)
    clustered = clustered_bootstrap(a, b, clusters, seed=0)
    single = clustered_bootstrap(a, b, None, seed=0)
    width = lambda r: r.interval[1] - r.interval[0]  # noqa: E731
    assert width(clustered) > 2 * width(single)
    assert clustered.statistic == single.statistic
    assert (clustered.n_clusters, single.n_clusters) == (100, 1000)


def test_one_draw_serves_every_seed():
    # Copies of one seed's outcomes give the same replicates as the seed alone: the seeds are
    # resampled with the same draw. Independent draws per seed would narrow the interval.
    rng = np.random.default_rng(8)
    a, b, clusters = clustered_data(rng, delta=0.1, n_clusters=30, seeds=1)
    one = clustered_bootstrap(a, b, clusters, n_resamples=3000, seed=9)
    five = clustered_bootstrap(np.repeat(a, 5, axis=0), np.repeat(b, 5, axis=0), clusters,
                               n_resamples=3000, seed=9)
    assert five.interval == pytest.approx(one.interval, abs=1e-12)
    assert five.p_value == one.p_value and five.n_seeds == 5


def test_bootstrap_is_seeded_and_its_p_value_matches_the_interval():
    rng = np.random.default_rng(10)
    a, b, clusters = clustered_data(rng, delta=1.5, n_clusters=40)
    res = clustered_bootstrap(a, b, clusters, seed=11)
    assert clustered_bootstrap(a, b, clusters, seed=11) == res
    assert clustered_bootstrap(a, b, clusters, seed=12).interval != res.interval
    assert res.interval[0] > 0 and res.p_value == 2 / 10_001
    null_a, null_b, _ = clustered_data(rng, delta=0.0, n_clusters=40, cluster_sd=0.0)
    null = clustered_bootstrap(null_a, null_b, clusters, seed=11)
    assert (null.p_value < 0.05) == (not null.interval[0] <= 0 <= null.interval[1])


def test_ten_thousand_resamples_of_two_thousand_clusters_well_under_a_second():
    rng = np.random.default_rng(12)
    clusters = rng.permutation(np.arange(10_000) % 2000)
    a, b = rng.random((5, 10_000)), rng.random((5, 10_000))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        res = clustered_bootstrap(a, b, clusters, n_resamples=10_000)
        times.append(time.perf_counter() - start)
    assert res.n_clusters == 2000
    assert min(times) < 1.0, times


@pytest.mark.parametrize("a,b,clusters,message", [
    (np.zeros((2, 5)), np.zeros((2, 4)), None, "per-query outcomes must be two arrays of shape"),
    (np.zeros((2, 5)), np.zeros((2, 5)), [0, 1], r"clusters must give one id per query \(5\)"),
    (np.full(3, np.inf), np.zeros(3), None, "per-query outcomes contain NaN or infinity"),
])
def test_clustered_bootstrap_bad_input(a, b, clusters, message):
    with pytest.raises(ValueError, match=message):
        clustered_bootstrap(a, b, clusters)
