/* comm_check: runs one communication backend through the dm_comm_vtable
 * contract on every rank of a job and checks the results against values it
 * computes itself.
 *
 *   mpirun -np 3 comm_check mpi
 *   DMNIST_RANK=0 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file:///tmp/r comm_check gloo &
 *   DMNIST_RANK=1 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS=file:///tmp/r comm_check gloo
 *
 * The plugin is found through the core registry as dmnist-run finds it:
 * DMNIST_PLUGIN_PATH, then the build tree's or the install's plugin folder.
 * Rank and size come from DMNIST_RANK/DMNIST_WORLD_SIZE, OMPI_COMM_WORLD_*
 * or PMI_*, else -1 (the backend finds them). Every check prints one line,
 * "PASS ..." or "FAIL ..."; the exit status is 1 when any check failed.
 *
 * Other modes (see usage()): --time N measures allreduce; --fault exit|stall
 * makes the last rank leave after init and checks the others fail within
 * the timeout; --expect-init-failure checks that init itself times out.
 */
#define _GNU_SOURCE /* RTLD_NODELETE */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dm_core.h"

#define BIG_N 1000003              /* odd and > 1 MiB of floats: many chunks/segments */
#define BCAST_BIG 3000001          /* bytes */
#define TIME_DEFAULT_COUNT 2380938 /* the seed CNN's parameter count */

typedef struct harness {
    const dm_comm_vtable *vt;
    void *state;
    dm_comm_info info;
    const char *backend;
    double timeout_s;
    int passes, failures;
} harness;

/* ---- small helpers ----------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int env_int(const char *a, const char *b, const char *c, int dflt)
{
    const char *names[3] = {a, b, c};
    for (int k = 0; k < 3; k++) {
        const char *v = names[k] ? getenv(names[k]) : NULL;
        if (v && *v) return atoi(v);
    }
    return dflt;
}

static const char *status_name(int code)
{
    switch (code) {
    case DM_OK: return "OK";
    case DM_ERR_INVALID: return "INVALID";
    case DM_ERR_NOMEM: return "NOMEM";
    case DM_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case DM_ERR_COMM: return "COMM";
    case DM_ERR_TIMEOUT: return "TIMEOUT";
    default: return "other";
    }
}

static void report(harness *h, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(harness *h, int ok, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    printf("comm_check[%s %d/%d]: %s %s\n", h->backend, h->info.rank, h->info.size, ok ? "PASS" : "FAIL", line);
    fflush(stdout);
    if (ok) h->passes++;
    else h->failures++;
}

/* ---- inputs and expected results ---------------------------------------------- */

/* Small integers (|x| <= 50): sums over ranks are exact in float, so SUM
 * must match bit for bit whatever order the backend adds in. */
static float input_int(int rank, size_t i) { return (float)((int)((i * 7 + (size_t)rank * 13) % 101) - 50); }

/* Non-integers of both signs: rounding depends on the summation order. */
static float input_real(int rank, size_t i)
{
    return sinf(0.001f * (float)(i % 100000) + 0.7f * (float)rank) * (float)(1 + rank) + 0.25f;
}

typedef float (*input_fn)(int rank, size_t i);

static void fill(float *buf, size_t n, int rank, input_fn f)
{
    for (size_t i = 0; i < n; i++) buf[i] = f(rank, i);
}

/* Compare buf[n] with the reduction of f over all ranks, computed here in
 * double. exact: bit equality (integers, SUM); else a tolerance scaled by
 * the magnitudes summed. Returns the index of the first mismatch or -1. */
static long verify(const float *buf, size_t n, int size, dm_reduce_op op, input_fn f, int exact, double *want_out)
{
    for (size_t i = 0; i < n; i++) {
        double sum = 0.0, mag = 0.0;
        for (int r = 0; r < size; r++) {
            sum += f(r, i);
            mag += fabs(f(r, i));
        }
        double want = op == DM_REDUCE_AVG ? sum / size : sum;
        double scale = op == DM_REDUCE_AVG ? mag / size : mag;
        int ok = exact ? buf[i] == (float)want : fabs((double)buf[i] - want) <= 1e-6 * scale + 1e-7 * size;
        if (!ok) {
            *want_out = want;
            return (long)i;
        }
    }
    return -1;
}

