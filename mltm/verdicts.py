"""Verdicts on the paper's claims from recorded runs: holds, reversed or undecided.

A :class:`Claim` states what the paper says, e.g. "m-LTM beats NT-Xent on a2t R@1 ranked by
the plan (Table 2)": two methods as filters over the record keys, the metric, the direction,
the ranking, the split and the claimed sign of the difference. :func:`verdict` checks it on a
:class:`~mltm.records.Records` file and returns a :class:`Verdict` that names the test, its
p-value and its interval; :func:`verdict_table` does that for a list of claims.

    claim = Claim("m-LTM beats NT-Xent (a2t R@1, plan)", a={"loss": "m-LTM"},
                  b={"loss": "NT-Xent"}, metric="R@1", direction="a2t", ranking="plan",
                  reference="Table 2")
    v = verdict(records, claim, key_names=("dataset", "loss", "eps", "seed"))
    print(v)   # holds: +4.2 points (95% CI +1.1 to +7.3, clustered bootstrap over ...)

The rule (``alpha`` and ``min_seeds`` are parameters, 0.05 and 5 by default):

1. **Pairing.** The runs of method A (those whose key matches ``claim.a``) and of method B are
   paired by every key field that neither filter names: the seed, and any field left free
   (e.g. the head architecture, when the claim is about all heads). Every pair must exist on
   both sides; a missing run is an error that names it.
2. **Seed level.** Each seed's value is the metric averaged over its pairs' other free fields;
   the seeds are compared by the exact sign-flip test of :func:`mltm.stats.paired_seed_test`,
   one-sided in the direction of the observed difference (the paper fixed the direction of
   every claim in advance, and each of "holds" and "reversed" is a one-sided conclusion at
   level ``alpha``; ``two_sided=True`` asks for the two-sided test). With n seeds the exact
   one-sided p is never below 2^-n, so 5 seeds can give p = 0.031 < 0.05 only when every seed
   agrees; 4 seeds never can.
3. **Query level**, when the records hold per-query outcomes (``per_query`` beside the
   metric, ``queries`` beside the rankings; see :data:`PER_QUERY_METRICS`): the paired
   clustered bootstrap of :func:`mltm.stats.clustered_bootstrap` over the test queries,
   clustered by ``cluster_by`` (default the query's class label), gives a ``1 - alpha``
   percentile interval for the mean difference.
4. **Verdict.** *holds* when there are at least ``min_seeds`` seeds, the seed-level p is below
   ``alpha`` and the query-level interval (when there is one) lies entirely on the claimed side
   of 0; *reversed* when both point to the other side; otherwise *undecided*, with the reasons.
   Without per-query outcomes the verdict rests on the seeds alone and says so
   (:attr:`Verdict.caveat`); its interval is then the paired t interval over seeds.

Because either direction can be concluded, a pair of methods with no real difference ends
*holds* with probability at most ``alpha`` and *holds* or *reversed* at most ``2 · alpha`` on
the seeds alone (less when the query-level interval must agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mltm.records import Records
from mltm.stats import ClusteredBootstrap, PairedSeedTest, clustered_bootstrap, paired_seed_test

__all__ = ["Claim", "Verdict", "verdict", "verdict_table", "PER_QUERY_METRICS", "VERDICTS"]

#: The three outcomes of :func:`verdict`.
VERDICTS = ("holds", "reversed", "undecided")

#: For each aggregate metric that has a per-query counterpart: the name in ``per_query`` and
#: the factor from the per-query outcome to the metric's unit (hit probabilities and average
#: precisions are in [0, 1], the aggregates in percent; zero-shot ``accuracy`` is the R@1 of
#: each clip ranking the class prompts). ``medR`` has none: a median is not a
#: mean over queries.
PER_QUERY_METRICS = {"R@1": ("R@1", 100.0), "accuracy": ("R@1", 100.0),
                     "R@5": ("R@5", 100.0), "R@10": ("R@10", 100.0),
                     "mAP@10": ("AP@10", 100.0), "meanR": ("rank", 1.0)}
_UNITS = {"R@1": "points", "R@5": "points", "R@10": "points", "mAP@10": "points",
          "accuracy": "points", "medR": "ranks", "meanR": "ranks"}


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: method A's metric is above (or below) method B's.

    Attributes:
        label: What is claimed, in words (e.g. ``"m-LTM beats NT-Xent on a2t R@1 (plan)"``).
        a: Method A as a filter over the record keys, ``{key field: value}``: a run is A's when
            its key has these values (e.g. ``{"loss": "m-LTM", "eps": 0.05}``).
        b: Method B, the same way (e.g. ``{"loss": "NT-Xent", "eps": 0.05}``).
        metric: The metric in the results (``"R@1"``, ``"mAP@10"``, ``"medR"``, ...).
        direction: ``"a2t"`` or ``"t2a"``; ``None`` for a value stored beside the directions
            (``modality_gap``).
        ranking: ``"distance"`` or ``"plan"`` (or another ranking the results record).
        split: Where the rankings are in a run's results: a key (``"test"``) or a path of keys.
        sign: The claimed sign of ``A - B``: ``+1`` when A is claimed higher, ``-1`` lower
            (e.g. a smaller median rank or a smaller modality gap).
        reference: Where the paper claims it (``"Table 2"``, ``"Figure 3"``, ``"§5.1"``).
    """

    label: str
    a: Mapping[str, Any]
    b: Mapping[str, Any]
    metric: str = "R@1"
    direction: str | None = "a2t"
    ranking: str = "plan"
    split: str | tuple[str, ...] = "test"
    sign: int = 1
    reference: str = ""

    def __post_init__(self):
        if self.sign not in (1, -1):
            raise ValueError(f"claim {self.label!r}: sign must be +1 (A higher) or -1 (A lower), "
                             f"got {self.sign!r}")
        for side in ("a", "b"):
            filt = getattr(self, side)
            if not isinstance(filt, Mapping) or not filt:
                raise ValueError(f"claim {self.label!r}: {side} must be a non-empty filter "
                                 f"{{key field: value}}, got {filt!r}")
            object.__setattr__(self, side, dict(filt))
        if self.a == self.b:
            raise ValueError(f"claim {self.label!r}: a and b are the same filter {self.a!r}; "
                             f"they must select different methods")

    @property
    def names(self) -> tuple[str, str]:
        """Short names of A and B: the filter values in which they differ."""
        fields = [f for f in {**self.a, **self.b} if self.a.get(f) != self.b.get(f)]
        return tuple(", ".join(str(filt[f]) for f in fields if f in filt) or repr(filt)
                     for filt in (self.a, self.b))

    @property
    def path(self) -> tuple[str, ...]:
        """The keys from a run's results to the dict that holds the metric."""
        split = (self.split,) if isinstance(self.split, str) else tuple(self.split)
        return (*split, self.ranking, *((self.direction,) if self.direction else ()))


