/* Conv2D 3x3, stride 1, on the CPU by Winograd's minimal filtering F(4x4, 3x3)
 * (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * The output is cut into 4x4 tiles; each reads a 6x6 input tile. Per tile and
 * channel, with the fixed matrices BT (6x6), G (6x3) and AT (4x6) below:
 *   V = BT d BT^T      input tile d (6x6)      -> 36 values
 *   U = G g G^T        3x3 filter g            -> 36 values
 *   M[f] = sum_c U[f][c] * V[c]                 elementwise, at each of the 36 positions
 *   y = AT M AT^T      36 values               -> 4x4 outputs
 * The sum over channels at each position xi is a GEMM: M_xi (F, T) =
 * U_xi (F, C) * V_xi (C, T) for T tiles. That is 36 GEMMs of F*C*T
 * multiply-adds where im2col needs F*C*9*16*T: 4x fewer. The transforms are
 * additions and small multiplications, vectorised across 16 tiles at a time.
 *
 * Backward is the exact adjoint of these steps (the gradient of what forward
 * computed), with dM = AT^T dy AT (dy masked by the fused ReLU):
 *   dU_xi (F, C) = dM_xi (F, T) * V_xi^T        dw = G^T dU G
 *   dV_xi (C, T) = U_xi^T (C, F) * dM_xi (F, T) dx += BT^T dV BT per tile (tiles overlap by 2)
 *
 * Threads and determinism as in conv2d_cpu.c: tasks of s->chunk images run on
 * OpenMP's threads, each GEMM single-threaded; every task writes its own
 * dU/db part and the parts are added in task order.
 *
 * Layouts in the workspace (T = tiles of a task, ldt = T rounded up to 16):
 *   U (36, F, C) shared;  per thread V (36, C, ldt) and M (36, F, ldt);
 *   per task a part of 36*F*C + F floats (dU, db). */
#include "conv2d.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#define WL 16 /* tiles per vector group: one 16-float vector per value */
#define WN 36 /* positions in the transformed domain (6x6) */

/* Build a portable and an AVX-512 copy of the transforms (picked at load
 * time), as dropout does: the 16-lane loops become single instructions. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WINO_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define WINO_CLONES
#endif

typedef float lanes[WL];

static size_t round16(size_t x)
{
    return (x + 15) / 16 * 16;
}

typedef struct wino_ws {
    int th, tw;         /* tiles per image, vertically and horizontally */
    size_t ldt;         /* floats per row of V and M: tiles of a full task, rounded to 16 */
    size_t u, v, m;     /* floats in U, per-thread V, per-thread M */
    size_t thread;      /* floats per thread slot (V + M) */
    size_t part;        /* floats per task part (dU + db) */
    int ntasks_max;
} wino_ws;

static wino_ws ws_layout(const conv2d_state *s)
{
    wino_ws l;
    l.th = (s->out_h + 3) / 4;
    l.tw = (s->out_w + 3) / 4;
    l.ldt = round16((size_t)s->chunk * l.th * l.tw);
    l.u = round16((size_t)WN * s->filters * s->in_c);
    l.v = (size_t)WN * s->in_c * l.ldt;
    l.m = (size_t)WN * s->filters * l.ldt;
    l.thread = l.v + l.m;
    l.part = round16((size_t)WN * s->filters * s->in_c + s->filters);
    l.ntasks_max = (s->n + s->chunk - 1) / s->chunk;
    return l;
}

size_t conv2d_winograd_workspace_bytes(const conv2d_state *s)
{
    const wino_ws l = ws_layout(s);
    return (l.u + l.thread * s->nthreads + l.part * l.ntasks_max) * sizeof(float);
}

/* ---- the 1-D transforms, each on 16 lanes ------------------------------------
 * Each reads 6 (or 3 or 4) lane vectors spaced `is` vectors apart and writes
 * 6 (or 4 or 3) spaced `os` apart, so one function serves columns and rows. */

