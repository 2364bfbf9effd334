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
 * are padded to multiples of 16 (Cp, Fp) with zeros. The transforms are in
 * conv2d_winograd_kern.h, built once per instruction set (dmnist/cpu_isa.h:
 * generic, AVX2, AVX-512); conv2d's create picks the copy (s->isa), and all
 * copies give the same bits.
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
#include "dmnist/cpu_isa.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#define WL 16 /* channels per vector: the lanes of every transform */
#define WN 36 /* positions in the transformed domain (6x6) */

static size_t round16(size_t x) { return (x + 15) / 16 * 16; }

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
 * ones. Written with plain loops, GCC kept some of these scalar. The
 * transforms themselves are in conv2d_winograd_kern.h, built once per
 * instruction set. */
typedef float vec __attribute__((vector_size(WL * sizeof(float)), aligned(4), may_alias));

/* (macros, not functions: a function returning a vector would change the
 * ABI between the AVX-512 and the portable build) */
#define vload(p) (*(const vec *)(p))
#define vstore(p, v) (*(vec *)(p) = (v))

/* G^T u (3 from 6), for the filter gradients (scalars: F*C of them;
 * multiplications by the reciprocals, which cost a fraction of divisions). */
static const float R4 = 1.0f / 4, R6 = 1.0f / 6, R12 = 1.0f / 12, R24 = 1.0f / 24;

static void gt_1d(float *o, int os, const float *u, int is)
{
    const float u0 = u[0], u1 = u[is], u2 = u[2 * is], u3 = u[3 * is], u4 = u[4 * is], u5 = u[5 * is];
    o[0] = u0 * R4 - (u1 + u2) * R6 + (u3 + u4) * R24;
    o[os] = (u2 - u1) * R6 + (u3 - u4) * R12;
    o[2 * os] = (u3 + u4 - u1 - u2) * R6 + u5;
}

/* ---- channels-last copies -------------------------------------------------- */

/* src (rows, n) -> dst (n, ld): dst[p][r] = src[r][p], zero for rows <= r < ld.
 * OpenBLAS's transposing copy does this at about 0.25 cycles per float here,
 * several times faster than a plain loop. */
static void to_channels_last(const float *src, int rows, int n, float *dst, int ld)
{
    cblas_somatcopy(CblasRowMajor, CblasTrans, rows, n, 1.0f, src, n, dst, ld);
    if (rows < ld)
        for (int p = 0; p < n; p++) memset(dst + (size_t)p * ld + rows, 0, (size_t)(ld - rows) * sizeof(float));
}

/* src (n, ld) -> dst (rows, n): the inverse of to_channels_last. */
static void from_channels_last(const float *src, int ld, int n, float *dst, int rows)
{
    cblas_somatcopy(CblasRowMajor, CblasTrans, n, rows, 1.0f, src, ld, dst, n);
}
/* ---- one copy of the kernels per instruction set (cpu_isa.h) -------------- */

#define DM_ISA_KERNELS "conv2d_winograd_kern.h"
#include "dmnist/cpu_isa_copies.h"

typedef struct wino_kernels {
    void (*filter)(const float *w_f, int c0, int n, size_t fc, float *U_f);
    void (*input)(const conv2d_state *s, const wino_ws *l, int b, const float *x_img, float *img, float *V);
    void (*output)(const conv2d_state *s, const wino_ws *l, int b, const float *M, float *img, float *y_img);
    void (*grad_output)(const conv2d_state *s, const wino_ws *l, int b, const float *y_img, const float *dy_img,
                        float *masked, float *img, float *dM, float *db);
    void (*grad_input)(const conv2d_state *s, const wino_ws *l, int b, const float *dV, float *img, float *dx_img);
} wino_kernels;

#define WINO_KERNELS(sfx) \
    { \
        filter_transform_##sfx, input_transform_##sfx, output_transform_##sfx, grad_output_transform_##sfx, \
            grad_input_transform_##sfx \
    }

static const wino_kernels wino_table[DM_ISA_COUNT] = {
    WINO_KERNELS(generic),
#if DM_CPU_ISA_X86
    WINO_KERNELS(avx2),
    WINO_KERNELS(avx512),
#else
    WINO_KERNELS(generic),
    WINO_KERNELS(generic),
#endif
};

/* The copy s->isa names (conv2d.c's create chose it with dm_cpu_isa_select). */
static const wino_kernels *wino_kernels_for(const conv2d_state *s)
{
    return &wino_table[(unsigned)s->isa < DM_ISA_COUNT ? s->isa : DM_ISA_GENERIC];
}

/* U (36, F, C) = G w[f][c] G^T for every filter and channel, and its
 * transpose Ut (36, C, F), in blocks of 16 filters (the transposing copy of a
 * block's rows writes whole lines of Ut; element by element, each filter
 * would touch 36 * C lines). */
static void weight_transform(const conv2d_state *s, const wino_kernels *k, float *U, float *Ut)
{
    const int F = s->filters, C = s->in_c, nblocks = (F + 15) / 16;
    const size_t fc = (size_t)F * C;
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        const int f0 = blk * 16, f1 = f0 + 16 < F ? f0 + 16 : F;
        for (int f = f0; f < f1; f++)
            for (int c0 = 0; c0 < C; c0 += WL)
                k->filter(s->w + (size_t)f * C * 9, c0, C - c0 < WL ? C - c0 : WL, fc, U + (size_t)f * C);
        for (int xi = 0; xi < WN; xi++) /* Ut_xi[:, f0:f1] = U_xi[f0:f1, :]^T */
            cblas_somatcopy(CblasRowMajor, CblasTrans, f1 - f0, C, 1.0f, U + xi * fc + (size_t)f0 * C, C,
                            Ut + xi * fc + f0, F);
    }
}

