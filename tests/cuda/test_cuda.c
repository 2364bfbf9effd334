/* CUDA tests: every CUDA layer and optimizer against its CPU twin, the
 * nccl backend on one GPU, and the failure paths that need no GPU.
 *
 *   test_cuda layer TYPE      forward output, input gradient, parameter
 *                             gradients (and loss metrics) of TYPE on cuda vs
 *                             cpu, for several shapes and keys each
 *   test_cuda optimizer TYPE  several steps of sgd/adam on cuda vs cpu
 *   test_cuda nccl            the nccl backend with one rank on one GPU
 *   test_cuda nccl_gpus       more local ranks than GPUs is refused clearly
 *   test_cuda no_device       device = cuda without a GPU: one clear line,
 *                             non-zero exit (skipped where a GPU exists)
 *   test_cuda train           20 steps of the seed model on cuda and on cpu
 *                             (synthetic data) end with the same test loss
 *   test_cuda staging         2 ranks on one GPU with gloo (and mpi, where
 *                             mpirun exists): gradients staged through pinned
 *                             host memory, against 2 ranks on the cpu
 *   test_cuda backend         default backend: nccl for cuda with several
 *                             ranks, local otherwise
 *   test_cuda rdzv            the nccl id rendezvous (publish, fetch,
 *                             timeout, stale file), no GPU needed
 *
 * Tolerance (documented in docs/gpu.md): a CUDA value g passes against the
 * CPU value c when |g - c| <= RTOL * (max_i |c_i| + |c|), i.e. relative to
 * the tensor's largest magnitude plus relative to the element, with RTOL =
 * 1e-4 for FP32 math (float32 rounding differs only through summation
 * order: cuDNN/cuBLAS split sums differently than im2col + OpenBLAS), 5e-3
 * with tf32 = true, and exact equality for dropout masks. The CPU backward
 * is fed the GPU's forward output, so a pre-activation that rounds to
 * either side of 0 cannot flip one ReLU mask and not the other.
 *
 * Exit 77 (ctest SKIP_RETURN_CODE) with a "SKIP: reason" line when the case
 * needs a GPU (or a plugin) that this machine or build does not have. */
#define _GNU_SOURCE
#define CHECK_OUT stdout /* the cases report on stdout */
#include "check.h"
#include "dm_core.h"

#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SKIP 77
#define RTOL 1e-4
#define RTOL_TF32 5e-3

static void die(const char *what, const dm_error *e)
{
    printf("FAIL: %s: %s\n", what, e ? e->msg : "");
    exit(1);
}

static void skip(const char *why)
{
    printf("SKIP: %s\n", why);
    exit(SKIP);
}

static dm_registry *registry(void)
{
    static dm_registry *reg;
    if (reg) return reg;
    const char *path = getenv("DMNIST_PLUGIN_PATH");
    if (!path || !path[0]) skip("DMNIST_PLUGIN_PATH is not set (run through ctest)");
    dm_error e = {0};
    reg = dm_registry_new();
    if (!reg || dm_registry_load_path(reg, path, &e)) die("loading plugins", &e);
    return reg;
}

static const dm_loaded_component *component(dm_kind kind, const char *type)
{
    const dm_loaded_component *lc = dm_registry_find(registry(), (int)kind, type);
    if (!lc) {
        char why[160];
        snprintf(why, sizeof why, "plugin '%s' is not built here", type);
        skip(why);
    }
    return lc;
}

/* The GPU, or a SKIP naming why there is none. */
static dm_devctx *gpu(void)
{
    static dm_devctx dev;
    static int open;
    if (open) return &dev;
    dm_error e = {0};
    if (dm_dev_open(&dev, DM_DEVICE_CUDA, 0, &e) != DM_OK) skip(e.msg);
    open = 1;
    return &dev;
}

static void fill(float *x, size_t n, float lo, float hi, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * dm_rng_uniform(&s);
}

/* n floats on the device: a copy of host, or zeros when host is NULL. */
static float *dev_copy(const float *host, size_t n)
{
    dm_error e = {0};
    float *d = dm_dev_alloc(gpu(), (n ? n : 1) * sizeof(float), &e);
    if (!d) die("cudaMalloc", &e);
    if (n && host && dm_dev_upload(gpu(), d, host, n * sizeof(float), &e)) die("upload", &e);
    return d;
}

static float *host_copy(const float *dev, size_t n)
{
    dm_error e = {0};
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (n && dm_dev_download(gpu(), h, dev, n * sizeof(float), &e)) die("download", &e);
    return h;
}

/* Compare g (cuda) with c (cpu); 0 when all pass. rtol < 0: exact. */
static int compare(const char *what, const float *g, const float *c, size_t n, double rtol)
{
    double cmax = 0;
    for (size_t i = 0; i < n; i++) cmax = fmax(cmax, fabs((double)c[i]));
    size_t bad = 0, first = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)g[i] - (double)c[i]);
        int ok = rtol < 0 ? memcmp(&g[i], &c[i], sizeof(float)) == 0 : d <= rtol * (cmax + fabs((double)c[i]));
        if (!(d == d)) ok = 0; /* NaN */
        if (!ok && bad++ == 0) first = i;
        if (d > worst) worst = d;
    }
    if (bad) {
        printf("FAIL %s: %zu of %zu differ (first [%zu]: cuda %.9g vs cpu %.9g; largest |diff| %.3g, "
               "max |cpu| %.3g)\n",
               what, bad, n, first, (double)g[first], (double)c[first], worst, cmax);
        failures++;
        return 1;
    }
    printf("  ok %-34s %8zu values, largest |diff| %.3g (max |cpu| %.3g)\n", what, n, worst, cmax);
    return 0;
}

/* ---- layers ---------------------------------------------------------------------- */

typedef struct inst {
    const dm_layer_vtable *vt;
    dm_param_set *ps;
    void *state;
    dm_layer_info info;
    float *params, *grads;
    void *ws;
} inst;

static int make(inst *L, const dm_loaded_component *lc, const char *spec, dm_device device, dm_shape in, dm_error *e)
{
    memset(L, 0, sizeof *L);
    L->vt = lc->component->vtable;
    if (dm_param_set_parse(lc->component->params, spec, &L->ps, e)) return e->code;
    dm_layer_config cfg = {
        sizeof cfg, "t", device, DM_LAYOUT_NCHW, in, 2, device == DM_DEVICE_CUDA ? gpu()->stream : NULL};
    L->info.struct_size = sizeof L->info;
    int rc = L->vt->create(dm_param_set_params(L->ps), &cfg, &L->state, &L->info, e);
    if (rc) {
        L->state = NULL;
        return rc;
    }
    size_t np = L->info.param_count;
    if (device == DM_DEVICE_CUDA) {
        L->params = np ? dm_dev_alloc(gpu(), np * sizeof(float), e) : NULL;
        L->grads = np ? dm_dev_alloc(gpu(), np * sizeof(float), e) : NULL;
        L->ws = L->info.workspace_bytes ? dm_dev_alloc(gpu(), L->info.workspace_bytes, e) : NULL;
    } else {
        L->params = np ? calloc(np, sizeof(float)) : NULL;
        L->grads = np ? calloc(np, sizeof(float)) : NULL;
        L->ws = L->info.workspace_bytes ? aligned_alloc(64, (L->info.workspace_bytes + 63) / 64 * 64) : NULL;
    }
    return L->vt->bind(L->state, L->params, L->grads, L->ws, e);
}