@dataclass(frozen=True)
class Verdict:
    """The verdict on one :class:`Claim` (see :func:`verdict` for the rule).

    Attributes:
        claim: The claim judged.
        verdict: ``"holds"``, ``"reversed"`` or ``"undecided"``.
        effect: Mean paired difference ``A - B`` over seeds, in the metric's unit.
        interval: ``confidence`` interval of the effect: the clustered bootstrap's when the
            records hold per-query outcomes, otherwise the paired t interval over seeds.
        p_value: The seed-level exact sign-flip p-value (one-sided in the direction of the
            observed effect unless ``two_sided``).
        test: The tests that produced ``p_value`` and ``interval``, in words.
        n_seeds: Seeds paired.
        n_queries: Test queries per run in the bootstrap (``None`` without per-query data).
        n_clusters: Query clusters resampled (``None`` without per-query data).
        reason: Why the verdict is undecided (``""`` otherwise).
        caveat: Evidence that was unavailable, e.g. the query-level interval (``""`` if none).
        confidence: Level of ``interval`` (``1 - alpha``).
        unit: The effect's unit (``"points"`` for percentages, ``"ranks"``, or ``""``).
        seed_test: The full seed-level test.
        bootstrap: The full query-level bootstrap in per-query units, or ``None``.
    """

    claim: Claim
    verdict: str
    effect: float
    interval: tuple[float, float]
    p_value: float
    test: str
    n_seeds: int
    n_queries: int | None
    n_clusters: int | None
    reason: str
    caveat: str
    confidence: float
    unit: str
    seed_test: PairedSeedTest
    bootstrap: ClusteredBootstrap | None

    def __str__(self) -> str:
        head = self.verdict + (f" ({self.reason})" if self.reason else "")
        b = self.bootstrap
        if b is not None:
            source = (f"clustered bootstrap over {b.n_queries:,} queries in {b.n_clusters:,} "
                      f"clusters" if b.n_clusters < b.n_queries
                      else f"bootstrap over {b.n_queries:,} queries")
        else:
            source = f"paired t over {self.n_seeds} seeds"
        sided = "two-sided" if self.seed_test.alternative == "two-sided" else "one-sided"
        exact = "exact" if self.seed_test.exact else "randomised"
        unit = f" {self.unit}" if self.unit else ""
        text = (f"{head}: {_signed(self.effect)}{unit} ({self.confidence:.0%} CI "
                f"{_signed(self.interval[0])} to {_signed(self.interval[1])}, {source}; "
                f"{exact} {sided} sign-flip {_p(self.p_value)}, {self.n_seeds} seeds)")
        return text + (f"; {self.caveat}" if self.caveat else "")