/* ---- checks ------------------------------------------------------------------ */

static void check_allreduce(harness *h, size_t n, dm_reduce_op op, int integers)
{
    float *buf = malloc(n * sizeof *buf);
    if (!buf) {
        report(h, 0, "allreduce n=%zu: out of memory", n);
        return;
    }
    input_fn f = integers ? input_int : input_real;
    fill(buf, n, h->info.rank, f);
    dm_error err = {0};
    double t0 = now_s();
    int rc = h->vt->allreduce(h->state, buf, n, op, DM_DEVICE_CPU, NULL, &err);
    double dt = now_s() - t0;
    const char *what = op == DM_REDUCE_SUM ? "sum" : "avg";
    const char *kind = integers ? "integers" : "reals";
    if (rc != DM_OK) {
        report(h, 0, "allreduce %s n=%zu %s: %s: %s", what, n, kind, status_name(rc), err.msg);
    } else {
        /* integers: SUM exact; AVG is one division of an exact sum, allow rounding */
        int exact = integers && op == DM_REDUCE_SUM;
        double want = 0.0;
        long bad = verify(buf, n, h->info.size, op, f, exact, &want);
        if (bad >= 0)
            report(h, 0, "allreduce %s n=%zu %s: [%ld] = %.9g, expected %.9g", what, n, kind, bad, (double)buf[bad],
                   want);
        else
            report(h, 1, "allreduce %s n=%zu %s (%s, %.2f ms)", what, n, kind, exact ? "exact" : "within tolerance",
                   dt * 1e3);
    }
    free(buf);
}

/* The contract says every rank ends with the same bits: broadcast rank 0's
 * result and compare. */
static void check_identical(harness *h)
{
    size_t n = BIG_N;
    float *mine = malloc(n * sizeof *mine), *theirs = malloc(n * sizeof *theirs);
    dm_error err = {0};
    int rc = DM_ERR_NOMEM;
    if (mine && theirs) {
        fill(mine, n, h->info.rank, input_real);
        rc = h->vt->allreduce(h->state, mine, n, DM_REDUCE_AVG, DM_DEVICE_CPU, NULL, &err);
        if (rc == DM_OK) {
            memcpy(theirs, mine, n * sizeof *mine);
            rc = h->vt->broadcast(h->state, theirs, n * sizeof *theirs, 0, DM_DEVICE_CPU, NULL, &err);
        }
    }
    if (rc != DM_OK) report(h, 0, "identical results on all ranks: %s: %s", status_name(rc), err.msg);
    else
        report(h, memcmp(mine, theirs, n * sizeof *mine) == 0,
               "allreduce avg n=%zu reals: bit-identical to rank 0's result", n);
    free(mine);
    free(theirs);
}

typedef struct async_case {
    size_t n;
    dm_reduce_op op;
    int integers;
} async_case;

/* Several handles in flight, waited on in start order; then a blocking
 * allreduce issued while a handle is still pending. */
