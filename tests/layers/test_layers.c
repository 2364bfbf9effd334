/* Layer plugin behaviour beyond gradients:
 *   test_layers forward   forward results against naive double-precision references
 *   test_layers dropout   eval identity, rate statistics, the documented mask, determinism
 *   test_layers init      Glorot-uniform limits and moments, zero biases, seed determinism
 *   test_layers params    bad parameters, devices, layouts and shapes give clear errors
 *   test_layers plugins   descriptors: ABI, version, build signature, devices */
#define CHECK_OUT stdout /* the cases report on stdout */
#include "check.h"
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dm_tensor tensor(float *data, dm_shape s) { return (dm_tensor){data, DM_DEVICE_CPU, DM_LAYOUT_NCHW, s}; }

static dm_shape with_n(dm_shape s, int n)
{
    s.n = n;
    return s;
}

/* Create or stop the test with a message. */
static void must_create(gc_layer *L, const char *type, const char *spec, dm_shape in)
{
    dm_error err = {0};
    if (gc_layer_create(L, type, spec, in, 2, 7, &err) != DM_OK) {
        printf("FAIL: cannot create %s '%s': %s\n", type, spec, err.msg);
        exit(1);
    }
}

/* Largest |a - b| / (1 + |b|). */
static double max_rel_diff(const float *a, const double *b, size_t n)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (1.0 + fabs(b[i]));
        if (!(d <= worst)) /* NaN too */
            worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

/* ---- forward against references ---------------------------------------- */

typedef struct conv_case {
    const char *spec;
    int filters, k, stride, same, bias, relu;
    dm_shape in;
    int run_n;
    int out_h, out_w; /* expected, Keras rules */
} conv_case;

static void test_conv2d_forward(void)
{
    static const conv_case cases[] = {
        {"filters=32", 32, 3, 1, 0, 1, 0, {2, 1, 28, 28}, 0, 26, 26},
        {"filters=4 kernel=3 activation=relu", 4, 3, 1, 0, 1, 1, {3, 3, 9, 8}, 0, 7, 6},
        {"filters=4 kernel=3 stride=2 padding=same", 4, 3, 2, 1, 1, 0, {2, 3, 7, 5}, 0, 4, 3},
        {"filters=3 kernel=3 stride=2", 3, 3, 2, 0, 1, 0, {2, 2, 8, 8}, 0, 3, 3},
        {"filters=2 kernel=4 padding=same bias=false", 2, 4, 1, 1, 0, 0, {2, 2, 6, 5}, 0, 6, 5},
        {"filters=5 kernel=5 padding=same activation=relu", 5, 5, 1, 1, 1, 1, {4, 2, 5, 5}, 3, 5, 5},
        {"filters=3 kernel=2 stride=3 padding=same chunk=2", 3, 2, 3, 1, 1, 0, {5, 2, 7, 8}, 0, 3, 3},
        {"filters=6 kernel=3 chunk=1", 6, 3, 1, 0, 1, 0, {3, 4, 6, 6}, 0, 4, 4},
        /* Winograd F(4x4, 3x3): whole tiles, partial tiles at the bottom and
         * right, 'same' padding, a batch smaller than the create-time one */
        {"filters=16 kernel=3 activation=relu algo=winograd", 16, 3, 1, 0, 1, 1, {2, 16, 10, 14}, 0, 8, 12},
        {"filters=5 kernel=3 algo=winograd", 5, 3, 1, 0, 1, 0, {3, 3, 11, 9}, 0, 9, 7},
        {"filters=4 kernel=3 padding=same bias=false algo=winograd chunk=1", 4, 3, 1, 1, 0, 0, {3, 2, 7, 6}, 2, 7, 6},
        {"filters=64 kernel=3 activation=relu algo=winograd", 64, 3, 1, 0, 1, 1, {2, 32, 26, 26}, 0, 24, 24},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const conv_case *c = &cases[t];
        gc_layer L;
        must_create(&L, "conv2d", c->spec, c->in);
        const dm_shape os = L.info.out_shape;
        CHECK(os.n == c->in.n && os.c == c->filters && os.h == c->out_h && os.w == c->out_w,
              "conv2d '%s': out shape (%d,%d,%d,%d), want (%d,%d,%d,%d)", c->spec, os.n, os.c, os.h, os.w, c->in.n,
              c->filters, c->out_h, c->out_w);
        const size_t nw = (size_t)c->filters * c->in.c * c->k * c->k;
        CHECK(L.info.param_count == nw + (c->bias ? (size_t)c->filters : 0), "conv2d '%s': param_count %zu", c->spec,
              L.info.param_count);
        const int n = c->run_n ? c->run_n : c->in.n;
        const dm_shape is = with_n(c->in, n), ys = with_n(os, n);
        float *x = gc_alloc(dm_shape_count(is) * sizeof(float));
        float *y = gc_alloc(dm_shape_count(ys) * sizeof(float));
        double *ref = calloc(dm_shape_count(ys), sizeof(double));
        gc_fill_uniform(x, dm_shape_count(is), -1, 1, 11 + t);
        gc_fill_uniform(L.params, L.info.param_count, -0.5f, 0.5f, 12 + t); /* nonzero bias */

        /* Padding by the Keras rule, independently of the plugin. */
        int pt = 0, pl = 0;
        if (c->same) {
            int th = (c->out_h - 1) * c->stride + c->k - c->in.h;
            int tw = (c->out_w - 1) * c->stride + c->k - c->in.w;
            pt = th > 0 ? th / 2 : 0;
            pl = tw > 0 ? tw / 2 : 0;
        }
        const float *w = L.params, *b = c->bias ? L.params + nw : NULL;
        for (int i = 0; i < n; i++)
            for (int f = 0; f < c->filters; f++)
                for (int oy = 0; oy < c->out_h; oy++)
                    for (int ox = 0; ox < c->out_w; ox++) {
                        double s = b ? b[f] : 0.0;
                        for (int ch = 0; ch < c->in.c; ch++)
                            for (int ky = 0; ky < c->k; ky++)
                                for (int kx = 0; kx < c->k; kx++) {
                                    int iy = oy * c->stride - pt + ky, ix = ox * c->stride - pl + kx;
                                    if (iy < 0 || iy >= c->in.h || ix < 0 || ix >= c->in.w) continue;
                                    s += (double)w[((f * c->in.c + ch) * c->k + ky) * c->k + kx] *
                                        x[(((size_t)i * c->in.c + ch) * c->in.h + iy) * c->in.w + ix];
                                }
                        if (c->relu && s < 0) s = 0;
                        ref[(((size_t)i * c->filters + f) * c->out_h + oy) * c->out_w + ox] = s;
                    }
        dm_tensor ti = tensor(x, is), to = tensor(y, ys);
        dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
        dm_error err = {0};
        int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
        CHECK(rc == DM_OK, "conv2d '%s' forward: %s", c->spec, err.msg);
        double d = max_rel_diff(y, ref, dm_shape_count(ys));
        /* Winograd's transforms round more than a dot product (seed conv2:
         * 3e-5 measured); a wrong coefficient would be off by 0.1 or more. */
        const double tol = strstr(c->spec, "winograd") ? 1e-4 : 1e-5;
        CHECK(d < tol, "conv2d '%s': forward differs from the reference by %g", c->spec, d);
        printf("%s conv2d forward '%s' n=%d: max rel diff %.2g\n", d < tol ? "ok" : "FAIL", c->spec, n, d);
        free(x), free(y), free(ref);
        gc_layer_free(&L);
    }
}