def _signed(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.1f}" if abs(x) >= 0.95 else f"{x:+.2f}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _describe(fields: Sequence[str], values: tuple) -> str:
    parts = [f"{f}={v!r}" for f, v in zip(fields, values)]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def _side_runs(records: Records, key_names: tuple[str, ...], filt: Mapping[str, Any],
               name: str, pair_fields: list[str]) -> dict[tuple, tuple[tuple, dict]]:
    """``{pairing values: (run key, results)}`` of the runs that match ``filt``."""
    runs: dict[tuple, tuple[tuple, dict]] = {}
    for key, results in records.runs.items():
        named = dict(zip(key_names, key))
        if all(named[f] == v for f, v in filt.items()):
            pair = tuple(named[f] for f in pair_fields)
            if pair in runs:
                other = dict(zip(key_names, runs[pair][0]))
                differ = [f for f in key_names if named[f] != other[f]]
                raise ValueError(f"{name} matches runs {runs[pair][0]!r} and {key!r}, which "
                                 f"differ only in {differ!r}, fixed for the other method; name "
                                 f"{differ[0]!r} in {name}'s filter too")
            runs[pair] = (key, results)
    if not runs:
        seen = {f: sorted({dict(zip(key_names, k))[f] for k in records.runs}, key=repr)
                for f in filt}
        raise ValueError(f"no recorded run matches {dict(filt)!r}; the recorded values are "
                         f"{seen!r}")
    return runs


def _node(results: dict, path: tuple[str, ...], key: tuple) -> dict:
    node = results
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"run {key!r} has no {'/'.join(path[:i + 1])!r} in its results; "
                             f"check the claim's split, ranking and direction")
        node = node[part]
    return node


def _queries(results: dict, claim: Claim) -> dict | None:
    split = claim.path[:len(claim.path) - 1 - (claim.direction is not None)]
    node = results
    for part in (*split, "queries"):
        node = node.get(part) if isinstance(node, dict) else None
    if claim.direction is not None and isinstance(node, dict):
        node = node.get(claim.direction)
    return node if isinstance(node, dict) else None