static void check_async(harness *h)
{
    static const async_case cases[] = {{BIG_N, DM_REDUCE_SUM, 1},
                                       {7, DM_REDUCE_AVG, 0},
                                       {1, DM_REDUCE_SUM, 1},
                                       {65536, DM_REDUCE_AVG, 1},
                                       {BIG_N, DM_REDUCE_AVG, 0}};
    enum { N_CASES = sizeof cases / sizeof cases[0] };
    float *bufs[N_CASES] = {0};
    dm_comm_request *reqs[N_CASES] = {0};
    dm_error err = {0};
    int started = 0, ok = 1;

    for (int k = 0; k < N_CASES; k++) {
        bufs[k] = malloc(cases[k].n * sizeof(float));
        if (!bufs[k]) {
            report(h, 0, "async: out of memory");
            goto out;
        }
        fill(bufs[k], cases[k].n, h->info.rank, cases[k].integers ? input_int : input_real);
    }
    double t0 = now_s();
    for (; started < N_CASES; started++) {
        const async_case *c = &cases[started];
        int rc =
            h->vt->allreduce_start(h->state, bufs[started], c->n, c->op, DM_DEVICE_CPU, NULL, &reqs[started], &err);
        if (rc != DM_OK) {
            report(h, 0, "async: start #%d (n=%zu): %s: %s", started, c->n, status_name(rc), err.msg);
            ok = 0;
            break;
        }
    }
    double t_start = now_s() - t0;
    for (int k = 0; k < started; k++) {
        const async_case *c = &cases[k];
        int rc = h->vt->wait(h->state, reqs[k], &err);
        if (rc != DM_OK) {
            report(h, 0, "async: wait #%d (n=%zu): %s: %s", k, c->n, status_name(rc), err.msg);
            ok = 0;
            continue;
        }
        input_fn f = c->integers ? input_int : input_real;
        double want = 0.0;
        long bad = verify(bufs[k], c->n, h->info.size, c->op, f, c->integers && c->op == DM_REDUCE_SUM, &want);
        if (bad >= 0) {
            report(h, 0, "async: handle #%d (n=%zu): [%ld] = %.9g, expected %.9g", k, c->n, bad, (double)bufs[k][bad],
                   want);
            ok = 0;
        }
    }
    if (ok)
        report(h, 1, "async: %d allreduces in flight, waited in order (start %.2f ms, all %.2f ms)", N_CASES,
               t_start * 1e3, (now_s() - t0) * 1e3);

    /* A blocking collective while a handle is pending runs after it. */
    if (ok) {
        dm_comm_request *req = NULL;
        fill(bufs[0], BIG_N, h->info.rank, input_int);
        fill(bufs[1], 7, h->info.rank, input_real);
        int rc = h->vt->allreduce_start(h->state, bufs[0], BIG_N, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &req, &err);
        int rc2 = rc == DM_OK ? h->vt->allreduce(h->state, bufs[1], 7, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &err) : rc;
        int rc3 = rc == DM_OK ? h->vt->wait(h->state, req, &err) : rc;
        double want = 0.0;
        if (rc != DM_OK || rc2 != DM_OK || rc3 != DM_OK)
            report(h, 0, "async then blocking: %s: %s", status_name(err.code), err.msg);
        else
            report(h,
                   verify(bufs[0], BIG_N, h->info.size, DM_REDUCE_SUM, input_int, 1, &want) < 0 &&
                       verify(bufs[1], 7, h->info.size, DM_REDUCE_SUM, input_real, 0, &want) < 0,
                   "async handle pending during a blocking allreduce: both correct");
    }
out:
    for (int k = 0; k < N_CASES; k++) free(bufs[k]);
}

static unsigned char bcast_byte(int root, size_t i) { return (unsigned char)(i * 31u + (size_t)root * 7u + 1u); }

static void check_broadcast(harness *h, size_t bytes, int root)
{
    unsigned char *buf = malloc(bytes);
    if (!buf) {
        report(h, 0, "broadcast %zu bytes: out of memory", bytes);
        return;
    }
    /* Non-roots start from the complement, so an untouched byte is caught. */
    for (size_t i = 0; i < bytes; i++)
        buf[i] = h->info.rank == root ? bcast_byte(root, i) : (unsigned char)~bcast_byte(root, i);
    dm_error err = {0};
    int rc = h->vt->broadcast(h->state, buf, bytes, root, DM_DEVICE_CPU, NULL, &err);
    if (rc != DM_OK) {
        report(h, 0, "broadcast %zu bytes from rank %d: %s: %s", bytes, root, status_name(rc), err.msg);
    } else {
        size_t bad = bytes;
        for (size_t i = 0; i < bytes && bad == bytes; i++)
            if (buf[i] != bcast_byte(root, i)) bad = i;
        if (bad < bytes)
            report(h, 0, "broadcast %zu bytes from rank %d: byte %zu is %u, expected %u", bytes, root, bad, buf[bad],
                   bcast_byte(root, bad));
        else report(h, 1, "broadcast %zu bytes from rank %d", bytes, root);
    }
    free(buf);
}

