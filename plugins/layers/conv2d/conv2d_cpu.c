/* Conv2D on the CPU: im2col + one OpenBLAS sgemm per chunk of images.
 *
 * For a chunk of B images, with K = in_c*k*k and P = out_h*out_w:
 *   col (K, B*P)  = im2col(x)              OpenMP
 *   tmp (F, B*P)  = w (F, K) * col         sgemm, OpenBLAS threads
 *   y[b] (F, P)   = act(tmp[:, b*P..] + bias)   OpenMP, fused bias+ReLU
 * Backward, per chunk:
 *   tmp (F, B*P)  = dy * relu'(y), db += row sums    OpenMP
 *   col           = im2col(x)               (recomputed: cheaper than keeping it)
 *   dw (F, K)    += tmp * col^T             sgemm
 *   col           = w^T * tmp               sgemm
 *   dx            = col2im(col)             OpenMP
 * The OpenMP loops and the sgemm calls alternate and never nest, so the two
 * thread pools do not fight over the cores. */
#include "conv2d.h"

#include <cblas.h>
#include <string.h>

size_t conv2d_col_floats(const conv2d_state *s, int chunk)
{
    return (size_t)s->in_c * s->k * s->k * chunk * s->out_h * s->out_w;
}

size_t conv2d_tmp_floats(const conv2d_state *s, int chunk)
{
    return (size_t)s->filters * chunk * s->out_h * s->out_w;
}

/* The output columns ox whose input column ox*stride - pad + kx lies in
 * [0, in_w): [*lo, *hi). Same for rows. */
static void valid_range(int out, int stride, int pad, int kx, int in, int *lo, int *hi)
{
    int a = pad - kx; /* need ox*stride >= a */
    int l = a <= 0 ? 0 : (a + stride - 1) / stride;
    int b = in - 1 + pad - kx; /* need ox*stride <= b */
    int h = b < 0 ? 0 : b / stride + 1;
    if (h > out)
        h = out;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

/* x (B, C, H, W) -> col (K, B*P): col[(c*k+ky)*k+kx][b*P + oy*ow + ox] =
 * x[b][c][oy*s - pt + ky][ox*s - pl + kx], 0 outside the image. */
static void im2col(const conv2d_state *s, int B, const float *x, float *col)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, k = s->k, st = s->stride;
    const int oh = s->out_h, ow = s->out_w, P = oh * ow, K = C * k * k;
    const size_t ld = (size_t)B * P;

#pragma omp parallel for collapse(2) schedule(static) num_threads(s->nthreads)
    for (int b = 0; b < B; b++) {
        for (int r = 0; r < K; r++) {
            const int c = r / (k * k), ky = (r / k) % k, kx = r % k;
            const float *xc = x + ((size_t)b * C + c) * H * W;
            float *dst = col + (size_t)r * ld + (size_t)b * P;
            int y0, y1, x0, x1;
            valid_range(oh, st, s->pad_top, ky, H, &y0, &y1);
            valid_range(ow, st, s->pad_left, kx, W, &x0, &x1);
            memset(dst, 0, (size_t)y0 * ow * sizeof(float));
            for (int oy = y0; oy < y1; oy++) {
                const float *xr = xc + (size_t)(oy * st - s->pad_top + ky) * W;
                float *d = dst + (size_t)oy * ow;
                for (int ox = 0; ox < x0; ox++)
                    d[ox] = 0.0f;
                if (st == 1) {
                    memcpy(d + x0, xr + x0 - s->pad_left + kx, (size_t)(x1 - x0) * sizeof(float));
                } else {
                    for (int ox = x0; ox < x1; ox++)
                        d[ox] = xr[ox * st - s->pad_left + kx];
                }
                for (int ox = x1; ox < ow; ox++)
                    d[ox] = 0.0f;
            }
            memset(dst + (size_t)y1 * ow, 0, (size_t)(oh - y1) * ow * sizeof(float));
        }
    }
}

/* col (K, B*P) -> dx (B, C, H, W): the adjoint of im2col (sums overlaps).
 * Parallel over (image, channel) planes, so no two threads write the same
 * pixel. */
static void col2im(const conv2d_state *s, int B, const float *col, float *dx)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, k = s->k, st = s->stride;
    const int oh = s->out_h, ow = s->out_w, P = oh * ow;
    const size_t ld = (size_t)B * P;

