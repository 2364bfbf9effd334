/* Conv2D 3x3, stride 1, on the CPU by Winograd's minimal filtering F(4x4, 3x3)
 * (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * The output is cut into 4x4 tiles; each reads a 6x6 input tile. Per tile and
 * channel, with the fixed matrices BT (6x6), G (6x3) and AT (4x6) below:
 *   V = BT d BT^T      input tile d (6x6)      -> 36 values
 *   U = G g G^T        3x3 filter g            -> 36 values
 *   M[f] = sum_c U[f][c] * V[c]                 elementwise, at each of the 36 positions
 *   y = AT M AT^T      36 values               -> 4x4 outputs
 * The sum over channels at each position xi is a GEMM over the T tiles of a
 * task: M_xi (T, F) = V_xi (T, C) * Ut_xi (C, F), Ut_xi = U_xi^T. That is 36 GEMMs of
 * T*C*F multiply-adds where im2col needs 9*16*T*C*F: 4x fewer.
 *
 * Backward is the exact adjoint of these steps (the gradient of what forward
 * computed), with dM = AT^T dy AT (dy masked by the fused ReLU):
 *   dU_xi (F, C) = dM_xi^T (F, T) * V_xi (T, C)     dw = G^T dU G
 *   dV_xi (T, C) = dM_xi (T, F) * U_xi (F, C)       dx += BT^T dV BT per tile (tiles overlap by 2)
 *
 * The transforms work on 16 channels (or filters) at once, one 16-float
 * vector per value. So each image is first copied channels-last, (H, W, C),
 * into a per-thread buffer, where the 16 channels of a pixel are adjacent;
 * outputs are assembled channels-last and copied back to NCHW. Channel counts
 * are padded to multiples of 16 (Cp, Fp) with zeros.
 *
 * Threads and determinism as in conv2d_cpu.c: tasks of s->chunk images run on
 * OpenMP's threads, each GEMM single-threaded; every task writes its own
 * dU/db part and the parts are added in task order. A task works through its
 * images s->sub at a time, so that its V and M stay in the core's cache.
 *
 * Workspace (Tmax = tiles of a sub-batch):
 *   shared      U (36, F, C) and Ut (36, C, F): OpenBLAS runs the forward
 *               product 25% faster untransposed (NN) than as NT
 *   per thread  V (36, Tmax, Cp), M (36, Tmax, Fp), one image channels-last,
 *               one masked dy (F, OH, OW)
 *   per task    dU part (36, F, C) and db part (Fp) */
#include "conv2d.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#define WL 16 /* channels per vector: the lanes of every transform */
#define WN 36 /* positions in the transformed domain (6x6) */

/* Build a portable and an AVX-512 copy of the transforms (picked at load
 * time), as dropout does: each 16-lane loop becomes one instruction. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WINO_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define WINO_CLONES
#endif

static size_t round16(size_t x)
{
    return (x + 15) / 16 * 16;
}

typedef struct wino_ws {
    int th, tw;          /* tiles per image, vertically and horizontally */
    int tiles;           /* th * tw */
    int cp, fp;          /* channels and filters rounded up to 16 */
    size_t tmax;         /* tiles of a full sub-batch */
    size_t u, v, m, img; /* floats in U (and in Ut), V, M and the channels-last image */
    size_t masked;       /* floats of the ReLU-masked dy of one image (NCHW) */
    size_t thread;       /* floats per thread slot (V + M + image + masked) */
    size_t part;         /* floats per task part (dU + db) */
    int ntasks_max;
} wino_ws;

static wino_ws ws_layout(const conv2d_state *s)
{
    wino_ws l;
    l.th = (s->out_h + 3) / 4;
    l.tw = (s->out_w + 3) / 4;
    l.tiles = l.th * l.tw;
    l.cp = (int)round16((size_t)s->in_c);
    l.fp = (int)round16((size_t)s->filters);
    l.tmax = (size_t)s->sub * l.tiles;
    l.u = round16((size_t)WN * s->filters * s->in_c);
    l.v = (size_t)WN * l.tmax * l.cp;
    l.m = (size_t)WN * l.tmax * l.fp;
    const size_t in_img = (size_t)s->in_h * s->in_w * l.cp;
    const size_t out_img = (size_t)s->out_h * s->out_w * l.fp;
    l.img = in_img > out_img ? in_img : out_img;
    l.masked = round16((size_t)s->filters * s->out_h * s->out_w);
    l.thread = l.v + l.m + l.img + l.masked;
    l.part = round16((size_t)WN * s->filters * s->in_c + l.fp);
    l.ntasks_max = (s->n + s->chunk - 1) / s->chunk;
    return l;
}