static void unmake(inst *L, dm_device device)
{
    if (L->state) L->vt->destroy(L->state);
    if (device == DM_DEVICE_CUDA) {
        dm_dev_free(gpu(), L->params);
        dm_dev_free(gpu(), L->grads);
        dm_dev_free(gpu(), L->ws);
    } else {
        free(L->params);
        free(L->grads);
        free(L->ws);
    }
    dm_param_set_free(L->ps);
}

/* One layer case: create on both devices for batch `n`, run with batch
 * `run_n` (<= n), compare everything the layer produces. */
static void layer_case(const char *type, const char *spec, dm_shape in, int run_n, double rtol)
{
    printf("%s [%s] input (%d, %d, %d, %d), run with n = %d\n", type, spec, in.n, in.c, in.h, in.w, run_n);
    const dm_loaded_component *lc = component(DM_KIND_LAYER, type);
    if (!(((const dm_layer_vtable *)lc->component->vtable)->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA))) {
        CHECK(0, "%s: the plugin has no cuda implementation in this CUDA build", type);
        return;
    }
    dm_error e = {0};
    inst C, G;
    if (make(&C, lc, spec, DM_DEVICE_CPU, in, &e)) die("create (cpu)", &e);
    if (make(&G, lc, spec, DM_DEVICE_CUDA, in, &e)) die("create (cuda)", &e);
    CHECK(memcmp(&C.info.out_shape, &G.info.out_shape, sizeof(dm_shape)) == 0, "%s: output shapes differ", type);
    CHECK(C.info.param_count == G.info.param_count, "%s: parameter counts differ", type);
    const size_t np = C.info.param_count;
    if (np) {
        if (C.vt->init_params(C.state, C.params, 1234, &e)) die("init_params", &e);
        /* bigger than Glorot, so the gradients are not all tiny */
        fill(C.params, np, -0.5f, 0.5f, 99);
        if (dm_dev_upload(gpu(), G.params, C.params, np * sizeof(float), &e)) die("upload", &e);
    }
    dm_shape xs = in, ys = C.info.out_shape;
    xs.n = ys.n = run_n;
    const size_t nx = dm_shape_count(xs), ny = dm_shape_count(ys);
    const int classes = (int)dm_shape_per_item(ys);
    float *x = malloc(nx * sizeof(float)), *dy = malloc(ny * sizeof(float));
    fill(x, nx, -1.0f, 1.0f, 7);
    fill(dy, ny, -1.0f, 1.0f, 8);
    int32_t *labels = malloc((size_t)run_n * sizeof(int32_t));
    uint64_t ls = 5;
    for (int i = 0; i < run_n; i++) labels[i] = (int32_t)(dm_rng_next(&ls) % (uint64_t)classes);

    float *dx_ = dev_copy(x, nx), *ddy = dev_copy(dy, ny), *dy_out = dev_copy(NULL, ny), *ddx = dev_copy(NULL, nx);
    int32_t *dlab = (int32_t *)dev_copy((const float *)labels, (size_t)run_n); /* same bytes */
    float *dmet = dev_copy((const float[2]){0.5f, 2.0f}, 2);
    float cmet[2] = {0.5f, 2.0f};
    float *y = calloc(ny, sizeof(float)), *dxc = calloc(nx, sizeof(float));

    const uint64_t seed = 0xD00D;
    for (int training = 1; training >= 0; training--) {
        dm_run_ctx cc = {sizeof cc, training, seed, C.info.is_loss ? labels : NULL, cmet, NULL};
        dm_run_ctx gc = {sizeof gc, training, seed, G.info.is_loss ? dlab : NULL, dmet, gpu()->stream};
        dm_tensor tx = {x, DM_DEVICE_CPU, DM_LAYOUT_NCHW, xs}, ty = {y, DM_DEVICE_CPU, DM_LAYOUT_NCHW, ys};
        dm_tensor gx = {dx_, DM_DEVICE_CUDA, DM_LAYOUT_NCHW, xs}, gy = {dy_out, DM_DEVICE_CUDA, DM_LAYOUT_NCHW, ys};
        if (C.vt->forward(C.state, &cc, &tx, &ty, &e)) die("forward (cpu)", &e);
        if (G.vt->forward(G.state, &gc, &gx, &gy, &e)) die("forward (cuda)", &e);
        float *yg = host_copy(dy_out, ny);
        char what[96];
        snprintf(what, sizeof what, "%s forward%s", type, training ? "" : " (eval)");
        compare(what, yg, y, ny, strcmp(type, "dropout") == 0 ? -1 : rtol);
        if (C.info.is_loss) {
            float gm[2];
            if (dm_dev_download(gpu(), gm, dmet, sizeof gm, &e)) die("download", &e);
            snprintf(what, sizeof what, "%s metrics (loss, hits)%s", type, training ? "" : " (eval)");
            compare(what, gm, cmet, 2, rtol);
        }
        if (!training) {
            free(yg);
            break;
        }
        /* backward, the CPU fed the GPU's forward output (see the top) */
        dm_tensor tyg = {yg, DM_DEVICE_CPU, DM_LAYOUT_NCHW, ys};
        dm_tensor tdy = {dy, DM_DEVICE_CPU, DM_LAYOUT_NCHW, ys}, tdx = {dxc, DM_DEVICE_CPU, DM_LAYOUT_NCHW, xs};
        dm_tensor gdy = {ddy, DM_DEVICE_CUDA, DM_LAYOUT_NCHW, ys}, gdx = {ddx, DM_DEVICE_CUDA, DM_LAYOUT_NCHW, xs};
        if (C.vt->backward(C.state, &cc, &tx, &tyg, C.info.is_loss ? NULL : &tdy, &tdx, &e)) die("backward (cpu)", &e);
        if (G.vt->backward(G.state, &gc, &gx, &gy, G.info.is_loss ? NULL : &gdy, &gdx, &e)) die("backward (cuda)", &e);
        float *dxg = host_copy(ddx, nx);
        snprintf(what, sizeof what, "%s input gradient", type);
        compare(what, dxg, dxc, nx, strcmp(type, "dropout") == 0 ? -1 : rtol);
        if (np) {
            float *gg = host_copy(G.grads, np);
            snprintf(what, sizeof what, "%s parameter gradients", type);
            compare(what, gg, C.grads, np, rtol);
            free(gg);
        }
        free(dxg);
        free(yg);
    }
    free(x), free(dy), free(y), free(dxc), free(labels);
    dm_dev_free(gpu(), dx_), dm_dev_free(gpu(), ddy), dm_dev_free(gpu(), dy_out), dm_dev_free(gpu(), ddx);
    dm_dev_free(gpu(), dlab), dm_dev_free(gpu(), dmet);
    unmake(&C, DM_DEVICE_CPU);
    unmake(&G, DM_DEVICE_CUDA);
}