/* The same convolution chunked differently gives the same forward and the
 * same gradients; backward without din (first layer) the same grads. */
static void test_conv2d_chunks(void)
{
    const dm_shape in = {7, 3, 9, 9};
    const char *specs[] = {"filters=5 activation=relu chunk=1", "filters=5 activation=relu chunk=3",
                           "filters=5 activation=relu chunk=7"};
    float *x = gc_alloc(dm_shape_count(in) * sizeof(float));
    gc_fill_uniform(x, dm_shape_count(in), -1, 1, 5);
    float *y0 = NULL, *g0 = NULL;
    for (int v = 0; v < 3; v++) {
        gc_layer L;
        must_create(&L, "conv2d", specs[v], in);
        const dm_shape os = L.info.out_shape;
        float *y = gc_alloc(dm_shape_count(os) * sizeof(float));
        float *dy = gc_alloc(dm_shape_count(os) * sizeof(float));
        float *dx = gc_alloc(dm_shape_count(in) * sizeof(float));
        float *g2 = gc_alloc(L.info.param_count * sizeof(float));
        gc_fill_uniform(dy, dm_shape_count(os), -1, 1, 6);
        dm_tensor ti = tensor(x, in), to = tensor(y, os), tdy = tensor(dy, os), tdx = tensor(dx, in);
        dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
        dm_error err = {0};
        int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
        if (rc == DM_OK) rc = L.vt->backward(L.state, &ctx, &ti, &to, &tdy, NULL, &err);
        memcpy(g2, L.grads, L.info.param_count * sizeof(float));
        if (rc == DM_OK) rc = L.vt->backward(L.state, &ctx, &ti, &to, &tdy, &tdx, &err);
        CHECK(rc == DM_OK, "conv2d '%s': %s", specs[v], err.msg);
        CHECK(memcmp(g2, L.grads, L.info.param_count * sizeof(float)) == 0,
              "conv2d '%s': grads differ when din is NULL", specs[v]);
        if (v == 0) {
            y0 = y, g0 = g2, y = NULL, g2 = NULL;
        } else {
            double wy = 0, wg = 0;
            for (size_t i = 0; i < dm_shape_count(os); i++) wy = fmax(wy, fabs(y[i] - y0[i]));
            for (size_t i = 0; i < L.info.param_count; i++) wg = fmax(wg, fabs(L.grads[i] - g0[i]) / (1 + fabs(g0[i])));
            CHECK(wy < 1e-5 && wg < 1e-5, "conv2d '%s' vs chunk=1: forward %g, grads %g apart", specs[v], wy, wg);
        }
        free(y), free(dy), free(dx), free(g2);
        gc_layer_free(&L);
    }
    free(x), free(y0), free(g0);
    printf("ok conv2d chunking checked\n");
}

/* Winograd against im2col on the same weights and data: forward, the input
 * gradient and the parameter gradients agree to float rounding; the
 * parameter gradients do not depend on whether din is asked for, and one
 * thread gives the same bits as two. The
 * transforms multiply by up to 8 and add up to 36 terms, so the difference
 * is measured against the largest value of each tensor. */