def _pair(records: Records, claim: Claim, key_names: tuple[str, ...], seed_field: str,
          incomplete: str = "raise") -> tuple[dict, dict, dict[Any, list[tuple]], int]:
    """A's and B's runs by pairing values, the pairing values of each seed, and how many runs
    were left out as unpaired (``incomplete="intersect"``)."""
    name_a, name_b = claim.names
    pair_fields = [f for f in key_names if f not in claim.a and f not in claim.b]
    runs_a = _side_runs(records, key_names, claim.a, name_a, pair_fields)
    runs_b = _side_runs(records, key_names, claim.b, name_b, pair_fields)
    dropped = 0
    if incomplete == "intersect":
        # keep the seeds on which both sides have every stratum (an unfinished recording)
        seed_at = pair_fields.index(seed_field)

        def stratum(p):
            return p[:seed_at] + p[seed_at + 1:]

        strata = {stratum(p) for p in (*runs_a, *runs_b)}
        complete = {seed for seed in {p[seed_at] for p in (*runs_a, *runs_b)}
                    if all({stratum(p) for p in runs if p[seed_at] == seed} == strata
                           for runs in (runs_a, runs_b))}
        kept_a = {p: r for p, r in runs_a.items() if p[seed_at] in complete}
        kept_b = {p: r for p, r in runs_b.items() if p[seed_at] in complete}
        dropped = len(runs_a) + len(runs_b) - len(kept_a) - len(kept_b)
        if not kept_a:
            raise ValueError(f"no seed has runs of both {name_a} and {name_b} for every "
                             f"{', '.join(f for f in pair_fields if f != seed_field) or 'seed'}"
                             f"; nothing to compare yet")
        runs_a, runs_b = kept_a, kept_b

    missing = []
    for have, lack, runs_have, runs_lack in ((name_a, name_b, runs_a, runs_b),
                                             (name_b, name_a, runs_b, runs_a)):
        absent = [p for p in runs_have if p not in runs_lack]
        if absent:
            missing.append(f"{lack} has no run for "
                           f"{', '.join(_describe(pair_fields, p) for p in absent)} "
                           f"({have} has)")
    if missing:
        raise ValueError(f"cannot pair {name_a} with {name_b} by {', '.join(pair_fields)}: "
                         + "; ".join(missing))

    seed_at = pair_fields.index(seed_field)
    seeds: dict[Any, list[tuple]] = {}
    for pair in runs_a:
        seeds.setdefault(pair[seed_at], []).append(pair)
    strata = {p[:seed_at] + p[seed_at + 1:] for p in runs_a}
    strata_fields = [f for f in pair_fields if f != seed_field]
    for seed, pairs in seeds.items():
        lacking = strata - {p[:seed_at] + p[seed_at + 1:] for p in pairs}
        if lacking:
            lacking = ", ".join(_describe(strata_fields, s) for s in sorted(lacking, key=repr))
            raise ValueError(f"seed {seed!r} has no runs for {lacking}, which other seeds have; "
                             f"record them or fix those fields in the claim's filters")

    return runs_a, runs_b, seeds, dropped


