/* dmnist-bench-comm: allreduce timings of comm backends, nccl-tests style.
 *
 *   dmnist-bench-comm [--np N] [--backends mpi,gloo] [--csv FILE] CONFIG.ini
 *
 * For each backend: every message size from --min-bytes to --max-bytes
 * (doubling), then the configured model's whole gradient buffer (the
 * trainer's flat buffer, padding included). Each size runs --warmup untimed
 * repetitions, then --iters timed ones, each after a barrier; a
 * repetition's time is averaged over ranks (as nccl-tests does) and the row
 * reports the median. Every repetition's result is checked.
 *   algbw = bytes / time          busbw = algbw * 2(n-1)/n   (allreduce)
 *
 * Launching is dmnist-run's: with --np N this process starts, per backend,
 * N ranks through dm_launch (forked ranks with a file rendezvous, or
 * mpirun), and they hand their rows back in a file (--rank-output). Without
 * --np the process is itself a rank (alone, or started by mpirun) and
 * rank 0 prints the table. Exit codes: 0 success, 1 a run failed, 2 bad
 * command line or config.
 */
#define _GNU_SOURCE
#include "dm_core.h"
#include "launch.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct row {
    char backend[32];
    int world_size;
    char device[8];
    char op[16];         /* "allreduce", or "model" for the gradient buffer */
    size_t bytes, count; /* count: floats */
    int reps;
    double time_us, min_us, max_us;
    double algbw, busbw; /* GB/s (1e9 bytes per second) */
} row;

typedef struct rows {
    row *v;
    int n, cap;
} rows;

typedef struct bench_opts {
    size_t min_bytes, max_bytes;
    int iters, warmup;
} bench_opts;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dmnist-bench-comm [options] CONFIG.ini\n"
            "\n"
            "Time an allreduce (sum of float32) on each backend asked for, for every size from\n"
            "--min-bytes to --max-bytes (doubling) and for the whole gradient buffer of the model\n"
            "in CONFIG.ini. Reports the median over repetitions after warm-up, with algbw = bytes/time\n"
            "and busbw = algbw * 2(n-1)/n, as nccl-tests define them.\n"
            "\n"
            "options:\n"
            "  --backends LIST          comma-separated backends (default: CONFIG's experiment.backend)\n"
            "  --np N                   start N local ranks per backend (gloo: own rendezvous; mpi: via mpirun);\n"
            "                           without it this process is one rank (alone, or under mpirun)\n"
            "  --min-bytes SIZE         smallest message, at least 4 (default 4; suffixes K, M, G = 2^10, 2^20, 2^30)\n"
            "  --max-bytes SIZE         largest message (default 64M)\n"
            "  --iters N                timed repetitions per size (default 20)\n"
            "  --warmup N               untimed repetitions before them (default 5)\n"
            "  --csv FILE               also write every row as CSV\n"
            "  --set SECTION.KEY=VALUE  override a config key (repeatable), e.g. --set comm.timeouts=false\n"
            "  --plugin-path DIRS       search these ':'-separated folders for plugins first\n"
            "  --help\n");
}

static int rows_add(rows *r, const row *x)
{
    if (dm_grow(&r->v, &r->cap, r->n + 1, sizeof *r->v, 64)) return DM_ERR_NOMEM;
    r->v[r->n++] = *x;
    return DM_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "64M" -> 67108864. 0 on bad input. */
static size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return 0;
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10, end++;
    else if (*end == 'M' || *end == 'm') shift = 20, end++;
    else if (*end == 'G' || *end == 'g') shift = 30, end++;
    if (*end || v > (1ull << 40) >> shift) return 0;
    return (size_t)(v << shift);
}