size_t conv2d_winograd_workspace_bytes(const conv2d_state *s)
{
    const wino_ws l = ws_layout(s);
    return (2 * l.u + l.thread * s->nthreads + l.part * l.ntasks_max) * sizeof(float);
}

/* ---- the 1-D transforms, on 16 lanes ---------------------------------------
 * Each reads 6 (or 4) vectors of 16 floats, `is` floats apart, and writes 6
 * (or 4) vectors `os` floats apart: the same function serves columns and
 * rows, and reads or writes the work buffers in place. `vec` is GCC's vector
 * extension: 16 floats, + - * lane by lane (a scalar operand applies to every
 * lane); the compiler maps it to one AVX-512 register or several narrower
 * ones. Written with plain loops, GCC kept some of these scalar. */
typedef float vec __attribute__((vector_size(WL * sizeof(float)), aligned(4), may_alias));

/* (macros, not functions: a function returning a vector would change the
 * ABI between the AVX-512 and the portable build) */
#define vload(p) (*(const vec *)(p))
#define vstore(p, v) (*(vec *)(p) = (v))

/* BT (6x6) d: the input transform. */
static inline void bt_1d(float *o, size_t os, const float *d, size_t is)
{
    const vec d0 = vload(d), d1 = vload(d + is), d2 = vload(d + 2 * is), d3 = vload(d + 3 * is),
              d4 = vload(d + 4 * is), d5 = vload(d + 5 * is);
    vstore(o, 4.0f * d0 - 5.0f * d2 + d4);
    vstore(o + os, -4.0f * (d1 + d2) + d3 + d4);
    vstore(o + 2 * os, 4.0f * (d1 - d2) - d3 + d4);
    vstore(o + 3 * os, 2.0f * (d3 - d1) - d2 + d4);
    vstore(o + 4 * os, 2.0f * (d1 - d3) - d2 + d4);
    vstore(o + 5 * os, 4.0f * d1 - 5.0f * d3 + d5);
}

/* BT^T v: the adjoint of bt_1d (backward to the input). */
static inline void b_1d(float *o, size_t os, const float *v, size_t is)
{
    const vec v0 = vload(v), v1 = vload(v + is), v2 = vload(v + 2 * is), v3 = vload(v + 3 * is),
              v4 = vload(v + 4 * is), v5 = vload(v + 5 * is);
    vstore(o, 4.0f * v0);
    vstore(o + os, 4.0f * (v2 - v1) + 2.0f * (v4 - v3) + 4.0f * v5);
    vstore(o + 2 * os, -5.0f * v0 - 4.0f * (v1 + v2) - v3 - v4);
    vstore(o + 3 * os, v1 - v2 + 2.0f * (v3 - v4) - 5.0f * v5);
    vstore(o + 4 * os, v0 + v1 + v2 + v3 + v4);
    vstore(o + 5 * os, v5);
}

/* AT (4x6) m: the output transform. */
static inline void at_1d(float *o, size_t os, const float *m, size_t is)
{
    const vec m0 = vload(m), m1 = vload(m + is), m2 = vload(m + 2 * is), m3 = vload(m + 3 * is),
              m4 = vload(m + 4 * is), m5 = vload(m + 5 * is);
    const vec s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    vstore(o, m0 + s12 + s34);
    vstore(o + os, d12 + 2.0f * d34);
    vstore(o + 2 * os, s12 + 4.0f * s34);
    vstore(o + 3 * os, d12 + 8.0f * d34 + m5);
}

/* AT^T g (6 from 4): the adjoint of at_1d (backward from the output). */
static inline void a_1d(float *o, size_t os, const float *g, size_t is)
{
    const vec g0 = vload(g), g1 = vload(g + is), g2 = vload(g + 2 * is), g3 = vload(g + 3 * is);
    const vec e = g0 + g2, od = g1 + g3, e4 = g0 + 4.0f * g2, od2 = 2.0f * g1 + 8.0f * g3;
    vstore(o, g0);
    vstore(o + os, e + od);
    vstore(o + 2 * os, e - od);
    vstore(o + 3 * os, e4 + od2);
    vstore(o + 4 * os, e4 - od2);
    vstore(o + 5 * os, g3);
}

