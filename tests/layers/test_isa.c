/* Run-time CPU dispatch (dmnist/cpu_isa.h): every copy of a layer's kernels
 * that this CPU can run gives the same bits as the generic copy, forward,
 * input gradient and parameter gradients, on shapes that exercise the
 * vector loops and their edges (channel counts that are not multiples of 16,
 * 'same' padding, partial tiles). DMNIST_CPU_ISA selects the copy when a
 * layer is created, so each variant is a layer created under another value.
 *
 *   test_layers_isa            the cases below
 *   test_layers_isa report     print the CPU's best copy and the L2 size (for logs)
 *
 * On a CPU without AVX2 only the generic copy exists and the comparisons
 * have nothing to compare; the test says so. A bad DMNIST_CPU_ISA value is
 * refused with a one-line error. */
#define CHECK_OUT stdout
#include "check.h"
#include "gradcheck.h"

#include "dmnist/cpu_isa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct isa_case {
    const char *type, *spec;
    dm_shape in;
    int training; /* dropout: the training mask */
} isa_case;

static const isa_case cases[] = {
    /* Winograd (the seed's conv2 shape, smaller batch); 20 channels: a
     * partial 16-lane block; 'same' padding with partial tiles; forced on
     * 3 channels */
    {"conv2d", "filters=64 kernel=3 activation=relu", {4, 32, 26, 26}, 0},
    {"conv2d", "filters=24 kernel=3 activation=relu algo=winograd", {3, 20, 13, 11}, 0},
    {"conv2d", "filters=17 kernel=3 padding=same bias=false algo=winograd", {2, 16, 10, 9}, 0},
    {"conv2d", "filters=5 kernel=3 activation=relu algo=winograd", {3, 3, 9, 7}, 0},
    /* im2col: the seed's conv1, and strides and 'same' padding */
    {"conv2d", "filters=32 kernel=3 activation=relu", {5, 1, 28, 28}, 0},
    {"conv2d", "filters=9 kernel=5 stride=2 padding=same activation=relu", {3, 4, 15, 13}, 0},
    /* dropout's mask (64-bit hashing): the training mask, and an odd count */
    {"dropout", "rate=0.25", {3, 33, 12, 12}, 1},
    {"dropout", "rate=0.5", {1, 7, 13, 5}, 1},
};

typedef struct result {
    float *y, *dx, *g;
    size_t ny, nx, np;
} result;

/* Create the layer under DMNIST_CPU_ISA=isa, with fixed params and data,
 * and run forward and backward. */
static int run_case(const isa_case *c, dm_cpu_isa isa, result *r)
{
    setenv("DMNIST_CPU_ISA", dm_cpu_isa_name(isa), 1);
    gc_layer L;
    dm_error err = {0};
    if (gc_layer_create(&L, c->type, c->spec, c->in, 2, 7, &err) != DM_OK) {
        printf("FAIL: cannot create %s '%s' (%s): %s\n", c->type, c->spec, dm_cpu_isa_name(isa), err.msg);
        return -1;
    }
    const dm_shape os = L.info.out_shape;
    r->nx = dm_shape_count(c->in), r->ny = dm_shape_count(os), r->np = L.info.param_count;
    float *x = gc_alloc(r->nx * sizeof(float)), *dy = gc_alloc(r->ny * sizeof(float));
    r->y = gc_alloc(r->ny * sizeof(float));
    r->dx = gc_alloc(r->nx * sizeof(float));
    r->g = gc_alloc((r->np ? r->np : 1) * sizeof(float));
    gc_fill_uniform(x, r->nx, -1, 1, 11);
    gc_fill_uniform(dy, r->ny, -1, 1, 12);
    if (r->np) gc_fill_uniform(L.params, r->np, -0.3f, 0.3f, 13);
    dm_tensor ti = {x, DM_DEVICE_CPU, DM_LAYOUT_NCHW, c->in};
    dm_tensor to = {r->y, DM_DEVICE_CPU, DM_LAYOUT_NCHW, os};
    dm_tensor tdy = {dy, DM_DEVICE_CPU, DM_LAYOUT_NCHW, os};
    dm_tensor tdx = {r->dx, DM_DEVICE_CPU, DM_LAYOUT_NCHW, c->in};
    dm_run_ctx ctx = {sizeof ctx, c->training, 99, NULL, NULL, NULL};
    int rc = L.vt->forward(L.state, &ctx, &ti, &to, &err);
    if (rc == DM_OK) rc = L.vt->backward(L.state, &ctx, &ti, &to, &tdy, &tdx, &err);
    if (rc == DM_OK && r->np) memcpy(r->g, L.grads, r->np * sizeof(float));
    if (rc != DM_OK) printf("FAIL: %s '%s' (%s): %s\n", c->type, c->spec, dm_cpu_isa_name(isa), err.msg);
    free(x), free(dy);
    gc_layer_free(&L);
    return rc == DM_OK ? 0 : -1;
}

