/* Dense on the CPU: one sgemm per product over the whole batch (OpenBLAS
 * threads), OpenMP for the bias/ReLU passes, never nested. */
#include "dense.h"

#include <cblas.h>
#include <string.h>

void dense_forward_cpu(const dense_state *s, int n, const float *x, float *y)
{
    const int K = s->in_features, U = s->units;
    /* y (n, U) = x (n, K) * w^T (K, U) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, U, K, 1.0f, x, K, s->w, K, 0.0f, y,
                U);
    if (!s->b && !s->relu)
        return;
#pragma omp parallel for schedule(static) num_threads(s->nthreads)
    for (int i = 0; i < n; i++) {
        float *yi = y + (size_t)i * U;
        for (int u = 0; u < U; u++) {
            float v = yi[u] + (s->b ? s->b[u] : 0.0f);
            yi[u] = s->relu && v < 0.0f ? 0.0f : v;
        }
    }
}

void dense_backward_cpu(const dense_state *s, int n, const float *x, const float *y,
                        const float *dy, float *dx)
{
    const int K = s->in_features, U = s->units;
    const float *dz = dy;
    if (s->relu) {
        /* dz = dy where the output was positive */
        const size_t count = (size_t)n * U;
#pragma omp parallel for schedule(static) num_threads(s->nthreads)
        for (size_t i = 0; i < count; i++)
            s->dz[i] = y[i] > 0.0f ? dy[i] : 0.0f;
        dz = s->dz;
    }
    if (s->db) {
        /* db[u] = sum over the batch of dz[:, u] */
        memset(s->db, 0, (size_t)U * sizeof(float));
        for (int i = 0; i < n; i++) {
            const float *r = dz + (size_t)i * U;
            for (int u = 0; u < U; u++)
                s->db[u] += r[u];
        }
    }
    /* dw (U, K) = dz^T (U, n) * x (n, K) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, U, K, n, 1.0f, dz, U, x, K, 0.0f, s->dw,
                K);
    if (dx) {
        /* dx (n, K) = dz (n, U) * w (U, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, K, U, 1.0f, dz, U, s->w, K,
                    0.0f, dx, K);
    }
}