static int test_layer(const char *type)
{
    gpu();
    const dm_shape img = {16, 3, 12, 12}, vec = {16, 40, 1, 1};
    if (strcmp(type, "conv2d") == 0) {
        layer_case(type, "filters=8 kernel=3 activation=relu", img, 16, RTOL);
        layer_case(type, "filters=5 kernel=3 activation=none", img, 7, RTOL); /* a smaller batch */
        layer_case(type, "filters=4 kernel=5 padding=same bias=false", img, 16, RTOL);
        layer_case(type, "filters=6 kernel=3 stride=2 activation=relu", img, 16, RTOL);
        layer_case(type, "filters=32 kernel=3 activation=relu", (dm_shape){64, 1, 28, 28}, 64, RTOL);
        layer_case(type, "filters=8 kernel=3 activation=relu tf32=true", img, 16, RTOL_TF32);
    } else if (strcmp(type, "dense") == 0) {
        layer_case(type, "units=24 activation=relu", vec, 16, RTOL);
        layer_case(type, "units=10", vec, 5, RTOL);
        layer_case(type, "units=7 bias=false", img, 16, RTOL); /* 4-D input read as vectors */
        layer_case(type, "units=256 activation=relu", (dm_shape){64, 9216, 1, 1}, 64, RTOL);
        layer_case(type, "units=24 activation=relu tf32=true", vec, 16, RTOL_TF32);
    } else if (strcmp(type, "relu") == 0) {
        layer_case(type, "", img, 16, RTOL);
        layer_case(type, "", img, 3, RTOL);
    } else if (strcmp(type, "maxpool2d") == 0) {
        layer_case(type, "pool=2", img, 16, RTOL);
        layer_case(type, "pool=3 stride=2", img, 9, RTOL);                      /* overlapping windows */
        layer_case(type, "pool=2 stride=3", (dm_shape){4, 2, 11, 11}, 4, RTOL); /* gaps */
    } else if (strcmp(type, "dropout") == 0) {
        layer_case(type, "rate=0.25", img, 16, RTOL);
        layer_case(type, "rate=0.5", vec, 11, RTOL);
        layer_case(type, "rate=0", vec, 16, RTOL);
    } else if (strcmp(type, "flatten") == 0) {
        layer_case(type, "", img, 16, RTOL);
        layer_case(type, "", img, 2, RTOL);
    } else if (strcmp(type, "softmax_cross_entropy") == 0) {
        layer_case(type, "", (dm_shape){64, 10, 1, 1}, 64, RTOL);
        layer_case(type, "", (dm_shape){300, 10, 1, 1}, 257, RTOL); /* more items than threads */
        layer_case(type, "", (dm_shape){8, 3, 2, 2}, 8, RTOL);
    } else {
        printf("unknown layer type %s\n", type);
        return 2;
    }
    return failures ? 1 : 0;
}

/* ---- optimizers -------------------------------------------------------------- */

static void optimizer_case(const char *type, const char *spec, size_t n, int steps)
{
    printf("%s [%s] %zu parameters, %d steps\n", type, spec, n, steps);
    const dm_loaded_component *lc = component(DM_KIND_OPTIMIZER, type);
    const dm_optimizer_vtable *vt = lc->component->vtable;
    if (!(vt->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA))) {
        CHECK(0, "%s: no cuda implementation in this CUDA build", type);
        return;
    }
    dm_error e = {0};
    dm_param_set *ps = NULL;
    if (dm_param_set_parse(lc->component->params, spec, &ps, &e)) die("params", &e);
    void *sc = NULL, *sg = NULL;
    dm_optimizer_info ic = {sizeof ic, 0}, ig = {sizeof ig, 0};
    dm_optimizer_config cc = {sizeof cc, DM_DEVICE_CPU, n, 2, NULL};
    dm_optimizer_config cg = {sizeof cg, DM_DEVICE_CUDA, n, 2, gpu()->stream};
    if (vt->create(dm_param_set_params(ps), &cc, &sc, &ic, &e)) die("create (cpu)", &e);
    if (vt->create(dm_param_set_params(ps), &cg, &sg, &ig, &e)) die("create (cuda)", &e);
    const size_t ns = ic.state_floats_per_param * n;
    float *p = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    float *st = calloc(ns ? ns : 1, sizeof(float));
    fill(p, n, -1, 1, 11);
    float *dp = dev_copy(p, n), *dg = dev_copy(NULL, n), *dst = dev_copy(st, ns);
    if (vt->bind(sc, ns ? st : NULL, &e) || vt->bind(sg, ns ? dst : NULL, &e)) die("bind", &e);
    for (int k = 1; k <= steps; k++) {
        fill(g, n, -1, 1, 100 + (uint64_t)k);
        if (dm_dev_upload(gpu(), dg, g, n * sizeof(float), &e)) die("upload", &e);
        dm_opt_step_ctx c1 = {sizeof c1, k, 0.01f, NULL}, c2 = {sizeof c2, k, 0.01f, gpu()->stream};
        if (vt->step(sc, &c1, p, g, n, &e)) die("step (cpu)", &e);
        if (vt->step(sg, &c2, dp, dg, n, &e)) die("step (cuda)", &e);
    }
    float *pg = host_copy(dp, n), *sgh = host_copy(dst, ns);
    char what[96];
    snprintf(what, sizeof what, "%s parameters", type);
    compare(what, pg, p, n, 1e-5);
    if (ns) {
        snprintf(what, sizeof what, "%s state", type);
        compare(what, sgh, st, ns, 1e-5);
    }
    /* the update did something */
    float *p0 = malloc(n * sizeof(float));
    fill(p0, n, -1, 1, 11);
    CHECK(memcmp(p0, pg, n * sizeof(float)) != 0, "%s: parameters unchanged after %d steps", type, steps);
    free(p0), free(p), free(g), free(st), free(pg), free(sgh);
    dm_dev_free(gpu(), dp), dm_dev_free(gpu(), dg), dm_dev_free(gpu(), dst);
    vt->destroy(sc);
    vt->destroy(sg);
    dm_param_set_free(ps);
}

static int test_optimizer(const char *type)
{
    gpu();
    if (strcmp(type, "sgd") == 0) {
        optimizer_case(type, "", 4096, 3);
        optimizer_case(type, "momentum=0.9", 1003, 4);
        optimizer_case(type, "momentum=0.9 nesterov=true weight_decay=0.01", 4096, 4);
    } else if (strcmp(type, "adam") == 0) {
        optimizer_case(type, "", 4096, 5); /* 16-byte path */
        optimizer_case(type, "", 1003, 5); /* scalar path */
        optimizer_case(type, "beta1=0.8 beta2=0.99 epsilon=1e-5 weight_decay=0.001", 2048, 3);
    } else {
        printf("unknown optimizer %s\n", type);
        return 2;
    }
    return failures ? 1 : 0;
}

/* ---- nccl ------------------------------------------------------------------------ */

