#!/usr/bin/env python3
"""Data-parallel scaling model for the seed CNN (docs/reports/benchmarks.md, "Scaling model").

Each of N ranks trains a batch of --batch images per step in --step-ms of
compute (measured: one rank of dmnist on a 2-core machine), then the 9.5 MB of
gradients are averaged by a ring allreduce over a network of B Gbit/s with a
per-message latency alpha:

    T_ring(m, N) = 2 (N - 1) alpha + 2 (N - 1) / N * m / B

dmnist sends the gradients in two buckets (train.fusion_mb = 4): dense1 and
logits (9.44 MB) start as soon as dense1's backward is done, and the rest of
the backward pass (--overlap-ms of it) runs while they travel; conv1 and conv2
(75 KB) go at the end. So per step

    no overlap:   t = step + T_ring(9.52 MB, N)
    overlap:      t = step + max(0, T_ring(9.44 MB, N) - overlap) + T_ring(75 KB, N)

images/s = N * batch / t, and the scaling efficiency is step / t. The model
leaves out what the network does not decide: stragglers, the CPU time the
reduction itself takes from the compute (about 2.4M float additions per step,
under a millisecond), and switch contention.

  scripts/bench/scaling_model.py --step-ms 27 --overlap-ms 11 [--batch 64]
      [--alpha-us 25,15,5] [--gbits 10,25,100] [--ranks 1,2,4,...,1024]
      [--markdown]
"""
import argparse

GRAD_BYTES = 2380944 * 4   # the flat gradient buffer (2,380,938 parameters, padded)
BUCKET_A = (2359552 + 2570 + 16) * 4  # dense1 + logits, started after dense1's backward
BUCKET_B = GRAD_BYTES - BUCKET_A      # conv2 + conv1, started at the end


def ring_s(m_bytes, n, gbits, alpha_s):
    if n == 1:
        return 0.0
    return 2 * (n - 1) * alpha_s + 2 * (n - 1) / n * m_bytes / (gbits * 1e9 / 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step-ms", type=float, required=True, help="compute per step of one rank")
    ap.add_argument("--overlap-ms", type=float, required=True,
                    help="backward time after dense1's gradients exist (what bucket 1 can hide under)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gbits", default="10,25,100")
    ap.add_argument("--alpha-us", default="25,15,5", help="latency per message, one per --gbits entry")
    ap.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    gbits = [float(x) for x in a.gbits.split(",")]
    alphas = [float(x) * 1e-6 for x in a.alpha_us.split(",")]
    if len(alphas) != len(gbits):
        ap.error("--alpha-us needs one value per --gbits value")
    ranks = [int(x) for x in a.ranks.split(",")]
    step = a.step_ms / 1e3
    ov = a.overlap_ms / 1e3

    head = ["ranks"]
    for g, al in zip(gbits, alphas):
        head += [f"{g:g} Gb/s no overlap", f"{g:g} Gb/s overlap"]
    rows = []
    for n in ranks:
        row = [str(n)]
        for g, al in zip(gbits, alphas):
            t_plain = step + ring_s(GRAD_BYTES, n, g, al)
            t_ov = step + max(0.0, ring_s(BUCKET_A, n, g, al) - ov) + ring_s(BUCKET_B, n, g, al)
            for t in (t_plain, t_ov):
                row.append(f"{n * a.batch / t:,.0f} ({100 * step / t:.0f}%)")
        rows.append(row)
    print(f"step {a.step_ms} ms of compute per rank at batch {a.batch} "
          f"({a.batch / step:,.0f} images/s alone), overlap window {a.overlap_ms} ms; "
          f"latency per message " + ", ".join(f"{al * 1e6:g} us at {g:g} Gb/s" for g, al in zip(gbits, alphas)))
    print("cells: images/s over all ranks (scaling efficiency)")
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---:|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w[i]) for i, h in enumerate(head)))
        for r in rows:
            print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))


if __name__ == "__main__":
    main()