#pragma omp parallel for collapse(2) schedule(static) num_threads(s->nthreads)
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < C; c++) {
            float *dxc = dx + ((size_t)b * C + c) * H * W;
            memset(dxc, 0, (size_t)H * W * sizeof(float));
            for (int ky = 0; ky < k; ky++) {
                int y0, y1;
                valid_range(oh, st, s->pad_top, ky, H, &y0, &y1);
                for (int kx = 0; kx < k; kx++) {
                    int x0, x1;
                    valid_range(ow, st, s->pad_left, kx, W, &x0, &x1);
                    const float *src = col + (size_t)((c * k + ky) * k + kx) * ld + (size_t)b * P;
                    for (int oy = y0; oy < y1; oy++) {
                        float *dr = dxc + (size_t)(oy * st - s->pad_top + ky) * W - s->pad_left + kx;
                        const float *sr = src + (size_t)oy * ow;
                        if (st == 1) {
                            for (int ox = x0; ox < x1; ox++)
                                dr[ox] += sr[ox];
                        } else {
                            for (int ox = x0; ox < x1; ox++)
                                dr[ox * st] += sr[ox];
                        }
                    }
                }
            }
        }
    }
}

void conv2d_forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
    const int F = s->filters, K = s->in_c * s->k * s->k, P = s->out_h * s->out_w;
    const size_t x_item = (size_t)s->in_c * s->in_h * s->in_w, y_item = (size_t)F * P;

    for (int i0 = 0; i0 < n; i0 += s->chunk) {
        const int B = n - i0 < s->chunk ? n - i0 : s->chunk;
        const int BP = B * P;
        im2col(s, B, x + (size_t)i0 * x_item, s->col);
        /* tmp (F, B*P) = w (F, K) * col (K, B*P) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, F, BP, K, 1.0f, s->w, K, s->col,
                    BP, 0.0f, s->tmp, BP);
        /* y[i0+b][f][p] = act(tmp[f][b*P + p] + bias[f]) */
        float *yc = y + (size_t)i0 * y_item;
#pragma omp parallel for collapse(2) schedule(static) num_threads(s->nthreads)
        for (int b = 0; b < B; b++) {
            for (int f = 0; f < F; f++) {
                const float bias = s->b ? s->b[f] : 0.0f;
                const float *t = s->tmp + (size_t)f * BP + (size_t)b * P;
                float *o = yc + (size_t)b * y_item + (size_t)f * P;
                if (s->relu) {
                    for (int p = 0; p < P; p++) {
                        float v = t[p] + bias;
                        o[p] = v > 0.0f ? v : 0.0f;
                    }
                } else {
                    for (int p = 0; p < P; p++)
                        o[p] = t[p] + bias;
                }
            }
        }
    }
}

void conv2d_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y,
                         const float *dy, float *dx)
{
    const int F = s->filters, K = s->in_c * s->k * s->k, P = s->out_h * s->out_w;
    const size_t x_item = (size_t)s->in_c * s->in_h * s->in_w, y_item = (size_t)F * P;

    if (s->db)
        memset(s->db, 0, (size_t)F * sizeof(float));
    for (int i0 = 0; i0 < n; i0 += s->chunk) {
        const int B = n - i0 < s->chunk ? n - i0 : s->chunk;
        const int BP = B * P;
        const float *yc = y + (size_t)i0 * y_item, *dyc = dy + (size_t)i0 * y_item;

        /* tmp (F, B*P) = dy * relu'(y) in GEMM order; db[f] += its row sum.
         * One thread per filter row, so db needs no reduction. */
#pragma omp parallel for schedule(static) num_threads(s->nthreads)
        for (int f = 0; f < F; f++) {
            float *t = s->tmp + (size_t)f * BP;
            double sum = 0.0;
            for (int b = 0; b < B; b++) {
                const float *g = dyc + (size_t)b * y_item + (size_t)f * P;
                const float *o = yc + (size_t)b * y_item + (size_t)f * P;
                float *tb = t + (size_t)b * P;
                if (s->relu) {
                    for (int p = 0; p < P; p++)
                        tb[p] = o[p] > 0.0f ? g[p] : 0.0f;
                } else {
                    memcpy(tb, g, (size_t)P * sizeof(float));
                }
                float part = 0.0f;
                for (int p = 0; p < P; p++)
                    part += tb[p];
                sum += part;
            }
            if (s->db)
                s->db[f] += (float)sum;
        }

        im2col(s, B, x + (size_t)i0 * x_item, s->col);
        /* dw (F, K) (+)= tmp (F, B*P) * col^T (B*P, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F, K, BP, 1.0f, s->tmp, BP, s->col,
                    BP, i0 == 0 ? 0.0f : 1.0f, s->dw, K);
        if (dx) {
            /* col (K, B*P) = w^T (K, F) * tmp (F, B*P) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, BP, F, 1.0f, s->w, K, s->tmp,
                        BP, 0.0f, s->col, BP);
            col2im(s, B, s->col, dx + (size_t)i0 * x_item);
        }
    }
}
