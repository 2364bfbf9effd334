/* Microbenchmark of the layer plugins on the seed CNN:
 *   Conv2D 32 3x3 relu, Conv2D 64 3x3 relu, MaxPool 2x2, Dropout 0.25,
 *   Flatten, Dense 256 relu, Dropout 0.5, Dense 10, softmax cross-entropy
 * at a given batch. Times each layer's forward and backward (median over
 * iterations) and the whole forward+backward, and prints a Markdown table.
 * On a shared machine the minimum is the better estimate of what the code
 * costs; the median says what a run sees.
 *
 *   DMNIST_PLUGIN_PATH=build/plugins layers_bench [--batch 64] [--iters 30]
 *        [--threads 2] [--chunk 0] [--algo auto] [--cpu-time]
 *   chunk: conv2d images per task; algo: conv2d's algorithm (auto, im2col,
 *   winograd: conv1 keeps auto, which is im2col for its one channel);
 *   --cpu-time: time with the process's CPU clock (use with --threads 1 on
 *   a busy machine). GFLOP/s counts a direct convolution's multiply-adds,
 *   whatever the algorithm does. */
#include "gradcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bench_layer {
    const char *label, *type, *spec;
    gc_layer L;
    dm_tensor out, dout;
    double flops;          /* forward multiply-adds x 2 per image, for GEMM layers */
    double *t_fwd, *t_bwd; /* per iteration, seconds */
} bench_layer;

/* Wall time, or with --cpu-time the process's CPU time: with --threads 1
 * that is what one core spends, whatever else the machine is running. */
static clockid_t g_clock = CLOCK_MONOTONIC;