/* G (6x3) g and G^T u (3 from 6), for the filters (scalars: F*C of them;
 * multiplications by the reciprocals, which cost a fraction of divisions). */
static const float R4 = 1.0f / 4, R6 = 1.0f / 6, R12 = 1.0f / 12, R24 = 1.0f / 24;

static void g_1d(float *o, int os, const float *g, int is)
{
    const float g0 = g[0], g1 = g[is], g2 = g[2 * is];
    o[0] = g0 * R4;
    o[os] = -(g0 + g1 + g2) * R6;
    o[2 * os] = -(g0 - g1 + g2) * R6;
    o[3 * os] = g0 * R24 + g1 * R12 + g2 * R6;
    o[4 * os] = g0 * R24 - g1 * R12 + g2 * R6;
    o[5 * os] = g2;
}

static void gt_1d(float *o, int os, const float *u, int is)
{
    const float u0 = u[0], u1 = u[is], u2 = u[2 * is], u3 = u[3 * is], u4 = u[4 * is],
                u5 = u[5 * is];
    o[0] = u0 * R4 - (u1 + u2) * R6 + (u3 + u4) * R24;
    o[os] = (u2 - u1) * R6 + (u3 - u4) * R12;
    o[2 * os] = (u3 + u4 - u1 - u2) * R6 + u5;
}

/* U (36, F, C) = G w[f][c] G^T for every filter and channel, and its
 * transpose Ut (36, C, F), in blocks of 16 filters (the transposing copy of a
 * block's rows writes whole lines of Ut; element by element, each filter
 * would touch 36 * C lines). */
static void weight_transform(const conv2d_state *s, float *U, float *Ut)
{
    const int F = s->filters, C = s->in_c, nblocks = (F + 15) / 16;
    const size_t fc = (size_t)F * C;
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        const int f0 = blk * 16, f1 = f0 + 16 < F ? f0 + 16 : F;
        for (int f = f0; f < f1; f++) {
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
        for (int xi = 0; xi < WN; xi++) /* Ut_xi[:, f0:f1] = U_xi[f0:f1, :]^T */
            cblas_somatcopy(CblasRowMajor, CblasTrans, f1 - f0, C, 1.0f, U + xi * fc + (size_t)f0 * C,
                            C, Ut + xi * fc + f0, F);
    }
}

/* ---- channels-last copies -------------------------------------------------- */

/* src (rows, n) -> dst (n, ld): dst[p][r] = src[r][p], zero for rows <= r < ld.
 * OpenBLAS's transposing copy does this at about 0.25 cycles per float here,
 * several times faster than a plain loop. */
static void to_channels_last(const float *src, int rows, int n, float *dst, int ld)
{
    cblas_somatcopy(CblasRowMajor, CblasTrans, rows, n, 1.0f, src, n, dst, ld);
    if (rows < ld)
        for (int p = 0; p < n; p++)
            memset(dst + (size_t)p * ld + rows, 0, (size_t)(ld - rows) * sizeof(float));
}

/* src (n, ld) -> dst (rows, n): the inverse of to_channels_last. */
static void from_channels_last(const float *src, int ld, int n, float *dst, int rows)
{
    cblas_somatcopy(CblasRowMajor, CblasTrans, n, rows, 1.0f, src, ld, dst, n);
}

/* ---- the per-image transforms ---------------------------------------------------
 * Tile (ty, tx) of image b of a sub-batch is tile t = b*tiles + ty*tw + tx; its
 * output corner is (4ty, 4tx) and its input corner (4ty - pad_top,
 * 4tx - pad_left). V, M and dM are (36, tmax, Cp or Fp): position xi of
 * tile t starts at (xi*tmax + t)*Cp. */