def verdict(records: Records, claim: Claim, key_names: Iterable[str], *, alpha: float = 0.05,
            min_seeds: int = 5, seed_field: str = "seed", cluster_by: str | None = "label",
            two_sided: bool = False, n_resamples: int = 10_000,
            bootstrap_seed: int = 0, incomplete: str = "raise") -> Verdict:
    """Judge ``claim`` on ``records``: holds, reversed or undecided (the rule is in the module
    docstring).

    Args:
        records: The recorded runs.
        claim: The claim.
        key_names: A name for each part of the run keys, e.g. ``("dataset", "loss", "eps",
            "seed")``.
        alpha: Level of the seed-level test; the interval's confidence is ``1 - alpha``.
        min_seeds: Fewest seeds for a verdict other than undecided.
        seed_field: The key field that holds the training seed.
        cluster_by: The query metadata (``results[split]["queries"][direction]``) whose values
            cluster the queries for the bootstrap (``"label"``, ``"clip"``); ``None`` makes
            every query its own cluster.
        two_sided: Use the two-sided sign-flip p-value instead of the one-sided one.
        n_resamples: Bootstrap replicates.
        bootstrap_seed: Seed of the bootstrap's generator.
        incomplete: ``"raise"`` (default): a run of one side without its pair is an error;
            ``"intersect"``: judge on the seeds that both sides have complete (a recording in
            progress), and say in the caveat how many runs were left out.

    Returns:
        The :class:`Verdict`.

    Raises:
        ValueError: the key names do not fit the keys or the filters; a filter matches no run;
            one side lacks a run that the other has (the message names the seeds); the runs
            lack the claimed metric; two paired runs were evaluated on different queries.
    """
    key_names = tuple(key_names)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    for key in records.runs:
        if len(key) != len(key_names):
            raise ValueError(f"run key {key!r} has {len(key)} parts, but {len(key_names)} names "
                             f"were given: {key_names!r}")
    for field in (*claim.a, *claim.b):
        if field not in key_names:
            raise ValueError(f"claim {claim.label!r} filters on {field!r}, which is not a key "
                             f"field; the key fields are {key_names!r}")
    if seed_field not in key_names:
        raise ValueError(f"no key field is named {seed_field!r} (the key fields are "
                         f"{key_names!r}); pass seed_field=")
    if seed_field in claim.a or seed_field in claim.b:
        raise ValueError(f"claim {claim.label!r} fixes the seed field {seed_field!r}; runs are "
                         f"paired by seed, so leave it out of the filters")
    if incomplete not in ("raise", "intersect"):
        raise ValueError(f"incomplete={incomplete!r}: use 'raise' or 'intersect'")
    runs_a, runs_b, seeds, dropped = _pair(records, claim, key_names, seed_field, incomplete)
    path = claim.path
    order = [pair for pairs in seeds.values() for pair in pairs]

    def value(runs, pair):
        key, results = runs[pair]
        node = _node(results, path, key)
        if claim.metric not in node or not isinstance(node[claim.metric], (int, float)):
            raise ValueError(f"run {key!r} has no numeric {claim.metric!r} under "
                             f"{'/'.join(path)!r}; its entries are {sorted(node)!r}")
        return float(node[claim.metric])

    seed_a = [np.mean([value(runs_a, p) for p in pairs]) for pairs in seeds.values()]
    seed_b = [np.mean([value(runs_b, p) for p in pairs]) for pairs in seeds.values()]
    # One-sided in the direction the seeds point: "holds" and "reversed" are each a one-sided
    # conclusion (the claim's direction was fixed before the runs).
    observed = float(np.mean(np.subtract(seed_a, seed_b)))
    alternative = "two-sided" if two_sided else ("less" if observed < 0 else "greater")
    seed_test = paired_seed_test(seed_a, seed_b, alternative=alternative, confidence=1 - alpha)
    effect, p_value, n_seeds = seed_test.mean, seed_test.p_value, seed_test.n

    boot, caveat = _query_level(runs_a, runs_b, order, claim, cluster_by, alpha, n_resamples,
                                bootstrap_seed)
    if dropped:
        left_out = f"{dropped} unpaired run{'s' * (dropped != 1)} left out (recording incomplete)"
        caveat = f"{caveat}; {left_out}" if caveat else left_out
    scale = PER_QUERY_METRICS[claim.metric][1] if boot is not None else 1.0

    p_min = 2.0 ** (1 - n_seeds) if two_sided else 2.0 ** -n_seeds
    side = int(np.sign(effect))
    reasons = []
    if n_seeds < min_seeds:
        reasons.append(f"fewer than {min_seeds} seeds ({n_seeds})")
    elif seed_test.exact and p_min >= alpha:
        reasons.append(f"{n_seeds} seeds cannot give p < {alpha:g} (smallest exact p "
                       f"{p_min:.3g})")
    if side == 0:
        reasons.append("no difference between the methods over seeds")
    elif p_value >= alpha:
        reasons.append(f"seed-level {_p(p_value)} ≥ {alpha:g}")
    if boot is not None:
        lo, hi = (scale * x for x in boot.interval)
        if lo <= 0 <= hi:
            reasons.append(f"the query-level interval ({_signed(lo)} to {_signed(hi)}) "
                           f"includes 0")
        elif side != 0 and (lo > 0) != (side > 0):
            reasons.append(f"the query-level interval ({_signed(lo)} to {_signed(hi)}) lies "
                           f"on the other side of 0 than the seed-level effect")
    if reasons:
        outcome = "undecided"
    else:
        outcome = "holds" if side == claim.sign else "reversed"

    seed_name = (f"{'exact' if seed_test.exact else 'randomised'} sign-flip over {n_seeds} "
                 f"seeds ({'two' if two_sided else 'one'}-sided)")
    if boot is not None:
        interval = tuple(scale * x for x in boot.interval)
        over = (f"clustered bootstrap over {boot.n_queries:,} queries in {boot.n_clusters:,} "
                f"clusters by {cluster_by}" if cluster_by
                else f"bootstrap over {boot.n_queries:,} queries")
        test = f"{seed_name}; paired {over} ({boot.n_resamples:,} resamples)"
    else:
        interval = seed_test.interval
        test = f"{seed_name}; paired t interval over seeds"
    return Verdict(claim=claim, verdict=outcome, effect=effect,
                   interval=(float(interval[0]), float(interval[1])), p_value=float(p_value),
                   test=test, n_seeds=n_seeds,
                   n_queries=boot.n_queries if boot else None,
                   n_clusters=boot.n_clusters if boot else None,
                   reason="; ".join(reasons) if outcome == "undecided" else "", caveat=caveat,
                   confidence=1 - alpha, unit=_UNITS.get(claim.metric, ""),
                   seed_test=seed_test, bootstrap=boot)


