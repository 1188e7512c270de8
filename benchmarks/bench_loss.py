"""The m-LTM loss, ours against the released formulation, measured side by side in one run.

    .venv/bin/python benchmarks/bench_loss.py [--device cpu|cuda] [--repeat 3]
        [--out results/benchmarks]

1. Loss forward + backward at b = 256, d = 1024 (float32, eps = 0.05, cost divided by its
   maximum as the released code does), with respect to both embedding matrices and M:
   * **released formulation** (``tools/loss.py::MahalalobisLoss`` re-created, see
     ``../shared/notes/reference-code.md`` §2): three b×b×d difference tensors, the einsum
     ``ijk,ikj,kk->ij`` (which reads only diag M), sqrt, /max, POT ``ot.sinkhorn`` plain
     Sinkhorn-Knopp with its defaults (1000 iterations: float32 never reaches stopThr 1e-9)
     and autograd through every iteration;
   * **mltm**: :class:`mltm.losses.MLTMLoss` with a full :class:`MahalanobisCost` (the
     paper's eq. 9, not only its diagonal) and the diagonal one, implicit gradients,
     log-domain Sinkhorn to tol 1e-6.
   Target: mltm (full M) at least 20x faster.
2. One training step of M and the joint embeddings at b = 256, d = 1024, full M, measured
   part by part in the same run: loss forward + backward, the Adam step, and the projected
   step of eq. 11 both ways: skipped (M still feasible: one Cholesky test,
   :func:`mltm.metric.project_psd_if_needed`) and forced (the full ``eigh`` projection),
   with the share of each part in the step. Target: the skipped projection costs no more
   than the loss.
3. On CUDA only: a full end-to-end training step (aisfx + MiniLM encoders, heads, full M,
   b = 256 clips of 5 s, bfloat16 autocast), its time and clips/s.

Results go to ``results/benchmarks/loss_<device>.json`` with commit, device and date.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, device_name, sync, write_record  # noqa: E402,F401

import ot  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mltm.losses import MLTMLoss  # noqa: E402
from mltm.metric import MahalanobisCost  # noqa: E402
from mltm.profiling import saved_tensor_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EPS = 0.05


def released_loss(audio, text, M):
    """``MahalalobisLoss.forward`` of the released code (POT backend, 1000 iterations)."""
    b, d = audio.shape
    # D[i, j, :] = audio_j - text_i (rows text, columns audio), materialised with repeat
    A = audio.unsqueeze(0).repeat(b, 1, 1)
    T = text.unsqueeze(1).repeat(1, b, 1)
    D = A - T
    C = torch.einsum("ijk,ikj,kk->ij", D, D.transpose(1, 2), M).sqrt()
    C = C / C.max()
    u = torch.full((b,), 1.0 / b, device=audio.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that 1000 iterations did not converge
        P = ot.sinkhorn(u, u, C, reg=EPS)
    return -torch.log(torch.diagonal(P)).mean()


def inputs(device, b=256, d=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    t = F.normalize(a + (5.9 / d) ** 0.5 * torch.randn(b, d, generator=g), dim=-1)
    A = torch.rand(d, d, generator=g)
    M = 0.5 * (A + A.T) + torch.eye(d)
    return a.to(device), t.to(device), M.to(device)


def fwd_bwd(loss_fn, a, t, M_param):
    def run():
        ag, tg = a.detach().requires_grad_(), t.detach().requires_grad_()
        M_param.grad = None
        value = loss_fn(ag, tg)
        value.backward()
        return value

    return run


def bench_loss(device, repeat):
    a, t, M0 = inputs(device)
    rows = {}
    M_rel = M0.clone().requires_grad_()
    rel = fwd_bwd(lambda x, y: released_loss(x, y, M_rel), a, t, M_rel)
    for kind in ("full", "diagonal"):
        cost = MahalanobisCost(a.shape[1], kind).to(device)
        loss = MLTMLoss(cost, eps=EPS, cost_normalization="max")
        param = cost.M if kind == "full" else cost.weight
        run = fwd_bwd(loss, a, t, param)
        _, saved = saved_tensor_bytes(run)
        rows[f"mltm {kind} M"] = {"fwd_bwd_ms": 1e3 * best_time(run, device, repeat),
                                  "autograd_saved_MB": saved / 2**20}
    _, saved = saved_tensor_bytes(rel)
    rows["released (einsum + POT 1000 it.)"] = {
        "fwd_bwd_ms": 1e3 * best_time(rel, device, max(1, repeat - 1)),
        "autograd_saved_MB": saved / 2**20}
    return rows


def bench_step_parts(device, repeat, lr=1e-3):
    """Loss fwd+bwd, Adam step and eq. 11 projection (skipped / forced) of one step."""
    a0, t0, _ = inputs(device)
    a, t = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(t0.clone())
    cost = MahalanobisCost(a.shape[1], "full").to(device)
    loss = MLTMLoss(cost, eps=EPS, cost_normalization="max")
    opt = torch.optim.Adam([a, t, cost.M], lr=lr)

    def fwd_bwd_step():
        opt.zero_grad(set_to_none=True)
        loss(a, t).backward()

    fwd_bwd_step()
    opt.step()  # Adam's state exists: the timed steps are steady-state steps
    cost.project_()
    fwd_bwd_step()
    snapshot = [p.detach().clone() for p in (a, t, cost.M)]
    times = {"loss_fwd_bwd_ms": 1e3 * best_time(fwd_bwd_step, device, repeat)}
    times["adam_step_ms"] = 1e3 * best_time(opt.step, device, repeat)
    with torch.no_grad():  # back to M after one step from the identity: feasible
        for p, v in zip((a, t, cost.M), snapshot):
            p.copy_(v)
    before = (cost.projections_computed, cost.projections_skipped)
    times["projection_skipped_ms"] = 1e3 * best_time(cost.project_, device, repeat)
    skipped = cost.projections_skipped - before[1]
    computed = cost.projections_computed - before[0]
    if computed or not skipped:
        raise RuntimeError(f"M left the PSD cone during the benchmark ({computed} projections ran)")
    times["projection_forced_eigh_ms"] = 1e3 * best_time(lambda: cost.project_(force=True), device,
                                                   max(1, repeat - 1))
    step = times["loss_fwd_bwd_ms"] + times["adam_step_ms"] + times["projection_skipped_ms"]
    forced = times["loss_fwd_bwd_ms"] + times["adam_step_ms"] + times["projection_forced_eigh_ms"]
    return {
        **times,
        "step_skipped_ms": step,
        "step_forced_ms": forced,
        "share_of_step_skipped": {k: times[f"{k}_ms"] / step
                                  for k in ("loss_fwd_bwd", "adam_step", "projection_skipped")},
        "share_of_step_forced": {
            k: times[f"{k}_ms"] / forced
            for k in ("loss_fwd_bwd", "adam_step", "projection_forced_eigh")},
        "projection_skipped_over_loss": times["projection_skipped_ms"] / times["loss_fwd_bwd_ms"],
        "projection_forced_over_loss": (times["projection_forced_eigh_ms"]
                                        / times["loss_fwd_bwd_ms"]),
        "forced_over_skipped_projection": (times["projection_forced_eigh_ms"]
                                           / times["projection_skipped_ms"]),
        "lr": lr, "dtype": "float32", "metric": "full",
    }


def bench_train_step(device, repeat):
    """End-to-end step with both encoders fine-tuned (CUDA only)."""
    from mltm.encoders import build_audio_encoder, build_text_encoder
    from mltm.model import AudioTextModel

    b = 256
    audio_enc = build_audio_encoder("aisfx", freeze=False)
    text_enc = build_text_encoder(None, pooling="cls", freeze=False)
    model = AudioTextModel(audio_enc.out_dim, text_enc.out_dim, audio_encoder=audio_enc,
                           text_encoder=text_enc).to(device)
    loss = MLTMLoss(MahalanobisCost(1024, "full"), eps=EPS).to(device)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=1e-4)
    sr = audio_enc.frontend_config.sample_rate
    wave = 0.1 * torch.randn(b, 5 * sr, device=device)
    lengths = torch.full((b,), 5 * sr, device=device)
    captions = [f"a recording of sound number {i} with some texture" for i in range(b)]

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            x = model.embed_audio(wave, lengths)
            y = model.embed_text(captions)
        value = loss(x.float(), y.float())
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(loss.parameters()), 2.0)
        opt.step()
        loss.project_()

    seconds = best_time(step, device, repeat, warmup=2)
    return {"batch": b, "clip_seconds": 5, "step_ms": 1e3 * seconds, "clips_per_s": b / seconds,
            "peak_memory_GB": torch.cuda.max_memory_allocated(device) / 2**30}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name, slug = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; POT {ot.__version__}; eps {EPS}; float32")
    results = {"loss_b256_d1024": bench_loss(device, args.repeat)}
    rows = results["loss_b256_d1024"]
    print("\n[1] m-LTM loss fwd+bwd, b=256, d=1024")
    for k, r in rows.items():
        print(f"  {k:<34} {r['fwd_bwd_ms']:9.1f} ms   "
              f"autograd state {r['autograd_saved_MB']:9.1f} MB")
    speedup = (rows["released (einsum + POT 1000 it.)"]["fwd_bwd_ms"]
               / rows["mltm full M"]["fwd_bwd_ms"])
    print(f"  speed-up of mltm (full M) over the released formulation: {speedup:.1f}x "
          "(target >= 20)")
    targets = {"loss_speedup_vs_released_>=20": speedup >= 20}
    results["step_parts_b256_d1024_full_M"] = sp = bench_step_parts(device, args.repeat)
    print("\n[2] one training step (embeddings + full M), b=256, d=1024, Adam, eq. 11 projection")
    for k, label in (("loss_fwd_bwd", "loss fwd+bwd"), ("adam_step", "Adam step"),
                     ("projection_skipped", "projection, M feasible (Cholesky)"),
                     ("projection_forced_eigh", "projection, forced eigh")):
        share = (sp["share_of_step_skipped"].get(k) if k != "projection_forced_eigh"
                 else sp["share_of_step_forced"][k])
        print(f"  {label:<36} {sp[f'{k}_ms']:9.1f} ms   {100 * share:5.1f}% of its step")
    print(f"  step {sp['step_skipped_ms']:.1f} ms when skipped, "
          f"{sp['step_forced_ms']:.1f} ms forced; "
          f"projection/loss {sp['projection_skipped_over_loss']:.2f} skipped, "
          f"{sp['projection_forced_over_loss']:.2f} forced; eigh/Cholesky path "
          f"{sp['forced_over_skipped_projection']:.1f}x")
    targets["projection_skipped_<=_loss"] = sp["projection_skipped_over_loss"] <= 1
    if device.type == "cuda":
        results["train_step"] = ts = bench_train_step(device, args.repeat)
        print(f"\n[3] end-to-end training step, b=256 x 5 s: {ts['step_ms']:.1f} ms, "
              f"{ts['clips_per_s']:.0f} clips/s, peak {ts['peak_memory_GB']:.1f} GB")
    else:
        print("\n[3] end-to-end GPU training step: no CUDA device here (pending a GPU run)")
    print("\ntargets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))
    write_record(args.out / f"loss_{slug}.json", ROOT, name, results, pot=ot.__version__,
                 eps=EPS, repeat=args.repeat, targets=targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