/* After an allreduce (which lines every rank up), the last rank sleeps
 * before the barrier; every other rank must be held in it that long. */
static void check_barrier(harness *h)
{
    const double delay = 0.5;
    float x = 1.0f;
    dm_error err = {0};
    int rc = h->vt->allreduce(h->state, &x, 1, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &err);
    int last = h->info.rank == h->info.size - 1;
    if (rc == DM_OK && last && h->info.size > 1) sleep_s(delay);
    double t0 = now_s();
    if (rc == DM_OK) rc = h->vt->barrier(h->state, &err);
    double dt = now_s() - t0;
    if (rc != DM_OK) report(h, 0, "barrier: %s: %s", status_name(rc), err.msg);
    else if (!last && dt < delay * 0.5) /* half: room for scheduling skew on busy machines */
        report(h, 0, "barrier: left after %.0f ms although rank %d entered %.0f ms late", dt * 1e3, h->info.size - 1,
               delay * 1e3);
    else report(h, 1, "barrier (held %.0f ms%s)", dt * 1e3, last ? ", entered last" : "");
}

/* Bad arguments are refused with a message on every rank alike (so no rank
 * is left inside a collective). */
static void check_refusals(harness *h)
{
    dm_error err = {0};
    char byte = 0;
    int rc = h->vt->broadcast(h->state, &byte, 1, h->info.size, DM_DEVICE_CPU, NULL, &err);
    report(h, rc == DM_ERR_INVALID && err.msg[0], "broadcast from root %d (no such rank) refused: %s: %s", h->info.size,
           status_name(rc), err.msg);
    if (!(h->vt->devices & DM_DEVICE_BIT(DM_DEVICE_CUDA))) {
        float x = 0.0f;
        memset(&err, 0, sizeof err);
        rc = h->vt->allreduce(h->state, &x, 1, DM_REDUCE_SUM, DM_DEVICE_CUDA, NULL, &err);
        report(h, rc == DM_ERR_UNSUPPORTED && err.msg[0],
               "allreduce on a device the backend does not take refused: %s: %s", status_name(rc), err.msg);
    }
}

/* ---- modes ------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Time `iters` blocking SUM allreduces of `count` floats, each after a
 * barrier so skew between ranks is not counted. Rank 0 prints the median. */
static void run_timing(harness *h, size_t count, int iters)
{
    float *buf = malloc(count * sizeof *buf);
    double *t = malloc((size_t)iters * sizeof *t);
    dm_error err = {0};
    if (!buf || !t) {
        report(h, 0, "timing: out of memory");
        goto out;
    }
    fill(buf, count, h->info.rank, input_int);
    for (int k = -3; k < iters; k++) { /* 3 warm-up rounds */
        int rc = h->vt->barrier(h->state, &err);
        double t0 = now_s();
        if (rc == DM_OK) rc = h->vt->allreduce(h->state, buf, count, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &err);
        if (rc != DM_OK) {
            report(h, 0, "timing: %s: %s", status_name(rc), err.msg);
            goto out;
        }
        if (k >= 0) t[k] = now_s() - t0;
    }
    qsort(t, (size_t)iters, sizeof *t, cmp_double);
    report(h, 1,
           "time allreduce sum %zu floats (%.1f MB), %d ranks, %d runs: median %.2f ms "
           "(min %.2f, max %.2f)",
           count, (double)count * 4e-6, h->info.size, iters, t[iters / 2] * 1e3, t[0] * 1e3, t[iters - 1] * 1e3);
out:
    free(buf);
    free(t);
}

/* The last rank leaves after init (exit: the process ends without
 * finalize; stall: it stops calling and sleeps past the timeout). Every
 * other rank must get TIMEOUT or COMM within the timeout, and finalize
 * must return too. */
