/* The im2col path's passes, built once per instruction set (cpu_isa.h):
 * conv2d_cpu.c includes this file three times, under `#pragma GCC target`
 * for AVX-512 and AVX2 and without one, with WK(name) naming each copy. The
 * GEMMs are OpenBLAS's (its own dispatch); what the copies change is the
 * copies, the fused bias + ReLU epilogue, the ReLU mask with its row sums and
 * col2im's additions. No include guard, no types. */
/* Sum of n floats with 8 independent partial sums, so the loop vectorises
 * instead of waiting on one add after another. */
static float WK(sum_floats)(const float *v, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += v[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += v[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

/* x (B, C, H, W) -> col (K, B*P): col[(c*k+ky)*k+kx][b*P + oy*ow + ox] =
 * x[b][c][oy*s - pt + ky][ox*s - pl + kx], 0 outside the image.
 * Runs on the calling thread (inside a task). */
static void WK(im2col)(const conv2d_state *s, int B, const float *x, float *col)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, k = s->k, st = s->stride;
    const int oh = s->out_h, ow = s->out_w, P = oh * ow, K = C * k * k;
    const size_t ld = (size_t)B * P;

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
                for (int ox = 0; ox < x0; ox++) d[ox] = 0.0f;
                if (st == 1) {
                    memcpy(d + x0, xr + x0 - s->pad_left + kx, (size_t)(x1 - x0) * sizeof(float));
                } else {
                    for (int ox = x0; ox < x1; ox++) d[ox] = xr[ox * st - s->pad_left + kx];
                }
                for (int ox = x1; ox < ow; ox++) d[ox] = 0.0f;
            }
            memset(dst + (size_t)y1 * ow, 0, (size_t)(oh - y1) * ow * sizeof(float));
        }
    }
}

/* col (K, B*P) -> dx (B, C, H, W): the adjoint of im2col (sums overlaps).
 * Runs on the calling thread (inside a task). */
static void WK(col2im)(const conv2d_state *s, int B, const float *col, float *dx)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, k = s->k, st = s->stride;
    const int oh = s->out_h, ow = s->out_w, P = oh * ow;
    const size_t ld = (size_t)B * P;

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
                            for (int ox = x0; ox < x1; ox++) dr[ox] += sr[ox];
                        } else {
                            for (int ox = x0; ox < x1; ox++) dr[ox * st] += sr[ox];
                        }
                    }
                }
            }
        }
    }
}

static void WK(conv2d_forward_cpu)(const conv2d_state *s, int n, const float *x, float *y)
{
    const int F = s->filters, K = s->in_c * s->k * s->k, P = s->out_h * s->out_w;
    const size_t x_item = (size_t)s->in_c * s->in_h * s->in_w, y_item = (size_t)F * P;
    const conv2d_ws l = ws_layout(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;

#pragma omp parallel for schedule(dynamic, 1) num_threads(s->nthreads) if (ntasks > 1)
    for (int task = 0; task < ntasks; task++) {
        float *col = (float *)s->workspace + l.thread * omp_get_thread_num();
        float *tmp = col + l.col;
        const int i0 = task * s->chunk, B = n - i0 < s->chunk ? n - i0 : s->chunk, BP = B * P;

        WK(im2col)(s, B, x + (size_t)i0 * x_item, col);
        /* tmp (F, B*P) = w (F, K) * col (K, B*P) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, F, BP, K, 1.0f, s->w, K, col, BP, 0.0f, tmp, BP);
        /* y[i0+b][f][p] = act(tmp[f][b*P + p] + bias[f]) */
        for (int b = 0; b < B; b++) {
            for (int f = 0; f < F; f++) {
                const float bias = s->b ? s->b[f] : 0.0f;
                const float *t = tmp + (size_t)f * BP + (size_t)b * P;
                float *o = y + (size_t)(i0 + b) * y_item + (size_t)f * P;
                if (s->relu) {
                    for (int p = 0; p < P; p++) {
                        float v = t[p] + bias;
                        o[p] = v < 0.0f ? 0.0f : v; /* NaN stays NaN, as on the GPU and in dense */
                    }
                } else {
                    for (int p = 0; p < P; p++) o[p] = t[p] + bias;
                }
            }
        }
    }
}

static void WK(conv2d_backward_cpu)(const conv2d_state *s, int n, const float *x, const float *y, const float *dy,
                                    float *dx)
{
    const int F = s->filters, K = s->in_c * s->k * s->k, P = s->out_h * s->out_w;
    const size_t x_item = (size_t)s->in_c * s->in_h * s->in_w, y_item = (size_t)F * P;
    const conv2d_ws l = ws_layout(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *parts = (float *)s->workspace + l.thread * s->nthreads;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *col = (float *)s->workspace + l.thread * omp_get_thread_num();
            float *tmp = col + l.col;
            float *dw_part = parts + l.part * task, *db_part = dw_part + (size_t)F * K;
            const int i0 = task * s->chunk, B = n - i0 < s->chunk ? n - i0 : s->chunk;
            const int BP = B * P;

            /* tmp (F, B*P) = dy * relu'(y) in GEMM order; db_part = its row sums */
            for (int f = 0; f < F; f++) {
                float *t = tmp + (size_t)f * BP;
                double sum = 0.0;
                for (int b = 0; b < B; b++) {
                    const size_t off = (size_t)(i0 + b) * y_item + (size_t)f * P;
                    const float *g = dy + off, *o = y + off;
                    float *tb = t + (size_t)b * P;
                    if (s->relu) {
                        for (int p = 0; p < P; p++) {
                            const float gp = g[p]; /* unconditional load: vectorises */
                            tb[p] = o[p] > 0.0f ? gp : 0.0f;
                        }
                    } else {
                        memcpy(tb, g, (size_t)P * sizeof(float));
                    }
                    sum += WK(sum_floats)(tb, P);
                }
                db_part[f] = (float)sum;
            }

            WK(im2col)(s, B, x + (size_t)i0 * x_item, col);
            /* dw_part (F, K) = tmp (F, B*P) * col^T (B*P, K) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F, K, BP, 1.0f, tmp, BP, col, BP, 0.0f, dw_part, K);
            if (dx) {
                /* col (K, B*P) = w^T (K, F) * tmp (F, B*P) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, BP, F, 1.0f, s->w, K, tmp, BP, 0.0f, col, BP);
                WK(col2im)(s, B, col, dx + (size_t)i0 * x_item);
            }
        }
        /* (implicit barrier) dw, db = sums of the parts, in task order */
        const int nw = F * K;
#pragma omp for schedule(static)
        for (int e = 0; e < nw + F; e++) {
            float sum = 0.0f;
            for (int task = 0; task < ntasks; task++) sum += parts[l.part * task + e];
            if (e < nw) s->dw[e] = sum;
            else if (s->db) s->db[e - nw] = sum;
        }
    }
}