/* V for image b's tiles from x_img (C, H, W); img is the channels-last scratch. */
WINO_CLONES static void input_transform(const conv2d_state *s, const wino_ws *l, int b,
                                        const float *x_img, float *img, float *V)
{
    const int H = s->in_h, W = s->in_w, cp = l->cp;
    const size_t xs = l->tmax * cp; /* floats between positions xi and xi+1 */
    to_channels_last(x_img, s->in_c, H * W, img, cp);
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int iy = 4 * ty - s->pad_top, ix = 4 * tx - s->pad_left;
            const int inside = iy >= 0 && ix >= 0 && iy + 6 <= H && ix + 6 <= W;
            for (int c0 = 0; c0 < cp; c0 += WL) {
                float d[WN * WL], tmp[WN * WL];
                const float *src = d;
                size_t su = 6 * WL, sv = WL; /* strides of u and v in src */
                if (inside) {
                    src = img + ((size_t)iy * W + ix) * cp + c0;
                    su = (size_t)W * cp, sv = (size_t)cp;
                } else { /* gather the tile with zero padding */
                    for (int u = 0; u < 6; u++)
                        for (int v = 0; v < 6; v++) {
                            const int y = iy + u, xx = ix + v;
                            if (y >= 0 && y < H && xx >= 0 && xx < W)
                                memcpy(d + (u * 6 + v) * WL, img + ((size_t)y * W + xx) * cp + c0,
                                       WL * sizeof(float));
                            else
                                memset(d + (u * 6 + v) * WL, 0, WL * sizeof(float));
                        }
                }
                for (int v = 0; v < 6; v++) /* columns: tmp (6x6) = BT d */
                    bt_1d(tmp + v * WL, 6 * WL, src + v * sv, su);
                float *out = V + (size_t)t * cp + c0;
                for (int i = 0; i < 6; i++) /* rows: V = tmp BT^T */
                    bt_1d(out + i * 6 * xs, xs, tmp + i * 6 * WL, WL);
            }
        }
    }
}

/* y_img (F, OH, OW) = act(AT M AT^T + bias) for image b's tiles. */
WINO_CLONES static void output_transform(const conv2d_state *s, const wino_ws *l, int b,
                                         const float *M, float *img, float *y_img)
{
    const int OH = s->out_h, OW = s->out_w, fp = l->fp, relu = s->relu;
    const size_t xs = l->tmax * fp;
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int oy = 4 * ty, ox = 4 * tx;
            const int rows = OH - oy < 4 ? OH - oy : 4, cols = OW - ox < 4 ? OW - ox : 4;
            for (int f0 = 0; f0 < fp; f0 += WL) {
                float tmp[24 * WL], o[16 * WL], bias[WL];
                const float *m = M + (size_t)t * fp + f0;
                for (int v = 0; v < 6; v++) /* columns: tmp (4x6) = AT m */
                    at_1d(tmp + v * WL, 6 * WL, m + v * xs, 6 * xs);
                for (int i = 0; i < 4; i++) /* rows: o (4x4) = tmp AT^T */
                    at_1d(o + i * 4 * WL, WL, tmp + i * 6 * WL, WL);
                for (int k = 0; k < WL; k++)
                    bias[k] = s->b && f0 + k < s->filters ? s->b[f0 + k] : 0.0f;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) {
                        float *dst = img + ((size_t)(oy + i) * OW + ox + j) * fp + f0;
                        const float *src = o + (i * 4 + j) * WL;
                        if (relu) {
                            for (int k = 0; k < WL; k++) {
                                const float v = src[k] + bias[k];
                                dst[k] = v < 0.0f ? 0.0f : v; /* NaN stays NaN */
                            }
                        } else {
                            for (int k = 0; k < WL; k++)
                                dst[k] = src[k] + bias[k];
                        }
                    }
            }
        }
    }
    from_channels_last(img, fp, OH * OW, y_img, s->filters);
}

/* dM = AT^T (dy * relu'(y)) AT for image b's tiles; db (F) += the masked dy's
 * sums. masked: scratch for one image's masked dy. */