static int parse_count(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* ---- output ---------------------------------------------------------------- */

static const char *csv_header =
    "backend,world_size,device,op,bytes,count,reps,time_us,time_min_us,time_max_us,algbw_GBps,busbw_GBps\n";

static void write_row(FILE *f, const row *r)
{
    fprintf(f, "%s,%d,%s,%s,%zu,%zu,%d,%.3f,%.3f,%.3f,%.6f,%.6f\n", r->backend, r->world_size, r->device, r->op,
            r->bytes, r->count, r->reps, r->time_us, r->min_us, r->max_us, r->algbw, r->busbw);
}

static int read_rows(const char *path, rows *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return DM_ERR_IO;
    char line[512];
    int rc = DM_OK;
    while (fgets(line, sizeof line, f)) {
        row r = {0};
        if (sscanf(line, "%31[^,],%d,%7[^,],%15[^,],%zu,%zu,%d,%lf,%lf,%lf,%lf,%lf", r.backend, &r.world_size, r.device,
                   r.op, &r.bytes, &r.count, &r.reps, &r.time_us, &r.min_us, &r.max_us, &r.algbw, &r.busbw) != 12) {
            rc = DM_ERR_FORMAT;
            break;
        }
        if ((rc = rows_add(out, &r))) break;
    }
    fclose(f);
    return rc;
}

/* One block per backend, like nccl-tests' table. */
static void print_table(const rows *r, int from, const char *model, const bench_opts *o)
{
    if (from >= r->n) return;
    const row *a = &r->v[from];
    printf("# allreduce (sum, float32) on %s: %d rank%s, buffers on %s\n", a->backend, a->world_size,
           a->world_size == 1 ? "" : "s", a->device);
    printf("# median of %d repetitions after %d warm-up; busbw = algbw * 2(n-1)/n\n", o->iters, o->warmup);
    printf("# %14s %12s %12s %12s %12s %12s %12s\n", "size(B)", "count", "time(us)", "min(us)", "max(us)",
           "algbw(GB/s)", "busbw(GB/s)");
    double sum_busbw = 0;
    int n = 0;
    for (int i = from; i < r->n; i++) {
        const row *x = &r->v[i];
        if (strcmp(x->op, "model") == 0)
            printf("# gradient buffer of model '%s' (%zu floats, as the trainer reduces it):\n", model, x->count);
        else sum_busbw += x->busbw, n++;
        printf("  %14zu %12zu %12.2f %12.2f %12.2f %12.3f %12.3f\n", x->bytes, x->count, x->time_us, x->min_us,
               x->max_us, x->algbw, x->busbw);
    }
    printf("# average busbw over the %d sizes: %.3f GB/s\n\n", n, n ? sum_busbw / n : 0.0);
    fflush(stdout);
}

static int write_csv(const char *path, const rows *r)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "dmnist-bench-comm: %s: cannot open for writing: %s\n", path, strerror(errno));
        return 1;
    }
    fputs(csv_header, f);
    for (int i = 0; i < r->n; i++) write_row(f, &r->v[i]);
    if (fclose(f) != 0) {
        fprintf(stderr, "dmnist-bench-comm: %s: write failed\n", path);
        return 1;
    }
    return 0;
}

/* ---- one rank's benchmark of one backend --------------------------------------- */

typedef struct bench {
    const dm_comm_vtable *cvt;
    void *comm;
    dm_comm_info ci;
    dm_devctx dev;
    int dev_open;
    int on_device; /* buffers in device memory (the backend takes them) */
    float *buf;    /* max_count floats, where the collective runs */
    float *host;   /* max_count floats: the expected values and staging */
    double *times; /* one repetition's time per entry */
    float *share;  /* iters times + a bad-element count, averaged over ranks */
    const char *backend;
} bench;

/* The trainer's flat gradient buffer size: build the model as --dry-run does
 * (the dataset gives the input shape). */
static int model_floats(const dm_experiment *x, size_t *count, dm_error *err)
{
    const dm_dataset_vtable *dvt = x->data.lc->component->vtable;
    dm_dataset_config dc = {sizeof dc, x->seed, x->cfg->dir};
    dm_dataset_info di = {sizeof di, {0, 0}, {1, 1, 28, 28}, 10};
    void *ds = NULL;
    dm_error e = {0};
    if (DM_GUARDED(x->data.lc, "open", dvt->open(dm_param_set_params(x->data.params), &dc, &ds, &di, &e)))
        return dm_fail(err, e.code ? e.code : DM_ERR_IO, "%s", e.msg);
    dvt->close(ds);
    dm_devctx cpu = {DM_DEVICE_CPU, 0, NULL};
    dm_model m;
    int rc = dm_model_build(&m, x, &cpu, di.item, 1, 1, err);
    if (rc) return rc;
    *count = m.param_count;
    dm_model_free(&m);
    return DM_OK;
}