static int test_nccl(void)
{
    const dm_loaded_component *lc = component(DM_KIND_COMM, "nccl");
    gpu();
    const dm_comm_vtable *vt = lc->component->vtable;
    CHECK(vt->devices == DM_DEVICE_BIT(DM_DEVICE_CUDA), "nccl: devices should be the cuda bit only");
    dm_error e = {0};
    dm_param_set *ps = NULL;
    if (dm_param_set_parse(lc->component->params, "", &ps, &e)) die("params", &e);
    dm_comm_config cfg = {sizeof cfg, 0, 1, 0, NULL, 20.0, DM_DEVICE_CUDA, NULL, NULL, 1};
    dm_comm_info info = {sizeof info, 0, 0, 0};
    void *st = NULL;
    if (vt->init(dm_param_set_params(ps), &cfg, &st, &info, &e)) die("nccl init (1 rank)", &e);
    CHECK(info.rank == 0 && info.size == 1, "nccl: info says rank %d of %d", info.rank, info.size);

    const size_t n = 100003;
    float *h = malloc(n * sizeof(float));
    fill(h, n, -1, 1, 3);
    float *d = dev_copy(h, n);
    if (vt->allreduce(st, d, n, DM_REDUCE_SUM, DM_DEVICE_CUDA, gpu()->stream, &e)) die("allreduce", &e);
    dm_comm_request *req = NULL;
    if (vt->allreduce_start(st, d, n, DM_REDUCE_AVG, DM_DEVICE_CUDA, gpu()->stream, &req, &e))
        die("allreduce_start", &e);
    if (vt->wait(st, req, &e)) die("wait", &e);
    float *back = host_copy(d, n); /* host_copy syncs the stream: ordered after the reduction */
    compare("nccl allreduce over 1 rank", back, h, n, -1);
    if (vt->broadcast(st, d, 40, 0, DM_DEVICE_CUDA, gpu()->stream, &e)) die("broadcast", &e);
    if (vt->barrier(st, &e)) die("barrier", &e);

    float hv[4] = {1, 2, 3, 4};
    int rc = vt->allreduce(st, hv, 4, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &e);
    CHECK(rc == DM_ERR_UNSUPPORTED && strstr(e.msg, "host buffer"),
          "a host buffer should be refused with a message (got %d: %s)", rc, e.msg);
    printf("  host buffer refused: %s\n", e.msg);
    e = (dm_error){0};
    rc = vt->broadcast(st, d, 4, 3, DM_DEVICE_CUDA, gpu()->stream, &e);
    CHECK(rc == DM_ERR_INVALID, "broadcast from root 3 of 1 should fail (got %d)", rc);
    if (vt->finalize(st, &e)) die("finalize", &e);
    dm_dev_free(gpu(), d);
    free(h), free(back);
    dm_param_set_free(ps);

    /* device = cpu is refused at init */
    cfg.device = DM_DEVICE_CPU;
    rc = vt->init(NULL, &cfg, &st, &info, &e);
    CHECK(rc != DM_OK && strstr(e.msg, "device = cuda"), "nccl with device = cpu: got %d: %s", rc, e.msg);
    return failures ? 1 : 0;
}

/* More local ranks than GPUs: refused before NCCL sees duplicate GPUs. */
static int test_nccl_gpus(void)
{
    const dm_loaded_component *lc = component(DM_KIND_COMM, "nccl");
    const dm_comm_vtable *vt = lc->component->vtable;
    setenv("DMNIST_LOCAL_WORLD_SIZE", "4096", 1);
    dm_comm_config cfg = {sizeof cfg, 0, 4096, 0, "file:///nonexistent", 2.0, DM_DEVICE_CUDA, NULL, NULL, 1};
    dm_comm_info info = {sizeof info, 0, 0, 0};
    void *st = NULL;
    dm_error e = {0};
    int rc = vt->init(NULL, &cfg, &st, &info, &e);
    dm_devctx probe;
    dm_error pe = {0};
    int have_gpu = dm_dev_open(&probe, DM_DEVICE_CUDA, 0, &pe) == DM_OK;
    if (have_gpu) dm_dev_close(&probe);
    printf("  init with 4096 local ranks: %s\n", e.msg);
    CHECK(rc != DM_OK, "init should fail");
    if (have_gpu) CHECK(strstr(e.msg, "one GPU per rank") != NULL, "expected 'one GPU per rank' in: %s", e.msg);
    else CHECK(strstr(e.msg, "no CUDA device") != NULL, "expected 'no CUDA device' in: %s", e.msg);
    CHECK(!strchr(e.msg, '\n'), "the message must be one line");
    return failures ? 1 : 0;
}

/* ---- runs of dmnist-run ------------------------------------------------------------- */

static const char *build_dir(void)
{
    const char *b = getenv("DMNIST_BUILD_DIR");
    if (!b || !b[0]) skip("DMNIST_BUILD_DIR is not set (run through ctest)");
    return b;
}

/* Run a shell command, capture its output (stdout+stderr) into out. */
static int run(const char *cmd, char *out, size_t size)
{
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t k = fread(out, 1, size - 1, p);
    out[k] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* dir/name.ini, created for writing (path receives its name), or FAIL. */
static FILE *create_config(const char *dir, const char *name, char *path, size_t size)
{
    snprintf(path, size, "%s/%s.ini", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        printf("FAIL: cannot write %s\n", path);
        exit(1);
    }
    return f;
}

static const char *write_config(const char *dir, const char *device, const char *extra)
{
    static char path[512];
    char name[64];
    snprintf(name, sizeof name, "cuda-%s", device);
    FILE *f = create_config(dir, name, path, sizeof path);
    fprintf(f,
            "[experiment]\nseed = 7\ndevice = %s\n%s\n"
            "[data]\ntype = synthetic\ntrain_size = 2048\ntest_size = 512\nbatch_size = 32\n"
            "eval_batch_size = 128\n"
            "[train]\ntotal_batches = 20\nlog_every = 10\n"
            "[optimizer]\ntype = adam\nlr = 0.001\n"
            "[layer.conv1]\ntype = conv2d\nfilters = 8\nkernel = 3\nactivation = relu\n"
            "[layer.conv2]\ntype = conv2d\nfilters = 16\nkernel = 3\nactivation = relu\n"
            "[layer.pool]\ntype = maxpool2d\npool = 2\n"
            "[layer.drop1]\ntype = dropout\nrate = 0.25\n"
            "[layer.flatten]\ntype = flatten\n"
            "[layer.dense1]\ntype = dense\nunits = 64\nactivation = relu\n"
            "[layer.drop2]\ntype = dropout\nrate = 0.5\n"
            "[layer.logits]\ntype = dense\nunits = 10\n"
            "[layer.loss]\ntype = softmax_cross_entropy\n",
            device, extra);
    fclose(f);
    return path;
}

static char *tmpdir(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/dmnist-cuda-test-XXXXXX");
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp\n");
        exit(1);
    }
    return dir;
}

static int test_no_device(void)
{
    dm_devctx probe;
    dm_error e = {0};
    if (dm_dev_open(&probe, DM_DEVICE_CUDA, 0, &e) == DM_OK) {
        dm_dev_close(&probe);
        skip("a CUDA device is present: the no-device path cannot be shown here");
    }
    char *dir = tmpdir();
    const char *cfg = write_config(dir, "cuda", "");
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd, "%s/dmnist-run --no-progress %s 2>&1", build_dir(), cfg);
    int rc = run(cmd, out, sizeof out);
    printf("  exit %d, output: %s", rc, out);
    CHECK(rc != 0, "dmnist-run with device = cuda and no GPU must exit non-zero");
    CHECK(strstr(out, "no CUDA device") != NULL, "the output must say 'no CUDA device'");
    CHECK(strstr(out, "use device = cpu") != NULL, "the output must suggest device = cpu");
    size_t lines = 0;
    for (const char *c = out; *c; c++) lines += *c == '\n';
    CHECK(lines == 1, "exactly one line expected, got %zu", lines);
    unlink(cfg);
    rmdir(dir);
    return failures ? 1 : 0;
}