WINO_CLONES static void grad_output_transform(const conv2d_state *s, const wino_ws *l, int b,
                                              const float *y_img, const float *dy_img,
                                              float *masked, float *img, float *dM, float *db)
{
    const int OH = s->out_h, OW = s->out_w, fp = l->fp, ohw = OH * OW;
    const size_t xs = l->tmax * fp;
    const float *g_img = dy_img;
    if (s->relu) {
        for (int f = 0; f < s->filters; f++) {
            const float *g = dy_img + (size_t)f * ohw, *o = y_img + (size_t)f * ohw;
            float *d = masked + (size_t)f * ohw;
            for (int p = 0; p < ohw; p++) {
                const float gp = g[p]; /* unconditional load: vectorises */
                d[p] = o[p] > 0.0f ? gp : 0.0f;
            }
        }
        g_img = masked;
    }
    for (int f = 0; f < s->filters; f++) { /* 8 partial sums, so it vectorises */
        const float *g = g_img + (size_t)f * ohw;
        float acc[8] = {0};
        int p = 0;
        for (; p + 8 <= ohw; p += 8)
            for (int k = 0; k < 8; k++)
                acc[k] += g[p + k];
        float sum = 0.0f;
        for (; p < ohw; p++)
            sum += g[p];
        for (int k = 0; k < 8; k++)
            sum += acc[k];
        db[f] += sum;
    }
    to_channels_last(g_img, s->filters, ohw, img, fp);
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int oy = 4 * ty, ox = 4 * tx;
            const int rows = OH - oy < 4 ? OH - oy : 4, cols = OW - ox < 4 ? OW - ox : 4;
            for (int f0 = 0; f0 < fp; f0 += WL) {
                float g[16 * WL], tmp[24 * WL];
                const float *src = img + ((size_t)oy * OW + ox) * fp + f0;
                size_t si = (size_t)OW * fp, sj = (size_t)fp;
                if (rows < 4 || cols < 4) { /* a tile past the output's edge: zeros there */
                    for (int i = 0; i < 4; i++)
                        for (int j = 0; j < 4; j++) {
                            if (i < rows && j < cols)
                                memcpy(g + (i * 4 + j) * WL, src + i * si + j * sj,
                                       WL * sizeof(float));
                            else
                                memset(g + (i * 4 + j) * WL, 0, WL * sizeof(float));
                        }
                    src = g, si = 4 * WL, sj = WL;
                }
                for (int j = 0; j < 4; j++) /* columns: tmp (6x4) = AT^T g */
                    a_1d(tmp + j * WL, 4 * WL, src + j * sj, si);
                float *out = dM + (size_t)t * fp + f0;
                for (int u = 0; u < 6; u++) /* rows: dM = tmp AT */
                    a_1d(out + u * 6 * xs, xs, tmp + u * 4 * WL, WL);
            }
        }
    }
}

/* dx_img (C, H, W) = the sum over image b's tiles of BT^T dV BT, each at its
 * input corner (tiles overlap; parts in the padding are dropped). */
WINO_CLONES static void grad_input_transform(const conv2d_state *s, const wino_ws *l, int b,
                                             const float *dV, float *img, float *dx_img)
{
    const int H = s->in_h, W = s->in_w, cp = l->cp;
    const size_t xs = l->tmax * cp;
    memset(img, 0, (size_t)H * W * cp * sizeof(float));
    for (int ty = 0; ty < l->th; ty++) {
        for (int tx = 0; tx < l->tw; tx++) {
            const int t = b * l->tiles + ty * l->tw + tx;
            const int iy = 4 * ty - s->pad_top, ix = 4 * tx - s->pad_left;
            for (int c0 = 0; c0 < cp; c0 += WL) {
                float tmp[WN * WL], dd[WN * WL];
                const float *v = dV + (size_t)t * cp + c0;
                for (int q = 0; q < 6; q++) /* columns: tmp = BT^T dV */
                    b_1d(tmp + q * WL, 6 * WL, v + q * xs, 6 * xs);
                for (int k = 0; k < 6; k++) /* rows: dd = tmp BT */
                    b_1d(dd + k * 6 * WL, WL, tmp + k * 6 * WL, WL);
                for (int u = 0; u < 6; u++) {
                    const int yy = iy + u;
                    if (yy < 0 || yy >= H)
                        continue;
                    for (int q = 0; q < 6; q++) {
                        const int xx = ix + q;
                        if (xx < 0 || xx >= W)
                            continue;
                        float *dst = img + ((size_t)yy * W + xx) * cp + c0;
                        const float *src = dd + (u * 6 + q) * WL;
                        for (int k = 0; k < WL; k++)
                            dst[k] += src[k];
                    }
                }
            }
        }
    }
    from_channels_last(img, cp, H * W, dx_img, s->in_c);
}

/* ---- forward and backward ------------------------------------------------------ */

