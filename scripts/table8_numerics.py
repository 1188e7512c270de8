"""Is the paper's Table 8 collapse at small ε numerical? And what does ε mean with a learned M?

The paper's Table 8 reports m-LTM trained at ε = 0.01 and 0.02 at chance level (text→audio
R@1 0.10 = 1/957 on AudioCaps), and at ε ≥ 0.03 near its best. The released code trains with
POT's exp-domain Sinkhorn in float32, unrolled through 1,000 iterations, on the cost divided
by its batch maximum (:mod:`mltm.ot.released`). This script trains the same model on frozen
encoder outputs of a small real set under five configurations ("arms") at each ε of a grid,
several seeds each, and records every run into ``results/table8/<config>/records.json``
(:class:`mltm.experiments.Experiment`: provenance, saved after every run, resumable run by run):

==============  ==========================================================================
arm             solver and cost
==============  ==========================================================================
released-f32    the released loss (:func:`mltm.ot.released.released_mltm_loss`): diag(M)
                cost / max, exp-domain Sinkhorn, float32, unrolled, 1,000 iterations
released-f64    the same in float64 (separates float32 from the exp-domain algorithm)
stable-max      this library: log-domain Sinkhorn, implicit gradient, float64, on the same
                cost / max (:func:`mltm.ot.sinkhorn_log`, ``cost_normalization="max"``)
stable-none     the same without normalisation: the scale of M is learned, so ε is not
                identifiable (c_{αM} = √α c_M: scaling M is the same as dividing ε by √α)
stable-trace    the same with M divided by trace(M)/d in the cost (unit-trace M): ε has a
                fixed unit, the distance under a unit-trace metric
==============  ==========================================================================

Every arm starts from the same heads and the same diag(M) (the released initialisation, in
[1, 2)) for a given seed, sees the same batches, and uses Adam with the released gradient
clipping (global norm 2). Per step it records whether the loss, the plan or the gradient
were non-finite, how many plan entries underflowed to 0, whether POT's safeguard fired, the
gradient norm, and, for the released arms, the closed-form prediction of the first
half-step's overflow (see :mod:`mltm.ot.released`). The effective temperature is ε in units
of the unit-trace distance c_{M/s(M)} with s(M) = trace(M)/d: ε / √s(M) without
normalisation, ε · max_batch c_{M/s(M)} (averaged over the last epoch) with the batch
maximum, ε with the unit trace.

    .venv/bin/python scripts/table8_numerics.py --config cpu          # record (about 10 min)
    .venv/bin/python scripts/table8_numerics.py --config cpu --report # the tables, no training
    .venv/bin/python scripts/table8_numerics.py --config ci           # a small smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from mltm.experiments import Experiment, encode_dataset, repo_paths, train_config  # noqa: E402
from mltm.metric import MahalanobisCost  # noqa: E402
from mltm.model import build_model  # noqa: E402
from mltm.ot import ConvergenceWarning, sinkhorn_log  # noqa: E402
from mltm.ot.released import released_cost, released_mltm_loss  # noqa: E402
from mltm.records import Records  # noqa: E402
from mltm.retrieval import retrieval_metrics  # noqa: E402

#: solver, dtype and cost normalisation of each arm (see the module docstring).
ARMS = {
    "released-f32": dict(solver="released", dtype="float32", normalization="max"),
    "released-f64": dict(solver="released", dtype="float64", normalization="max"),
    "stable-max": dict(solver="stable", dtype="float64", normalization="max"),
    "stable-none": dict(solver="stable", dtype="float64", normalization="none"),
    "stable-trace": dict(solver="stable", dtype="float64", normalization="trace"),
}
SETTINGS = {
    # The paper's 1024-d joint space (the cost concentration at initialisation depends on it),
    # 512-wide heads; batch 32 of one caption per scene, 5 epochs (40 steps), 5 seeds. The
    # float64 exp-domain arm runs only where float32 is predicted to fail (it runs all 1,000
    # iterations there, about 1 s a step on this CPU).
    "cpu": dict(dataset="debsfx-scenes-ci", joint=1024, hidden=512, batch=32, epochs=5,
                lr=1e-3, grad_clip=2.0, seeds=(0, 1, 2, 3, 4),
                eps_grid=(0.01, 0.02, 0.03, 0.05, 0.1),
                arms=tuple(ARMS), arm_eps={"released-f64": (0.01, 0.02)}, released_iter=1000,
                stable_tol=1e-5, stable_max_iter=2000, eval_eps=0.03),
    # A smoke run (not recorded): two ε, one seed, one epoch.
    "ci": dict(dataset="debsfx-scenes-ci", joint=1024, hidden=256, batch=32, epochs=1,
               lr=1e-3, grad_clip=2.0, seeds=(0,), eps_grid=(0.01, 0.05),
               arms=("released-f32", "stable-max"), arm_eps={}, released_iter=1000,
               stable_tol=1e-5, stable_max_iter=2000, eval_eps=0.03),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Largest finite float32, and its log: e^t overflows float32 for t > 88.72.
F32_MAX = torch.finfo(torch.float32).max
#: A run collapsed when more than this share of its steps had a non-finite loss or gradient
#: and its test R@1 (mean of both directions, plan ranking) is below COLLAPSE_CHANCE x chance.
COLLAPSE_NONFINITE_SHARE = 0.5
COLLAPSE_CHANCE = 2.0


# -- the pieces of one training step -----------------------------------------------------------


def first_half_step_overflow(C: torch.Tensor, eps: float) -> tuple[bool, bool]:
    """Closed-form prediction of the released solver's first half-step in float32.

    POT starts from ``u = 1/n``: ``x_j = Σ_i e^{-C_ij/ε} / n`` and ``v_j = (1/m) / x_j``.
    The forward overflows when some ``v_j`` exceeds the float32 maximum (POT's safeguard then
    returns the initial scalings); autograd's backward of ``v = b / x`` computes
    ``(b / x) / x = v_j / x_j``, which overflows earlier. Both are evaluated in float64 on
    the float32 cost (exact up to the rounding of the sums). Returns ``(forward, backward)``.
    """
    C = C.detach().to(torch.float64)
    n, m = C.shape
    x = torch.exp(-C / eps).sum(0) / n
    v = (1.0 / m) / x
    return bool((v > F32_MAX).any()), bool((v / x > F32_MAX).any())


class UnitTraceCost(torch.nn.Module):
    """``c_{M/s(M)}`` with ``s(M) = trace(M)/d``: the Mahalanobis distance of a unit-trace M.

    The distance scales as √s, so the cost is ``c_M / sqrt(mean(diag M))``; gradients flow
    through the normalisation, so the scale of M gets none and ε keeps its unit.
    """

    def __init__(self, metric: MahalanobisCost) -> None:
        super().__init__()
        self.metric = metric

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The unit-trace distance, (n, m)."""
        return self.metric(x, y) / torch.sqrt(self.metric.weight.mean())