/* "test loss X" from a run's last line. */
static double final_loss(const char *out)
{
    const char *p = strstr(out, "test loss ");
    return p ? atof(p + 10) : NAN;
}

static int test_train(void)
{
    gpu();
    component(DM_KIND_DATASET, "synthetic");
    char *dir = tmpdir();
    char cmd[2048], out_cpu[16384], out_gpu[16384];
    char cfg_cpu[512], cfg_gpu[512];
    snprintf(cfg_cpu, sizeof cfg_cpu, "%s", write_config(dir, "cpu", ""));
    snprintf(cfg_gpu, sizeof cfg_gpu, "%s", write_config(dir, "cuda", ""));
    snprintf(cmd, sizeof cmd, "%s/dmnist-run --no-progress %s 2>&1", build_dir(), cfg_cpu);
    int rc1 = run(cmd, out_cpu, sizeof out_cpu);
    snprintf(cmd, sizeof cmd, "%s/dmnist-run --no-progress %s 2>&1", build_dir(), cfg_gpu);
    int rc2 = run(cmd, out_gpu, sizeof out_gpu);
    printf("--- cpu (exit %d)\n%s--- cuda (exit %d)\n%s", rc1, out_cpu, rc2, out_gpu);
    CHECK(rc1 == 0 && rc2 == 0, "both runs must succeed");
    double l1 = final_loss(out_cpu), l2 = final_loss(out_gpu);
    /* Same initial weights, data order and dropout masks: after 20 steps
     * only float rounding separates them. */
    CHECK(isfinite(l1) && isfinite(l2) && fabs(l1 - l2) <= 0.02 * fabs(l1) + 1e-4, "test loss cpu %.6f vs cuda %.6f",
          l1, l2);
    printf("  test loss cpu %.6f, cuda %.6f\n", l1, l2);
    unlink(cfg_cpu);
    unlink(cfg_gpu);
    rmdir(dir);
    return failures ? 1 : 0;
}

/* ---- the same bits every run ------------------------------------------------------------ */

/* The newest checkpoint in dir: its header, parameters and optimizer state
 * (malloc'ed); 0 after saying why not. */
static int read_newest(const char *dir, dm_ckpt_state *st, float **p, float **o)
{
    char path[4096];
    dm_error e = {0};
    *p = *o = NULL;
    if (dm_checkpoint_latest(dir, path, sizeof path, &e) || dm_checkpoint_read(path, st, p, o, &e)) {
        printf("  reading the checkpoint in %s: %s\n", dir, e.msg);
        return 0;
    }
    return 1;
}

/* The parameters of the newest checkpoint in dir (malloc'ed; *n floats), or NULL. */
static float *ckpt_params(const char *dir, uint64_t *n)
{
    dm_ckpt_state st;
    float *p, *o;
    if (!read_newest(dir, &st, &p, &o)) {
        printf("FAIL: no checkpoint to read in %s\n", dir);
        failures++;
        return NULL;
    }
    free(o);
    *n = st.n_params;
    return p;
}

/* Train 20 steps of the seed model's shapes (conv 32 and 64, dense 256,
 * batch 64) on synthetic data into ck; the final parameters (malloc'ed). */
static float *train_params(const char *dir, const char *cfg, const char *tag, const char *extra, uint64_t *n)
{
    char cmd[4096], out[16384], ck[600];
    snprintf(ck, sizeof ck, "%s/ck-%s", dir, tag);
    snprintf(cmd, sizeof cmd,
             "%s/dmnist-run --no-progress --set train.checkpoint_dir=%s --set data.batch_size=64 "
             "--set layer.conv1.filters=32 --set layer.conv2.filters=64 --set layer.dense1.units=256 %s %s 2>&1",
             build_dir(), ck, extra, cfg);
    int rc = run(cmd, out, sizeof out);
    if (rc != 0) {
        printf("FAIL: %s: exit %d\n%s", tag, rc, out);
        failures++;
        return NULL;
    }
    return ckpt_params(ck, n);
}

/* Two runs of one config on the GPU end with the same bits: conv2d's
 * default deterministic = true keeps cuDNN to algorithms without atomics,
 * the other kernels sum in a fixed order, dropout masks come from a
 * counter-based RNG. The same pair with deterministic = false is run too
 * and only reported (cuDNN's heuristics may or may not pick an algorithm
 * with atomics for these shapes). */
static int test_deterministic(void)
{
    gpu();
    component(DM_KIND_DATASET, "synthetic");
    char *dir = tmpdir();
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s", write_config(dir, "cuda", ""));
    const char *any = "--set layer.conv1.deterministic=false --set layer.conv2.deterministic=false";
    uint64_t n[4] = {0};
    float *a = train_params(dir, cfg, "det1", "", &n[0]);
    float *b = train_params(dir, cfg, "det2", "", &n[1]);
    float *c = train_params(dir, cfg, "any1", any, &n[2]);
    float *d = train_params(dir, cfg, "any2", any, &n[3]);
    if (a && b) {
        CHECK(n[0] == n[1] && memcmp(a, b, n[0] * sizeof(float)) == 0, "two runs with deterministic = true differ");
        printf("  deterministic = true: two runs, %llu parameters, bit for bit equal: %s\n", (unsigned long long)n[0],
               n[0] == n[1] && !memcmp(a, b, n[0] * sizeof(float)) ? "yes" : "no");
    }
    if (c && d && n[2] == n[3]) {
        double maxd = 0;
        for (uint64_t i = 0; i < n[2]; i++) maxd = fmax(maxd, fabs((double)c[i] - d[i]));
        printf("  deterministic = false: two runs, max |difference| %.3g (reported, not checked)\n", maxd);
    }
    free(a);
    free(b);
    free(c);
    free(d);
    char rm[700];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0) printf("  (could not remove %s)\n", dir);
    return failures ? 1 : 0;
}

/* ---- nan_policy on the GPU ------------------------------------------------------------ */

/* A run on the test dataset "poison" (tests/robustness/plugins): training
 * example 300 of 512 has an Inf (or NaN) pixel, so exactly one of the 32
 * steps of batch 16 goes bad. The ReLU is a layer of its own, which maps NaN
 * to 0 (on both devices): a NaN pixel then leaves the loss finite and only
 * the gradients NaN; an Inf passes it and makes the loss NaN. */