/* Expected sum over ranks of fill(rank, i) = rank + 1 + i % 7: exact in float. */
static float fill_value(int rank, size_t i) { return (float)(rank + 1 + (int)(i % 7)); }

static int time_size(bench *b, const bench_opts *o, size_t count, row *out, dm_error *err)
{
    int n = b->ci.size, rank = b->ci.rank;
    size_t bytes = count * sizeof(float);
    double bad = 0;
    int rc = DM_OK;
    for (int rep = -o->warmup; rep < o->iters && rc == DM_OK; rep++) {
        for (size_t i = 0; i < count; i++) b->host[i] = fill_value(rank, i);
        if (b->on_device) rc = dm_dev_upload(&b->dev, b->buf, b->host, bytes, err);
        else memcpy(b->buf, b->host, bytes);
        if (rc == DM_OK && b->on_device) rc = dm_dev_sync(&b->dev, err);
        dm_error e = {0};
        if (rc == DM_OK && (rc = b->cvt->barrier(b->comm, &e)))
            rc = dm_fail(err, rc, "%s: barrier: %s", b->backend, e.msg);
        if (rc) break;
        double t0 = now_s();
        rc = b->cvt->allreduce(b->comm, b->buf, count, DM_REDUCE_SUM, b->on_device ? b->dev.device : DM_DEVICE_CPU,
                               b->dev.stream, &e);
        if (rc) {
            rc = dm_fail(err, rc, "%s: allreduce of %zu floats: %s", b->backend, count, e.msg);
            break;
        }
        if (b->on_device && (rc = dm_dev_sync(&b->dev, err))) break;
        double t1 = now_s();
        if (rep >= 0) b->times[rep] = t1 - t0;
        /* check: sum over ranks r of (r + 1 + i % 7) */
        const float *got = b->buf;
        if (b->on_device) {
            if ((rc = dm_dev_download(&b->dev, b->host, b->buf, bytes, err))) break;
            got = b->host;
        }
        for (size_t i = 0; i < count; i++) {
            float want = (float)(n * (n + 1) / 2 + n * (int)(i % 7));
            if (got[i] != want) {
                if (bad == 0)
                    fprintf(stderr,
                            "dmnist-bench-comm: %s: rank %d: allreduce of %zu floats gave %g at index %zu, "
                            "expected %g\n",
                            b->backend, rank, count, (double)got[i], i, (double)want);
                bad++;
            }
        }
    }
    if (rc) return rc;
    /* Average each repetition's time over ranks; the last entry counts wrong
     * elements on every rank, so all ranks agree on failing. */
    for (int k = 0; k < o->iters; k++) b->share[k] = (float)b->times[k];
    b->share[o->iters] = (float)bad;
    if (n > 1) {
        dm_error e = {0};
        if ((rc = b->cvt->allreduce(b->comm, b->share, (size_t)o->iters + 1, DM_REDUCE_AVG, DM_DEVICE_CPU, NULL, &e)))
            return dm_fail(err, rc, "%s: allreduce of the timings: %s", b->backend, e.msg);
    }
    if (b->share[o->iters] > 0)
        return dm_fail(err, DM_ERR_COMM,
                       "%s: allreduce of %zu floats gave wrong sums (%.0f wrong elements over all "
                       "ranks)",
                       b->backend, count, (double)b->share[o->iters] * n);
    for (int k = 0; k < o->iters; k++) b->times[k] = b->share[k];
    /* median by insertion sort: iters is small */
    for (int k = 1; k < o->iters; k++)
        for (int j = k; j > 0 && b->times[j] < b->times[j - 1]; j--) {
            double tmp = b->times[j];
            b->times[j] = b->times[j - 1];
            b->times[j - 1] = tmp;
        }
    int it = o->iters;
    double med = it % 2 ? b->times[it / 2] : 0.5 * (b->times[it / 2 - 1] + b->times[it / 2]);
    memset(out, 0, sizeof *out);
    snprintf(out->backend, sizeof out->backend, "%s", b->backend);
    snprintf(out->device, sizeof out->device, "%s", b->on_device ? dm_device_name(b->dev.device) : "cpu");
    out->world_size = n;
    out->bytes = bytes;
    out->count = count;
    out->reps = it;
    out->time_us = med * 1e6;
    out->min_us = b->times[0] * 1e6;
    out->max_us = b->times[it - 1] * 1e6;
    out->algbw = med > 0 ? (double)bytes / med / 1e9 : 0;
    out->busbw = out->algbw * 2.0 * (n - 1) / n;
    return DM_OK;
}