/* The per-image transforms, in conv2d_winograd_kern.h:
 * Tile (ty, tx) of image b of a sub-batch is tile t = b*tiles + ty*tw + tx; its
 * output corner is (4ty, 4tx) and its input corner (4ty - pad_top,
 * 4tx - pad_left). V, M and dM are (36, tmax, Cp or Fp): position xi of
 * tile t starts at (xi*tmax + t)*Cp.
 *   input_transform        V for image b's tiles from x_img (C, H, W)
 *   output_transform       y_img (F, OH, OW) = act(AT M AT^T + bias)
 *   grad_output_transform  dM = AT^T (dy * relu'(y)) AT; db += the masked dy's sums
 *   grad_input_transform   dx_img (C, H, W) = the sum over tiles of BT^T dV BT
 * img is a channels-last scratch image, masked one image's masked dy. */

/* ---- forward and backward ------------------------------------------------------ */

void conv2d_winograd_forward_cpu(const conv2d_state *s, int n, const float *x, float *y)
{
    const int F = s->filters, C = s->in_c;
    const size_t x_item = (size_t)C * s->in_h * s->in_w, y_item = (size_t)F * s->out_h * s->out_w;
    const wino_ws l = ws_layout(s);
    const wino_kernels *k = wino_kernels_for(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *U = (float *)s->workspace, *Ut = U + l.u;
    float *slots = Ut + l.u;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        weight_transform(s, k, U, Ut); /* (ends with a barrier) */
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < ntasks; task++) {
            float *V = slots + l.thread * omp_get_thread_num(), *M = V + l.v, *img = M + l.m;
            const int i1 = (task + 1) * s->chunk < n ? (task + 1) * s->chunk : n;
            for (int i0 = task * s->chunk; i0 < i1; i0 += s->sub) {
                const int B = i1 - i0 < s->sub ? i1 - i0 : s->sub, T = B * l.tiles;
                for (int b = 0; b < B; b++) k->input(s, &l, b, x + (size_t)(i0 + b) * x_item, img, V);
                for (int xi = 0; xi < WN; xi++) /* M_xi (T, F) = V_xi (T, C) * Ut_xi (C, F) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, F, C, 1.0f, V + xi * l.tmax * l.cp, l.cp,
                                Ut + (size_t)xi * F * C, F, 0.0f, M + xi * l.tmax * l.fp, l.fp);
                for (int b = 0; b < B; b++) k->output(s, &l, b, M, img, y + (size_t)(i0 + b) * y_item);
            }
        }
    }
}

void conv2d_winograd_backward_cpu(const conv2d_state *s, int n, const float *x, const float *y, const float *dy,
                                  float *dx)
{
    const int F = s->filters, C = s->in_c;
    const size_t x_item = (size_t)C * s->in_h * s->in_w, y_item = (size_t)F * s->out_h * s->out_w;
    const size_t fc = (size_t)F * C;
    const wino_ws l = ws_layout(s);
    const wino_kernels *k = wino_kernels_for(s);
    const int ntasks = (n + s->chunk - 1) / s->chunk;
    float *U = (float *)s->workspace, *Ut = U + l.u;
    float *slots = Ut + l.u;
    float *parts = slots + l.thread * s->nthreads;

#pragma omp parallel num_threads(s->nthreads) if (ntasks > 1)
    {
        if (dx) weight_transform(s, k, U, Ut); /* (ends with a barrier) */
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
                    k->grad_output(s, &l, b, y + off, dy + off, masked, img, dM, db_part);
                    k->input(s, &l, b, x + (size_t)(i0 + b) * x_item, img, V);
                }
                for (int xi = 0; xi < WN; xi++) /* dU_xi (F, C) += dM_xi^T (F, T) * V_xi (T, C) */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, F, C, T, 1.0f, dM + xi * l.tmax * l.fp, l.fp,
                                V + xi * l.tmax * l.cp, l.cp, beta, dU_part + xi * fc, C);
                if (!dx) continue;
                for (int xi = 0; xi < WN; xi++) /* dV_xi (T, C) = dM_xi (T, F) * U_xi (F, C) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, F, 1.0f, dM + xi * l.tmax * l.fp, l.fp,
                                U + xi * fc, C, 0.0f, V + xi * l.tmax * l.cp, l.cp);
                for (int b = 0; b < B; b++) k->grad_input(s, &l, b, V, img, dx + (size_t)(i0 + b) * x_item);
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
                for (int task = 1; task < ntasks; task++) sum += parts[l.part * task + xi * fc + fcix];
                du[xi] = sum;
            }
            for (int j = 0; j < 6; j++) gt_1d(&t[0][j], 6, du + j, 6); /* columns: t (3x6) */
            float *dw = s->dw + (size_t)fcix * 9;
            for (int k = 0; k < 3; k++) gt_1d(dw + k * 3, 1, &t[k][0], 1); /* rows: dw (3x3) */
            if (s->db && fcix < F) {
                float sum = parts[WN * fc + fcix];
                for (int task = 1; task < ntasks; task++) sum += parts[l.part * task + WN * fc + fcix];
                s->db[fcix] = sum;
            }
        }
    }
}
