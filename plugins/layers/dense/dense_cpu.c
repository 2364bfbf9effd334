/* Dense on the CPU. OpenMP splits each product into column blocks and every
 * block is one single-threaded sgemm, so only OpenMP's threads run (OpenBLAS
 * is set to one thread in dense.c: its own pool would fight OpenMP's
 * spinning workers for the cores; see docs/cpu-path.md). Blocks are fixed
 * by the sizes alone, so results do not depend on thread timing. */
#include "dense.h"
#include "dmnist/layer_util.h"

#include <cblas.h>
#include <string.h>

/* Block `i` of `parts` over [0, total), boundaries on multiples of 16. */
static void block(int total, int parts, int i, int *lo, int *hi)
{
    const int units16 = (total + 15) / 16;
    *lo = (int)((long)units16 * i / parts) * 16;
    *hi = (int)((long)units16 * (i + 1) / parts) * 16;
    if (*lo > total) *lo = total;
    if (*hi > total) *hi = total;
}

/* Blocks for a dimension: one per thread, but none thinner than 16, and
 * one when the product (n x units x in_features) is small. */
static int nblocks(const dense_state *s, int n, int total)
{
    if ((size_t)n * s->units * s->in_features < DM_PARALLEL_MIN_MACS) return 1;
    const int most = (total + 15) / 16;
    return s->nthreads < most ? s->nthreads : most;
}

void dense_forward_cpu(const dense_state *s, int n, const float *x, float *y)
{
    const int K = s->in_features, U = s->units, parts = nblocks(s, n, U);
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if (parts > 1)
    for (int part = 0; part < parts; part++) {
        int u0, u1;
        block(U, parts, part, &u0, &u1);
        if (u1 <= u0) continue;
        /* y[:, u0:u1] (n, Ub) = x (n, K) * w[u0:u1]^T (K, Ub) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, u1 - u0, K, 1.0f, x, K, s->w + (size_t)u0 * K, K, 0.0f,
                    y + u0, U);
        if (!s->b && !s->relu) continue;
        for (int i = 0; i < n; i++) {
            float *yi = y + (size_t)i * U;
            for (int u = u0; u < u1; u++) {
                float v = yi[u] + (s->b ? s->b[u] : 0.0f);
                yi[u] = s->relu && v < 0.0f ? 0.0f : v;
            }
        }
    }
}

void dense_backward_cpu(const dense_state *s, int n, const float *x, const float *y, const float *dy, float *dx)
{
    const int K = s->in_features, U = s->units;
    const int uparts = nblocks(s, n, U), kparts = nblocks(s, n, K);
    const float *dz = s->relu ? s->dz : dy;
#pragma omp parallel num_threads(s->nthreads) if (uparts > 1 || kparts > 1)
    {
#pragma omp for schedule(static)
        for (int part = 0; part < uparts; part++) {
            int u0, u1;
            block(U, uparts, part, &u0, &u1);
            if (u1 <= u0) continue;
            if (s->relu) {
                /* dz[:, u0:u1] = dy where the output was positive: each block
                 * masks the columns it reads, so no barrier before dW */
                for (int i = 0; i < n; i++) {
                    const float *gi = dy + (size_t)i * U, *yi = y + (size_t)i * U;
                    float *zi = s->dz + (size_t)i * U;
                    for (int u = u0; u < u1; u++) {
                        const float g = gi[u]; /* unconditional load: the loop vectorises */
                        zi[u] = yi[u] > 0.0f ? g : 0.0f;
                    }
                }
            }
            if (s->db) {
                /* db[u] = sum over the batch of dz[:, u] */
                for (int u = u0; u < u1; u++) s->db[u] = 0.0f;
                for (int i = 0; i < n; i++)
                    for (int u = u0; u < u1; u++) s->db[u] += dz[(size_t)i * U + u];
            }
            /* dw[u0:u1] (Ub, K) = dz[:, u0:u1]^T (Ub, n) * x (n, K) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, u1 - u0, K, n, 1.0f, dz + u0, U, x, K, 0.0f,
                        s->dw + (size_t)u0 * K, K);
        }
        if (dx) {
#pragma omp for schedule(static)
            for (int part = 0; part < kparts; part++) {
                int k0, k1;
                block(K, kparts, part, &k0, &k1);
                if (k1 <= k0) continue;
                /* dx[:, k0:k1] (n, Kb) = dz (n, U) * w[:, k0:k1] (U, Kb) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, k1 - k0, U, 1.0f, dz, U, s->w + k0, K, 0.0f,
                            dx + k0, K);
            }
        }
    }
}