static void bench_free(bench *b)
{
    if (b->on_device) dm_dev_free(&b->dev, b->buf);
    else free(b->buf);
    free(b->host);
    free(b->times);
    free(b->share);
    if (b->comm) {
        dm_error e = {0};
        b->cvt->finalize(b->comm, &e);
    }
    if (b->dev_open) dm_dev_close(&b->dev);
}

/* Run every size and the model on one backend; rank 0's rows go to out. */
static int bench_backend(const dm_experiment *x, const bench_opts *o, rows *out, int *rank_out, dm_error *err)
{
    size_t model_count = 0;
    int rc = model_floats(x, &model_count, err);
    if (rc) return rc;

    bench b = {0};
    b.backend = x->backend;
    b.cvt = x->comm.lc->component->vtable;
    dm_comm_config cc;
    dm_comm_ids ids;
    if ((rc = dm_comm_config_init(&cc, &ids, x, err))) return rc;
    b.ci.struct_size = sizeof b.ci;
    dm_error e = {0};
    if ((rc = b.cvt->init(dm_param_set_params(x->comm.params), &cc, &b.comm, &b.ci, &e))) {
        b.comm = NULL;
        size_t n = strlen(x->backend); /* the backend's message usually names it already */
        if (strncmp(e.msg, x->backend, n) == 0 && e.msg[n] == ':') return dm_fail(err, rc, "%s", e.msg);
        return dm_fail(err, rc, "%s: %s", x->backend, e.msg);
    }
    *rank_out = b.ci.rank;
    if ((rc = dm_job_agree(b.cvt, b.comm, b.ci.rank, b.ci.size, dm_job_fingerprint(x, b.ci.size, ids.job_id), err))) {
        bench_free(&b);
        return rc;
    }

    size_t max_count = o->max_bytes / sizeof(float);
    if (model_count > max_count) max_count = model_count;
    b.host = malloc(max_count * sizeof(float));
    b.times = calloc((size_t)o->iters, sizeof *b.times);
    b.share = calloc((size_t)o->iters + 1, sizeof *b.share);
    if (!b.host || !b.times || !b.share) rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
    /* Device buffers when the experiment is on a GPU and the backend takes
     * them (nccl); otherwise host memory, as the trainer would stage. */
    if (!rc && x->device != DM_DEVICE_CPU && (b.cvt->devices & DM_DEVICE_BIT(x->device))) {
        if (!(rc = dm_dev_open(&b.dev, x->device, b.ci.local_rank, err))) {
            b.dev_open = 1;
            b.on_device = 1;
            if (!(b.buf = dm_dev_alloc(&b.dev, max_count * sizeof(float), err))) rc = err->code;
        }
    } else if (!rc) {
        b.dev = (dm_devctx){DM_DEVICE_CPU, 0, NULL};
        if (!(b.buf = malloc(max_count * sizeof(float)))) rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
    }
    int first = out->n;
    for (size_t bytes = o->min_bytes; rc == DM_OK && bytes <= o->max_bytes; bytes *= 2) {
        row r;
        if (!(rc = time_size(&b, o, bytes / sizeof(float), &r, err))) {
            snprintf(r.op, sizeof r.op, "allreduce");
            if (b.ci.rank == 0) rc = rows_add(out, &r);
        }
    }
    if (rc == DM_OK) {
        row r;
        if (!(rc = time_size(&b, o, model_count, &r, err))) {
            snprintf(r.op, sizeof r.op, "model");
            if (b.ci.rank == 0) rc = rows_add(out, &r);
        }
    }
    if (rc) out->n = first;
    bench_free(&b);
    return rc;
}