static const char *poison_config(const char *dir, const char *name, const char *device, const char *train,
                                 const char *poison)
{
    static char path[512];
    FILE *f = create_config(dir, name, path, sizeof path);
    fprintf(f,
            "[experiment]\nseed = 7\ndevice = %s\n"
            "[data]\ntype = poison\ntrain_size = 512\ntest_size = 64\npoison_index = 300\npoison = %s\n"
            "batch_size = 16\neval_batch_size = 64\n"
            "[train]\nepochs = 1\nkeep_checkpoints = 1000\n%s\n"
            "[optimizer]\ntype = adam\nlr = 0.001\n"
            "[layer.conv1]\ntype = conv2d\nfilters = 4\nkernel = 3\n"
            "[layer.act1]\ntype = relu\n"
            "[layer.flatten]\ntype = flatten\n"
            "[layer.dense]\ntype = dense\nunits = 10\n"
            "[layer.loss]\ntype = softmax_cross_entropy\n",
            device, poison, train);
    fclose(f);
    return path;
}

/* The N of the first "step N: loss" in a run's output, or -1. */
static long loss_step(const char *out)
{
    const char *p = strstr(out, "step ");
    for (; p; p = strstr(p + 1, "step ")) {
        char *end;
        long n = strtol(p + 5, &end, 10);
        if (end != p + 5 && strncmp(end, ": loss", 6) == 0) return n;
    }
    return -1;
}

static size_t count(const char *s, const char *what)
{
    size_t n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what)) n++;
    return n;
}

/* The newest checkpoint in dir: its step, and whether its parameters and
 * optimizer state are all finite. */
static int ckpt_finite(const char *dir, int64_t *step)
{
    dm_ckpt_state st;
    float *p, *o;
    *step = -1;
    if (!read_newest(dir, &st, &p, &o)) return 0;
    int ok = 1;
    for (uint64_t i = 0; i < st.n_params; i++) ok &= isfinite(p[i]) != 0;
    for (uint64_t i = 0; i < st.n_opt; i++) ok &= isfinite(o[i]) != 0;
    *step = st.step;
    free(p);
    free(o);
    return ok;
}

/* With device = cuda the loss is checked without a host sync per step:
 * nan_policy = stop checks before each checkpoint and at each log, = skip
 * every step (core/train_guard.c). Against the CPU, which checks every step:
 *   stop, a checkpoint every step: stops naming the same step S as the CPU,
 *     and the newest checkpoint is step S-1, all finite;
 *   stop, a checkpoint every 8 steps: stops at the first checkpoint after
 *     S, naming the 8 steps since the one before, the newest one finite;
 *   stop, no checkpoints, one log at the end: stops (at that log);
 *   skip: skips exactly step S and ends with a finite test loss and a
 *     finite final checkpoint of step 32;
 *   a NaN pixel instead, which the ReLU hides from the loss: stop names
 *     step S and the parameters, skip skips S on its gradients. */
/* One run of poison_config(NAME, device, poison) with the [train] keys
 * `keys`, and with ckpt_every > 0 a checkpoint every ckpt_every steps into
 * ck = dir/ck-NAME (ck: 600 bytes). Prints and returns the output in out and
 * the exit status. */
static int poison_run(const char *dir, const char *name, const char *device, const char *poison, const char *keys,
                      int ckpt_every, char *ck, char *out, size_t size)
{
    char train[1024], cmd[4096];
    snprintf(ck, 600, "%s/ck-%s", dir, name);
    if (ckpt_every > 0)
        snprintf(train, sizeof train, "%s\ncheckpoint_every = %d\ncheckpoint_dir = %s", keys, ckpt_every, ck);
    else snprintf(train, sizeof train, "%s", keys);
    const char *cfg = poison_config(dir, name, device, train, poison);
    snprintf(cmd, sizeof cmd, "%s/dmnist-run --no-progress --plugin-path %s/tests/robustness/plugins %s 2>&1",
             build_dir(), build_dir(), cfg);
    int rc = run(cmd, out, size);
    printf("--- %s (exit %d)\n%s", name, rc, out);
    return rc;
}

static int test_nan(void)
{
    gpu();
    char so[1100];
    snprintf(so, sizeof so, "%s/tests/robustness/plugins/dm_test_poison.so", build_dir());
    if (access(so, R_OK) != 0) skip("the test dataset plugin dm_test_poison.so is not built here");
    char *dir = tmpdir();
    char out[32768], ck[600], want[128];
    int64_t last;

    /* the CPU reference: the step that draws the poisoned example */
    int rc = poison_run(dir, "cpu-stop", "cpu", "inf", "log_every = 0", 0, ck, out, sizeof out);
    long step = loss_step(out);
    REQUIRE(rc == 1 && step > 1, "the CPU run must stop naming a step after the first (exit %d, step %ld)", rc, step);

    /* cuda, stop, a checkpoint after every step */
    rc = poison_run(dir, "cuda-stop", "cuda", "inf", "log_every = 0", 1, ck, out, sizeof out);
    CHECK(rc == 1, "exit %d, expected 1", rc);
    CHECK(loss_step(out) == step, "stopped at step %ld, the CPU at step %ld", loss_step(out), step);
    CHECK(strstr(out, "training diverged") != NULL, "no 'training diverged' in the message");
    int finite = ckpt_finite(ck, &last);
    CHECK(last == step - 1, "newest checkpoint is step %lld, expected %ld", (long long)last, step - 1);
    CHECK(finite, "the newest checkpoint holds NaN or Inf");

    /* cuda, stop, a checkpoint every 8 steps: checked before each, so the
     * message names the 8 steps since the last check, and the newest
     * checkpoint is the one before them */
    rc = poison_run(dir, "cuda-stop8", "cuda", "inf", "log_every = 0", 8, ck, out, sizeof out);
    long lo = (step - 1) / 8 * 8 + 1;
    snprintf(want, sizeof want, "steps %ld-%ld: loss", lo, lo + 7);
    CHECK(rc == 1 && strstr(out, want) != NULL, "exit %d, expected 1 and '%s'", rc, want);
    finite = ckpt_finite(ck, &last);
    CHECK(lo == 1 ? last == -1 : (last == lo - 1 && finite), "newest checkpoint: step %lld (expected %ld), finite %d",
          (long long)last, lo - 1, finite);

    /* cuda, stop, no checkpoints: found at the one log, after the last step */
    rc = poison_run(dir, "cuda-stop-log", "cuda", "inf", "log_every = 1000", 0, ck, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "diverged") != NULL, "exit %d, expected 1 and 'diverged'", rc);
    CHECK(strstr(out, "test loss") == NULL, "a diverged run must not evaluate and report");

    /* cuda, skip */
    rc = poison_run(dir, "cuda-skip", "cuda", "inf", "log_every = 8\nnan_policy = skip", 8, ck, out, sizeof out);
    CHECK(rc == 0, "exit %d, expected 0", rc);
    CHECK(count(out, "step skipped") == 1, "%zu steps skipped, expected 1", count(out, "step skipped"));
    CHECK(loss_step(out) == step, "skipped step %ld, the CPU's bad step is %ld", loss_step(out), step);
    CHECK(isfinite(final_loss(out)), "test loss %f is not finite", final_loss(out));
    finite = ckpt_finite(ck, &last);
    CHECK(last == 32 && finite, "final checkpoint: step %lld (expected 32), finite %d", (long long)last, finite);

    /* A NaN pixel: the ReLU layer hides it from the loss, not from conv1's
     * weight gradient. stop: the parameters are checked before each
     * checkpoint; skip: the gradients after every step. */
    rc = poison_run(dir, "cuda-hidden-stop", "cuda", "nan", "log_every = 0", 1, ck, out, sizeof out);
    snprintf(want, sizeof want, "step %ld: parameters are not finite", step);
    CHECK(rc == 1 && strstr(out, want) != NULL, "exit %d, expected 1 and '%s'", rc, want);
    finite = ckpt_finite(ck, &last);
    CHECK(last == step - 1 && finite, "newest checkpoint: step %lld (expected %ld), finite %d", (long long)last,
          step - 1, finite);
    rc = poison_run(dir, "cuda-hidden-skip", "cuda", "nan", "log_every = 8\nnan_policy = skip", 8, ck, out, sizeof out);
    snprintf(want, sizeof want, "step %ld: loss is finite but the gradients are not", step);
    CHECK(rc == 0 && strstr(out, want) != NULL && count(out, "step skipped") == 1,
          "exit %d, expected 0 and one skipped step: '%s'", rc, want);
    finite = ckpt_finite(ck, &last);
    CHECK(last == 32 && finite, "final checkpoint: step %lld (expected 32), finite %d", (long long)last, finite);
    printf("  bad step %ld: stop, skip and checkpoints as on the CPU\n", step);
    char rm[700];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0) printf("  (could not remove %s)\n", dir);
    return failures ? 1 : 0;
}