def _query_level(runs_a, runs_b, order, claim, cluster_by, alpha, n_resamples, seed
                 ) -> tuple[ClusteredBootstrap | None, str]:
    """The paired clustered bootstrap over queries, or ``None`` and why it is unavailable."""
    unavailable = "query-level interval unavailable: "
    if claim.metric not in PER_QUERY_METRICS:
        return None, unavailable + f"{claim.metric} has no per-query counterpart"
    name = PER_QUERY_METRICS[claim.metric][0]
    where = "/".join(claim.path) + f"/per_query/{name}"
    rows_a, rows_b, metas = [], [], []
    lacking = 0
    for pair in order:
        outcomes, meta = [], []
        for runs in (runs_a, runs_b):
            key, results = runs[pair]
            per_query = _node(results, claim.path, key).get("per_query")
            if not isinstance(per_query, dict) or name not in per_query:
                lacking += 1
                outcomes.append(None)
            else:
                outcomes.append(np.asarray(per_query[name], dtype=np.float64))
            meta.append(_queries(results, claim))
        if any(o is None for o in outcomes):
            continue
        (key_a, _), (key_b, _) = runs_a[pair], runs_b[pair]
        if outcomes[0].shape != outcomes[1].shape:
            raise ValueError(f"runs {key_a!r} and {key_b!r} have {outcomes[0].size} and "
                             f"{outcomes[1].size} per-query outcomes; paired runs must be "
                             f"evaluated on the same test queries")
        if meta[0] is not None and meta[1] is not None and meta[0] != meta[1]:
            raise ValueError(f"runs {key_a!r} and {key_b!r} were evaluated on different test "
                             f"queries (their 'queries' differ); paired runs must share them")
        rows_a.append(outcomes[0])
        rows_b.append(outcomes[1])
        metas.append(meta[0] if meta[0] is not None else meta[1])
    if lacking:
        total = 2 * len(order)
        found = "no run records" if lacking == total else f"{lacking} of {total} runs lack"
        return None, unavailable + f"{found} per-query outcomes ({where!r})"
    if len({r.size for r in rows_a}) > 1 or any(m != metas[0] for m in metas[1:]):
        return None, unavailable + "the paired runs were evaluated on different query sets"
    clusters = None
    if cluster_by is not None:
        meta = metas[0]
        if meta is None or cluster_by not in meta:
            return None, unavailable + (f"no query metadata {cluster_by!r} to cluster by "
                                        f"({'/'.join(claim.path[:-1 - bool(claim.direction)])}"
                                        f"/queries)")
        clusters = np.asarray([repr(c) for c in meta[cluster_by]])
        if clusters.size != rows_a[0].size:
            raise ValueError(f"the query metadata {cluster_by!r} has {clusters.size} entries for "
                             f"{rows_a[0].size} per-query outcomes; the records are inconsistent")
    boot = clustered_bootstrap(np.stack(rows_a), np.stack(rows_b), clusters,
                               n_resamples=n_resamples, confidence=1 - alpha, seed=seed)
    return boot, ""


def verdict_table(records: Records, claims: Iterable[Claim], key_names: Iterable[str],
                  **options):
    """The verdicts on ``claims`` as a :class:`pandas.DataFrame`, one row per claim.

    Columns: ``claim`` (the label), ``reference``, ``verdict``, ``effect``, ``ci_low``,
    ``ci_high``, ``p_value``, ``n_seeds``, ``n_queries``, ``n_clusters``, ``test``, ``reason``
    and ``caveat``.

    Args:
        records: The recorded runs.
        claims: The claims.
        key_names: A name for each part of the run keys.
        **options: Passed to :func:`verdict` (``alpha``, ``min_seeds``, ``cluster_by``, ...).
    """
    import pandas as pd

    key_names = tuple(key_names)
    rows = []
    for claim in claims:
        v = verdict(records, claim, key_names, **options)
        rows.append({"claim": claim.label, "reference": claim.reference, "verdict": v.verdict,
                     "effect": v.effect, "ci_low": v.interval[0], "ci_high": v.interval[1],
                     "p_value": v.p_value, "n_seeds": v.n_seeds, "n_queries": v.n_queries,
                     "n_clusters": v.n_clusters, "test": v.test, "reason": v.reason,
                     "caveat": v.caveat})
    columns = ["claim", "reference", "verdict", "effect", "ci_low", "ci_high", "p_value",
               "n_seeds", "n_queries", "n_clusters", "test", "reason", "caveat"]
    return pd.DataFrame(rows, columns=columns)