/* Load CONFIG with the --set overrides and the backend, and resolve it. */
static int load_experiment(const char *path, const char *const *sets, int n_sets, const char *backend,
                           const char *extra_path, int is_rank, dm_experiment **x, dm_error *err)
{
    dm_config *cfg = NULL;
    int rc = dm_config_load(path, &cfg, err);
    for (int i = 0; rc == DM_OK && i < n_sets; i++) rc = dm_config_set(cfg, sets[i], err);
    if (rc == DM_OK && backend) {
        char kv[128];
        snprintf(kv, sizeof kv, "experiment.backend=%s", backend);
        rc = dm_config_set(cfg, kv, err);
    }
    if (rc == DM_OK) {
        if (is_rank) dm_set_thread_env(cfg); /* a launcher's setting would leak into its ranks */
        rc = dm_experiment_resolve(cfg, extra_path, x, err);
    }
    if (rc) dm_config_free(cfg);
    return rc;
}

static void free_experiment(dm_experiment *x)
{
    dm_config *cfg = x->cfg;
    dm_experiment_free(x);
    dm_config_free(cfg);
}

/* ---- launching -------------------------------------------------------------------- */

/* Start np ranks for one backend (dm_launch, in a child: for mpi it becomes
 * mpirun) and collect rank 0's rows from a file. */