def kl_to_identity(plan: torch.Tensor) -> torch.Tensor:
    """KL(π̂ ‖ π) with π̂ = I/b (eq. 10), plan entries floored at the dtype's tiny, as
    :class:`mltm.losses.MLTMLoss` computes it."""
    b = plan.shape[0]
    diag = torch.diagonal(plan).clamp_min(torch.finfo(plan.dtype).tiny)
    return (math.log(1.0 / b) - torch.log(diag)).sum() / b


def chance_metrics(num_clips: int, caption_clip: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Expected R@k (percent) of a ranking that carries no information about the query.

    t2a: k/N. a2t: a clip with r captions among M is hit when one of them is in the top k,
    ``1 - C(M - r, k) / C(M, k)``, averaged over the clips.
    """
    M = int(caption_clip.numel())
    counts = torch.bincount(caption_clip.long(), minlength=num_clips).tolist()
    a2t = {f"R@{k}": 100 * statistics.fmean(1 - math.comb(M - r, k) / math.comb(M, k)
                                            for r in counts) for k in ks}
    t2a = {f"R@{k}": 100 * k / num_clips for k in ks}
    return {"a2t": a2t, "t2a": t2a}


# -- one run -----------------------------------------------------------------------------------


def train_run(arm: str, eps: float, seed: int, data, S: dict) -> tuple[dict, list]:
    """Train one run; its results (test retrieval, shares, scale) and per-step history."""
    spec = ARMS[arm]
    dtype = DTYPES[spec["dtype"]]
    train, test = data.evalsets["train"], data.evalsets["test"]
    cfg = train_config(data.root, loss={"name": "mltm"}, seed=seed, joint_dim=S["joint"],
                       hidden_dim=S["hidden"], batch_size=S["batch"], epochs=S["epochs"])
    # Same initial heads and diag(M) for every arm of a seed: drawn in float64, then cast.
    torch.manual_seed(seed)
    model = build_model(cfg.model, audio_dim=train.audio.shape[1], text_dim=train.text.shape[1],
                        with_encoders=False, dtype=torch.float64).to(dtype)
    metric = MahalanobisCost(S["joint"], "diagonal", init="paper", dtype=torch.float64,
                             generator=torch.Generator().manual_seed(seed)).to(dtype)
    unit_trace = UnitTraceCost(metric)
    params = [*model.parameters(), *metric.parameters()]
    opt = torch.optim.Adam(params, lr=S["lr"])
    audio, text = train.audio.to(dtype), train.text.to(dtype)
    captions_of = [torch.nonzero(train.caption_clip == c).flatten()
                   for c in range(train.audio.shape[0])]
    batches = torch.Generator().manual_seed(1_000 + seed)  # same batches in every arm
    scale_start = float(metric.weight.detach().double().mean())

    history, last_epoch_max = [], []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(S["epochs"]):
        order = torch.randperm(len(captions_of), generator=batches)
        pick = torch.randint(0, 1 << 30, (len(captions_of),), generator=batches)
        for start in range(0, len(order) - S["batch"] + 1, S["batch"]):  # drop_last
            clips = order[start:start + S["batch"]]
            caps = torch.stack([captions_of[c][pick[c] % len(captions_of[c])] for c in clips])
            A, T = model.project_audio(audio[clips]), model.project_text(text[caps])
            rec = {"step": step, "epoch": epoch}
            with torch.no_grad():  # the unit-trace distance's batch maximum, for ε_eff
                unit_max = float(unit_trace(A, T).max())
            if epoch == S["epochs"] - 1:
                last_epoch_max.append(unit_max)
            if spec["solver"] == "released":
                with torch.no_grad():
                    C0 = released_cost(A, T, metric.weight)
                rec["colmin_over_eps"] = float(C0.min(0).values.max()) / eps
                if dtype == torch.float32:
                    fwd, bwd = first_half_step_overflow(C0, eps)
                    rec.update(predicted_forward_overflow=fwd, predicted_backward_overflow=bwd)
                loss, res = released_mltm_loss(A, T, metric.weight, eps,
                                               num_iter_max=S["released_iter"])
                plan = res.plan
                rec.update(n_iter=res.n_iter, safeguard_at=res.numerical_error_at,
                           capped=res.n_iter >= S["released_iter"] and not res.converged)
            else:
                if spec["normalization"] == "trace":
                    C, norm = unit_trace(A, T), "none"
                else:
                    C, norm = metric(A, T), spec["normalization"]
                Cs = C.detach() / C.detach().max() if norm == "max" else C.detach()
                rec["colmin_over_eps"] = float(Cs.min(0).values.max()) / eps
                if not bool(torch.isfinite(C).all()):
                    plan, loss = None, None  # the library refuses a non-finite cost
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        res = sinkhorn_log(C, eps, tol=S["stable_tol"],
                                           max_iter=S["stable_max_iter"], cost_normalization=norm)
                    plan = res.plan
                    loss = kl_to_identity(plan)
                    rec.update(n_iter=res.n_iter, capped=res.n_iter >= S["stable_max_iter"]
                               and not bool(res.marginal_error.max() < S["stable_tol"]))
            if plan is not None:
                p = plan.detach()
                rec.update(plan_nonfinite=not bool(torch.isfinite(p).all()),
                           plan_zeros=int((p == 0).sum()))
            else:
                rec.update(plan_nonfinite=True, plan_zeros=None)
            loss_ok = loss is not None and bool(torch.isfinite(loss))
            rec.update(loss=float(loss.detach()) if loss_ok else None, loss_finite=loss_ok)
            opt.zero_grad(set_to_none=False)
            if loss is not None and loss.requires_grad:
                loss.backward()
            # The released trainer clips at global norm 2 and steps whatever the norm (a NaN
            # or inf gradient goes through the clipping as NaN and into Adam's moments).
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, S["grad_clip"]))
            rec.update(grad_norm=gnorm if math.isfinite(gnorm) else None,
                       grad_finite=math.isfinite(gnorm))
            opt.step()
            if spec["solver"] == "stable":
                rec["clamped"] = metric.project_()  # w >= 0 (the released no-op SVD is skipped)
            rec["params_finite"] = all(bool(torch.isfinite(q).all()) for q in params)
            history.append(rec)
            step += 1
    train_seconds = time.perf_counter() - t0

    # Test retrieval with the final model, in float64; a non-finite model counts as chance.
    model.double()
    metric.double()
    chance = chance_metrics(test.audio.shape[0], test.caption_clip)
    with torch.no_grad():
        A, T = model.project_audio(test.audio.double()), model.project_text(test.text.double())
    finite = bool(torch.isfinite(A).all() and torch.isfinite(T).all()
                  and torch.isfinite(metric.weight).all())
    tests = {}
    if finite:
        with torch.no_grad():
            tests["distance"] = retrieval_metrics(A, T, test.caption_clip, cost=metric,
                                                  rank_by="distance")
            tests["plan"] = retrieval_metrics(
                A, T, test.caption_clip, cost=metric, rank_by="plan", eps=S["eval_eps"],
                sinkhorn_kwargs={"cost_normalization": "max"})
    n = len(history)
    nonfinite = [not (h["loss_finite"] and h["grad_finite"]) for h in history]
    first_bad = next((h["step"] for h, bad in zip(history, nonfinite) if bad), None)
    finite_norms = [h["grad_norm"] for h in history if h["grad_norm"] is not None]
    scale_end = float(metric.weight.detach().mean())
    mean_max = statistics.fmean(last_epoch_max)
    eps_eff = {"none": eps / math.sqrt(scale_end), "max": eps * mean_max,
               "trace": eps}[spec["normalization"]] if finite else None
    results = {
        "arm": arm, "eps": eps, "seed": seed, **spec, "steps": n,
        "nonfinite_share": sum(nonfinite) / n,
        "zero_plan_share": sum(bool(h["plan_zeros"]) for h in history) / n,
        "plan_nonfinite_share": sum(h["plan_nonfinite"] for h in history) / n,
        "safeguard_share": sum(h.get("safeguard_at") is not None for h in history) / n,
        "capped_share": sum(bool(h.get("capped")) for h in history) / n,
        "first_nonfinite_step": first_bad,
        "grad_norm_median": statistics.median(finite_norms) if finite_norms else None,
        "grad_norm_max": max(finite_norms) if finite_norms else None,
        "model_finite": finite,
        "first_step": {k: history[0].get(k) for k in (
            "colmin_over_eps", "predicted_forward_overflow", "predicted_backward_overflow",
            "safeguard_at", "loss_finite", "grad_finite")},
        "scale": {"trace_over_d_start": scale_start, "trace_over_d_end": scale_end,
                  "unit_trace_batch_max_last_epoch": mean_max, "eps_eff_end": eps_eff},
        "test": tests, "chance": chance, "train_seconds": round(train_seconds, 2),
    }
    return results, history


# -- tables and verdicts -----------------------------------------------------------------------


def r1(results: dict, rank_by: str = "plan") -> float:
    """Mean of the a2t and t2a test R@1 (percent); a non-finite model scores chance."""
    block = results["test"].get(rank_by) or results["chance"]
    return 0.5 * (block["a2t"]["R@1"] + block["t2a"]["R@1"])


def collapsed(results: dict) -> bool:
    """The rule: non-finite loss or gradient in more than half the steps, and test R@1 (plan,
    mean of both directions) below COLLAPSE_CHANCE x its chance value."""
    return (results["nonfinite_share"] > COLLAPSE_NONFINITE_SHARE
            and r1(results) < COLLAPSE_CHANCE * r1({"test": {}, "chance": results["chance"]}))


def summary_table(rec: Records):
    """One row per (arm, ε): shares, gradient norms, test R@1, ε_eff and the collapse rule."""
    import pandas as pd

    cells: dict = {}
    for (arm, eps, _seed), res in rec.runs.items():
        cells.setdefault((arm, eps), []).append(res)
    rows = []
    for (arm, eps), runs in cells.items():
        def mean(xs):
            xs = [x for x in xs if x is not None]
            return statistics.fmean(xs) if xs else float("nan")

        def sd(xs):
            return statistics.stdev(xs) if len(xs) > 1 else 0.0

        plan_r1 = [r1(r) for r in runs]
        dist_r1 = [r1(r, "distance") for r in runs]
        n_collapsed = sum(collapsed(r) for r in runs)
        rows.append({
            "arm": arm, "ε": eps, "seeds": len(runs),
            "non-finite steps %": 100 * mean([r["nonfinite_share"] for r in runs]),
            "plan underflow steps %": 100 * mean([r["zero_plan_share"] for r in runs]),
            "safeguard steps %": 100 * mean([r["safeguard_share"] for r in runs]),
            "capped steps %": 100 * mean([r["capped_share"] for r in runs]),
            "median ‖g‖": mean([r["grad_norm_median"] for r in runs]),
            "finite models": sum(r["model_finite"] for r in runs),
            "R@1 plan": mean(plan_r1), "± sd": sd(plan_r1),
            "R@1 distance": mean(dist_r1),
            "trace(M)/d end": mean([r["scale"]["trace_over_d_end"] for r in runs
                                    if r["model_finite"]]),
            "ε_eff end": mean([r["scale"]["eps_eff_end"] for r in runs]),
            "collapsed": f"{n_collapsed}/{len(runs)}",
        })
    order = {a: i for i, a in enumerate(ARMS)}
    df = pd.DataFrame(rows)
    df = df.sort_values(["arm", "ε"], key=lambda s: s.map(order) if s.name == "arm" else s)
    return df.set_index(["arm", "ε"])


def verdicts(rec: Records) -> list[str]:
    """The computed statements for the two questions (printed under the table)."""
    runs = rec.runs
    eps_grid = sorted({k[1] for k in runs})
    chance = next(iter(runs.values()))["chance"]
    chance_r1 = r1({"test": {}, "chance": chance})
    lines = [f"rule: a run collapsed when > {COLLAPSE_NONFINITE_SHARE:.0%} of its steps had a "
             f"non-finite loss or gradient AND its test R@1 (plan, mean of a2t and t2a) is "
             f"below {COLLAPSE_CHANCE:g} x chance = {COLLAPSE_CHANCE * chance_r1:.2f} % "
             "(a non-finite model counts as chance); a cell collapsed when every seed did."]

    def cell(arm, eps):
        return [r for (a, e, _), r in runs.items() if a == arm and e == eps]

    def state(arm, eps):
        rs = cell(arm, eps)
        if not rs:
            return None
        return all(collapsed(r) for r in rs)

    lines.append("Q1, is the collapse numerical?")
    for eps in eps_grid:
        rel, sta = state("released-f32", eps), state("stable-max", eps)
        f64 = state("released-f64", eps)
        if rel is None or sta is None:
            continue
        numerical = rel and not sta
        lines.append(
            f"  ε = {eps:g}: released float32 collapsed: {'yes' if rel else 'no'}; released "
            f"float64: {'-' if f64 is None else 'yes' if f64 else 'no'}; stable float64: "
            f"{'yes' if sta else 'no'} -> numerical collapse: {'YES' if numerical else 'no'}")
    # The mechanism: closed-form prediction of the first half-step against what happened.
    agree = total = 0
    for (arm, eps, seed), r in runs.items():
        if arm != "released-f32":
            continue
        fs = r["first_step"]
        predicted = fs["predicted_forward_overflow"] or fs["predicted_backward_overflow"]
        observed = not (fs["loss_finite"] and fs["grad_finite"])
        agree += predicted == observed
        total += 1
    if total:
        lines.append(f"  mechanism: the closed-form overflow of the first half-step "
                     f"(v_j = b/x_j or v_j/x_j above the float32 maximum) predicts a non-finite "
                     f"first step in {agree} of {total} released float32 runs")
    lines.append("Q2, what ε means: the effective temperature at the end of training (ε in "
                 "units of the unit-trace distance, s(M) = trace(M)/d)")
    for arm in ("stable-none", "stable-max", "stable-trace"):
        per_eps = []
        for eps in eps_grid:
            rs = [r for r in cell(arm, eps) if r["model_finite"]]
            if rs:
                e = statistics.fmean(r["scale"]["eps_eff_end"] for r in rs)
                s = statistics.fmean(r["scale"]["trace_over_d_end"] for r in rs)
                s0 = statistics.fmean(r["scale"]["trace_over_d_start"] for r in rs)
                per_eps.append(f"ε {eps:g} -> ε_eff {e:.4f} (s(M) {s0:.3f} -> {s:.3f})")
        if per_eps:
            lines.append(f"  {arm}: " + "; ".join(per_eps))
    for arm in ("stable-none", "stable-max", "stable-trace"):
        ratios = [r["scale"]["eps_eff_end"] / r["eps"] for (a, _, _), r in runs.items()
                  if a == arm and r["model_finite"]]
        drift = [abs(r["scale"]["trace_over_d_end"] / r["scale"]["trace_over_d_start"] - 1)
                 for (a, _, _), r in runs.items() if a == arm and r["model_finite"]]
        if ratios:
            lines.append(f"  {arm}: ε_eff / ε in [{min(ratios):.3f}, {max(ratios):.3f}]; "
                         f"s(M) moved by at most {100 * max(drift):.2f} % during training")
    for arm in ("stable-none", "stable-max", "stable-trace"):
        per_seed = {eps: [r1(r) for r in cell(arm, eps)] for eps in eps_grid if cell(arm, eps)}
        if len(per_seed) < 2 or min(len(v) for v in per_seed.values()) < 2:
            continue
        means = {eps: statistics.fmean(v) for eps, v in per_seed.items()}
        best_eps, worst_eps = max(means, key=means.get), min(means, key=means.get)
        n = min(len(v) for v in per_seed.values())
        sd = math.sqrt(statistics.fmean(statistics.variance(v) for v in per_seed.values()))
        se = sd * math.sqrt(2 / n)  # standard error of a difference of two cell means
        gap = means[best_eps] - means[worst_eps]
        lines.append(
            f"  {arm}: test R@1 (plan) best at ε {best_eps:g} ({means[best_eps]:.1f}), worst at "
            f"ε {worst_eps:g} ({means[worst_eps]:.1f}): {gap:.1f} points = {gap / se:.1f} "
            f"standard errors of a difference (pooled seed sd {sd:.1f}, {n} seeds) -> "
            + ("the grid separates" if gap > 2 * se else "within the seed noise (rule: > 2 SE)"))
    return lines


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Train (or, with ``--report``, only tabulate) the grid of a configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--report", action="store_true",
                        help="print the tables of what is recorded, train nothing")
    args = parser.parse_args(argv)
    settings = {"name": args.config, **SETTINGS[args.config]}
    import pandas as pd

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    torch.set_num_threads(1)  # the released solver is overhead-bound; the machine is shared
    paths = repo_paths(REPO)
    exp = Experiment("table8", args.config, settings, paths=paths, record=args.config != "ci")
    if not args.report:
        t0 = time.perf_counter()
        cfg = train_config(paths.data / settings["dataset"], loss={"name": "mltm"}, seed=0,
                           joint_dim=settings["joint"], hidden_dim=settings["hidden"],
                           batch_size=settings["batch"], epochs=settings["epochs"])
        data = encode_dataset(cfg)
        print(f"encoder outputs of {data.name} ready in {time.perf_counter() - t0:.1f} s; "
              f"input digests { {s: es.digest() for s, es in data.evalsets.items()} }")
        for seed in settings["seeds"]:
            for eps in settings["eps_grid"]:
                for arm in settings["arms"]:
                    key = (arm, eps, seed)
                    if key in exp.records.runs or eps not in settings["arm_eps"].get(arm, (eps,)):
                        continue
                    results, history = train_run(arm, eps, seed, data, settings)
                    exp.records.add(key, results, history)
                    exp.save()
                    print(f"{arm} ε={eps:g} seed {seed}: {results['train_seconds']:.1f} s, "
                          f"non-finite steps {results['nonfinite_share']:.0%}, test R@1 "
                          f"(plan) {r1(results):.1f}", flush=True)
        path = exp.finish()
        total = sum(r["train_seconds"] for r in exp.records.runs.values())
        print(f"wall time of this execution {time.perf_counter() - t0:.0f} s; training time "
              f"of all recorded runs {total:.0f} s" + (f"; records: {path}" if path else ""))
    rec = exp.records
    if not rec.runs:
        print("nothing recorded yet")
        return 0
    print(summary_table(rec).round(3).to_string())
    for line in verdicts(rec):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
