"""Plan ranking (paper eq. 5) for galleries beyond memory: streamed top-k vs the dense path.

    .venv/bin/python benchmarks/bench_ranking.py [--n 20000 --m 100000 --dim 64] [--tol 1e-4]
        [--small-n 2000 --small-m 10000] [--out results/benchmarks]

Synthetic float32 gallery on the CPU: N unit-norm clip embeddings, 5 caption embeddings per
clip (M = 5 N) with cosine ~0.38 to their clip, cosine cost, eps = 0.05, uniform marginals.

1. Large (default 20,000 x 100,000): :func:`mltm.retrieval.plan_topk` (t2a top-10: every
   caption ranks the clips) in a child process: wall time, iterations, achieved marginal error
   and peak memory (the growth of the child's peak RSS, /proc/self/status VmHWM, over its RSS
   once the embeddings exist; tracemalloc does not see torch). The dense path is *not* run at
   this size: its need is computed, N x M x 4 bytes x 3 work matrices (the cost turned into
   scores in place, the solver's -C/eps and its kernel/plan, see mltm.retrieval).
2. Small (default 2,000 x 10,000): both paths, each in its own child, with the same solver
   tolerance and check interval: time ratio, peak memory, and whether the top-10 lists agree.

The tolerance on the column marginal (``||P^T 1 - b||_2``, POT's and the solvers' criterion) is
``--tol``, 1e-6 by default (the default of retrieval_metrics' plan ranking). With b_j = 1/M this
absolute norm is loose for large M: 1e-4 stops the 20,000 x 100,000 solve after one iteration,
1e-6 after a few; each iteration is one pass over the N x M costs (~25 s on 2 shared cores).
Writes ``results/benchmarks/ranking_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, write_record  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EPS = 0.05
K = 10
WORK_MATRICES = 3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def gallery(n: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    sigma = (5.9 / dim) ** 0.5  # cos(x, x + sigma g) ~ 0.38
    text = audio.repeat_interleave(5, 0)
    text = torch.nn.functional.normalize(text + sigma * torch.randn(text.shape, generator=g),
                                         dim=-1)
    return audio, text


def child(args) -> int:
    """One ranking run; prints a JSON line and saves the top-k indices to --save."""
    from mltm.costs import cosine_distance
    from mltm.retrieval import _scores_from_cost, pairwise_cost, plan_topk

    audio, text = gallery(args.n, args.dim)
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if args.child == "streamed":
        res = plan_topk(audio, text, K, eps=EPS, direction="t2a", tol=args.tol,
                        check_every=args.check_every)
        indices, n_iter, err = res.indices, res.potentials.n_iter, res.potentials.marginal_error
    else:
        C = pairwise_cost(cosine_distance, audio, text)
        scores = _scores_from_cost(C, "plan", EPS,
                                   {"tol": args.tol, "check_every": args.check_every})
        indices = torch.topk(scores.T, K, dim=1).indices
        n_iter, err = None, None
    seconds = time.perf_counter() - t0
    peak_delta = _status_kib("VmHWM") - rss0
    if args.save:
        torch.save(indices, args.save)
    print(json.dumps({"seconds": seconds, "peak_rss_delta_MB": peak_delta / 1024,
                      "iterations": n_iter, "marginal_error": err}))
    return 0


def run_child(kind: str, n: int, dim: int, tol: float, check_every: int, save: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--dim", str(dim),
           "--tol", str(tol), "--check-every", str(check_every), "--save", str(save)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000,
                        help="clips of the large gallery (captions: 5 n)")
    parser.add_argument("--small-n", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--check-every", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    parser.add_argument("--child", choices=["streamed", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    name, _ = device_name("cpu")
    print(f"device: {name}; torch {torch.__version__}; eps {EPS}; cosine cost; float32; "
          f"d={args.dim}; "
          f"tol {args.tol:g} (check every {args.check_every})")
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench_ranking_")
    tmp = Path(tmp_dir.name)
    results: dict = {}

    # 2. small: both paths
    n, m = args.small_n, 5 * args.small_n
    # The same solver settings for both paths, so the potentials (hence the lists) agree.
    dense = run_child("dense", n, args.dim, args.tol, args.check_every, tmp / "dense.pt")
    streamed = run_child("streamed", n, args.dim, args.tol, args.check_every, tmp / "streamed.pt")
    i_d, i_s = torch.load(tmp / "dense.pt"), torch.load(tmp / "streamed.pt")
    small = {
        "N": n, "M": m,
        "dense": dense, "streamed": streamed,
        "time_ratio_streamed_over_dense": streamed["seconds"] / dense["seconds"],
        "top10_lists_identical_fraction": (i_d == i_s).all(1).double().mean().item(),
        "top1_agreement": (i_d[:, 0] == i_s[:, 0]).double().mean().item(),
        "dense_need_MB_computed": n * m * 4 * WORK_MATRICES / 2**20,
    }
    results["small"] = small
    print(f"\n[small] {n} x {m}: dense {dense['seconds']:.2f} s, "
          f"peak +{dense['peak_rss_delta_MB']:.0f} MB "
          f"(computed need {small['dense_need_MB_computed']:.0f} MB); "
          f"streamed {streamed['seconds']:.2f} s, "
          f"peak +{streamed['peak_rss_delta_MB']:.0f} MB, {streamed['iterations']} iterations, "
          "marginal error "
          f"{streamed['marginal_error']:.2e}")
    print(f"  time streamed/dense {small['time_ratio_streamed_over_dense']:.2f}x; "
          "top-10 lists identical for "
          f"{100 * small['top10_lists_identical_fraction']:.2f} % of queries, top-1 agreement "
          f"{100 * small['top1_agreement']:.2f} %")

    # 1. large: streamed only
    n, m = args.n, 5 * args.n
    big = run_child("streamed", n, args.dim, args.tol, args.check_every, tmp / "big.pt")
    need = n * m * 4 * WORK_MATRICES
    results["large"] = {"N": n, "M": m, "streamed": big, "dense_need_GB_computed": need / 2**30,
                        "dense_work_matrices": WORK_MATRICES,
                        "embeddings_MB": (n + m) * args.dim * 4 / 2**20}
    print(f"\n[large] {n} x {m}: streamed top-{K} t2a {big['seconds']:.1f} s, "
          f"{big['iterations']} iterations, "
          f"marginal error {big['marginal_error']:.2e}, "
          f"peak +{big['peak_rss_delta_MB']:.0f} MB; dense would need "
          f"{need / 2**30:.1f} GB ({WORK_MATRICES} x {n} x {m} x 4 bytes), not run")
    tmp_dir.cleanup()

    write_record(args.out / "ranking_cpu.json", ROOT, name, results, eps=EPS, k=K, dim=args.dim,
                 tol=args.tol, check_every=args.check_every, direction="t2a", cost="cosine",
                 dtype="float32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
