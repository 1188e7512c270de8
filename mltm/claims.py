"""The paper's claims as data: for each experiment, which recorded runs to compare on which metric.

A chapter records its runs (:mod:`mltm.experiments`) and judges the paper's claims on them
(:mod:`mltm.verdicts`). The claims live here, once, so that a chapter and the book's summary of
all verdicts judge the same comparisons:

    rec = load_records(paths.results / "retrieval")
    claims = retrieval_claims(rec)             # a ClaimSet: key names and claims by group
    tables = judge(claims, rec)                # {group: verdict table}, mltm.verdicts.verdict_table
    compact(tables["Tables 2, 7"])             # the columns a page shows

Every builder reads what it needs from the records themselves (the datasets and grids of the
recorded configuration, the learning rate each loss was chosen to train at), so it works on a
chapter's `ci` execution and on its recorded run alike. The paper's references are Luong et al.,
ICLR 2024: Table 2 (losses, ResNet38 and HTSAT), Table 3 (zero-shot ESC-50), Table 4 (modality
gap), Table 5 and Figure 2 (noisy correspondence), Tables 6 and 8 (ε and the metric), Table 7
(contrastive + entropic), Table 9 (transfer); besides them, the invariance chapter's own
predictions from the gauge of entropic OT (gauge-fixed m-LTM, training normalisations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mltm.records import Records
from mltm.verdicts import Claim, verdict_table

__all__ = ["ClaimSet", "chosen_lr", "retrieval_claims", "zeroshot_claims", "mahalanobis_claims",
           "noisy_claims", "table8_claims", "invariance_claims", "judge", "compact",
           "CLAIM_BUILDERS"]


@dataclass(frozen=True)
class ClaimSet:
    """The claims of one experiment, by group (a paper table or figure).

    Attributes:
        experiment: The experiment's name (its folder under ``results/``).
        key_names: A name for each part of the experiment's run keys.
        groups: ``{group label: [Claim, ...]}``, e.g. ``{"Tables 2, 7": [...]}``.
        prepare: Applied to the records before judging (None: as recorded), e.g. to score a
            run whose model became non-finite at chance.
    """

    experiment: str
    key_names: tuple[str, ...]
    groups: dict[str, list[Claim]] = field(default_factory=dict)
    prepare: Callable[[Records], Records] | None = None


def chosen_lr(records: Records) -> dict[str, float]:
    """The learning rate each method trains at (``extra["lr_grid"]``, chosen on validation).

    Raises:
        ValueError: the records have no learning-rate grid yet (a recording still choosing).
    """
    grid = records.extra.get("lr_grid")
    if not grid:
        raise ValueError("the records hold no learning-rate grid (extra['lr_grid']); the "
                         "recording has not chosen its learning rates yet")
    return {row["method"]: row["lr"] for row in grid if row["chosen"]}


def _settings(records: Records) -> dict[str, Any]:
    return records.provenance.get("config", {})


def retrieval_claims(records: Records, eps: float = 0.05) -> ClaimSet:
    """Tables 2, 4, 6–9 on the retrieval chapter's runs, keys (dataset, method, eps, lr, seed).

    m-LTM against each baseline on R@1 of both directions under both rankings (Tables 2, 7),
    on the second caption set under the plan, m-LTM's modality gap below each baseline's
    (Table 4), m-LTM at ``eps`` above every other recorded ε (Tables 6, 8), and transfer to the
    other set in both directions (Table 9).
    """
    st, lr = _settings(records), chosen_lr(records)
    main, other = st["dataset"], st["other"]

    def side(name, ds=main, e=eps):
        return {"dataset": ds, "method": name, "eps": e, "lr": lr[name]}

    def beats(ds, b, d, r, ref, split="test", label=None):
        return Claim(label or f"{ds}: m-LTM > {b}, {d} R@1, {r}", a=side("m-LTM", ds),
                     b=side(b, ds), metric="R@1", direction=d, ranking=r, split=split,
                     reference=ref)

    baselines = [b for b in ("triplet", "NT-Xent", "contrastive + entropic") if b in lr]
    groups = {
        "Tables 2, 7": [beats(main, b, d, r, "Table 7" if b == "contrastive + entropic"
                              else "Table 2")
                        for r in ("plan", "distance") for b in baselines for d in ("t2a", "a2t")],
        "Table 2, second set": [beats(other, b, d, "plan", "Table 2")
                                for b in ("triplet", "NT-Xent") for d in ("t2a", "a2t")],
        "Table 4": [Claim(f"{main}: m-LTM's gap < {b}'s", a=side("m-LTM"), b=side(b),
                          metric="modality_gap", direction=None, ranking="plan", sign=-1,
                          reference="Table 4") for b in baselines],
    }
    recorded_eps = sorted({k[2] for k in records.runs if k[0] == main and k[1] == "m-LTM"})
    groups["Tables 6, 8"] = [
        Claim(f"{main}: m-LTM at ε = {eps} > at ε = {e}, {d} R@1, plan", a=side("m-LTM"),
              b=side("m-LTM", e=e), metric="R@1", direction=d, ranking="plan",
              reference="Table 8" if e < eps else "Table 6")
        for e in recorded_eps if e != eps for d in ("t2a", "a2t")]
    groups["Table 9"] = [
        beats(src, b, d, "plan", "Table 9", split="transfer",
              label=f"{src}→{dst}: m-LTM > {b}, {d} R@1, plan")
        for src, dst in ((main, other), (other, main))
        for b in ("triplet", "NT-Xent") for d in ("t2a", "a2t")]
    return ClaimSet("retrieval", ("dataset", "method", "eps", "lr", "seed"), groups)


def zeroshot_claims(records: Records) -> ClaimSet:
    """Tables 3 and 4 (ESC-50 column) on the zero-shot chapter's runs, keys (method, lr, seed):
    m-LTM's zero-shot accuracy above each baseline's on every test set under both rankings, and
    its clip-prompt modality gap below theirs."""
    lr = chosen_lr(records)
    first = next(iter(records.runs.values()))
    sets = list(first["zeroshot"])

    def side(name):
        return {"method": name, "lr": lr[name]}

    return ClaimSet("zeroshot", ("method", "lr", "seed"), {
        "Table 3": [Claim(f"{w}: m-LTM > {b}, accuracy, {r}", a=side("m-LTM"), b=side(b),
                          metric="accuracy", direction=None, ranking=r,
                          split=("zeroshot", w, "metrics"), reference="Table 3")
                    for w in sets for r in ("plan", "distance") for b in ("triplet", "NT-Xent")],
        "Table 4": [Claim(f"{w}: m-LTM's gap < {b}'s", a=side("m-LTM"), b=side(b),
                          metric="modality_gap", direction=None, ranking="plan",
                          split=("zeroshot", w, "gap"), sign=-1, reference="Table 4")
                    for w in sets for b in ("triplet", "NT-Xent")],
    })


def mahalanobis_claims(records: Records) -> ClaimSet:
    """Table 6 (metric) on the Mahalanobis chapter's runs, keys (variant, seed): every learned
    metric above the Euclidean one on R@1 of both directions, under both rankings."""
    variants = list(dict.fromkeys(k[0] for k in records.runs if k[0] != "Euclidean"))
    return ClaimSet("mahalanobis", ("variant", "seed"), {"Table 6 (metric)": [
        Claim(f"{v} > Euclidean, {d} R@1, {r}", a={"variant": v}, b={"variant": "Euclidean"},
              metric="R@1", direction=d, ranking=r, reference="Table 6")
        for r in ("plan", "distance") for v in variants for d in ("t2a", "a2t")]})


def noisy_claims(records: Records, pot_mass: float = 0.8) -> ClaimSet:
    """Table 5 and Figure 2 on the noisy-correspondence chapter's runs, keys (xi, method, seed),
    ranked by the plan: at each noise level, m-LTM + POT (s = ``pot_mass``) above balanced
    m-LTM, m-LTM above NT-Xent and triplet, and every recorded mass s < 1 above s = 1."""
    noise = sorted({k[0] for k in records.runs})
    pot = {k[1] for k in records.runs if k[1].startswith("m-LTM + POT")}

    def claim(xi, a, b, d, ref):
        return Claim(f"ξ={xi}: {a} > {b}, {d} R@1, plan", a={"xi": xi, "method": a},
                     b={"xi": xi, "method": b}, metric="R@1", direction=d, ranking="plan",
                     reference=ref)

    table5 = f"m-LTM + POT (s={pot_mass})"
    return ClaimSet("noisy_correspondence", ("xi", "method", "seed"), {
        "Table 5": [claim(xi, a, b, d, "Table 5") for xi in noise for d in ("t2a", "a2t")
                    for a, b in ((table5, "m-LTM"), ("m-LTM", "NT-Xent"), ("m-LTM", "triplet"))],
        "Figure 2": [claim(xi, name, "m-LTM", d, "Figure 2") for xi in noise
                     for name in sorted(pot) for d in ("t2a", "a2t")],
    })


def _nonfinite_at_chance(records: Records) -> Records:
    """The records with every run that has no test metrics (its model became non-finite in
    training) scored at its chance level under both rankings."""
    out = Records(provenance=records.provenance, extra=records.extra, path=records.path)
    for key, results in records.runs.items():
        if "plan" not in (results.get("test") or {}):
            results = {**results, "test": {"plan": results["chance"],
                                           "distance": results["chance"]}}
        out.add(key, results, records.histories.get(key))
    return out


def table8_claims(records: Records) -> ClaimSet:
    """Table 8's collapse tested on ``scripts/table8_numerics.py``'s runs, keys (arm, eps, seed):
    at every ε where the released exp-domain iteration also ran in float64 (the paper's collapse
    region), the same objective in float64 (that iteration, and the stable log-domain solver,
    both on the cost divided by its maximum) trains to a higher test R@1 than the released
    float32 solver. A run whose model became non-finite scores chance."""
    region = sorted({k[1] for k in records.runs if k[0] == "released-f64"})
    claims = [Claim(f"ε={eps:g}: {what} f64 > released f32, {d} R@1",
                    a={"arm": arm, "eps": eps}, b={"arm": "released-f32", "eps": eps},
                    metric="R@1", direction=d, ranking="plan", reference="Table 8")
              for arm, what in (("released-f64", "released"), ("stable-max", "log-domain"))
              for eps in region for d in ("t2a", "a2t")]
    return ClaimSet("table8", ("arm", "eps", "seed"), {"Table 8 (numerics)": claims},
                    prepare=_nonfinite_at_chance)


#: The gauge-fixed m-LTM variants and training normalisations of the invariance chapter.
GAUGE_VARIANTS = ("centre", "penalty", "InfoNCE", "InfoNCE a2t")
NORMALISATIONS = ("softmax (half-step)", "3 iterations")


def invariance_claims(records: Records) -> ClaimSet:
    """The invariance chapter's comparisons between models, keys (model, seed), on the R@1 and
    gaps its runs record (``analysis``, last epoch): Table 4, each m-LTM model's final modality
    gap below NT-Xent's; the book's own predictions from the gauge of entropic OT, each
    gauge-fixed variant's audio→text R@1 by distance above plain m-LTM (M = I), and text→audio
    R@1 by distance of a training normalisation that leaves the clip terms trained (a softmax
    half-step, three unrolled iterations) above converged training."""
    models = set(k[0] for k in records.runs)
    base = "m-LTM (M = I)"

    def recall(a, d, what):
        return Claim(f"{a}: {d} R@1 by distance above {what}", a={"model": a},
                     b={"model": base}, metric=d, direction=None, ranking="distance",
                     split=("analysis", "recall"), reference="invariance (this book)")

    gap = [Claim(f"{m}: final gap below NT-Xent's", a={"model": m}, b={"model": "NT-Xent"},
                 metric="gap", direction=None, ranking="final", split=("analysis", "gap"),
                 sign=-1, reference="Table 4")
           for m in ("m-LTM (full M)", base) if m in models and "NT-Xent" in models]
    return ClaimSet("invariance", ("model", "seed"), {
        "Table 4 (gap)": gap,
        "gauge fixing": [recall(v, "a2t", "plain m-LTM") for v in GAUGE_VARIANTS if v in models],
        "training normalisation": [recall(v, "t2a", "converged training")
                                   for v in NORMALISATIONS if v in models],
    })


#: The claim builder of each experiment, by its folder name under ``results/``.
CLAIM_BUILDERS = {"retrieval": retrieval_claims, "zeroshot": zeroshot_claims,
                  "mahalanobis": mahalanobis_claims, "noisy_correspondence": noisy_claims,
                  "table8": table8_claims, "invariance": invariance_claims}


def judge(claims: ClaimSet, records: Records, **options) -> dict[str, Any]:
    """``{group: verdict table}`` of a claim set on records (:func:`mltm.verdicts.verdict_table`,
    judged on the seeds both sides of a claim have: ``incomplete="intersect"``)."""
    options.setdefault("incomplete", "intersect")
    if claims.prepare is not None:
        records = claims.prepare(records)
    return {group: verdict_table(records, group_claims, claims.key_names, **options)
            for group, group_claims in claims.groups.items()}


def compact(table):
    """The columns of a verdict table a page shows, indexed by claim: verdict, effect, its
    interval (``n/a`` where one seed cannot give one), the sign-flip p, seeds, and why a claim
    is undecided (the bootstrap's interval shortened to "interval includes 0")."""
    import numpy as np
    import pandas as pd

    interval = [f"{lo:+.2f} to {hi:+.2f}" if np.isfinite(lo) else "n/a"
                for lo, hi in zip(table["ci_low"], table["ci_high"])]
    why = table["reason"].str.replace(r"; the query-level interval .*", "; interval includes 0",
                                      regex=True)
    return pd.DataFrame({"reference": table["reference"].to_numpy(),
                         "verdict": table["verdict"].to_numpy(),
                         "effect": table["effect"].round(2).to_numpy(), "95% CI": interval,
                         "p (sign-flip)": table["p_value"].round(4).to_numpy(),
                         "seeds": table["n_seeds"].to_numpy(), "why undecided": why.to_numpy()},
                        index=pd.Index(table["claim"], name="claim"))