static void free_result(result *r) { free(r->y), free(r->dx), free(r->g); }

/* Elements that differ, and the largest difference. */
static size_t differing(const float *a, const float *b, size_t n, double *worst)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            const double d = (double)a[i] - b[i];
            if (!(d * d <= *worst * *worst)) *worst = d < 0 ? -d : d;
            k++;
        }
    return k;
}

int main(int argc, char **argv)
{
    const dm_cpu_isa best = dm_cpu_isa_best();
    printf("this CPU's best copy: %s; L2 %zu KiB (dm_cpu_l2_bytes)\n", dm_cpu_isa_name(best), dm_cpu_l2_bytes() >> 10);
    if (argc > 1 && !strcmp(argv[1], "report")) return 0;
    if (best == DM_ISA_GENERIC) printf("note: only the generic copy runs on this CPU: nothing to compare\n");

    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const isa_case *c = &cases[t];
        result ref;
        if (run_case(c, DM_ISA_GENERIC, &ref)) {
            failures++;
            continue;
        }
        for (int isa = DM_ISA_GENERIC + 1; isa <= (int)best; isa++) {
            result r;
            if (run_case(c, (dm_cpu_isa)isa, &r)) {
                failures++;
                continue;
            }
            double wy = 0, wx = 0, wg = 0;
            const size_t ky = differing(r.y, ref.y, ref.ny, &wy);
            const size_t kx = differing(r.dx, ref.dx, ref.nx, &wx);
            const size_t kg = differing(r.g, ref.g, ref.np, &wg);
            CHECK(ky == 0 && kx == 0 && kg == 0,
                  "%s '%s' %s vs generic: %zu/%zu outputs (max %g), %zu/%zu din (max %g), "
                  "%zu/%zu grads (max %g) differ",
                  c->type, c->spec, dm_cpu_isa_name((dm_cpu_isa)isa), ky, ref.ny, wy, kx, ref.nx, wx, kg, ref.np, wg);
            if (ky == 0 && kx == 0 && kg == 0)
                printf("ok %s '%s' (%d,%d,%d,%d): %s = generic, bit for bit\n", c->type, c->spec, c->in.n, c->in.c,
                       c->in.h, c->in.w, dm_cpu_isa_name((dm_cpu_isa)isa));
            free_result(&r);
        }
        free_result(&ref);
    }

    /* A value that is none of the four words is refused, by name. */
    setenv("DMNIST_CPU_ISA", "avx9000", 1);
    gc_layer L;
    dm_error err = {0};
    const int rc = gc_layer_create(&L, "conv2d", "filters=4", (dm_shape){1, 1, 8, 8}, 1, 7, &err);
    CHECK(rc == DM_ERR_INVALID && strstr(err.msg, "DMNIST_CPU_ISA='avx9000'"),
          "DMNIST_CPU_ISA=avx9000 not refused (rc %d: %s)", rc, err.msg);
    if (rc == DM_OK) gc_layer_free(&L);
    else printf("ok bad DMNIST_CPU_ISA refused: %s\n", err.msg);
    unsetenv("DMNIST_CPU_ISA");

    if (failures) printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
