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
      [--algo ring|binomial|gloo] [--markdown]

The communication term alone (what scripts/bench/lab-allreduce.sh compares
with allreduces measured over shaped links):

  scripts/bench/scaling_model.py --comm-only --ranks 2,4,8 --gbits 1 --alpha-us 5000
      [--algo ring|binomial|gloo] [--bytes 9523776] [--hops 1]

prints "ranks algo milliseconds" per line. The algorithms (B: bandwidth of
each direction of a link, alpha: one-way latency of one message):

  ring      T = 2 (N-1) h alpha + 2 (N-1)/N m / B
            gloo::allreduce (Debian's 2022-05 Gloo: ring, 1 MB segments, two
            in flight) and Open MPI's ring. Each rank sends and receives
            2 (N-1)/N m at once: the links must be full duplex, both
            directions at B (the lab shapes each direction on its own).
  binomial  T = (L + L (L+1) / 2) m / B + 2 L h alpha,   L = ceil(log2 N)
            Open MPI's MPI_Iallreduce with MPI_IN_PLACE (what dmnist's mpi
            backend calls unless comm.timeouts = false): libnbc then always
            takes its binomial algorithm (nbc_iallreduce.c), whole buffers,
            unsegmented. The reduce to rank 0 takes L rounds of one m each
            (a round's messages use different links). The broadcast back
            is not L rounds: each rank sends to all its children at once
            (rank 0 to 1, 2, 4, ...; rank 1 to 3, 5, ...), and those sends
            share the sender's uplink, so the last rank (N-1) has the whole
            buffer after L + (L-1) + ... + 1 = L (L+1)/2 times m / B.
            8 ranks: 9 m / B, against 1.75 m / B for a ring.

  gloo      T = 2 max(k s / B + alpha, ceil(k/2) (2 alpha + s / B))
            gloo's ring as it runs (gloo/allreduce.cc, ring()): the buffer is
            cut into S = roundup(max(ceil(m / 1 MiB), 2N), N) segments of
            s = m / S; each of the two phases (reduce-scatter, allgather)
            sends k = S - S/N of them, with only two in flight, and a segment
            leaves only after the receiver's "ready" notice has crossed the
            link (NOTIFY_RECV_READY in gloo's tcp pair): a pair of segments
            takes at least 2 alpha + s / B. With a long alpha against s / B
            (5 ms against 7.6 ms at 1 Gbit/s and 2 ranks) that, not the
            ring's 2 (N-1) alpha, is the latency gloo pays.

Measured in the lab (docs/reports/benchmarks.md, "Allreduce over shaped
links") at 1 Gbit/s, 0 to 10 ms, 2 to 8 ranks: binomial (h = 3) and gloo
within 0.97-1.18 of the measurement; ring (h = 1) underestimates gloo by up
to 45% at 2 ranks and 5 ms.

h (--hops) is the number of one-way latencies a message pays before its data
flows: 1 when the receiver is ready (gloo's pipelined segments hide the
rest), 3 for Open MPI's TCP rendezvous of a message over its 64 KB eager
limit (request, clear-to-send, data).
"""
import math
import argparse

GRAD_BYTES = 2380944 * 4   # the flat gradient buffer (2,380,938 parameters, padded)
BUCKET_A = (2359552 + 2570 + 16) * 4  # dense1 + logits, started after dense1's backward
BUCKET_B = GRAD_BYTES - BUCKET_A      # conv2 + conv1, started at the end


def ring_s(m_bytes, n, gbits, alpha_s):
    if n == 1:
        return 0.0
    return 2 * (n - 1) * alpha_s + 2 * (n - 1) / n * m_bytes / (gbits * 1e9 / 8)


def binomial_s(m_bytes, n, gbits, alpha_s):
    if n == 1:
        return 0.0
    levels = math.ceil(math.log2(n))
    return (levels + levels * (levels + 1) / 2) * m_bytes / (gbits * 1e9 / 8) + 2 * levels * alpha_s


def gloo_s(m_bytes, n, gbits, alpha_s):
    if n == 1:
        return 0.0
    segs = -(-max(-(-m_bytes // 2**20), 2 * n) // n) * n   # roundup(max(ceil(m / 1 MiB), 2N), N)
    s = m_bytes / segs
    k = segs - segs // n                                  # segments each phase sends
    wire = s / (gbits * 1e9 / 8)
    return 2 * max(k * wire + alpha_s, math.ceil(k / 2) * (2 * alpha_s + wire))


ALGOS = {"ring": ring_s, "binomial": binomial_s, "gloo": gloo_s}


def comm_s(algo, m_bytes, n, gbits, alpha_s, hops=1):
    """The allreduce time of ALGOS[algo], each message paying hops x alpha."""
    return ALGOS[algo](m_bytes, n, gbits, hops * alpha_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comm-only", action="store_true",
                    help="print only the allreduce time per --ranks (with --gbits, --alpha-us: one value each)")
    ap.add_argument("--algo", choices=sorted(ALGOS), default="ring", help="allreduce algorithm (default ring)")
    ap.add_argument("--bytes", type=int, default=GRAD_BYTES, help="--comm-only: message size (default the gradients)")
    ap.add_argument("--hops", type=float, default=1, help="one-way latencies per message before data flows (default 1)")
    ap.add_argument("--step-ms", type=float, help="compute per step of one rank")
    ap.add_argument("--overlap-ms", type=float,
                    help="backward time after dense1's gradients exist (what bucket 1 can hide under)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gbits", default="10,25,100")
    ap.add_argument("--alpha-us", default="25,15,5", help="latency per message, one per --gbits entry")
    ap.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256,512,1024")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    if a.comm_only:
        g, al = float(a.gbits.split(",")[0]), float(a.alpha_us.split(",")[0]) * 1e-6
        for n in (int(x) for x in a.ranks.split(",")):
            print(f"{n} {a.algo} {1e3 * comm_s(a.algo, a.bytes, n, g, al, a.hops):.1f}")
        return
    if a.step_ms is None or a.overlap_ms is None:
        ap.error("--step-ms and --overlap-ms are needed (unless --comm-only)")
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
            t_plain = step + comm_s(a.algo, GRAD_BYTES, n, g, al, a.hops)
            t_ov = step + max(0.0, comm_s(a.algo, BUCKET_A, n, g, al, a.hops) - ov) + \
                comm_s(a.algo, BUCKET_B, n, g, al, a.hops)
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