/* BT (6x6) d: the input transform. */
static inline void bt_1d(lanes *o, int os, const lanes *d, int is)
{
    for (int l = 0; l < WL; l++) {
        const float d0 = d[0][l], d1 = d[is][l], d2 = d[2 * is][l], d3 = d[3 * is][l],
                    d4 = d[4 * is][l], d5 = d[5 * is][l];
        o[0][l] = 4.0f * d0 - 5.0f * d2 + d4;
        o[os][l] = -4.0f * (d1 + d2) + d3 + d4;
        o[2 * os][l] = 4.0f * (d1 - d2) - d3 + d4;
        o[3 * os][l] = 2.0f * (d3 - d1) - d2 + d4;
        o[4 * os][l] = 2.0f * (d1 - d3) - d2 + d4;
        o[5 * os][l] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

/* BT^T v: the adjoint of bt_1d (backward to the input). */
static inline void b_1d(lanes *o, int os, const lanes *v, int is)
{
    for (int l = 0; l < WL; l++) {
        const float v0 = v[0][l], v1 = v[is][l], v2 = v[2 * is][l], v3 = v[3 * is][l],
                    v4 = v[4 * is][l], v5 = v[5 * is][l];
        o[0][l] = 4.0f * v0;
        o[os][l] = 4.0f * (v2 - v1) + 2.0f * (v4 - v3) + 4.0f * v5;
        o[2 * os][l] = -5.0f * v0 - 4.0f * (v1 + v2) - v3 - v4;
        o[3 * os][l] = v1 - v2 + 2.0f * (v3 - v4) - 5.0f * v5;
        o[4 * os][l] = v0 + v1 + v2 + v3 + v4;
        o[5 * os][l] = v5;
    }
}

/* AT (4x6) m: the output transform. */
static inline void at_1d(lanes *o, int os, const lanes *m, int is)
{
    for (int l = 0; l < WL; l++) {
        const float m0 = m[0][l], m1 = m[is][l], m2 = m[2 * is][l], m3 = m[3 * is][l],
                    m4 = m[4 * is][l], m5 = m[5 * is][l];
        const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        o[0][l] = m0 + s12 + s34;
        o[os][l] = d12 + 2.0f * d34;
        o[2 * os][l] = s12 + 4.0f * s34;
        o[3 * os][l] = d12 + 8.0f * d34 + m5;
    }
}

/* AT^T g (6 from 4): the adjoint of at_1d (backward from the output). */
static inline void a_1d(lanes *o, int os, const lanes *g, int is)
{
    for (int l = 0; l < WL; l++) {
        const float g0 = g[0][l], g1 = g[is][l], g2 = g[2 * is][l], g3 = g[3 * is][l];
        const float e = g0 + g2, od = g1 + g3, e4 = g0 + 4.0f * g2, od2 = 2.0f * g1 + 8.0f * g3;
        o[0][l] = g0;
        o[os][l] = e + od;
        o[2 * os][l] = e - od;
        o[3 * os][l] = e4 + od2;
        o[4 * os][l] = e4 - od2;
        o[5 * os][l] = g3;
    }
}

/* G (6x3) g and G^T u (3 from 6), for the filters (scalars: F*C of them). */
static void g_1d(float *o, int os, const float *g, int is)
{
    const float g0 = g[0], g1 = g[is], g2 = g[2 * is];
    o[0] = g0 / 4.0f;
    o[os] = -(g0 + g1 + g2) / 6.0f;
    o[2 * os] = -(g0 - g1 + g2) / 6.0f;
    o[3 * os] = g0 / 24.0f + g1 / 12.0f + g2 / 6.0f;
    o[4 * os] = g0 / 24.0f - g1 / 12.0f + g2 / 6.0f;
    o[5 * os] = g2;
}

static void gt_1d(float *o, int os, const float *u, int is)
{
    const float u0 = u[0], u1 = u[is], u2 = u[2 * is], u3 = u[3 * is], u4 = u[4 * is],
                u5 = u[5 * is];
    o[0] = u0 / 4.0f - (u1 + u2) / 6.0f + (u3 + u4) / 24.0f;
    o[os] = (u2 - u1) / 6.0f + (u3 - u4) / 12.0f;
    o[2 * os] = (u3 + u4 - u1 - u2) / 6.0f + u5;
}

/* U (36, F, C) = G w[f][c] G^T for every filter and channel. */
static void weight_transform(const conv2d_state *s, float *U)
{
    const int F = s->filters, C = s->in_c;
    const size_t fc = (size_t)F * C;
#pragma omp for schedule(static)
    for (int f = 0; f < F; f++) {
        for (int c = 0; c < C; c++) {
            const float *g = s->w + ((size_t)f * C + c) * 9;
            float t[6][3], u[6][6];
            for (int kx = 0; kx < 3; kx++)
                g_1d(&t[0][kx], 3, g + kx, 3); /* columns: t (6x3) = G g */
            for (int i = 0; i < 6; i++)
                g_1d(&u[i][0], 1, &t[i][0], 1); /* rows: u (6x6) = t G^T */
            for (int xi = 0; xi < WN; xi++)
                U[xi * fc + (size_t)f * C + c] = u[xi / 6][xi % 6];
        }
    }
}

/* ---- tiles ------------------------------------------------------------------ */

/* Where the 16 tiles t0..t0+15 of a task sit: tile t is image t / (th*tw),
 * tile row ty, column tx; its output corner is (4ty, 4tx) and its input
 * corner (4ty - pad_top, 4tx - pad_left). Lanes past the task's last tile
 * repeat it (their results are never stored). */
typedef struct tile_group {
    int b[WL], oy[WL], ox[WL];
    int full_in[WL];  /* the 6x6 input tile lies inside the image */
    int full_out[WL]; /* the 4x4 output tile lies inside the output */
    int valid;        /* lanes that are real tiles */
} tile_group;

static void tile_group_at(const conv2d_state *s, const wino_ws *l, int T, int t0, tile_group *g)
{
    const int per_image = l->th * l->tw;
    g->valid = T - t0 < WL ? T - t0 : WL;
    for (int k = 0; k < WL; k++) {
        const int t = t0 + (k < g->valid ? k : g->valid - 1);
        const int r = t % per_image;
        g->b[k] = t / per_image;
        g->oy[k] = 4 * (r / l->tw);
        g->ox[k] = 4 * (r % l->tw);
        const int iy = g->oy[k] - s->pad_top, ix = g->ox[k] - s->pad_left;
        g->full_in[k] = iy >= 0 && ix >= 0 && iy + 6 <= s->in_h && ix + 6 <= s->in_w;
        g->full_out[k] = g->oy[k] + 4 <= s->out_h && g->ox[k] + 4 <= s->out_w;
    }
}

/* V (36, C, ldt) for the T tiles of the B images at x. */
WINO_CLONES static void input_transform(const conv2d_state *s, const wino_ws *l, int B,
                                        const float *x, float *V)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, T = B * l->th * l->tw;
    const size_t hw = (size_t)H * W;
    for (int t0 = 0; t0 < T; t0 += WL) {
        tile_group g;
        tile_group_at(s, l, T, t0, &g);
        for (int c = 0; c < C; c++) {
            lanes d[WN], t[WN];
            for (int k = 0; k < WL; k++) {
                const float *src = x + ((size_t)g.b[k] * C + c) * hw;
                const int iy = g.oy[k] - s->pad_top, ix = g.ox[k] - s->pad_left;
                if (g.full_in[k]) {
                    for (int u = 0; u < 6; u++)
                        for (int v = 0; v < 6; v++)
                            d[u * 6 + v][k] = src[(size_t)(iy + u) * W + ix + v];
                } else { /* zero padding outside the image */
                    for (int u = 0; u < 6; u++)
                        for (int v = 0; v < 6; v++) {
                            const int y = iy + u, xx = ix + v;
                            d[u * 6 + v][k] = y >= 0 && y < H && xx >= 0 && xx < W
                                                  ? src[(size_t)y * W + xx]
                                                  : 0.0f;
                        }
                }
            }
            for (int v = 0; v < 6; v++)
                bt_1d(&t[v], 6, &d[v], 6); /* columns */
            for (int i = 0; i < 6; i++)
                bt_1d(&d[i * 6], 1, &t[i * 6], 1); /* rows, back into d */
            for (int xi = 0; xi < WN; xi++)
                memcpy(V + ((size_t)xi * C + c) * l->ldt + t0, d[xi], sizeof(lanes));
        }
    }
}

/* y (B, F, out_h, out_w) = act(AT M AT^T + bias) from M (36, F, ldt). */
WINO_CLONES static void output_transform(const conv2d_state *s, const wino_ws *l, int B,
                                         const float *M, float *y)
{
    const int F = s->filters, OH = s->out_h, OW = s->out_w, T = B * l->th * l->tw;
    const size_t ohw = (size_t)OH * OW;
    for (int t0 = 0; t0 < T; t0 += WL) {
        tile_group g;
        tile_group_at(s, l, T, t0, &g);
        for (int f = 0; f < F; f++) {
            lanes m[WN], t[24], o[16];
            for (int xi = 0; xi < WN; xi++)
                memcpy(m[xi], M + ((size_t)xi * F + f) * l->ldt + t0, sizeof(lanes));
            for (int v = 0; v < 6; v++)
                at_1d(&t[v], 6, &m[v], 6); /* columns: t (4x6) */
            for (int i = 0; i < 4; i++)
                at_1d(&o[i * 4], 1, &t[i * 6], 1); /* rows: o (4x4) */
            const float bias = s->b ? s->b[f] : 0.0f;
            for (int e = 0; e < 16; e++)
                for (int k = 0; k < WL; k++) {
                    const float v = o[e][k] + bias;
                    o[e][k] = s->relu && v < 0.0f ? 0.0f : v;
                }
            for (int k = 0; k < g.valid; k++) {
                float *dst = y + ((size_t)g.b[k] * F + f) * ohw + (size_t)g.oy[k] * OW + g.ox[k];
                const int rows = g.full_out[k] ? 4 : (OH - g.oy[k] < 4 ? OH - g.oy[k] : 4);
                const int cols = g.full_out[k] ? 4 : (OW - g.ox[k] < 4 ? OW - g.ox[k] : 4);
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++)
                        dst[(size_t)i * OW + j] = o[i * 4 + j][k];
            }
        }
    }
}