static double now(void)
{
    struct timespec ts;
    clock_gettime(g_clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv)
{
    int batch = 64, iters = 30, threads = 2, chunk = 0;
    const char *algo = "auto";
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "--cpu-time")) {
            g_clock = CLOCK_PROCESS_CPUTIME_ID;
            i--;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "option %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--chunk")) chunk = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--algo")) algo = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (batch < 1 || iters < 1 || threads < 1 || chunk < 0) {
        fprintf(stderr, "bad options\n");
        return 2;
    }
    char c1[64], c2[96];
    snprintf(c1, sizeof c1, "filters=32 kernel=3 activation=relu chunk=%d", chunk);
    snprintf(c2, sizeof c2, "filters=64 kernel=3 activation=relu chunk=%d algo=%.16s", chunk, algo);
    bench_layer net[] = {
        {"conv1 3x3x32 relu", "conv2d", c1, {0}, {0}, {0}, 2.0 * 26 * 26 * 32 * 9, NULL, NULL},
        {"conv2 3x3x64 relu", "conv2d", c2, {0}, {0}, {0}, 2.0 * 24 * 24 * 64 * 288, NULL, NULL},
        {"maxpool 2x2", "maxpool2d", "", {0}, {0}, {0}, 0, NULL, NULL},
        {"dropout 0.25", "dropout", "rate=0.25", {0}, {0}, {0}, 0, NULL, NULL},
        {"flatten", "flatten", "", {0}, {0}, {0}, 0, NULL, NULL},
        {"dense 256 relu", "dense", "units=256 activation=relu", {0}, {0}, {0}, 2.0 * 9216 * 256, NULL, NULL},
        {"dropout 0.5", "dropout", "rate=0.5", {0}, {0}, {0}, 0, NULL, NULL},
        {"dense 10", "dense", "units=10", {0}, {0}, {0}, 2.0 * 256 * 10, NULL, NULL},
        {"softmax CE", "softmax_cross_entropy", "", {0}, {0}, {0}, 0, NULL, NULL},
    };
    const int nl = (int)(sizeof net / sizeof net[0]);

    dm_shape shape = {batch, 1, 28, 28};
    float *x = gc_alloc(dm_shape_count(shape) * sizeof(float));
    gc_fill_uniform(x, dm_shape_count(shape), 0, 1, 1);
    dm_tensor input = {x, DM_DEVICE_CPU, DM_LAYOUT_NCHW, shape};
    for (int l = 0; l < nl; l++) {
        dm_error err = {0};
        if (gc_layer_create(&net[l].L, net[l].type, net[l].spec, shape, threads, 42 + l, &err)) {
            fprintf(stderr, "%s: %s\n", net[l].label, err.msg);
            return 1;
        }
        shape = net[l].L.info.out_shape;
        size_t bytes = dm_shape_count(shape) * sizeof(float);
        net[l].out = (dm_tensor){gc_alloc(bytes), DM_DEVICE_CPU, DM_LAYOUT_NCHW, shape};
        net[l].dout = (dm_tensor){gc_alloc(bytes), DM_DEVICE_CPU, DM_LAYOUT_NCHW, shape};
        net[l].t_fwd = calloc((size_t)iters, sizeof(double));
        net[l].t_bwd = calloc((size_t)iters, sizeof(double));
    }
    int32_t *labels = calloc((size_t)batch, sizeof(int32_t));
    for (int i = 0; i < batch; i++) labels[i] = i % 10;
    float metrics[2];
    double *t_total = calloc((size_t)iters, sizeof(double));

    const int warmup = 3;
    for (int it = -warmup; it < iters; it++) {
        dm_error err = {0};
        const double t0 = now();
        for (int l = 0; l < nl; l++) {
            dm_run_ctx ctx = {sizeof ctx, 1, dm_hash64(7, (uint64_t)(it + warmup) * 16 + l), labels, metrics, NULL};
            const dm_tensor *in = l ? &net[l - 1].out : &input;
            double t = now();
            if (net[l].L.vt->forward(net[l].L.state, &ctx, in, &net[l].out, &err)) {
                fprintf(stderr, "%s forward: %s\n", net[l].label, err.msg);
                return 1;
            }
            if (it >= 0) net[l].t_fwd[it] = now() - t;
        }
        for (int l = nl - 1; l >= 0; l--) {
            dm_run_ctx ctx = {sizeof ctx, 1, dm_hash64(7, (uint64_t)(it + warmup) * 16 + l), labels, metrics, NULL};
            const dm_tensor *in = l ? &net[l - 1].out : &input;
            dm_tensor *din = l ? &net[l - 1].dout : NULL;
            const dm_tensor *dout = net[l].L.info.is_loss ? NULL : &net[l].dout;
            double t = now();
            if (net[l].L.vt->backward(net[l].L.state, &ctx, in, &net[l].out, dout, din, &err)) {
                fprintf(stderr, "%s backward: %s\n", net[l].label, err.msg);
                return 1;
            }
            if (it >= 0) net[l].t_bwd[it] = now() - t;
        }
        if (it >= 0) t_total[it] = now() - t0;
    }

    printf("batch %d, %d threads, %s time, median of %d iterations (after %d warm-up)\n\n", batch, threads,
           g_clock == CLOCK_MONOTONIC ? "wall" : "CPU", iters, warmup);
    printf("| layer | output | params | workspace MiB | forward ms | backward ms | fwd+bwd ms | "
           "GFLOP/s |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    double sum = 0;
    for (int l = 0; l < nl; l++) {
        const double f = median(net[l].t_fwd, iters), b = median(net[l].t_bwd, iters);
        sum += f + b;
        /* Backward of a GEMM layer is two GEMMs of the forward's size (conv1
         * has no din, so one). */
        const double mult = l == 0 ? 2.0 : 3.0;
        const dm_shape os = net[l].L.info.out_shape;
        printf("| %s | %dx%dx%d | %zu | %.2f | %.3f | %.3f | %.3f |", net[l].label, os.c, os.h, os.w,
               net[l].L.info.param_count, net[l].L.info.workspace_bytes / 1048576.0, f * 1e3, b * 1e3, (f + b) * 1e3);
        if (net[l].flops > 0) printf(" %.1f |\n", mult * net[l].flops * batch / (f + b) * 1e-9);
        else printf(" |\n");
    }
    const double total = median(t_total, iters), fastest = t_total[0]; /* sorted by median() */
    printf("| **all layers** | | | | | | %.3f | |\n\n", total * 1e3);
    printf("sum of layer medians %.3f ms; whole pass median %.3f ms = %.0f images/s, "
           "fastest %.3f ms = %.0f images/s (layers only, no optimizer or data)\n",
           sum * 1e3, total * 1e3, batch / total, fastest * 1e3, batch / fastest);

    for (int l = 0; l < nl; l++) {
        free(net[l].out.data);
        free(net[l].dout.data);
        free(net[l].t_fwd);
        free(net[l].t_bwd);
        gc_layer_free(&net[l].L);
    }
    free(x), free(labels), free(t_total);
    return 0;
}