void conv2d_winograd_forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
    const int F = s->filters, C = s->in_c;
    const size_t x_item = (size_t)C * s->in_h * s->in_w, y_item = (size_t)F * s->out_h * s->out_w;
    const wino_ws l = ws_layout(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *U = (float *)s->workspace, *Ut = U + l.u;
    float *slots = Ut + l.u;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        weight_transform(s, U, Ut); /* (ends with a barrier) */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *V = slots + l.thread * omp_get_thread_num(), *M = V + l.v, *img = M + l.m;
            const int i1 = (task + 1) * s->chunk < n ? (task + 1) * s->chunk : n;
            for (int i0 = task * s->chunk; i0 < i1; i0 += s->sub) {
                const int B = i1 - i0 < s->sub ? i1 - i0 : s->sub, T = B * l.tiles;
                for (int b = 0; b < B; b++)
                    input_transform(s, &l, b, x + (size_t)(i0 + b) * x_item, img, V);
                for (int xi = 0; xi < WN; xi++) /* M_xi (T, F) = V_xi (T, C) * Ut_xi (C, F) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, F, C, 1.0f,
                                V + xi * l.tmax * l.cp, l.cp, Ut + (size_t)xi * F * C, F, 0.0f,
                                M + xi * l.tmax * l.fp, l.fp);
                for (int b = 0; b < B; b++)
                    output_transform(s, &l, b, M, img, y + (size_t)(i0 + b) * y_item);
            }
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
    float *U = (float *)s->workspace, *Ut = U + l.u;
    float *slots = Ut + l.u;
    float *parts = slots + l.thread * s->nthreads;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        if (dx)
            weight_transform(s, U, Ut); /* (ends with a barrier) */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *V = slots + l.thread * omp_get_thread_num(), *dM = V + l.v, *img = dM + l.m;
            float *masked = img + l.img;
            float *dU_part = parts + l.part * task, *db_part = dU_part + WN * fc;
            const int i1 = (task + 1) * s->chunk < n ? (task + 1) * s->chunk : n;
            memset(db_part, 0, (size_t)l.fp * sizeof(float));
            for (int i0 = task * s->chunk; i0 < i1; i0 += s->sub) {
                const int B = i1 - i0 < s->sub ? i1 - i0 : s->sub, T = B * l.tiles;
                const float beta = i0 == task * s->chunk ? 0.0f : 1.0f; /* dU: sum over sub-batches */
                for (int b = 0; b < B; b++) {
                    const size_t off = (size_t)(i0 + b) * y_item;
                    grad_output_transform(s, &l, b, y + off, dy + off, masked, img, dM, db_part);
                    input_transform(s, &l, b, x + (size_t)(i0 + b) * x_item, img, V);
                }
                for (int xi = 0; xi < WN; xi++) /* dU_xi (F, C) += dM_xi^T (F, T) * V_xi (T, C) */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, F, C, T, 1.0f,
                                dM + xi * l.tmax * l.fp, l.fp, V + xi * l.tmax * l.cp, l.cp, beta,
                                dU_part + xi * fc, C);
                if (!dx)
                    continue;
                for (int xi = 0; xi < WN; xi++) /* dV_xi (T, C) = dM_xi (T, F) * U_xi (F, C) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, F, 1.0f,
                                dM + xi * l.tmax * l.fp, l.fp, U + xi * fc, C, 0.0f,
                                V + xi * l.tmax * l.cp, l.cp);
                for (int b = 0; b < B; b++)
                    grad_input_transform(s, &l, b, V, img, dx + (size_t)(i0 + b) * x_item);
            }
        }
        /* (implicit barrier) dw = G^T (the sum of the dU parts, in task order) G
         * and db = the sum of the db parts. For one (f, c) the parts are 36 *
         * ntasks floats a line apart; neighbouring (f, c) share those lines,
         * so the pass reads each line once (ntasks is 4 per thread unless a
         * chunk is set). */
#pragma omp for schedule(static)
        for (int fcix = 0; fcix < F * C; fcix++) {
            float du[WN], t[3][6];
            for (int xi = 0; xi < WN; xi++) {
                float sum = parts[xi * fc + fcix];
                for (int task = 1; task < ntasks; task++)
                    sum += parts[l.part * task + xi * fc + fcix];
                du[xi] = sum;
            }
            for (int j = 0; j < 6; j++)
                gt_1d(&t[0][j], 6, du + j, 6); /* columns: t (3x6) */
            float *dw = s->dw + (size_t)fcix * 9;
            for (int k = 0; k < 3; k++)
                gt_1d(dw + k * 3, 1, &t[k][0], 1); /* rows: dw (3x3) */
            if (s->db && fcix < F) {
                float sum = parts[WN * fc + fcix];
                for (int task = 1; task < ntasks; task++)
                    sum += parts[l.part * task + WN * fc + fcix];
                s->db[fcix] = sum;
            }
        }
    }
}