/* dM (36, F, ldt) = AT^T (dy * relu'(y)) AT per tile, and db_part[f] = the
 * sum of the masked dy (zero outside the output). */
WINO_CLONES static void grad_output_transform(const conv2d_state *s, const wino_ws *l, int B,
                                              const float *y, const float *dy, float *dM,
                                              float *db_part)
{
    const int F = s->filters, OH = s->out_h, OW = s->out_w, T = B * l->th * l->tw;
    const size_t ohw = (size_t)OH * OW;
    for (int f = 0; f < F; f++)
        db_part[f] = 0.0f;
    for (int t0 = 0; t0 < T; t0 += WL) {
        tile_group g;
        tile_group_at(s, l, T, t0, &g);
        for (int f = 0; f < F; f++) {
            lanes gi[16], t[24], m[WN];
            memset(gi, 0, sizeof gi);
            for (int k = 0; k < g.valid; k++) {
                const size_t off = ((size_t)g.b[k] * F + f) * ohw + (size_t)g.oy[k] * OW + g.ox[k];
                const int rows = g.full_out[k] ? 4 : (OH - g.oy[k] < 4 ? OH - g.oy[k] : 4);
                const int cols = g.full_out[k] ? 4 : (OW - g.ox[k] < 4 ? OW - g.ox[k] : 4);
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) {
                        const float gv = dy[off + (size_t)i * OW + j]; /* unconditional load */
                        gi[i * 4 + j][k] = !s->relu || y[off + (size_t)i * OW + j] > 0.0f ? gv : 0.0f;
                    }
            }
            float sum[WL] = {0};
            for (int e = 0; e < 16; e++)
                for (int k = 0; k < WL; k++)
                    sum[k] += gi[e][k];
            for (int k = 0; k < WL; k++)
                db_part[f] += sum[k];
            for (int j = 0; j < 4; j++)
                a_1d(&t[j], 4, &gi[j], 4); /* columns: t (6x4) */
            for (int u = 0; u < 6; u++)
                a_1d(&m[u * 6], 1, &t[u * 4], 1); /* rows: m (6x6) */
            for (int xi = 0; xi < WN; xi++)
                memcpy(dM + ((size_t)xi * F + f) * l->ldt + t0, m[xi], sizeof(lanes));
        }
    }
}