/* ---- host staging: gloo and mpi with device = cuda --------------------------------- */

/* Whole file into a malloc'ed string, or NULL. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = size >= 0 ? malloc((size_t)size + 1) : NULL;
    size_t k = s ? fread(s, 1, (size_t)size, f) : 0;
    if (s) s[k] = 0;
    fclose(f);
    return s;
}

/* Two ranks on the one GPU (dmnist-run --np 2) with a backend that takes
 * host memory only: the gradients go through the pinned host mirror
 * (core/train_comm.c, stage_out), one bucket per layer. Against two ranks on the
 * CPU with gloo (same seed, data, dropout masks): the final test loss within
 * the train case's tolerance, and the parameters within 1% (relative L2; a
 * rounding difference, not another trajectory: a run whose gradients went
 * unreduced, or reduced before their copy landed, follows another one). The
 * run checks that both ranks hold the same parameters after every step
 * (train.sync_check_every = 1), and its timeline must show the copies. */
static int test_staging(void)
{
    gpu();
    component(DM_KIND_DATASET, "synthetic");
    component(DM_KIND_COMM, "gloo");
    char *dir = tmpdir();
    char cmd[4096], ref[16384], out[16384], cfg_cpu[512], cfg_gpu[512], ck[600], tl[600];
    snprintf(cfg_cpu, sizeof cfg_cpu, "%s", write_config(dir, "cpu", "backend = gloo"));
    snprintf(cfg_gpu, sizeof cfg_gpu, "%s", write_config(dir, "cuda", "backend = gloo"));
    const char *common = "--no-progress --set train.fusion_mb=0 --set train.sync_check_every=1";
    snprintf(ck, sizeof ck, "%s/ckpt-cpu", dir);
    snprintf(cmd, sizeof cmd, "%s/dmnist-run --np 2 %s %s --set train.checkpoint_dir=%s 2>&1", build_dir(), common,
             cfg_cpu, ck);
    int rc = run(cmd, ref, sizeof ref);
    printf("--- cpu, gloo, 2 ranks (exit %d)\n%s", rc, ref);
    CHECK(rc == 0, "the cpu reference run must succeed");
    double l_ref = final_loss(ref);
    uint64_t n_ref = 0, n = 0;
    float *p_ref = rc == 0 ? ckpt_params(ck, &n_ref) : NULL;

    const char *backends[2] = {"gloo", NULL};
    if (dm_registry_find(registry(), DM_KIND_COMM, "mpi") && system("command -v mpirun >/dev/null 2>&1") == 0)
        backends[1] = "mpi";
    else printf("  (mpi: no mpi plugin or no mpirun here; gloo only)\n");
    for (int i = 0; i < 2 && backends[i] && p_ref; i++) {
        const char *be = backends[i];
        snprintf(ck, sizeof ck, "%s/ckpt-cuda-%s", dir, be);
        snprintf(tl, sizeof tl, "%s/timeline-%s.json", dir, be);
        snprintf(cmd, sizeof cmd,
                 "%s/dmnist-run --np 2 %s %s --set experiment.backend=%s "
                 "--set train.checkpoint_dir=%s --timeline %s 2>&1",
                 build_dir(), common, cfg_gpu, be, ck, tl);
        rc = run(cmd, out, sizeof out);
        printf("--- cuda, %s, 2 ranks (exit %d)\n%s", be, rc, out);
        char banner[64];
        snprintf(banner, sizeof banner, "2 ranks (%s), device cuda", be);
        CHECK(rc == 0 && strstr(out, banner), "%s: the cuda run must succeed on 2 %s ranks", be, be);
        if (rc) continue;
        double l = final_loss(out);
        CHECK(isfinite(l_ref) && isfinite(l) && fabs(l - l_ref) <= 0.02 * fabs(l_ref) + 1e-4,
              "%s: test loss cpu %.6f vs cuda %.6f", be, l_ref, l);
        char *trace = slurp(tl);
        CHECK(trace && strstr(trace, "\"copy to host bucket 0\"") && strstr(trace, "\"allreduce wait bucket 0\""),
              "%s: the timeline %s shows no staged bucket copies", be, tl);
        free(trace);
        float *p = ckpt_params(ck, &n);
        if (!p) continue;
        CHECK(n == n_ref, "%s: %llu parameters vs %llu", be, (unsigned long long)n, (unsigned long long)n_ref);
        double d2 = 0, r2 = 0, dmax = 0;
        for (uint64_t k = 0; k < n && k < n_ref; k++) {
            double d = (double)p[k] - p_ref[k];
            d2 += d * d;
            r2 += (double)p_ref[k] * p_ref[k];
            if (fabs(d) > dmax) dmax = fabs(d);
        }
        double rel = r2 > 0 ? sqrt(d2 / r2) : 0;
        CHECK(rel <= 1e-2, "%s: parameters cuda vs cpu: rel_l2 %.3g > 1e-2 (max_abs %.3g)", be, rel, dmax);
        printf("  %s: test loss cpu %.6f, cuda %.6f; parameters rel_l2 %.3g, max_abs %.3g\n", be, l_ref, l, rel, dmax);
        free(p);
    }
    free(p_ref);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", dir);
    return failures ? 1 : 0;
}

/* ---- default backend --------------------------------------------------------------- */

static int resolve_backend(const char *device, const char *world, char *backend, size_t size, dm_error *e)
{
    char *dir = tmpdir();
    const char *path = write_config(dir, device, "");
    if (world) setenv("DMNIST_WORLD_SIZE", world, 1);
    else unsetenv("DMNIST_WORLD_SIZE");
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMI_SIZE");
    dm_config *cfg = NULL;
    dm_experiment *x = NULL;
    int rc = dm_config_load(path, &cfg, e);
    if (!rc) rc = dm_experiment_resolve(cfg, getenv("DMNIST_PLUGIN_PATH"), &x, e);
    if (!rc) snprintf(backend, size, "%s", x->backend);
    dm_experiment_free(x);
    dm_config_free(cfg);
    unlink(path);
    rmdir(dir);
    return rc;
}