static double max_scaled_diff(const float *a, const float *b, size_t n)
{
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (scale > 0 ? scale : 1.0);
        if (!(d <= worst)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

static void test_conv2d_winograd(void)
{
    static const struct {
        const char *spec;
        dm_shape in;
        int run_n;
        int chunk_fixed; /* the chunk is the same with 1 and 2 threads: compare them */
    } cases[] = {
        /* the seed's conv2: tasks of 2 images, transformed one at a time, and a
         * last task of 1 */
        {"filters=64 kernel=3 activation=relu chunk=2", {10, 32, 26, 26}, 9, 1},
        {"filters=7 kernel=3 padding=same bias=false", {3, 5, 11, 10}, 0, 0},
        {"filters=6 kernel=3 activation=relu chunk=2", {5, 3, 9, 13}, 3, 0},
        {"filters=3 kernel=3 padding=same activation=relu chunk=1", {2, 2, 3, 4}, 0, 1},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        gc_layer L[3];
        char spec[3][160];
        snprintf(spec[0], sizeof spec[0], "%s algo=im2col", cases[t].spec);
        snprintf(spec[1], sizeof spec[1], "%s algo=winograd", cases[t].spec);
        snprintf(spec[2], sizeof spec[2], "%s algo=winograd", cases[t].spec);
        const int n = cases[t].run_n ? cases[t].run_n : cases[t].in.n;
        const dm_shape is = with_n(cases[t].in, n);
        float *x = gc_alloc(dm_shape_count(is) * sizeof(float));
        gc_fill_uniform(x, dm_shape_count(is), -1, 1, 31 + t);
        float *y[3], *dy = NULL, *dx[3], *g[3], *g_nodin = NULL;
        size_t ny = 0, np = 0;
        for (int a = 0; a < 3; a++) {
            dm_error cerr = {0};
            if (gc_layer_create(&L[a], "conv2d", spec[a], cases[t].in, a == 2 ? 1 : 2, 7, &cerr)) {
                printf("FAIL: cannot create conv2d '%s': %s\n", spec[a], cerr.msg);
                exit(1);
            }
            const dm_shape ys = with_n(L[a].info.out_shape, n);
            ny = dm_shape_count(ys);
            np = L[a].info.param_count;
            y[a] = gc_alloc(ny * sizeof(float));
            dx[a] = gc_alloc(dm_shape_count(is) * sizeof(float));
            g[a] = gc_alloc(np * sizeof(float));
            if (!dy) {
                dy = gc_alloc(ny * sizeof(float));
                gc_fill_uniform(dy, ny, -1, 1, 41 + t);
            }
            gc_fill_uniform(L[a].params, np, -0.3f, 0.3f, 51 + t); /* same weights, nonzero bias */
            dm_tensor ti = tensor(x, is), to = tensor(y[a], ys), tdy = tensor(dy, ys), tdx = tensor(dx[a], is);
            dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
            dm_error err = {0};
            int rc = L[a].vt->forward(L[a].state, &ctx, &ti, &to, &err);
            if (rc == DM_OK && a == 1) {
                rc = L[a].vt->backward(L[a].state, &ctx, &ti, &to, &tdy, NULL, &err);
                g_nodin = gc_alloc(np * sizeof(float));
                memcpy(g_nodin, L[a].grads, np * sizeof(float));
            }
            if (rc == DM_OK) rc = L[a].vt->backward(L[a].state, &ctx, &ti, &to, &tdy, &tdx, &err);
            CHECK(rc == DM_OK, "conv2d '%s': %s", spec[a], err.msg);
            memcpy(g[a], L[a].grads, np * sizeof(float));
        }
        const double dyw = max_scaled_diff(y[1], y[0], ny);
        const double dxw = max_scaled_diff(dx[1], dx[0], dm_shape_count(is));
        const double dgw = max_scaled_diff(g[1], g[0], np);
        const double tol = 2e-5; /* seed conv2: 5e-6 measured */
        CHECK(dyw < tol && dxw < tol && dgw < tol,
              "conv2d '%s' n=%d: winograd vs im2col: forward %g, din %g, grads %g apart", cases[t].spec, n, dyw, dxw,
              dgw);
        CHECK(memcmp(g_nodin, g[1], np * sizeof(float)) == 0, "conv2d '%s' winograd: grads differ when din is NULL",
              cases[t].spec);
        /* (tasks have at least 4 per thread: compare where that does not
         * change the chunk) */
        CHECK(!cases[t].chunk_fixed ||
                  (!memcmp(y[1], y[2], ny * sizeof(float)) &&
                   !memcmp(dx[1], dx[2], dm_shape_count(is) * sizeof(float)) &&
                   !memcmp(g[1], g[2], np * sizeof(float))),
              "conv2d '%s' winograd: 1 thread and 2 threads give different results", cases[t].spec);
        printf("%s conv2d winograd vs im2col '%s' n=%d: forward %.2g, din %.2g, grads %.2g\n",
               dyw < tol && dxw < tol && dgw < tol ? "ok" : "FAIL", cases[t].spec, n, dyw, dxw, dgw);
        for (int a = 0; a < 3; a++) {
            free(y[a]), free(dx[a]), free(g[a]);
            gc_layer_free(&L[a]);
        }
        free(x), free(dy), free(g_nodin);
    }
}

static void test_maxpool_forward(void)
{
    static const struct {
        const char *spec;
        int pool, stride;
        dm_shape in;
        int out_h, out_w;
    } cases[] = {
        {"", 2, 2, {2, 3, 24, 24}, 12, 12},
        {"pool=2", 2, 2, {2, 2, 7, 5}, 3, 2},
        {"pool=3 stride=2", 3, 2, {2, 2, 7, 8}, 3, 3},
        {"pool=2 stride=1", 2, 1, {1, 2, 5, 6}, 4, 5},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        gc_layer L;
        must_create(&L, "maxpool2d", cases[t].spec, cases[t].in);
        const dm_shape in = cases[t].in, os = L.info.out_shape;
        CHECK(os.n == in.n && os.c == in.c && os.h == cases[t].out_h && os.w == cases[t].out_w,
              "maxpool2d '%s': out shape (%d,%d,%d,%d)", cases[t].spec, os.n, os.c, os.h, os.w);
        float *x = gc_alloc(dm_shape_count(in) * sizeof(float));
        float *y = gc_alloc(dm_shape_count(os) * sizeof(float));
        double *ref = calloc(dm_shape_count(os), sizeof(double));
        gc_fill_uniform(x, dm_shape_count(in), -1, 1, 21 + t);
        for (int pl = 0; pl < in.n * in.c; pl++)
            for (int oy = 0; oy < os.h; oy++)
                for (int ox = 0; ox < os.w; ox++) {
                    double m = -INFINITY;
                    for (int ky = 0; ky < cases[t].pool; ky++)
                        for (int kx = 0; kx < cases[t].pool; kx++)
                            m = fmax(
                                m,
                                x[((size_t)pl * in.h + oy * cases[t].stride + ky) * in.w + ox * cases[t].stride + kx]);
                    ref[((size_t)pl * os.h + oy) * os.w + ox] = m;
                }
        dm_tensor ti = tensor(x, in), to = tensor(y, os);
        dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
        dm_error err = {0};
        CHECK(L.vt->forward(L.state, &ctx, &ti, &to, &err) == DM_OK, "maxpool2d: %s", err.msg);
        double d = max_rel_diff(y, ref, dm_shape_count(os));
        CHECK(d == 0.0, "maxpool2d '%s': forward differs from the reference by %g", cases[t].spec, d);

        /* Backward with many ties (inputs from {0, 1, 2}): each window's
         * gradient goes to its first maximum in row-major order, and
         * overlapping windows add up. */
        float *dy = gc_alloc(dm_shape_count(os) * sizeof(float));
        float *dx = gc_alloc(dm_shape_count(in) * sizeof(float));
        double *want = calloc(dm_shape_count(in), sizeof(double));
        uint64_t q = 61 + t;
        for (size_t i = 0; i < dm_shape_count(in); i++) x[i] = (float)(dm_rng_next(&q) % 3);
        gc_fill_uniform(dy, dm_shape_count(os), -1, 1, 62 + t);
        for (int pl = 0; pl < in.n * in.c; pl++)
            for (int oy = 0; oy < os.h; oy++)
                for (int ox = 0; ox < os.w; ox++) {
                    size_t best = 0;
                    float m = -INFINITY;
                    for (int ky = 0; ky < cases[t].pool; ky++)
                        for (int kx = 0; kx < cases[t].pool; kx++) {
                            size_t at =
                                ((size_t)pl * in.h + oy * cases[t].stride + ky) * in.w + ox * cases[t].stride + kx;
                            if (x[at] > m) m = x[at], best = at;
                        }
                    want[best] += dy[((size_t)pl * os.h + oy) * os.w + ox];
                }
        dm_tensor tdy = tensor(dy, os), tdx = tensor(dx, in);
        CHECK(L.vt->forward(L.state, &ctx, &ti, &to, &err) == DM_OK, "maxpool2d: %s", err.msg);
        CHECK(L.vt->backward(L.state, &ctx, &ti, &to, &tdy, &tdx, &err) == DM_OK, "maxpool2d: %s", err.msg);
        d = max_rel_diff(dx, want, dm_shape_count(in));
        CHECK(d < 1e-6, "maxpool2d '%s': backward with ties differs from first-maximum routing by %g", cases[t].spec,
              d);
        free(dy), free(dx), free(want);
        free(x), free(y), free(ref);
        gc_layer_free(&L);
    }
    printf("ok maxpool2d forward, and backward with ties\n");
}

static void test_dense_relu_flatten_forward(void)
{
    /* dense on a 4-D input reads it as (n, c*h*w) in NCHW order. */
    const dm_shape in = {3, 2, 3, 4};
    const int K = 24;
    for (int relu = 0; relu < 2; relu++) {
        gc_layer L;
        must_create(&L, "dense", relu ? "units=7 activation=relu" : "units=7", in);
        const dm_shape os = L.info.out_shape;
        CHECK(os.n == 3 && os.c == 7 && os.h == 1 && os.w == 1, "dense out shape");
        CHECK(L.info.param_count == 7 * 24 + 7, "dense param_count %zu", L.info.param_count);
        float *x = gc_alloc(dm_shape_count(in) * sizeof(float));
        float *y = gc_alloc(dm_shape_count(os) * sizeof(float));
        double ref[21];
        gc_fill_uniform(x, dm_shape_count(in), -1, 1, 31);
        gc_fill_uniform(L.params, L.info.param_count, -0.5f, 0.5f, 32);
        for (int i = 0; i < 3; i++)
            for (int u = 0; u < 7; u++) {
                double s = L.params[7 * K + u];
                for (int k = 0; k < K; k++) s += (double)L.params[u * K + k] * x[i * K + k];
                ref[i * 7 + u] = relu && s < 0 ? 0 : s;
            }
        dm_tensor ti = tensor(x, in), to = tensor(y, os);
        dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
        dm_error err = {0};
        CHECK(L.vt->forward(L.state, &ctx, &ti, &to, &err) == DM_OK, "dense: %s", err.msg);
        double d = max_rel_diff(y, ref, 21);
        CHECK(d < 1e-5, "dense relu=%d: forward differs from the reference by %g", relu, d);
        free(x), free(y);
        gc_layer_free(&L);
    }

    gc_layer R, F;
    must_create(&R, "relu", "", in);
    must_create(&F, "flatten", "", in);
    CHECK(F.info.out_shape.n == 3 && F.info.out_shape.c == 24 && F.info.out_shape.h == 1 && F.info.out_shape.w == 1,
          "flatten out shape (%d,%d,%d,%d)", F.info.out_shape.n, F.info.out_shape.c, F.info.out_shape.h,
          F.info.out_shape.w);
    float x[72], y[72], z[72];
    gc_fill_uniform(x, 72, -1, 1, 33);
    dm_tensor ti = tensor(x, in), tr = tensor(y, in), tf = tensor(z, F.info.out_shape);
    dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
    dm_error err = {0};
    CHECK(R.vt->forward(R.state, &ctx, &ti, &tr, &err) == DM_OK, "relu: %s", err.msg);
    CHECK(F.vt->forward(F.state, &ctx, &ti, &tf, &err) == DM_OK, "flatten: %s", err.msg);
    for (int i = 0; i < 72; i++) {
        CHECK(y[i] == (x[i] > 0 ? x[i] : 0.0f), "relu[%d] = %g for %g", i, y[i], x[i]);
        CHECK(z[i] == x[i], "flatten[%d] = %g, want %g", i, z[i], x[i]);
    }
    gc_layer_free(&R);
    gc_layer_free(&F);
    printf("ok dense, relu, flatten forward\n");
}

/* dense at a size where forward and backward are split into column blocks
 * across 2 threads (>= 2^20 multiply-adds), ReLU fused: forward, dx, dW and db
 * against double-precision loops. (The gradient checks use sizes small
 * enough to run on one thread.) */
static void test_dense_blocked(void)
{
    const int n = 8, K = 2048, U = 80; /* 1.3M multiply-adds: 2 blocks of units, 2 of inputs */
    const dm_shape in = {n, K, 1, 1};
    gc_layer L;
    must_create(&L, "dense", "units=80 activation=relu", in);
    const dm_shape os = L.info.out_shape;
    float *x = gc_alloc((size_t)n * K * sizeof(float)), *y = gc_alloc((size_t)n * U * sizeof(float));
    float *dy = gc_alloc((size_t)n * U * sizeof(float)), *dx = gc_alloc((size_t)n * K * sizeof(float));
    double *ry = calloc((size_t)n * U, sizeof(double)), *rdx = calloc((size_t)n * K, sizeof(double));
    double *rdw = calloc((size_t)U * K + U, sizeof(double));
    gc_fill_uniform(x, (size_t)n * K, -1, 1, 61);
    gc_fill_uniform(dy, (size_t)n * U, -1, 1, 62);
    gc_fill_uniform(L.params, L.info.param_count, -0.05f, 0.05f, 63);
    const float *w = L.params, *b = L.params + (size_t)U * K;
    for (int i = 0; i < n; i++)
        for (int u = 0; u < U; u++) {
            double acc = b[u];
            for (int k = 0; k < K; k++) acc += (double)w[(size_t)u * K + k] * x[(size_t)i * K + k];
            ry[i * U + u] = acc > 0 ? acc : 0;
            const double dz = acc > 0 ? dy[i * U + u] : 0;
            for (int k = 0; k < K; k++) {
                rdw[(size_t)u * K + k] += dz * x[(size_t)i * K + k];
                rdx[(size_t)i * K + k] += dz * w[(size_t)u * K + k];
            }
            rdw[(size_t)U * K + u] += dz;
        }
    dm_tensor ti = tensor(x, in), to = tensor(y, os), tdy = tensor(dy, os), tdx = tensor(dx, in);
    dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
    dm_error err = {0};
    int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
    if (rc == DM_OK) rc = L.vt->backward(L.state, &ctx, &ti, &to, &tdy, &tdx, &err);
    CHECK(rc == DM_OK, "dense blocked: %s", err.msg);
    const double dyy = max_rel_diff(y, ry, (size_t)n * U), ddx = max_rel_diff(dx, rdx, (size_t)n * K);
    const double ddw = max_rel_diff(L.grads, rdw, L.info.param_count);
    CHECK(dyy < 1e-5 && ddx < 1e-5 && ddw < 1e-5, "dense blocked: forward %g, dx %g, dw/db %g from the reference", dyy,
          ddx, ddw);
    printf("%s dense n=%d K=%d units=%d relu on 2 threads: forward %.2g, dx %.2g, dw/db %.2g\n",
           dyy < 1e-5 && ddx < 1e-5 && ddw < 1e-5 ? "ok" : "FAIL", n, K, U, dyy, ddx, ddw);
    free(x), free(y), free(dy), free(dx), free(ry), free(rdx), free(rdw);
    gc_layer_free(&L);
}

static void test_softmax_forward(void)
{
    const dm_shape in = {6, 10, 1, 1};
    gc_layer L;
    must_create(&L, "softmax_cross_entropy", "", in);
    CHECK(L.info.is_loss == 1, "softmax_cross_entropy: is_loss %d", L.info.is_loss);
    float x[60], p[60], din[60];
    gc_fill_uniform(x, 60, -4, 4, 41);
    x[10 * 5 + 3] = 80.0f; /* item 5: one huge logit, p of the others underflows */
    int32_t labels[6] = {0, 3, 9, 1, 1, 7};
    /* Make item 2 correct and item 5 wrong, whatever the random logits. */
    x[2 * 10 + 9] = 10.0f;
    float metrics[2] = {5.0f, 1.0f}; /* forward adds to what is there */
    dm_run_ctx ctx = {sizeof ctx, 1, 9, labels, metrics, NULL};
    dm_tensor ti = tensor(x, in), to = tensor(p, in), td = tensor(din, in);
    dm_error err = {0};
    CHECK(L.vt->forward(L.state, &ctx, &ti, &to, &err) == DM_OK, "softmax: %s", err.msg);
    double loss = 0.0;
    int correct = 0;
    for (int i = 0; i < 6; i++) {
        double m = -INFINITY, s = 0.0;
        int arg = 0;
        for (int j = 0; j < 10; j++) {
            if (x[i * 10 + j] > m) m = x[i * 10 + j], arg = j;
        }
        for (int j = 0; j < 10; j++) s += exp((double)x[i * 10 + j] - m);
        for (int j = 0; j < 10; j++) {
            double ref = exp((double)x[i * 10 + j] - m) / s;
            CHECK(fabs(p[i * 10 + j] - ref) < 1e-6, "p[%d][%d] = %g, want %g", i, j, p[i * 10 + j], ref);
        }
        loss += m + log(s) - x[i * 10 + labels[i]];
        correct += arg == labels[i];
    }
    CHECK(isfinite(metrics[0]) && fabs(metrics[0] - (5.0 + loss)) < 1e-4 * (1 + loss), "loss metric %g, want 5 + %g",
          metrics[0], loss);
    CHECK(metrics[1] == 1.0f + correct, "correct metric %g, want 1 + %d", metrics[1], correct);
    CHECK(L.vt->backward(L.state, &ctx, &ti, &to, NULL, &td, &err) == DM_OK, "%s", err.msg);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 10; j++) {
            double want = (p[i * 10 + j] - (j == labels[i])) / 6.0;
            CHECK(fabs(din[i * 10 + j] - want) < 1e-7, "din[%d][%d] = %g, want %g", i, j, din[i * 10 + j], want);
        }
    /* A label outside [0, classes) is an error, not a read out of bounds. */
    labels[4] = 10;
    int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
    CHECK(rc == DM_ERR_INVALID && strstr(err.msg, "label 10"), "bad label: rc %d '%s'", rc, err.msg);
    gc_layer_free(&L);
    printf("ok softmax_cross_entropy forward, metrics, backward (loss %.4f, correct %d)\n", loss, correct);
}

/* ---- dropout ------------------------------------------------------------ */

static void test_dropout(void)
{
    const dm_shape in = {64, 32, 12, 12}; /* the seed CNN's first dropout */
    const size_t count = dm_shape_count(in);
    const double rate = 0.3;
    gc_layer L;
    must_create(&L, "dropout", "rate=0.3", in);
    float *x = gc_alloc(count * sizeof(float)), *y = gc_alloc(count * sizeof(float));
    float *y2 = gc_alloc(count * sizeof(float)), *dx = gc_alloc(count * sizeof(float));
    gc_fill_uniform(x, count, 0.5f, 1.5f, 51); /* no zeros: a zero output means dropped */
    dm_tensor ti = tensor(x, in), to = tensor(y, in), to2 = tensor(y2, in), tdx = tensor(dx, in);
    dm_error err = {0};

    /* Evaluation: exactly the identity, both ways. */
    dm_run_ctx eval = {sizeof eval, 0, 77, NULL, NULL, NULL};
    CHECK(L.vt->forward(L.state, &eval, &ti, &to, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(x, y, count * sizeof(float)) == 0, "dropout in evaluation is not the identity");
    CHECK(L.vt->backward(L.state, &eval, &ti, &to, &ti, &tdx, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(x, dx, count * sizeof(float)) == 0, "dropout backward in evaluation changes dout");

    /* Training: the documented mask, the rate, the scale. */
    dm_run_ctx train = {sizeof train, 1, 77, NULL, NULL, NULL};
    CHECK(L.vt->forward(L.state, &train, &ti, &to, &err) == DM_OK, "%s", err.msg);
    const uint32_t thr = (uint32_t)floor(rate * 16777216.0);
    const float scale = (float)(1.0 / (1.0 - rate));
    size_t dropped = 0, mismatched = 0;
    double sum_x = 0, sum_y = 0;
    for (size_t i = 0; i < count; i++) {
        const int keep = (dm_hash64(77, i) >> 40) >= thr;
        dropped += y[i] == 0.0f;
        mismatched += y[i] != (keep ? x[i] * scale : 0.0f);
        sum_x += x[i];
        sum_y += y[i];
    }
    const double frac = (double)dropped / count, sd = sqrt(rate * (1 - rate) / count);
    CHECK(mismatched == 0, "%zu elements differ from keep(seed, i) * x * 1/(1-rate)", mismatched);
    CHECK(fabs(frac - rate) < 5 * sd, "dropped fraction %.5f, want %.2f +- %.5f", frac, rate, 5 * sd);
    CHECK(fabs(sum_y / sum_x - 1.0) < 0.01, "inverted dropout changes the mean by %.4f", sum_y / sum_x - 1.0);
    printf("%s dropout rate 0.3: dropped %.5f of %zu, mean ratio %.5f\n", fabs(frac - rate) < 5 * sd ? "ok" : "FAIL",
           frac, count, sum_y / sum_x);

    /* Backward applies the same mask, recomputed from the seed. */
    CHECK(L.vt->backward(L.state, &train, &ti, &to, &ti, &tdx, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(y, dx, count * sizeof(float)) == 0, "backward mask differs from forward's");

    /* Same seed, same mask; another seed, another mask. */
    CHECK(L.vt->forward(L.state, &train, &ti, &to2, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(y, y2, count * sizeof(float)) == 0, "same seed gave a different mask");
    dm_run_ctx train2 = train;
    train2.seed = 78;
    CHECK(L.vt->forward(L.state, &train2, &ti, &to2, &err) == DM_OK, "%s", err.msg);
    size_t differ = 0;
    for (size_t i = 0; i < count; i++) differ += (y[i] == 0.0f) != (y2[i] == 0.0f);
    const double want = 2 * rate * (1 - rate);
    CHECK(fabs((double)differ / count - want) < 0.01, "seeds 77 and 78 masks differ in %.4f, want %.2f",
          (double)differ / count, want);

    /* A smaller batch sees the same mask on its items (a function of the index). */
    dm_tensor ts = tensor(x, with_n(in, 5)), tos = tensor(y2, with_n(in, 5));
    CHECK(L.vt->forward(L.state, &train, &ts, &tos, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(y, y2, dm_shape_count(with_n(in, 5)) * sizeof(float)) == 0,
          "a 5-item batch does not see the same mask");
    gc_layer_free(&L);

    /* rate 0 while training is the identity. */
    must_create(&L, "dropout", "rate=0", in);
    CHECK(L.vt->forward(L.state, &train, &ti, &to, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(x, y, count * sizeof(float)) == 0, "rate=0 is not the identity");
    gc_layer_free(&L);
    free(x), free(y), free(y2), free(dx);
    printf("ok dropout eval identity, mask, determinism\n");
}

/* ---- initialisation ----------------------------------------------------- */

static void check_glorot(const char *type, const char *spec, dm_shape in, size_t n_weights, size_t n_bias,
                         double fan_in, double fan_out)
{
    gc_layer L;
    must_create(&L, type, spec, in);
    CHECK(L.info.param_count == n_weights + n_bias, "%s '%s': param_count %zu, want %zu", type, spec,
          L.info.param_count, n_weights + n_bias);
    const size_t np = L.info.param_count;
    /* Garbage in, plus guard floats after the slice that must stay put. */
    float *p = gc_alloc((np + 16) * sizeof(float)), *q = gc_alloc((np + 16) * sizeof(float));
    for (size_t i = 0; i < np + 16; i++) p[i] = q[i] = 123.0f;
    dm_error err = {0};
    CHECK(L.vt->init_params(L.state, p, 99, &err) == DM_OK, "%s", err.msg);
    CHECK(L.vt->init_params(L.state, q, 99, &err) == DM_OK, "%s", err.msg);
    CHECK(memcmp(p, q, (np + 16) * sizeof(float)) == 0, "%s: same seed, different init", type);
    for (size_t i = np; i < np + 16; i++) CHECK(p[i] == 123.0f, "%s: init wrote past its %zu floats", type, np);

    const double limit = sqrt(6.0 / (fan_in + fan_out));
    double mx = 0, sum = 0, sum2 = 0;
    for (size_t i = 0; i < n_weights; i++) {
        mx = fmax(mx, fabs(p[i]));
        sum += p[i];
        sum2 += (double)p[i] * p[i];
    }
    const double mean = sum / n_weights, var = sum2 / n_weights - mean * mean;
    const double want_var = limit * limit / 3.0;
    CHECK(mx <= limit && mx > 0.99 * limit, "%s: max |w| %g, limit %g", type, mx, limit);
    CHECK(fabs(mean) < 5 * sqrt(want_var / n_weights), "%s: mean %g", type, mean);
    /* The sample variance of U(-a, a) has relative sd sqrt(0.8 / N). */
    const double var_tol = fmax(0.01, 5 * sqrt(0.8 / n_weights));
    CHECK(fabs(var / want_var - 1) < var_tol, "%s: variance %g, want %g +- %.1f%%", type, var, want_var, 100 * var_tol);
    for (size_t i = n_weights; i < np; i++) CHECK(p[i] == 0.0f, "%s: bias %zu = %g, want 0", type, i - n_weights, p[i]);

    CHECK(L.vt->init_params(L.state, q, 100, &err) == DM_OK, "%s", err.msg);
    size_t same = 0;
    for (size_t i = 0; i < n_weights; i++) same += p[i] == q[i];
    CHECK(same < n_weights / 100, "%s: seeds 99 and 100 share %zu of %zu weights", type, same, n_weights);
    printf("ok %s '%s' init: limit %.5f, max %.5f, mean %.2g, var/want %.4f\n", type, spec, limit, mx, mean,
           var / want_var);
    free(p), free(q);
    gc_layer_free(&L);
}

static void test_init(void)
{
    /* The seed CNN's conv2 and dense1. */
    check_glorot("conv2d", "filters=64 kernel=3 activation=relu", (dm_shape){1, 32, 26, 26}, 64 * 32 * 9, 64, 32 * 9,
                 64 * 9);
    check_glorot("conv2d", "filters=8 kernel=5 bias=false", (dm_shape){1, 3, 9, 9}, 8 * 3 * 25, 0, 3 * 25, 8 * 25);
    check_glorot("dense", "units=256 activation=relu", (dm_shape){1, 64, 12, 12}, 256 * 9216, 256, 9216, 256);
    check_glorot("dense", "units=10", (dm_shape){1, 256, 1, 1}, 2560, 10, 256, 10);
}

/* ---- parameter, device, layout and shape errors ------------------------- */

/* Create with explicit config; returns status, fills err. */
static int try_create(const char *type, const char *spec, dm_shape in, dm_device dev, dm_layout layout, dm_error *err)
{
    dm_error e = {0};
    dm_registry *r = gc_registry(&e);
    const dm_loaded_component *lc = r ? dm_registry_find(r, DM_KIND_LAYER, type) : NULL;
    if (!lc) {
        *err = e;
        return -1;
    }
    dm_param_set *ps = NULL;
    int rc = dm_param_set_parse(lc->component->params, spec, &ps, err);
    if (rc != DM_OK) return rc;
    const dm_layer_vtable *vt = lc->component->vtable;
    dm_layer_config cfg = {sizeof cfg, "layer.bad", dev, layout, in, 1, NULL};
    dm_layer_info info = {.struct_size = sizeof info};
    void *state = NULL;
    rc = vt->create(dm_param_set_params(ps), &cfg, &state, &info, err);
    if (rc == DM_OK) vt->destroy(state);
    dm_param_set_free(ps);
    return rc;
}

static int one_line(const char *msg) { return msg[0] != 0 && strchr(msg, '\n') == NULL; }

static void expect_error(const char *type, const char *spec, dm_shape in, dm_device dev, dm_layout layout, int code,
                         const char *needle1, const char *needle2)
{
    dm_error err = {0};
    int rc = try_create(type, spec, in, dev, layout, &err);
    int good = rc == code && one_line(err.msg) && strstr(err.msg, needle1) && (!needle2 || strstr(err.msg, needle2));
    CHECK(good, "%s '%s': got rc %d '%s', want rc %d mentioning '%s'%s%s", type, spec, rc, err.msg, code, needle1,
          needle2 ? " and " : "", needle2 ? needle2 : "");
    if (good) printf("ok %s '%s' -> %s\n", type, spec, err.msg);
}

static void test_params(void)
{
    const dm_shape img = {2, 1, 3, 3};
    const dm_device cpu = DM_DEVICE_CPU;
    const dm_layout nchw = DM_LAYOUT_NCHW;
    /* Rejected by the parameter table (range, type, required, choices). */
    expect_error("conv2d", "filters=0", img, cpu, nchw, DM_ERR_INVALID, "filters", NULL);
    expect_error("conv2d", "kernel=3", img, cpu, nchw, DM_ERR_INVALID, "filters", NULL);
    expect_error("conv2d", "filters=2 padding=full", img, cpu, nchw, DM_ERR_INVALID, "padding", NULL);
    expect_error("conv2d", "filters=2 activation=tanh", img, cpu, nchw, DM_ERR_INVALID, "activation", NULL);
    expect_error("dense", "bias=true", img, cpu, nchw, DM_ERR_INVALID, "units", NULL);
    expect_error("dropout", "rate=-0.1", img, cpu, nchw, DM_ERR_INVALID, "rate", NULL);
    /* Rejected by the layer itself, naming the layer and the sizes. */
    expect_error("conv2d", "filters=2 kernel=5", img, cpu, nchw, DM_ERR_INVALID, "layer.bad",
                 "kernel 5 is larger than the 3x3 input");
    expect_error("conv2d", "filters=2 kernel=2 algo=winograd", img, cpu, nchw, DM_ERR_INVALID, "layer.bad",
                 "algo=winograd needs kernel=3 and stride=1");
    expect_error("conv2d", "filters=2 stride=2 algo=winograd", img, cpu, nchw, DM_ERR_INVALID, "layer.bad",
                 "algo=winograd needs kernel=3 and stride=1");
    expect_error("conv2d", "filters=2 algo=fft", img, cpu, nchw, DM_ERR_INVALID, "algo", NULL);
    expect_error("conv2d", "filters=2 kernel=4", (dm_shape){1, 1, 8, 3}, cpu, nchw, DM_ERR_INVALID, "kernel 4", "8x3");
    expect_error("maxpool2d", "pool=4", img, cpu, nchw, DM_ERR_INVALID, "layer.bad", "pool 4");
    expect_error("dropout", "rate=1", img, cpu, nchw, DM_ERR_INVALID, "layer.bad", "rate");
    expect_error("conv2d", "filters=2", (dm_shape){0, 1, 3, 3}, cpu, nchw, DM_ERR_INVALID, "layer.bad", "input shape");
    /* With 'same' padding a kernel larger than the input is fine. */
    dm_error err = {0};
    CHECK(try_create("conv2d", "filters=2 kernel=5 padding=same", img, cpu, nchw, &err) == DM_OK,
          "same padding, kernel 5 on 3x3: %s", err.msg);

    /* filters=0 handed straight to create (a host that skipped validation). */
    {
        gc_layer L;
        must_create(&L, "conv2d", "filters=2", img);
        const dm_params *p = dm_param_set_params(L.ps);
        dm_param_value vals[16];
        memcpy(vals, p->values, (size_t)p->count * sizeof vals[0]);
        for (int k = 0; k < p->count; k++)
            if (strcmp(vals[k].name, "filters") == 0) vals[k].i = 0, vals[k].f = 0;
        dm_params bad = {sizeof bad, p->count, vals};
        dm_layer_config cfg = {sizeof cfg, "layer.bad", DM_DEVICE_CPU, DM_LAYOUT_NCHW, img, 1, NULL};
        dm_layer_info info = {.struct_size = sizeof info};
        void *state = NULL;
        int rc = L.vt->create(&bad, &cfg, &state, &info, &err);
        CHECK(rc == DM_ERR_INVALID && strstr(err.msg, "filters must be >= 1"), "filters=0 at create: rc %d '%s'", rc,
              err.msg);
        gc_layer_free(&L);
    }

    /* Every layer refuses NHWC with DM_ERR_UNSUPPORTED, and CUDA too when this
     * build has no CUDA implementation (tests/cuda checks the CUDA ones). */
    static const char *types[][2] = {{"conv2d", "filters=2"},      {"relu", ""},    {"maxpool2d", ""},
                                     {"dropout", "rate=0.5"},      {"flatten", ""}, {"dense", "units=3"},
                                     {"softmax_cross_entropy", ""}};
    const dm_shape s4 = {2, 3, 4, 4};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        dm_error re = {0};
        const dm_loaded_component *lc =
            gc_registry(&re) ? dm_registry_find(gc_registry(&re), DM_KIND_LAYER, types[t][0]) : NULL;
        if (!lc || !(((const dm_layer_vtable *)lc->component->vtable)->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA)))
            expect_error(types[t][0], types[t][1], s4, DM_DEVICE_CUDA, nchw, DM_ERR_UNSUPPORTED, "layer.bad", "cuda");
        expect_error(types[t][0], types[t][1], s4, cpu, DM_LAYOUT_NHWC, DM_ERR_UNSUPPORTED, "layer.bad", "NCHW");
    }

    /* Tensors that do not match the create-time shape are refused at run time. */
    {
        gc_layer L;
        must_create(&L, "conv2d", "filters=2", (dm_shape){2, 1, 5, 5});
        float x[75], y[54];
        memset(x, 0, sizeof x);
        dm_tensor ti = tensor(x, (dm_shape){3, 1, 5, 5}), to = tensor(y, (dm_shape){3, 2, 3, 3});
        dm_run_ctx ctx = {sizeof ctx, 1, 1, NULL, NULL, NULL};
        int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
        CHECK(rc == DM_ERR_INVALID && one_line(err.msg) && strstr(err.msg, "input shape"),
              "batch above the create-time one: rc %d '%s'", rc, err.msg);
        ti.shape = (dm_shape){1, 2, 5, 5};
        rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
        CHECK(rc == DM_ERR_INVALID, "wrong channel count: rc %d '%s'", rc, err.msg);
        gc_layer_free(&L);
    }
    printf("ok parameter, device, layout and shape errors\n");
}

/* ---- descriptors -------------------------------------------------------- */

static void test_plugins(void)
{
    static const char *types[] = {
        "conv2d", "relu", "maxpool2d", "dropout", "flatten", "dense", "softmax_cross_entropy"};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        gc_layer L;
        must_create(&L, types[t],
                    strcmp(types[t], "conv2d") == 0        ? "filters=1"
                        : strcmp(types[t], "dense") == 0   ? "units=1"
                        : strcmp(types[t], "dropout") == 0 ? "rate=0.1"
                                                           : "",
                    (dm_shape){1, 2, 3, 3});
        const dm_plugin_descriptor *d = L.lc->plugin;
        const dm_layer_vtable *vt = L.vt;
        CHECK(d->abi_major == DM_ABI_MAJOR && d->abi_minor == DM_ABI_MINOR, "%s: ABI %u.%u", types[t], d->abi_major,
              d->abi_minor);
        CHECK(strcmp(d->name, types[t]) == 0, "%s: plugin name '%s'", types[t], d->name);
        CHECK(strcmp(d->version, "1.0.0") == 0, "%s: version '%s'", types[t], d->version);
        CHECK(strncmp(d->build_signature, "cpu", 3) == 0, "%s: build signature '%s'", types[t], d->build_signature);
        if (!strcmp(types[t], "conv2d") || !strcmp(types[t], "dense"))
            CHECK(strstr(d->build_signature, "openblas") != NULL, "%s: build signature '%s'", types[t],
                  d->build_signature);
        CHECK(vt->struct_size >= DM_LAYER_VTABLE_SIZE_1_0 &&
                  (vt->devices == DM_DEVICE_BIT(DM_DEVICE_CPU) ||
                   vt->devices == (DM_DEVICE_BIT(DM_DEVICE_CPU) | DM_DEVICE_BIT(DM_DEVICE_CUDA))),
              "%s: vtable size %zu, devices %#x", types[t], vt->struct_size, vt->devices);
        CHECK(L.lc->component->help && L.lc->component->help[0], "%s: no help line", types[t]);
        printf("ok %s: plugin %s %s [%s]\n", types[t], d->name, d->version, d->build_signature);
        gc_layer_free(&L);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s forward|dropout|init|params|plugins\n", argv[0]);
        return 2;
    }
    const char *what = argv[1];
    if (!strcmp(what, "forward")) {
        test_conv2d_forward();
        test_conv2d_chunks();
        test_conv2d_winograd();
        test_maxpool_forward();
        test_dense_relu_flatten_forward();
        test_dense_blocked();
        test_softmax_forward();
    } else if (!strcmp(what, "dropout")) {
        test_dropout();
    } else if (!strcmp(what, "init")) {
        test_init();
    } else if (!strcmp(what, "params")) {
        test_params();
    } else if (!strcmp(what, "plugins")) {
        test_plugins();
    } else {
        fprintf(stderr, "unknown test '%s'\n", what);
        return 2;
    }
    if (failures) printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