/* dx (B, C, H, W) = the sum over tiles of BT^T dV BT, placed at each tile's
 * input corner (tiles overlap; the parts outside the image are padding). */
WINO_CLONES static void grad_input_transform(const conv2d_state *s, const wino_ws *l, int B,
                                             const float *dV, float *dx)
{
    const int C = s->in_c, H = s->in_h, W = s->in_w, T = B * l->th * l->tw;
    const size_t hw = (size_t)H * W;
    memset(dx, 0, (size_t)B * C * hw * sizeof(float));
    for (int t0 = 0; t0 < T; t0 += WL) {
        tile_group g;
        tile_group_at(s, l, T, t0, &g);
        for (int c = 0; c < C; c++) {
            lanes v[WN], t[WN];
            for (int xi = 0; xi < WN; xi++)
                memcpy(v[xi], dV + ((size_t)xi * C + c) * l->ldt + t0, sizeof(lanes));
            for (int q = 0; q < 6; q++)
                b_1d(&t[q], 6, &v[q], 6); /* columns */
            for (int k = 0; k < 6; k++)
                b_1d(&v[k * 6], 1, &t[k * 6], 1); /* rows, back into v */
            for (int k = 0; k < g.valid; k++) {
                float *dst = dx + ((size_t)g.b[k] * C + c) * hw;
                const int iy = g.oy[k] - s->pad_top, ix = g.ox[k] - s->pad_left;
                if (g.full_in[k]) {
                    for (int u = 0; u < 6; u++)
                        for (int q = 0; q < 6; q++)
                            dst[(size_t)(iy + u) * W + ix + q] += v[u * 6 + q][k];
                } else {
                    for (int u = 0; u < 6; u++)
                        for (int q = 0; q < 6; q++) {
                            const int yy = iy + u, xx = ix + q;
                            if (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                dst[(size_t)yy * W + xx] += v[u * 6 + q][k];
                        }
                }
            }
        }
    }
}

/* ---- forward and backward ------------------------------------------------------ */

void conv2d_winograd_forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
    const int F = s->filters, C = s->in_c;
    const size_t x_item = (size_t)C * s->in_h * s->in_w, y_item = (size_t)F * s->out_h * s->out_w;
    const wino_ws l = ws_layout(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *U = (float *)s->workspace;
    float *slots = U + l.u;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        weight_transform(s, U); /* (ends with a barrier) */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *V = slots + l.thread * omp_get_thread_num(), *M = V + l.v;
            const int i0 = task * s->chunk, B = n - i0 < s->chunk ? n - i0 : s->chunk;
            const int T = B * l.th * l.tw;
            input_transform(s, &l, B, x + (size_t)i0 * x_item, V);
            for (int xi = 0; xi < WN; xi++) /* M_xi (F, T) = U_xi (F, C) * V_xi (C, T) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, F, T, C, 1.0f,
                            U + (size_t)xi * F * C, C, V + (size_t)xi * C * l.ldt, (int)l.ldt, 0.0f,
                            M + (size_t)xi * F * l.ldt, (int)l.ldt);
            output_transform(s, &l, B, M, y + (size_t)i0 * y_item);
        }
    }
}

void conv2d_winograd_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y,
                                  const float *dy, float *dx)
{
    const int F = s->filters, C = s->in_c;
    const size_t x_item = (size_t)C * s->in_h * s->in_w, y_item = (size_t)F * s->out_h * s->out_w;
    const size_t fc = (size_t)F * C;
    const wino_ws l = ws_layout(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *U = (float *)s->workspace;
    float *slots = U + l.u;
    float *parts = slots + l.thread * s->nthreads;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        if (dx)
            weight_transform(s, U); /* (ends with a barrier) */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *V = slots + l.thread * omp_get_thread_num(), *dM = V + l.v;
            float *dU_part = parts + l.part * task, *db_part = dU_part + WN * fc;
            const int i0 = task * s->chunk, B = n - i0 < s->chunk ? n - i0 : s->chunk;
            const int T = B * l.th * l.tw;
            grad_output_transform(s, &l, B, y + (size_t)i0 * y_item, dy + (size_t)i0 * y_item,
                                  dM, db_part);
            input_transform(s, &l, B, x + (size_t)i0 * x_item, V);
            for (int xi = 0; xi < WN; xi++) /* dU_xi (F, C) = dM_xi (F, T) * V_xi^T (T, C) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F, C, T, 1.0f,
                            dM + (size_t)xi * F * l.ldt, (int)l.ldt, V + (size_t)xi * C * l.ldt,
                            (int)l.ldt, 0.0f, dU_part + xi * fc, C);
            if (dx) {
                for (int xi = 0; xi < WN; xi++) /* dV_xi (C, T) = U_xi^T (C, F) * dM_xi (F, T) */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, T, F, 1.0f,
                                U + (size_t)xi * fc, C, dM + (size_t)xi * F * l.ldt, (int)l.ldt,
                                0.0f, V + (size_t)xi * C * l.ldt, (int)l.ldt);
                grad_input_transform(s, &l, B, V, dx + (size_t)i0 * x_item);
            }
        }
        /* (implicit barrier) dw = G^T (sum of the dU parts, in task order) G */
#pragma omp for schedule(static)
        for (int fcix = 0; fcix < F * C; fcix++) {
            float du[WN], t[3][6];
            for (int xi = 0; xi < WN; xi++) {
                float sum = 0.0f;
                for (int task = 0; task < ntasks; task++)
                    sum += parts[l.part * task + xi * fc + fcix];
                du[xi] = sum;
            }
            for (int j = 0; j < 6; j++)
                gt_1d(&t[0][j], 6, du + j, 6); /* columns: t (3x6) */
            float *dw = s->dw + (size_t)fcix * 9;
            for (int k = 0; k < 3; k++)
                gt_1d(dw + k * 3, 1, &t[k][0], 1); /* rows: dw (3x3) */
        }
        if (s->db) {
#pragma omp for schedule(static)
            for (int f = 0; f < F; f++) {
                float sum = 0.0f;
                for (int task = 0; task < ntasks; task++)
                    sum += parts[l.part * task + WN * fc + f];
                s->db[f] = sum;
            }
        }
    }
}