static int test_backend(void)
{
    registry();
    char b[64] = "";
    dm_error e = {0};
    int rc = resolve_backend("cuda", NULL, b, sizeof b, &e);
    CHECK(rc == DM_OK && strcmp(b, "local") == 0, "cuda, 1 rank: backend '%s' (%s)", b, e.msg);
    rc = resolve_backend("cpu", "2", b, sizeof b, &e);
    CHECK(rc == DM_OK && strcmp(b, "local") == 0, "cpu, 2 ranks: backend '%s' (%s)", b, e.msg);
    b[0] = 0;
    e = (dm_error){0};
    rc = resolve_backend("cuda", "2", b, sizeof b, &e);
    if (dm_registry_find(registry(), DM_KIND_COMM, "nccl"))
        CHECK(rc == DM_OK && strcmp(b, "nccl") == 0, "cuda, 2 ranks: backend '%s' (%s)", b, e.msg);
    else /* a build without NCCL: the default still names nccl */
        CHECK(rc != DM_OK && strstr(e.msg, "'nccl'"), "cuda, 2 ranks without nccl: %d %s", rc, e.msg);
    printf("  cuda with 2 ranks resolves to '%s'%s%s\n", rc ? "(error)" : b, rc ? ": " : "", rc ? e.msg : "");
    unsetenv("DMNIST_WORLD_SIZE");
    return failures ? 1 : 0;
}

/* ---- the nccl id rendezvous (plain C, from plugins/comm/nccl) ----------------------- */

#include "nccl_rdzv.h"

static int test_rdzv(void)
{
    char *dir = tmpdir();
    char url[600];
    snprintf(url, sizeof url, "file://%s", dir);
    CHECK(nccl_rdzv_dir(url) && strcmp(nccl_rdzv_dir(url), dir) == 0, "file:// url parsing");
    CHECK(nccl_rdzv_dir("redis://host:1") == NULL, "other schemes are not file rendezvous");
    CHECK(nccl_rdzv_dir("file://") == NULL, "an empty directory is refused");
    unsetenv("PMIX_NAMESPACE");
    unsetenv("OMPI_MCA_ess_base_jobid");
    char name[128];
    nccl_rdzv_name(name, sizeof name);
    CHECK(strcmp(name, "nccl-id") == 0, "default name: %s", name);
    setenv("PMIX_NAMESPACE", "job/1 x", 1);
    nccl_rdzv_name(name, sizeof name);
    CHECK(strcmp(name, "nccl-id-job_1_x") == 0, "job name sanitised: %s", name);
    unsetenv("PMIX_NAMESPACE");

    unsigned char id[128], got[128];
    for (int i = 0; i < 128; i++) id[i] = (unsigned char)(i * 7 + 1);
    dm_error e = {0};
    /* a fetch that starts first and waits for a publish from another process */
    pid_t pid = fork();
    if (pid == 0) {
        usleep(200 * 1000);
        dm_error ce = {0};
        _exit(nccl_rdzv_publish(dir, "nccl-id", 3, id, sizeof id, &ce) ? 1 : 0);
    }
    int rc = nccl_rdzv_fetch(dir, "nccl-id", 3, got, sizeof got, 10.0, &e);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "publisher failed");
    CHECK(rc == DM_OK && memcmp(id, got, sizeof id) == 0, "fetched id differs (%d: %s)", rc, e.msg);
    /* no temporary files left behind */
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s/nccl-id.tmp.%d", dir, (int)pid);
    CHECK(access(tmp, F_OK) != 0, "temporary file %s left behind", tmp);

    /* a second publish under the same name is refused, not a silent replacement */
    e = (dm_error){0};
    rc = nccl_rdzv_publish(dir, "nccl-id", 3, id, sizeof id, &e);
    CHECK(rc == DM_ERR_INVALID && strstr(e.msg, "already holds"), "second publish: %d %s", rc, e.msg);

    /* stale: written for another world size */
    e = (dm_error){0};
    rc = nccl_rdzv_fetch(dir, "nccl-id", 4, got, sizeof got, 1.0, &e);
    CHECK(rc == DM_ERR_INVALID && strstr(e.msg, "written for 3 ranks"), "stale file: %d %s", rc, e.msg);
    printf("  stale file: %s\n", e.msg);

    /* timeout when nobody publishes */
    e = (dm_error){0};
    rc = nccl_rdzv_fetch(dir, "nccl-id-missing", 2, got, sizeof got, 0.3, &e);
    CHECK(rc == DM_ERR_TIMEOUT && strstr(e.msg, "did not publish"), "timeout: %d %s", rc, e.msg);
    printf("  timeout: %s\n", e.msg);

    /* not an id file */
    char junk[700];
    snprintf(junk, sizeof junk, "%s/junk", dir);
    FILE *f = fopen(junk, "w");
    fputs("hello, this is not an id\n", f);
    fclose(f);
    e = (dm_error){0};
    rc = nccl_rdzv_fetch(dir, "junk", 2, got, sizeof got, 1.0, &e);
    CHECK(rc == DM_ERR_FORMAT, "junk file: %d %s", rc, e.msg);

    /* a directory that does not exist */
    e = (dm_error){0};
    rc = nccl_rdzv_fetch("/nonexistent/dmnist", "nccl-id", 2, got, sizeof got, 1.0, &e);
    CHECK(rc == DM_ERR_IO, "missing directory: %d %s", rc, e.msg);
    e = (dm_error){0};
    rc = nccl_rdzv_publish("/nonexistent/dmnist", "nccl-id", 2, id, sizeof id, &e);
    CHECK(rc == DM_ERR_IO, "publish into a missing directory: %d %s", rc, e.msg);

    unlink(junk);
    snprintf(tmp, sizeof tmp, "%s/nccl-id", dir);
    unlink(tmp);
    rmdir(dir);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr,
                "usage: test_cuda layer TYPE | optimizer TYPE | nccl | nccl_gpus | no_device | "
                "train | nan | deterministic | staging | backend | rdzv\n");
        return 2;
    }
    const char *what = argv[1];
    int rc;
    if (strcmp(what, "layer") == 0 && argc > 2) rc = test_layer(argv[2]);
    else if (strcmp(what, "optimizer") == 0 && argc > 2) rc = test_optimizer(argv[2]);
    else if (strcmp(what, "nccl") == 0) rc = test_nccl();
    else if (strcmp(what, "nccl_gpus") == 0) rc = test_nccl_gpus();
    else if (strcmp(what, "no_device") == 0) rc = test_no_device();
    else if (strcmp(what, "train") == 0) rc = test_train();
    else if (strcmp(what, "nan") == 0) rc = test_nan();
    else if (strcmp(what, "deterministic") == 0) rc = test_deterministic();
    else if (strcmp(what, "staging") == 0) rc = test_staging();
    else if (strcmp(what, "backend") == 0) rc = test_backend();
    else if (strcmp(what, "rdzv") == 0) rc = test_rdzv();
    else {
        fprintf(stderr, "test_cuda: unknown case '%s'\n", what);
        return 2;
    }
    printf("%s: %s\n", what, rc == 0 ? "passed" : "FAILED");
    return rc;
}