static void run_fault(harness *h, const char *fault)
{
    int last = h->info.rank == h->info.size - 1;
    dm_error err = {0};
    /* One good collective first, so the failure happens mid-run. */
    check_allreduce(h, 7, DM_REDUCE_SUM, 1);
    if (last) {
        printf("comm_check[%s %d/%d]: fault '%s': this rank leaves now\n", h->backend, h->info.rank, h->info.size,
               fault);
        fflush(stdout);
        if (strcmp(fault, "stall") == 0) sleep_s(h->timeout_s + 3.0);
        _exit(0);
    }
    size_t n = 100000;
    float *buf = calloc(n, sizeof *buf);
    double t0 = now_s();
    int rc = buf ? h->vt->allreduce(h->state, buf, n, DM_REDUCE_SUM, DM_DEVICE_CPU, NULL, &err) : DM_ERR_NOMEM;
    double dt = now_s() - t0;
    double limit = h->timeout_s * 1.2 + 1.0;
    report(h, (rc == DM_ERR_TIMEOUT || rc == DM_ERR_COMM) && err.msg[0] && dt <= limit,
           "allreduce after rank %d left failed within the timeout (%.2f s, limit %.1f s): %s: %s", h->info.size - 1,
           dt, limit, status_name(rc), err.msg);
    free(buf);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: comm_check BACKEND [--params 'k=v ...'] [--timeout S]\n"
            "                  [--time N [--count FLOATS]] [--fault exit|stall]\n"
            "                  [--expect-init-failure TEXT]\n"
            "  Rank/size: DMNIST_RANK/DMNIST_WORLD_SIZE, OMPI_COMM_WORLD_*, PMI_*;\n"
            "  rendezvous: DMNIST_RENDEZVOUS; plugins: DMNIST_PLUGIN_PATH, then the built-in folder.\n"
            "  Start the ranks with dmnist-comm-job local|mpi NP -- dmnist-comm-check BACKEND ...\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        usage();
        return 2;
    }
    harness h = {.backend = argv[1], .timeout_s = 10.0};
    const char *spec = "", *fault = NULL, *expect_init_failure = NULL;
    int time_iters = 0;
    size_t time_count = TIME_DEFAULT_COUNT;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(a, "--params") == 0) spec = v;
        else if (strcmp(a, "--timeout") == 0) h.timeout_s = atof(v);
        else if (strcmp(a, "--time") == 0) time_iters = atoi(v);
        else if (strcmp(a, "--count") == 0) time_count = (size_t)strtoull(v, NULL, 10);
        else if (strcmp(a, "--fault") == 0) fault = v;
        else if (strcmp(a, "--expect-init-failure") == 0) expect_init_failure = v;
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (!(h.timeout_s > 0.0) || (fault && strcmp(fault, "exit") != 0 && strcmp(fault, "stall") != 0)) {
        usage();
        return 2;
    }

    /* Before init we only know what the launcher told us. */
    h.info.rank = env_int("DMNIST_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", -1);
    h.info.size = env_int("DMNIST_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", -1);

    dm_error err = {0};
    char path[4096];
    dm_default_plugin_path(NULL, NULL, path, sizeof path);
    dm_registry *reg = dm_registry_new();
    if (!reg || dm_registry_load_path(reg, path, &err) != DM_OK) {
        report(&h, 0, "loading plugins from %s: %s", path, err.msg);
        dm_registry_free(reg);
        return 1;
    }
    const dm_loaded_component *lc = dm_registry_find(reg, DM_KIND_COMM, h.backend);
    if (!lc) {
        report(&h, 0,
               "no comm backend '%s' along the plugin path %s (DMNIST_PLUGIN_PATH, then the "
               "built-in folder)",
               h.backend, path);
        dm_registry_free(reg);
        return 1;
    }
    /* Keep the backend's libraries (Open MPI, Gloo) loaded until exit even
     * after the registry's dlclose(): they leave threads and handlers
     * behind, and leak reports in sanitizer builds need their symbols. */
    if (!dlopen(lc->path, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE))
        report(&h, 0, "%s: dlopen(RTLD_NODELETE): %s", lc->path, dlerror());
    h.vt = lc->component->vtable;
    if (h.vt->struct_size < DM_COMM_VTABLE_SIZE_1_0) {
        report(&h, 0, "%s: comm vtable too small (%zu bytes)", lc->path, h.vt->struct_size);
        dm_registry_free(reg);
        return 1;
    }
    dm_param_set *ps = NULL;
    if (dm_param_set_parse(lc->component->params, spec, &ps, &err) != DM_OK) {
        report(&h, 0, "--params '%s': %s", spec, err.msg);
        dm_registry_free(reg);
        return 1;
    }

    dm_comm_config cfg = {
        .struct_size = sizeof cfg,
        .rank = h.info.rank,
        .size = h.info.size,
        .local_rank = env_int("DMNIST_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", NULL, -1),
        .rendezvous = getenv("DMNIST_RENDEZVOUS"),
        .timeout_s = h.timeout_s,
        .device = DM_DEVICE_CPU,
        .local_size = env_int("DMNIST_LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", NULL, -1),
    };
    h.info.struct_size = sizeof h.info;
    double t0 = now_s();
    int rc = h.vt->init(dm_param_set_params(ps), &cfg, &h.state, &h.info, &err);
    double dt = now_s() - t0;

    if (expect_init_failure) {
        double limit = h.timeout_s * 1.2 + 1.0;
        report(&h, (rc == DM_ERR_TIMEOUT || rc == DM_ERR_COMM) && strstr(err.msg, expect_init_failure) && dt <= limit,
               "init failed as expected within the timeout (%.2f s, limit %.1f s): %s: %s", dt, limit, status_name(rc),
               rc == DM_OK ? "(it succeeded)" : err.msg);
        if (rc == DM_OK) h.vt->finalize(h.state, &err);
    } else if (rc != DM_OK) {
        report(&h, 0, "init: %s: %s", status_name(rc), err.msg);
    } else {
        report(&h,
               h.info.rank >= 0 && h.info.rank < h.info.size &&
                   (cfg.rank < 0 || (cfg.rank == h.info.rank && cfg.size == h.info.size)),
               "init: rank %d of %d, local rank %d, rendezvous %s (%.2f s)", h.info.rank, h.info.size,
               h.info.local_rank, cfg.rendezvous ? cfg.rendezvous : "(none)", dt);
        if (fault) {
            run_fault(&h, fault);
        } else if (time_iters > 0) {
            run_timing(&h, time_count, time_iters);
        } else {
            static const size_t sizes[] = {1, 7, BIG_N};
            for (int k = 0; k < 3; k++)
                for (int op = DM_REDUCE_SUM; op <= DM_REDUCE_AVG; op++) {
                    check_allreduce(&h, sizes[k], (dm_reduce_op)op, 1);
                    check_allreduce(&h, sizes[k], (dm_reduce_op)op, 0);
                }
            check_identical(&h);
            check_async(&h);
            check_broadcast(&h, 1, 0);
            check_broadcast(&h, 13, h.info.size - 1);
            check_broadcast(&h, BCAST_BIG, 0);
            check_broadcast(&h, BCAST_BIG, h.info.size - 1);
            check_refusals(&h);
            check_barrier(&h);
        }
        memset(&err, 0, sizeof err);
        t0 = now_s();
        rc = h.vt->finalize(h.state, &err);
        dt = now_s() - t0;
        /* After a lost peer finalize may report the failure; it must return in time. */
        if (fault)
            report(&h, dt <= h.timeout_s * 1.2 + 1.0, "finalize returned after %.2f s (%s%s%s)", dt, status_name(rc),
                   rc ? ": " : "", err.msg);
        else report(&h, rc == DM_OK, "finalize: %s%s%s", status_name(rc), rc ? ": " : "", err.msg);
    }
    /* run_job.sh counts these lines: one per rank that got to the end. */
    printf("comm_check[%s %d/%d]: DONE %d passed, %d failed\n", h.backend, h.info.rank, h.info.size, h.passes,
           h.failures);
    dm_param_set_free(ps);
    dm_registry_free(reg);
    return h.failures ? 1 : 0;
}
