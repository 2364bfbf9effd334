/* Conv2D on the CPU: im2col + GEMM, the batch split into tasks of
 * s->chunk images, one task at a time per OpenMP thread.
 *
 * Task of B images (K = in_c*k*k, P = out_h*out_w), on one thread:
 *   col (K, B*P)  = im2col(x)
 *   tmp (F, B*P)  = w (F, K) * col                    single-threaded sgemm
 *   y[b] (F, P)   = act(tmp[:, b*P..] + bias)          fused bias + ReLU
 * Backward task:
 *   tmp (F, B*P)  = dy * relu'(y);  db_part[task] = row sums
 *   col           = im2col(x)        (recomputed: cheaper than keeping it)
 *   dw_part[task] = tmp * col^T                        sgemm
 *   col           = w^T * tmp                          sgemm
 *   dx            = col2im(col)
 * then dw, db = sums of the task parts in task order, so the result does not
 * depend on which thread ran which task.
 *
 * Only OpenMP's threads ever run: OpenBLAS is set to one thread (conv2d.c),
 * because its own pool and OpenMP's spinning workers would fight over the
 * cores (docs/cpu-path.md has the numbers). */
#include "conv2d.h"
#include "dmnist/cpu_isa.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* Workspace, in floats, each part rounded up to 16 floats (64 bytes):
 *   per thread:  col (K, chunk*P), tmp (F, chunk*P)
 *   per task:    dw_part (F, K), db_part (F) */
typedef struct conv2d_ws {
    size_t col, tmp, thread; /* floats per thread slot */
    size_t part;             /* floats per task part */
    int ntasks_max;
} conv2d_ws;

static size_t round16(size_t x) { return (x + 15) / 16 * 16; }

static conv2d_ws ws_layout(const conv2d_state *s)
{
    conv2d_ws l;
    const size_t K = (size_t)s->in_c * s->k * s->k, P = (size_t)s->out_h * s->out_w;
    l.col = round16(K * s->chunk * P);
    l.tmp = round16((size_t)s->filters * s->chunk * P);
    l.thread = l.col + l.tmp;
    l.part = round16((size_t)s->filters * K + s->filters);
    l.ntasks_max = (s->n + s->chunk - 1) / s->chunk;
    return l;
}

size_t conv2d_workspace_bytes(const conv2d_state *s)
{
    const conv2d_ws l = ws_layout(s);
    return (l.thread * s->nthreads + l.part * l.ntasks_max) * sizeof(float);
}
/* The output columns ox whose input column ox*stride - pad + kx lies in
 * [0, in_w): [*lo, *hi). Same for rows. */
static void valid_range(int out, int stride, int pad, int kx, int in, int *lo, int *hi)
{
    int a = pad - kx; /* need ox*stride >= a */
    int l = a <= 0 ? 0 : (a + stride - 1) / stride;
    int b = in - 1 + pad - kx; /* need ox*stride <= b */
    int h = b < 0 ? 0 : b / stride + 1;
    if (h > out) h = out;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* ---- one copy of the passes per instruction set (cpu_isa.h) ----------------- */

#define DM_ISA_KERNELS "conv2d_cpu_kern.h"
#include "dmnist/cpu_isa_copies.h"

void conv2d_forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
#if DM_CPU_ISA_X86
    if (s->isa == DM_ISA_AVX512) {
        conv2d_forward_cpu_avx512(s, n, x, y);
        return;
    }
    if (s->isa == DM_ISA_AVX2) {
        conv2d_forward_cpu_avx2(s, n, x, y);
        return;
    }
#endif
    conv2d_forward_cpu_generic(s, n, x, y);
}

void conv2d_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y, const float *dy, float *dx)
{
#if DM_CPU_ISA_X86
    if (s->isa == DM_ISA_AVX512) {
        conv2d_backward_cpu_avx512(s, n, x, y, dy, dx);
        return;
    }
    if (s->isa == DM_ISA_AVX2) {
        conv2d_backward_cpu_avx2(s, n, x, y, dy, dx);
        return;
    }
#endif
    conv2d_backward_cpu_generic(s, n, x, y, dy, dx);
}