static int launch_backend(const char *backend, int np, const char *config, const char *const *sets, int n_sets,
                          const char *const *fwd, int n_fwd, rows *out)
{
    char part[] = "/tmp/dmnist-bench-XXXXXX";
    int fd = mkstemp(part);
    if (fd < 0) {
        fprintf(stderr, "dmnist-bench-comm: cannot create a temporary file: %s\n", strerror(errno));
        return 1;
    }
    close(fd);
    /* argv for the ranks: dm_launch drops --np and re-executes us. */
    char nps[16], setb[128];
    snprintf(nps, sizeof nps, "%d", np);
    snprintf(setb, sizeof setb, "experiment.backend=%s", backend);
    int argc = 0;
    const char **argv = calloc((size_t)(2 * n_sets + n_fwd + 16), sizeof *argv);
    const char **all_sets = calloc((size_t)n_sets + 1, sizeof *all_sets);
    argv[argc++] = "dmnist-bench-comm";
    argv[argc++] = "--np";
    argv[argc++] = nps;
    argv[argc++] = "--backends";
    argv[argc++] = backend;
    argv[argc++] = "--rank-output";
    argv[argc++] = part;
    char(*names)[32] = calloc((size_t)n_fwd / 2 + 1, sizeof *names);
    for (int i = 0; i + 1 < n_fwd; i += 2) { /* fwd: option name, value */
        snprintf(names[i / 2], sizeof names[i / 2], "--%s", fwd[i]);
        argv[argc++] = names[i / 2];
        argv[argc++] = fwd[i + 1];
    }
    for (int i = 0; i < n_sets; i++) {
        argv[argc++] = "--set";
        argv[argc++] = sets[i];
        all_sets[i] = sets[i];
    }
    all_sets[n_sets] = setb; /* dm_launch reads the backend from the config and these */
    argv[argc++] = config;
    argv[argc] = NULL;

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dm_launch_opts lo = {.np = np};
        _exit(dm_launch(argc, (char **)argv, &lo, config, all_sets, n_sets + 1));
    }
    int status = 0, rc = 1;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        rc = read_rows(part, out);
        if (rc) fprintf(stderr, "dmnist-bench-comm: %s: rank 0 wrote no usable results to %s\n", backend, part);
    } else if (pid < 0) {
        fprintf(stderr, "dmnist-bench-comm: fork: %s\n", strerror(errno));
    } else {
        fprintf(stderr, "dmnist-bench-comm: %s with %d rank%s failed (%s %d); see the ranks' messages above\n", backend,
                np, np == 1 ? "" : "s", WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    remove(part);
    free(names);
    free(argv);
    free(all_sets);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    enum {
        OPT_SET = 256,
        OPT_NP,
        OPT_BACKENDS,
        OPT_MIN,
        OPT_MAX,
        OPT_ITERS,
        OPT_WARMUP,
        OPT_CSV,
        OPT_PLUGIN_PATH,
        OPT_RANK_OUTPUT
    };
    static const struct option longopts[] = {
        {"set", required_argument, NULL, OPT_SET},
        {"np", required_argument, NULL, OPT_NP},
        {"backends", required_argument, NULL, OPT_BACKENDS},
        {"min-bytes", required_argument, NULL, OPT_MIN},
        {"max-bytes", required_argument, NULL, OPT_MAX},
        {"iters", required_argument, NULL, OPT_ITERS},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"csv", required_argument, NULL, OPT_CSV},
        {"plugin-path", required_argument, NULL, OPT_PLUGIN_PATH},
        {"rank-output", required_argument, NULL, OPT_RANK_OUTPUT}, /* internal: a launched rank's results */
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    dm_launch_prog = "dmnist-bench-comm";
    const char **sets = calloc((size_t)argc + 1, sizeof *sets);
    const char **fwd = calloc((size_t)argc + 1, sizeof *fwd); /* name, value: options the ranks get too */
    int n_sets = 0, n_fwd = 0, np = 0, c;
    const char *backends = NULL, *csv = NULL, *extra_path = NULL, *rank_output = NULL;
    bench_opts o = {4, 64u << 20, 20, 5};
    int bad = 0;
    opterr = 0;
    int li = -1;
    while (!bad && (li = -1, c = getopt_long(argc, argv, "+h", longopts, &li)) != -1) {
        char opt[32]; /* the option's own name, for messages and for the ranks' argv */
        snprintf(opt, sizeof opt, "--%s", li >= 0 ? longopts[li].name : "?");
        switch (c) {
        case OPT_SET: sets[n_sets++] = optarg; break;
        case OPT_NP:
            if (parse_count(optarg, 1, 4096, &np)) {
                fprintf(stderr, "dmnist-bench-comm: --np %s: expected a number of processes from 1 to 4096\n", optarg);
                bad = 1;
            }
            break;
        case OPT_BACKENDS: backends = optarg; break;
        case OPT_MIN:
        case OPT_MAX: {
            size_t v = parse_size(optarg);
            if (v < 4 || v % 4) {
                fprintf(stderr,
                        "dmnist-bench-comm: %s %s: expected a size of at least 4 bytes, a multiple of 4 "
                        "(suffixes K, M, G)\n",
                        c == OPT_MIN ? "--min-bytes" : "--max-bytes", optarg);
                bad = 1;
            }
            if (c == OPT_MIN) o.min_bytes = v;
            else o.max_bytes = v;
            fwd[n_fwd++] = longopts[li].name;
            fwd[n_fwd++] = optarg;
            break;
        }
        case OPT_ITERS:
        case OPT_WARMUP:
            if (parse_count(optarg, c == OPT_ITERS ? 1 : 0, 1000000, c == OPT_ITERS ? &o.iters : &o.warmup)) {
                fprintf(stderr, "dmnist-bench-comm: %s %s: expected a whole number %s\n", opt, optarg,
                        c == OPT_ITERS ? "from 1" : "from 0");
                bad = 1;
            }
            fwd[n_fwd++] = longopts[li].name;
            fwd[n_fwd++] = optarg;
            break;
        case OPT_CSV: csv = optarg; break;
        case OPT_PLUGIN_PATH:
            extra_path = optarg;
            fwd[n_fwd++] = longopts[li].name;
            fwd[n_fwd++] = optarg;
            break;
        case OPT_RANK_OUTPUT: rank_output = optarg; break;
        case 'h':
            usage(stdout);
            free(sets);
            free(fwd);
            return 0;
        case ':':
            fprintf(stderr, "dmnist-bench-comm: option %s needs a value (see --help)\n", argv[optind - 1]);
            bad = 1;
            break;
        default: fprintf(stderr, "dmnist-bench-comm: unknown option '%s' (see --help)\n", argv[optind - 1]); bad = 1;
        }
    }
    /* getopt_long may have printed nothing for "--iters=x": the checks above cover values. */
    if (!bad && argc - optind != 1) {
        fprintf(stderr,
                argc - optind < 1 ? "dmnist-bench-comm: missing CONFIG.ini (see --help)\n"
                                  : "dmnist-bench-comm: too many arguments: expected one CONFIG.ini\n");
        bad = 1;
    }
    if (!bad && o.min_bytes > o.max_bytes) {
        fprintf(stderr, "dmnist-bench-comm: --min-bytes %zu is larger than --max-bytes %zu\n", o.min_bytes,
                o.max_bytes);
        bad = 1;
    }
    if (bad) {
        free(sets);
        free(fwd);
        return 2;
    }
    const char *config = argv[optind];

    /* The backends: --backends, else the config's own. */
    char list[1024];
    dm_error err = {0};
    dm_experiment *x = NULL;
    if (backends) {
        snprintf(list, sizeof list, "%s", backends);
    } else {
        if (load_experiment(config, sets, n_sets, NULL, extra_path, np == 0, &x, &err)) {
            fprintf(stderr, "dmnist-bench-comm: %s\n", err.msg);
            free(sets);
            free(fwd);
            return 2;
        }
        snprintf(list, sizeof list, "%s", x->backend);
        free_experiment(x);
    }
    const char *names[64];
    int n_names = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n_names == 64) break;
        names[n_names++] = tok;
    }
    if (!n_names) {
        fprintf(stderr, "dmnist-bench-comm: --backends '%s': no backend named\n", backends ? backends : "");
        free(sets);
        free(fwd);
        return 2;
    }

    rows out = {0};
    int rc = 0;
    char model[128] = "";
    /* Resolve every backend up front, so a typo is one line before anything starts. */
    for (int i = 0; i < n_names; i++) {
        if (load_experiment(config, sets, n_sets, names[i], extra_path, np == 0, &x, &err)) {
            fprintf(stderr, "dmnist-bench-comm: %s\n", err.msg);
            free(sets);
            free(fwd);
            return 2;
        }
        if (np > 1 && strcmp(x->backend, "local") == 0) {
            fprintf(stderr, "dmnist-bench-comm: --np %d: backend 'local' has one rank only\n", np);
            free_experiment(x);
            free(sets);
            free(fwd);
            return 2;
        }
        snprintf(model, sizeof model, "%s", x->name);
        free_experiment(x);
    }

    if (np > 0) {
        /* Launcher: one job of np ranks per backend, one after the other. */
        for (int i = 0; i < n_names; i++) {
            int from = out.n;
            if (launch_backend(names[i], np, config, sets, n_sets, fwd, n_fwd, &out)) rc = 1;
            else print_table(&out, from, model, &o);
        }
    } else {
        /* A rank: run each backend in this process; rank 0 reports. */
        int rank = 0;
        for (int i = 0; i < n_names && rc == 0; i++) {
            int from = out.n;
            if (load_experiment(config, sets, n_sets, names[i], extra_path, np == 0, &x, &err)) {
                fprintf(stderr, "dmnist-bench-comm: %s\n", err.msg);
                rc = 2;
                break;
            }
            if (bench_backend(x, &o, &out, &rank, &err)) {
                fprintf(stderr, "dmnist-bench-comm: %s\n", err.msg);
                rc = 1;
            } else if (rank == 0 && !rank_output) {
                print_table(&out, from, model, &o);
            }
            free_experiment(x);
        }
        if (rc == 0 && rank == 0 && rank_output) {
            FILE *f = fopen(rank_output, "w");
            if (!f) {
                fprintf(stderr, "dmnist-bench-comm: %s: cannot open for writing: %s\n", rank_output, strerror(errno));
                rc = 1;
            } else {
                for (int i = 0; i < out.n; i++) write_row(f, &out.v[i]);
                if (fclose(f) != 0) rc = 1;
            }
        }
        if (rank != 0) out.n = 0; /* only rank 0 writes the CSV */
        if (rank != 0) csv = NULL;
    }
    if (csv && out.n && write_csv(csv, &out)) rc = 1;
    if (csv && out.n && rc == 0) printf("wrote %s (%d rows)\n", csv, out.n);
    free(out.v);
    free(sets);
    free(fwd);
    return rc;
}
