/* The training loop, with the seed's semantics:
 *  - total_batches counts batches over all ranks; each of N ranks runs
 *    total_batches / N steps of its own batch_size (or `epochs` epochs);
 *  - rank 0 draws the initial parameters; they, the optimizer state and the
 *    layers' state (ABI 1.1: running statistics) are broadcast, so every
 *    rank starts identical; the layer state, which each rank's forward
 *    updates from its own batch, is broadcast again after every step;
 *  - each epoch is one permutation of the training set drawn from the seed;
 *    a step consumes N*batch examples of it, rank r taking the r-th slice;
 *  - gradients are averaged over ranks in buckets, each started as soon as
 *    the backward pass has produced it; the optimizer waits for all;
 *  - the learning rate is lr * N (scale_lr) times the schedule's factor
 *    (warm-up, then constant or a linear or cosine decay: schedule.c);
 *  - logged loss, accuracy and images/s, and the test evaluation, are
 *    combined over ranks before rank 0 prints them.
 */
#define _GNU_SOURCE
#include "dm_core.h"
#ifdef DMNIST_CORE_CUDA
#include "dm_cuda.h"
#endif

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct bucket {
    size_t lo, hi;               /* float range of the flat gradient buffer */
    int first_layer;             /* lowest layer index in it: start after its backward */
    dm_comm_request *req;
    double t_start;              /* when it was started (for --timeline) */
    /* host staging (trainer.stage) */
    dm_dev_event *copied;        /* its copy to the host mirror has landed */
    int copying;                 /* copy queued, allreduce not started yet */
    double t_copy;               /* when the copy was queued (for --timeline) */
} bucket;

typedef struct trainer {
    dm_experiment *x;
    const dm_train_opts *opts;
    dm_devctx dev;
    int dev_open;

    const dm_comm_vtable *cvt;
    void *comm;
    dm_comm_info ci;

    const dm_dataset_vtable *dvt;
    void *data;
    dm_dataset_info di;

    dm_model m;
    int model_built;

    const dm_optimizer_vtable *ovt;
    void *opt;
    dm_optimizer_info oi;
    float *opt_state;
    size_t n_opt;

    float *h_images;
    int32_t *h_labels;
    int64_t *idx;
    int64_t *perm;
    int64_t perm_epoch;
    /* device = cuda: every example on the GPU, uploaded once (NULL when it
     * did not fit: then batches are copied from the host each step) */
    float *d_images[2];          /* by dm_split: (count, item) */
    int32_t *d_labels[2];
    int64_t *d_perm;             /* this epoch's permutation */
    float *d_scratch;            /* staging for device-only backends (nccl) */
    float *state_backup;         /* nan_policy = skip: the layer state before the step */
    size_t d_scratch_n;
    int64_t epoch, epoch_pos;
    int64_t step;                /* optimizer updates done */

    bucket *buckets;
    int n_buckets;
    /* Host staging, for a backend that takes host memory only (mpi, gloo)
     * with device = cuda; see "gradient buckets" below. */
    int stage;                   /* device buffers go through h_mirror */
    float *h_mirror;             /* pinned host twin of the gradient buffer */
    size_t h_mirror_n;           /* its floats (param_count) */
    void *copy_stream;           /* device<->host copies, beside dev.stream */
    dm_dev_event *computed;      /* compute stream: the work queued so far */
    dm_dev_event *copies;        /* copy stream: the copies queued so far */
    int next_start;              /* staged: next bucket to start its allreduce */
    double comm_wait_s;          /* since last log */
    float checked_loss_sum;      /* metrics[0] at the last NaN/Inf check */
    int64_t checked_step;        /* the step of that check */
    int64_t params_checked_step; /* parameters last seen finite after this step */
    double t_fwd_bwd_s, t_data_s, t_opt_s;
    FILE *metrics;

    int bar;                     /* rank 0 draws a progress bar */
    int bar_shown;               /* the bar is on the terminal's last line */
    double bar_drawn;            /* when it was last redrawn */
    double bar_loss;             /* last logged loss, < 0 before the first */
} trainer;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int rank0(const trainer *t) { return t->ci.rank == 0; }

/* One line for a backend's error: its own message already starts with the
 * backend's name ("gloo: rank 0: ...") or gets it added here. */
/* Say which exit code this run's failure deserves (dm_train_opts.exit_code). */
static int exit_as(const trainer *t, int code)
{
    if (t->opts && t->opts->exit_code) *t->opts->exit_code = code;
    return 1;
}

static int comm_fail(const trainer *t, dm_error *err, int rc, const char *msg)
{
    size_t n = strlen(t->x->backend);
    if (strncmp(msg, t->x->backend, n) == 0 && msg[n] == ':') return dm_fail(err, rc, "%s", msg);
    return dm_fail(err, rc, "%s: %s", t->x->backend, msg);
}


/* ---- communication helpers ---------------------------------------------- */

/* A device buffer of at least `bytes` for staging host vectors through a
 * backend that takes device buffers only (nccl). */
static float *scratch(trainer *t, size_t bytes, dm_error *err)
{
    size_t n = (bytes + sizeof(float) - 1) / sizeof(float);
    if (n > t->d_scratch_n) {
        dm_dev_free(&t->dev, t->d_scratch);
        t->d_scratch_n = 0;
        if (!(t->d_scratch = dm_dev_alloc(&t->dev, (n < 64 ? 64 : n) * sizeof(float), err))) return NULL;
        t->d_scratch_n = n < 64 ? 64 : n;
    }
    return t->d_scratch;
}

/* The backend takes device buffers only (nccl with device = cuda): small
 * host vectors travel through a device scratch buffer. */
static int host_via_device(const trainer *t)
{
    return t->dev.device != DM_DEVICE_CPU && !(t->cvt->devices & DM_DEVICE_BIT(DM_DEVICE_CPU));
}

/* *finite = 1 when buf[0..n) (on the run's device) holds no NaN or Inf. CPU:
 * x * 0 is 0 for a finite x and NaN otherwise, so one sum answers (eight
 * partial sums, which the compiler turns into vector adds). A device: a
 * kernel and a one-word download (a host sync). */
static int all_finite(trainer *t, const float *buf, size_t n, int *finite, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        float acc[8] = {0}, sum = 0;
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += buf[i + k] * 0.0f;
        for (; i < n; i++) sum += buf[i] * 0.0f;
        for (int k = 0; k < 8; k++) sum += acc[k];
        *finite = sum == 0.0f;
        return DM_OK;
    }
#ifdef DMNIST_CORE_CUDA
    unsigned *flag = (unsigned *)scratch(t, sizeof(unsigned), err), bad = 1;
    if (!flag) return err ? err->code : DM_ERR_NOMEM;
    int rc = dm_cuda_any_nonfinite(buf, n, flag, t->dev.stream, err);
    if (!rc) rc = dm_dev_download(&t->dev, &bad, flag, sizeof bad, err);
    *finite = bad == 0;
    return rc;
#else
    *finite = 0;
    return dm_fail(err, DM_ERR_DEVICE, "NaN/Inf check: built without CUDA");
#endif
}

/* Before a checkpoint, at each log and at the end: the parameters (and any
 * layer state) must be finite. The per-step loss check misses a NaN that a
 * relu layer (NaN -> 0) or max pooling hides from the loss but not from the
 * gradients; caught here, the run stops before such parameters reach a
 * checkpoint. Every rank holds the same parameters, so all stop together. */
/* "step N" or "steps A-B": the steps (1-based) since the last check. */
static const char *step_range(char *buf, size_t size, int64_t first, int64_t last)
{
    if (first == last)
        snprintf(buf, size, "step %lld", (long long)last);
    else
        snprintf(buf, size, "steps %lld-%lld", (long long)first, (long long)last);
    return buf;
}

static int check_params(trainer *t, dm_error *err)
{
    int finite = 1, state_finite = 1, rc = all_finite(t, t->m.params, t->m.param_count, &finite, err);
    if (!rc && t->m.state_count) rc = all_finite(t, t->m.state, t->m.state_count, &state_finite, err);
    if (rc || (finite && state_finite)) {
        if (!rc) t->params_checked_step = t->step;
        return rc;
    }
    char steps[64];
    step_range(steps, sizeof steps, t->params_checked_step + 1, t->step);
    if (!finite)
        return dm_fail(err, DM_ERR_INVALID, "%s: parameters are not finite (NaN or Inf) though the loss is: "
                       "training diverged (a NaN hidden from the loss by a ReLU or max pooling reaches the "
                       "gradients; train.nan_policy = skip checks them at every step)", steps);
    return dm_fail(err, DM_ERR_INVALID, "%s: layer state (running statistics) is not finite (NaN or Inf) "
                   "though the loss and parameters are: training diverged", steps);
}

/* The running loss sum of this rank's steps since the last log (metrics[0]):
 * on the host for the CPU, one small download (a host sync) for a device. */
static int loss_sum(trainer *t, float *sum, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        *sum = t->m.metrics[0];
        return DM_OK;
    }
    return dm_dev_download(&t->dev, sum, t->m.metrics, sizeof(float), err);
}

static int set_loss_sum(trainer *t, float sum, dm_error *err)
{
    if (t->dev.device == DM_DEVICE_CPU) {
        t->m.metrics[0] = sum;
        return DM_OK;
    }
    return dm_dev_upload(&t->dev, t->m.metrics, &sum, sizeof(float), err);
}

static int allreduce_host(trainer *t, float *buf, size_t n, dm_reduce_op op, dm_error *err)
{
    /* Small host-side vectors (metrics): the backend takes host buffers,
     * or (nccl) gets them through a device scratch buffer. */
    dm_error e = {0};
    int rc;
    if (host_via_device(t)) {
        float *d = scratch(t, n * sizeof(float), err);
        if (!d) return err ? err->code : DM_ERR_NOMEM;
        if ((rc = dm_dev_upload(&t->dev, d, buf, n * sizeof(float), err))) return rc;
        rc = t->cvt->allreduce(t->comm, d, n, op, t->dev.device, t->dev.stream, &e);
        if (!rc) return dm_dev_download(&t->dev, buf, d, n * sizeof(float), err);
    } else {
        rc = t->cvt->allreduce(t->comm, buf, n, op, DM_DEVICE_CPU, NULL, &e);
    }
    if (rc) return comm_fail(t, err, rc, e.msg);
    return DM_OK;
}

/* Broadcast a small host buffer from rank 0 (staged like allreduce_host). */
static int broadcast_host(trainer *t, void *buf, size_t bytes, dm_error *e)
{
    if (!host_via_device(t)) return t->cvt->broadcast(t->comm, buf, bytes, 0, DM_DEVICE_CPU, NULL, e);
    float *d = scratch(t, bytes, e);
    int rc = d ? dm_dev_upload(&t->dev, d, buf, bytes, e) : (e ? e->code : DM_ERR_NOMEM);
    if (!rc) rc = t->cvt->broadcast(t->comm, d, bytes, 0, t->dev.device, t->dev.stream, e);
    if (!rc) rc = dm_dev_download(&t->dev, buf, d, bytes, e);
    return rc;
}

/* Broadcast a device buffer from rank 0. When the backend cannot take
 * device memory (t->stage) it goes through the pinned host mirror of the
 * gradients, a mirror's worth at a time (the optimizer state is twice the
 * gradients' size): rank 0 copies a piece down, every rank receives it and
 * copies it up. Copies run on the copy stream, after the compute stream's
 * writes to buf (an event); the compute stream's later work waits for the
 * uploads (another), the host for nothing more than the download. */
static int broadcast_dev(trainer *t, void *buf, size_t bytes, dm_error *err)
{
    if (t->ci.size == 1) return DM_OK;
    dm_error e = {0};
    int rc;
    if (!t->stage) {
        rc = t->cvt->broadcast(t->comm, buf, bytes, 0, t->dev.device, t->dev.stream, &e);
        if (rc) return comm_fail(t, err, rc, e.msg);
        return DM_OK;
    }
    const size_t piece = t->h_mirror_n * sizeof(float);
    rc = dm_dev_event_record(&t->dev, t->computed, t->dev.stream, err);
    if (!rc) rc = dm_dev_stream_wait(&t->dev, t->copy_stream, t->computed, err);
    for (size_t off = 0; off < bytes && rc == DM_OK; off += piece) {
        size_t n = bytes - off < piece ? bytes - off : piece;
        char *d = (char *)buf + off;
        if (rank0(t)) {
            rc = dm_dev_download_async(&t->dev, t->h_mirror, d, n, t->copy_stream, err);
            if (!rc) rc = dm_dev_event_record(&t->dev, t->copies, t->copy_stream, err);
            if (!rc) rc = dm_dev_event_sync(&t->dev, t->copies, err);
            if (rc) break;
        } else if ((rc = dm_dev_event_sync(&t->dev, t->copies, err))) {
            break; /* the previous piece's upload still reads the mirror */
        }
        if ((rc = t->cvt->broadcast(t->comm, t->h_mirror, n, 0, DM_DEVICE_CPU, NULL, &e)))
            return comm_fail(t, err, rc, e.msg);
        rc = dm_dev_upload_async(&t->dev, d, t->h_mirror, n, t->copy_stream, err);
        if (!rc) rc = dm_dev_event_record(&t->dev, t->copies, t->copy_stream, err);
    }
    /* the compute stream's next reader of buf comes after the uploads */
    if (!rc) rc = dm_dev_stream_wait(&t->dev, t->dev.stream, t->copies, err);
    return rc;
}

/* ---- gradient buckets ----------------------------------------------------- */

static int build_buckets(trainer *t, dm_error *err)
{
    dm_model *m = &t->m;
    t->buckets = calloc((size_t)m->n_layers + 1, sizeof *t->buckets);
    if (!t->buckets) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    double limit = t->x->fusion_mb * 1e6 / sizeof(float);
    bucket *cur = NULL;
    /* Backward runs last layer first, so buckets are cut from the end of the
     * flat buffer towards its start. */
    for (int i = m->n_layers - 1; i >= 0; i--) {
        const dm_layer_inst *L = &m->layers[i];
        if (!L->info.param_count) continue;
        size_t lo = L->param_offset;
        size_t hi = (i + 1 < m->n_layers) ? m->layers[i + 1].param_offset : m->param_count;
        if (!cur) {
            cur = &t->buckets[t->n_buckets++];
            cur->hi = hi;
        }
        cur->lo = lo;
        cur->first_layer = i;
        if (t->x->fusion_mb <= 0 || (double)(cur->hi - cur->lo) >= limit) cur = NULL;
    }
    return DM_OK;
}

/* Start bucket b's allreduce (average): of the gradients where they are,
 * or (t->stage) of their copy in the host mirror. */
static int start_bucket(trainer *t, bucket *b, dm_error *err)
{
    dm_error e = {0};
    b->t_start = now_s();
    int rc = t->stage ? t->cvt->allreduce_start(t->comm, t->h_mirror + b->lo, b->hi - b->lo, DM_REDUCE_AVG,
                                                DM_DEVICE_CPU, NULL, &b->req, &e)
                      : t->cvt->allreduce_start(t->comm, t->m.grads + b->lo, b->hi - b->lo, DM_REDUCE_AVG,
                                                t->dev.device, t->dev.stream, &b->req, &e);
    dm_timeline_span("comm", b->t_start, now_s(), "allreduce start bucket %d", (int)(b - t->buckets));
    if (rc) return comm_fail(t, err, rc, e.msg);
    return DM_OK;
}

/* Host staging (t->stage): gradients on the GPU, a backend that takes host
 * memory only (mpi, gloo). A pinned host mirror of the gradient buffer,
 * allocated once, carries each bucket:
 *  1. stage_out, from the backward hook that completes the bucket: the copy
 *     stream waits for the compute stream's work so far (an event), the
 *     bucket's device->host copy is queued there and b->copied recorded
 *     after it. The host does not wait.
 *  2. stage_start, from every later hook: the oldest queued copies are
 *     polled and each one that has landed gets its host allreduce started;
 *     wait_buckets waits for the rest, one after the other, starting each
 *     at once. So bucket b+1's copy travels while bucket b is reduced, and
 *     copies overlap the rest of the backward pass. Buckets start strictly
 *     in order: every rank must start the same collectives in the same
 *     order, and a later copy may land first.
 *  3. wait_buckets: as each bucket's wait returns, its host->device copy is
 *     queued on the copy stream (it overlaps the wait for the next bucket);
 *     then the compute stream waits for the uploads (an event), so the
 *     optimizer reads reduced gradients. The host waits only for the
 *     copies it reads itself: no device-wide synchronisation.
 * Its own copy stream, not the compute stream: queued on the compute stream
 * a copy would wait for, and then hold up, the backward kernels queued
 * before and after it; on a second stream the copy engine moves bucket b
 * while the layers below it compute. The mirror is reused by the next step:
 * its next writer, a copy on the same stream, comes after this step's
 * uploads (a stream runs in order), and the host writes a range only after
 * that range's copy has landed. */
static int stage_out(trainer *t, bucket *b, dm_error *err)
{
    b->t_copy = now_s();
    int rc = dm_dev_event_record(&t->dev, t->computed, t->dev.stream, err);
    if (!rc) rc = dm_dev_stream_wait(&t->dev, t->copy_stream, t->computed, err);
    if (!rc) rc = dm_dev_download_async(&t->dev, t->h_mirror + b->lo, t->m.grads + b->lo,
                                        (b->hi - b->lo) * sizeof(float), t->copy_stream, err);
    if (!rc) rc = dm_dev_event_record(&t->dev, b->copied, t->copy_stream, err);
    b->copying = rc == DM_OK;
    dm_timeline_span("comm", b->t_copy, now_s(), "copy to host queued bucket %d", (int)(b - t->buckets));
    return rc;
}

/* Start the allreduce of each queued bucket whose copy has landed, in
 * bucket order, stopping at the first still on its way; block: wait for
 * each copy instead. */
static int stage_start(trainer *t, int block, dm_error *err)
{
    while (t->next_start < t->n_buckets) {
        int i = t->next_start;
        bucket *b = &t->buckets[i];
        if (!b->copying) break; /* its layers' backward has not run yet */
        int rc, done = 1;
        double tw = now_s();
        if (block) rc = dm_dev_event_sync(&t->dev, b->copied, err);
        else rc = dm_dev_event_query(&t->dev, b->copied, &done, err);
        if (rc) return rc;
        if (!done) break;
        if (block) dm_timeline_span("comm", tw, now_s(), "copy wait bucket %d", i);
        dm_timeline_async("comm", ((uint64_t)t->step << 16) | 0x8000u | (uint64_t)i, b->t_copy, now_s(),
                          "copy to host bucket %d", i);
        b->copying = 0;
        t->next_start++;
        if ((rc = start_bucket(t, b, err))) return rc;
    }
    return DM_OK;
}

static int backward_hook(void *user, int layer, dm_error *err)
{
    trainer *t = user;
    if (t->ci.size == 1) return DM_OK;
    for (int b = 0; b < t->n_buckets; b++)
        if (t->buckets[b].first_layer == layer) {
            /* staged: the copy to host first, the allreduce once it has landed */
            int rc = t->stage ? stage_out(t, &t->buckets[b], err) : start_bucket(t, &t->buckets[b], err);
            if (rc) return rc;
        }
    return t->stage ? stage_start(t, 0, err) : DM_OK;
}

static int wait_buckets(trainer *t, dm_error *err)
{
    if (t->ci.size == 1) return DM_OK;
    double t0 = now_s();
    /* staged: start the buckets whose copies were still on their way */
    int rc = t->stage ? stage_start(t, 1, err) : DM_OK;
    /* Wait in start order; keep waiting the rest after a failure so no
     * handle leaks, but report the first error. */
    for (int b = 0; b < t->n_buckets; b++) {
        bucket *B = &t->buckets[b];
        B->copying = 0;
        if (!B->req) continue;
        dm_error e = {0};
        double tw = now_s();
        int r = t->cvt->wait(t->comm, B->req, &e);
        B->req = NULL;
        dm_timeline_span("comm", tw, now_s(), "allreduce wait bucket %d", b);
        dm_timeline_async("comm", ((uint64_t)t->step << 16) | (uint64_t)b, B->t_start, now_s(), "allreduce bucket %d", b);
        if (r && !rc) rc = comm_fail(t, err, r, e.msg);
        if (t->stage && !rc)
            rc = dm_dev_upload_async(&t->dev, t->m.grads + B->lo, t->h_mirror + B->lo,
                                     (B->hi - B->lo) * sizeof(float), t->copy_stream, err);
    }
    if (t->stage) {
        t->next_start = 0;
        /* the optimizer (compute stream) reads the gradients after the uploads */
        if (!rc) rc = dm_dev_event_record(&t->dev, t->copies, t->copy_stream, err);
        if (!rc) rc = dm_dev_stream_wait(&t->dev, t->dev.stream, t->copies, err);
    }
    t->comm_wait_s += now_s() - t0;
    return rc;
}

/* Set up host staging (see stage_out) when device buffers must pass through
 * host memory. DMNIST_TEST_STAGING=1 with device = cpu runs the same path
 * with memcpy copies that land late (DM_STREAM_LATE_COPIES), so that
 * tests/distributed/staging.sh can compare it bit for bit with the direct
 * path on a machine without a GPU. */
static int setup_staging(trainer *t, dm_error *err)
{
    const char *test = getenv("DMNIST_TEST_STAGING");
    int test_cpu = t->dev.device == DM_DEVICE_CPU && test && atoi(test) > 0;
    t->stage = t->ci.size > 1 && (test_cpu || (t->dev.device != DM_DEVICE_CPU &&
                                                !(t->cvt->devices & DM_DEVICE_BIT(t->dev.device))));
    if (!t->stage) return DM_OK;
    if (test_cpu && rank0(t))
        printf("note: DMNIST_TEST_STAGING: gradients staged through host memory, copies landing late\n");
    t->h_mirror_n = t->m.param_count ? t->m.param_count : 1;
    if (!(t->h_mirror = dm_host_alloc(&t->dev, t->h_mirror_n * sizeof(float), err))) return err->code;
    int rc = dm_dev_stream_new(&t->dev, test_cpu ? DM_STREAM_LATE_COPIES : 0, &t->copy_stream, err);
    if (!rc) rc = dm_dev_event_new(&t->dev, &t->computed, err);
    if (!rc) rc = dm_dev_event_new(&t->dev, &t->copies, err);
    for (int b = 0; b < t->n_buckets && rc == DM_OK; b++) rc = dm_dev_event_new(&t->dev, &t->buckets[b].copied, err);
    return rc;
}

/* ---- data ------------------------------------------------------------------ */

static void make_perm(trainer *t, int64_t epoch)
{
    int64_t n = t->di.count[DM_SPLIT_TRAIN];
    uint64_t s = dm_hash64(t->x->seed, 0xE90C0000ull + (uint64_t)epoch);
    for (int64_t i = 0; i < n; i++) t->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t j = (int64_t)(dm_rng_next(&s) % (uint64_t)(i + 1));
        int64_t tmp = t->perm[i];
        t->perm[i] = t->perm[j];
        t->perm[j] = tmp;
    }
    t->perm_epoch = epoch;
}

static int load_batch(trainer *t, dm_split split, const int64_t *idx, int n, dm_error *err)
{
    size_t item = dm_shape_per_item(t->di.item);
    float *img = t->dev.device == DM_DEVICE_CPU ? t->m.input.data : t->h_images;
    int32_t *lab = t->dev.device == DM_DEVICE_CPU ? t->m.labels : t->h_labels;
    dm_error e = {0};
    int rc = t->dvt->read(t->data, split, idx, n, img, lab, &e);
    if (rc) return dm_fail(err, rc, "data: %s", e.msg);
    for (int i = 0; i < n; i++)
        if (lab[i] < 0 || lab[i] >= t->m.layers[t->m.n_layers - 1].out_shape.c)
            return dm_fail(err, DM_ERR_FORMAT, "data: label %d of example %lld is out of range [0, %d)",
                           lab[i], (long long)idx[i], t->m.layers[t->m.n_layers - 1].out_shape.c);
    if (t->dev.device != DM_DEVICE_CPU) {
        if ((rc = dm_dev_upload(&t->dev, t->m.input.data, img, (size_t)n * item * sizeof(float), err))) return rc;
        if ((rc = dm_dev_upload(&t->dev, t->m.labels, lab, (size_t)n * sizeof(int32_t), err))) return rc;
    }
    return DM_OK;
}

/* device = cuda with the dataset on the GPU: examples d_idx[0..n) (a slice
 * of the device permutation), or first..first+n when d_idx is NULL. */
static int gather_batch(trainer *t, dm_split split, const int64_t *d_idx, int64_t first, int n,
                        dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    return dm_cuda_gather(t->m.input.data, t->m.labels, t->d_images[split], t->d_labels[split], d_idx,
                          first, n, dm_shape_per_item(t->di.item), t->dev.stream, err);
#else
    (void)t, (void)split, (void)d_idx, (void)first, (void)n;
    return dm_fail(err, DM_ERR_INTERNAL, "gather_batch without CUDA");
#endif
}

/* Read every example of both splits once and keep them on the GPU, so
 * a step copies nothing from the host (60,000 MNIST images are 188 MB of
 * float32). Without room, batches keep coming from the host. */
static int upload_dataset(trainer *t, dm_error *err)
{
    const size_t item = dm_shape_per_item(t->di.item);
    const int classes = t->m.layers[t->m.n_layers - 1].out_shape.c;
    const int chunk = 4096;
    int rc = DM_OK;
    for (int split = 0; split < 2 && rc == DM_OK; split++) {
        const int64_t count = t->di.count[split];
        dm_error oom = {0};
        t->d_images[split] = dm_dev_alloc(&t->dev, (size_t)count * item * sizeof(float), &oom);
        t->d_labels[split] = dm_dev_alloc(&t->dev, (size_t)count * sizeof(int32_t), &oom);
        if (!t->d_images[split] || !t->d_labels[split]) {
            if (rank0(t))
                printf("note: the dataset does not fit on the GPU (%s); batches are copied from the host\n",
                       oom.msg);
            for (int s = 0; s < 2; s++) {
                dm_dev_free(&t->dev, t->d_images[s]);
                dm_dev_free(&t->dev, t->d_labels[s]);
                t->d_images[s] = NULL;
                t->d_labels[s] = NULL;
            }
            return DM_OK;
        }
        float *img = malloc((size_t)chunk * item * sizeof(float));
        int32_t *lab = malloc((size_t)chunk * sizeof(int32_t));
        int64_t *idx = malloc((size_t)chunk * sizeof(int64_t));
        if (!img || !lab || !idx) rc = dm_fail(err, DM_ERR_NOMEM, "out of memory");
        for (int64_t i0 = 0; i0 < count && rc == DM_OK; i0 += chunk) {
            const int n = (int)(count - i0 < chunk ? count - i0 : chunk);
            for (int k = 0; k < n; k++) idx[k] = i0 + k;
            dm_error e = {0};
            if ((rc = t->dvt->read(t->data, (dm_split)split, idx, n, img, lab, &e))) {
                rc = dm_fail(err, rc, "data: %s", e.msg);
                break;
            }
            for (int k = 0; k < n && rc == DM_OK; k++)
                if (lab[k] < 0 || lab[k] >= classes)
                    rc = dm_fail(err, DM_ERR_FORMAT, "data: label %d of example %lld is out of range [0, %d)",
                                 lab[k], (long long)idx[k], classes);
            if (rc == DM_OK)
                rc = dm_dev_upload(&t->dev, t->d_images[split] + (size_t)i0 * item, img,
                                   (size_t)n * item * sizeof(float), err);
            if (rc == DM_OK)
                rc = dm_dev_upload(&t->dev, t->d_labels[split] + i0, lab, (size_t)n * sizeof(int32_t), err);
            if (rc == DM_OK) rc = dm_dev_sync(&t->dev, err); /* img and lab are reused */
        }
        free(img);
        free(lab);
        free(idx);
    }
    if (rc == DM_OK &&
        !(t->d_perm = dm_dev_alloc(&t->dev, (size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t), err)))
        rc = err ? err->code : DM_ERR_NOMEM;
    return rc;
}

/* Fill this rank's slice of the next global batch. */
static int next_train_batch(trainer *t, dm_error *err)
{
    int b = t->x->batch_size;
    int64_t global = (int64_t)b * t->ci.size;
    if (t->epoch_pos + global > t->di.count[DM_SPLIT_TRAIN]) { /* drop the ragged tail */
        t->epoch++;
        t->epoch_pos = 0;
    }
    if (t->perm_epoch != t->epoch) {
        make_perm(t, t->epoch);
        int rc;
        if (t->d_perm && (rc = dm_dev_upload(&t->dev, t->d_perm, t->perm,
                                             (size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t), err)))
            return rc;
    }
    const int64_t *slice = t->perm + t->epoch_pos + (int64_t)t->ci.rank * b;
    t->epoch_pos += global;
    if (t->d_images[DM_SPLIT_TRAIN])
        return gather_batch(t, DM_SPLIT_TRAIN, t->d_perm + (slice - t->perm), 0, b, err);
    return load_batch(t, DM_SPLIT_TRAIN, slice, b, err);
}

/* ---- evaluation -------------------------------------------------------------- */

static int evaluate(trainer *t, double *loss, double *acc, dm_error *err)
{
    int64_t total = t->di.count[DM_SPLIT_TEST];
    int64_t lo = total * t->ci.rank / t->ci.size, hi = total * (t->ci.rank + 1) / t->ci.size;
    int eb = t->x->eval_batch_size;
    /* keep the training accumulator for the next log line */
    float saved[2];
    int rc = dm_dev_download(&t->dev, saved, t->m.metrics, sizeof saved, err);
    if (!rc) rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
    double sum_loss = 0, sum_correct = 0;
    for (int64_t i = lo; i < hi && rc == DM_OK; i += eb) {
        int n = (int)(hi - i < eb ? hi - i : eb);
        for (int k = 0; k < n; k++) t->idx[k] = i + k;
        if (t->d_images[DM_SPLIT_TEST]) {
            if ((rc = gather_batch(t, DM_SPLIT_TEST, NULL, i, n, err))) break;
        } else if ((rc = load_batch(t, DM_SPLIT_TEST, t->idx, n, err))) {
            break;
        }
        rc = dm_model_forward(&t->m, n, 0, 0, err);
        if (rc == DM_OK) {
            /* accumulate in double on the host: float sums of 10,000 losses drift */
            float mm[2];
            if ((rc = dm_dev_download(&t->dev, mm, t->m.metrics, sizeof mm, err))) break;
            sum_loss += mm[0];
            sum_correct += mm[1];
            rc = dm_dev_zero(&t->dev, t->m.metrics, 2 * sizeof(float), err);
        }
    }
    float part[3] = {(float)sum_loss, (float)sum_correct, (float)(hi - lo)};
    if (rc == DM_OK) rc = allreduce_host(t, part, 3, DM_REDUCE_SUM, err);
    if (rc == DM_OK) {
        *loss = part[2] > 0 ? part[0] / part[2] : 0;
        *acc = part[2] > 0 ? part[1] / part[2] : 0;
    }
    if (rc == DM_OK) rc = dm_dev_upload(&t->dev, t->m.metrics, saved, sizeof saved, err);
    return rc;
}

/* The bar by default: only where stdout is a terminal, and never under an
 * MPI launcher, which hands each rank a pseudo-terminal even when its own
 * output goes to a log file (the escape codes would land there). */
static int bar_wanted(void)
{
    static const char *launcher_env[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", NULL};
    for (int i = 0; launcher_env[i]; i++)
        if (getenv(launcher_env[i])) return 0;
    return isatty(STDOUT_FILENO);
}

/* ---- progress bar (rank 0 on a terminal, or --progress) ------------------------ */

/* Erase the bar so that a log line takes its place; the next draw puts the
 * bar back under it. */
static void bar_clear(trainer *t)
{
    if (!t->bar_shown) return;
    fputs("\r\033[K", stdout);
    t->bar_shown = 0;
}

/* [#########.....]  45%  step 45/100  loss 0.4213  1234 images/s  ETA 0:00:12
 * Redrawn at most ten times a second; rates count every rank's images. */
static void bar_draw(trainer *t, int64_t total, int64_t step0, double t0, int force)
{
    double now = now_s();
    if (!t->bar || (!force && now - t->bar_drawn < 0.1)) return;
    t->bar_drawn = now;
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    int fill = (int)(WIDTH * t->step / total);
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    int64_t done = t->step - step0;
    double elapsed = now - t0;
    double ips = elapsed > 0 ? (double)done * t->x->batch_size * t->ci.size / elapsed : 0;
    char loss[32] = "", eta[32] = "ETA --:--:--";
    if (t->bar_loss >= 0) snprintf(loss, sizeof loss, "  loss %.4f", t->bar_loss);
    if (done > 0) {
        long s = lround(elapsed / (double)done * (double)(total - t->step));
        snprintf(eta, sizeof eta, "ETA %ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    }
    printf("\r\033[K[%s] %3d%%  step %lld/%lld%s  %.0f images/s  %s", bar, (int)(100 * t->step / total),
           (long long)t->step, (long long)total, loss, ips, eta);
    fflush(stdout);
    t->bar_shown = 1;
}

/* ---- timeline -------------------------------------------------------------------- */

/* Every rank's trace time 0 is rank 0's wall clock now. */
static int open_timeline(trainer *t, dm_error *err)
{
    double origin = dm_timeline_wallclock();
    if (t->ci.size > 1) {
        dm_error e = {0};
        int rc = t->cvt->broadcast(t->comm, &origin, sizeof origin, 0, DM_DEVICE_CPU, NULL, &e);
        if (rc) return comm_fail(t, err, rc, e.msg);
    }
    return dm_timeline_open(t->opts->timeline_path, t->ci.rank, t->ci.size, origin, err);
}

/* Each rank closes its part; once all have (barrier), rank 0 joins them.
 * After a failure the parts are deleted and no barrier is attempted. */
static int finish_timeline(trainer *t, int ok, dm_error *err)
{
    int rc = dm_timeline_close(ok, err);
    if (!ok || rc) return rc;
    if (t->ci.size > 1) {
        dm_error e = {0};
        if ((rc = t->cvt->barrier(t->comm, &e))) return comm_fail(t, err, rc, e.msg);
    }
    if (!rank0(t)) return DM_OK;
    if ((rc = dm_timeline_merge(err))) return rc;
    printf("timeline: %s (%d rank%s; open in https://ui.perfetto.dev or chrome://tracing)\n",
           t->opts->timeline_path, t->ci.size, t->ci.size == 1 ? "" : "s");
    return DM_OK;
}

/* ---- checkpoints ------------------------------------------------------------- */

static int save_checkpoint(trainer *t, dm_error *err)
{
    if (!t->x->checkpoint_dir[0] || !rank0(t)) return DM_OK;
    float *p = malloc(t->m.param_count * sizeof(float) + 4);
    float *o = malloc(t->n_opt * sizeof(float) + 4);
    float *s = malloc(t->m.state_count * sizeof(float) + 4);
    int rc = (!p || !o || !s) ? dm_fail(err, DM_ERR_NOMEM, "out of memory") : DM_OK;
    if (!rc) rc = dm_dev_download(&t->dev, p, t->m.params, t->m.param_count * sizeof(float), err);
    if (!rc && t->n_opt) rc = dm_dev_download(&t->dev, o, t->opt_state, t->n_opt * sizeof(float), err);
    if (!rc && t->m.state_count) rc = dm_dev_download(&t->dev, s, t->m.state, t->m.state_count * sizeof(float), err);
    dm_ckpt_state st = {dm_experiment_hash(t->x), t->step, t->epoch, t->epoch_pos, t->x->seed, t->ci.size,
                        t->m.param_count, t->n_opt, t->m.state_count, 0};
    char path[4096];
    if (!rc) rc = dm_checkpoint_write(t->x->checkpoint_dir, &st, p, o, s, t->x->keep_checkpoints, path,
                                      sizeof path, err);
    if (!rc) {
        bar_clear(t);
        printf("checkpoint: %s (step %lld)\n", path, (long long)t->step);
        fflush(stdout);
    }
    free(p);
    free(o);
    free(s);
    return rc;
}

/* Rank 0 reads the latest checkpoint and broadcasts it; every rank learns
 * whether it worked, so a bad file stops all ranks with rank 0's message. */
static int resume(trainer *t, dm_error *err)
{
    int64_t hdr[4] = {0, 0, 0, 0}; /* ok, step, epoch, epoch_pos */
    float *p = NULL, *o = NULL, *s = NULL;
    int with_state = 0;            /* rank 0: the file holds this model's layer state */
    dm_error e = {0};
    if (rank0(t)) {
        char path[4096];
        dm_ckpt_state st;
        int rc = t->x->checkpoint_dir[0]
                     ? dm_checkpoint_latest(t->x->checkpoint_dir, path, sizeof path, &e)
                     : dm_fail(&e, DM_ERR_INVALID, "%s: --resume needs train.checkpoint_dir (the folder to resume "
                               "from)", t->x->cfg->path);
        if (!rc) rc = dm_checkpoint_read_all(path, &st, &p, &o, &s, &e);
        if (!rc && st.config_hash != dm_experiment_hash(t->x))
            rc = dm_fail(&e, DM_ERR_INVALID, "%s: checkpoint was written for a different model or optimizer "
                         "(config hash %016llx, this config %016llx)", path, (unsigned long long)st.config_hash,
                         (unsigned long long)dm_experiment_hash(t->x));
        /* A version-1 file predates layer state: the layers keep their initial state. */
        int no_state_yet = !rc && st.version == 1 && st.n_state == 0 && t->m.state_count;
        if (!rc && (st.n_params != t->m.param_count || st.n_opt != t->n_opt ||
                    (st.n_state != t->m.state_count && !no_state_yet)))
            rc = dm_fail(&e, DM_ERR_INVALID, "%s: checkpoint holds %llu parameters, %llu optimizer floats and "
                         "%llu layer-state floats, this model needs %zu, %zu and %zu", path,
                         (unsigned long long)st.n_params, (unsigned long long)st.n_opt,
                         (unsigned long long)st.n_state, t->m.param_count, t->n_opt, t->m.state_count);
        if (!rc) rc = dm_checkpoint_check_position(path, &st, t->di.count[DM_SPLIT_TRAIN], &e);
        if (!rc && st.seed != t->x->seed)
            rc = dm_fail(&e, DM_ERR_INVALID, "%s: checkpoint used seed %llu, this config seed %llu", path,
                         (unsigned long long)st.seed, (unsigned long long)t->x->seed);
        if (!rc) {
            hdr[0] = 1; hdr[1] = st.step; hdr[2] = st.epoch; hdr[3] = st.epoch_pos;
            printf("resuming from %s (step %lld, written by %d rank%s)\n", path, (long long)st.step,
                   st.world_size, st.world_size == 1 ? "" : "s");
            fflush(stdout); /* said when it happens, not at the next log */
            if (no_state_yet)
                printf("note: %s (format 1) holds no layer state: the layers' running state starts from its "
                       "initial values\n", path);
            with_state = !no_state_yet && t->m.state_count;
        }
    }
    int rc = DM_OK;
    if (t->ci.size > 1) {
        dm_error be = {0};
        rc = broadcast_host(t, hdr, sizeof hdr, &be);
        if (rc) { free(p); free(o); free(s); return comm_fail(t, err, rc, be.msg); }
    }
    if (!hdr[0]) {
        free(p); free(o); free(s);
        if (rank0(t)) return dm_fail(err, e.code ? e.code : DM_ERR_IO, "%s", e.msg);
        exit_as(t, DM_EXIT_PEER);
        return dm_fail(err, DM_ERR_IO, "rank 0 could not read the checkpoint (see its message)");
    }
    if (rank0(t)) {
        rc = dm_dev_upload(&t->dev, t->m.params, p, t->m.param_count * sizeof(float), err);
        if (!rc && t->n_opt) rc = dm_dev_upload(&t->dev, t->opt_state, o, t->n_opt * sizeof(float), err);
        if (!rc && with_state) rc = dm_dev_upload(&t->dev, t->m.state, s, t->m.state_count * sizeof(float), err);
    }
    free(p);
    free(o);
    free(s);
    t->step = hdr[1];
    t->epoch = hdr[2];
    t->epoch_pos = hdr[3];
    return rc;
}

/* ---- parameter-sync check (train.sync_check_every) -------------------------- */

/* FNV-1a, 64-bit, over the bytes of buf: cheap, and any changed bit changes
 * the hash. tests/common/ckpt_tool.c (`hash`) computes the same over a checkpoint. */
static uint64_t fnv1a64(const void *buf, size_t bytes)
{
    const unsigned char *p = buf;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* FNV-1a of n floats of a device buffer (downloaded first off the CPU). */
static int hash_dev(trainer *t, const float *buf, size_t n, uint64_t *out, dm_error *err)
{
    size_t bytes = n * sizeof(float);
    if (t->dev.device == DM_DEVICE_CPU) {
        *out = fnv1a64(buf, bytes);
        return DM_OK;
    }
    float *h = malloc(bytes ? bytes : 1);
    if (!h) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    int rc = dm_dev_download(&t->dev, h, buf, bytes, err);
    *out = fnv1a64(h, bytes);
    free(h);
    return rc;
}

/* Every rank hashes its parameters (and its layer state, when the model has
 * any) and the hashes are gathered with one allreduce: rank r writes each
 * hash as four 16-bit pieces (exact in float) into its own slots of a
 * zeroed vector [4 x K x N], so the sum holds every rank's hashes. All ranks
 * then compare with rank 0's and, on a difference, stop together with the
 * same message: a lone failing rank would leave the others waiting for it
 * until the timeout. */
static int sync_check(trainer *t, dm_error *err)
{
    int N = t->ci.size;
    const int K = t->m.state_count ? 2 : 1; /* hash 0: parameters; hash 1: layer state */
    uint64_t mine[2] = {0, 0};
    int rc = hash_dev(t, t->m.params, t->m.param_count, &mine[0], err);
    if (!rc && K > 1) rc = hash_dev(t, t->m.state, t->m.state_count, &mine[1], err);
    if (rc) return rc;
    float *v = calloc((size_t)N * K * 4, sizeof(float));
    uint64_t *hash = calloc((size_t)N * K, sizeof(uint64_t));
    if (!v || !hash) { free(v); free(hash); return dm_fail(err, DM_ERR_NOMEM, "out of memory"); }
    for (int j = 0; j < K; j++)
        for (int k = 0; k < 4; k++)
            v[4 * (K * t->ci.rank + j) + k] = (float)((mine[j] >> (16 * k)) & 0xFFFF);
    rc = N > 1 ? allreduce_host(t, v, (size_t)N * K * 4, DM_REDUCE_SUM, err) : DM_OK;
    for (int r = 0; r < N && rc == DM_OK; r++)
        for (int j = 0; j < K; j++)
            for (int k = 0; k < 4; k++) hash[K * r + j] |= (uint64_t)v[4 * (K * r + j) + k] << (16 * k);
    for (int j = 0; j < K && rc == DM_OK; j++) {
        char bad[256] = "";
        int n_bad = 0;
        for (int r = 0; r < N; r++) {
            if (hash[K * r + j] != hash[j] && n_bad++ < 4) {
                size_t len = strlen(bad);
                snprintf(bad + len, sizeof bad - len, "%srank %d has %016llx", n_bad > 1 ? ", " : "", r,
                         (unsigned long long)hash[K * r + j]);
            }
        }
        if (n_bad)
            rc = dm_fail(err, DM_ERR_INTERNAL, "step %lld: %s between ranks (train.sync_check_every): rank 0 "
                         "has hash %016llx, %s%s", (long long)t->step, j ? "layer state differs" : "parameters differ",
                         (unsigned long long)hash[j], bad, n_bad > 4 ? ", ..." : "");
    }
    if (rc == DM_OK && rank0(t)) {
        char state[64] = "", state_json[64] = "";
        if (K > 1) {
            snprintf(state, sizeof state, ", layer state hash %016llx", (unsigned long long)hash[1]);
            snprintf(state_json, sizeof state_json, ",\"state_hash\":\"%016llx\"", (unsigned long long)hash[1]);
        }
        bar_clear(t);
        printf("sync-check step %lld: parameter hash %016llx on all %d rank%s%s\n", (long long)t->step,
               (unsigned long long)hash[0], N, N == 1 ? "" : "s", state);
        if (t->metrics)
            fprintf(t->metrics, "{\"event\":\"sync_check\",\"step\":%lld,\"hash\":\"%016llx\",\"ranks\":%d%s}\n",
                    (long long)t->step, (unsigned long long)hash[0], N, state_json);
    }
    free(v);
    free(hash);
    return rc;
}

/* ---- set-up and tear-down ------------------------------------------------------ */

static int env_int(const char *const *names, int dflt)
{
    for (int i = 0; names[i]; i++) {
        const char *v = getenv(names[i]);
        if (v && v[0]) return atoi(v);
    }
    return dflt;
}

static int setup(trainer *t, dm_error *err)
{
    dm_experiment *x = t->x;
    int rc;
    dm_error e = {0};
    /* comm first: it decides rank, size and the local rank (GPU choice) */
    static const char *rank_env[] = {"DMNIST_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", NULL};
    static const char *size_env[] = {"DMNIST_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", NULL};
    static const char *local_env[] = {"DMNIST_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", NULL};
    t->cvt = x->comm.lc->component->vtable;
    dm_comm_config cc = {sizeof cc, env_int(rank_env, -1), env_int(size_env, -1), env_int(local_env, -1),
                         getenv("DMNIST_RENDEZVOUS"), x->timeout_s, x->device, NULL, NULL};
    /* the job's identity: its rendezvous names carry it, and the ranks compare it below */
    char job_id[128], fp_hex[17];
    dm_job_id(job_id, sizeof job_id);
    snprintf(fp_hex, sizeof fp_hex, "%016llx", (unsigned long long)dm_job_fingerprint(x, cc.size, job_id));
    cc.job_id = job_id;
    cc.fingerprint = dm_job_check_skipped() ? "" : fp_hex;
    t->ci.struct_size = sizeof t->ci;
    if ((rc = DM_GUARDED(x->comm.lc, "init",
                          t->cvt->init(dm_param_set_params(x->comm.params), &cc, &t->comm, &t->ci, &e)))) {
        t->comm = NULL;
        return comm_fail(t, err, rc, e.msg);
    }
    if (t->ci.size < 1 || t->ci.rank < 0 || t->ci.rank >= t->ci.size)
        return dm_fail(err, DM_ERR_COMM, "%s: bad rank %d of %d", x->backend, t->ci.rank, t->ci.size);
    /* the same job everywhere, before the first collective whose size depends on the config */
    if ((rc = dm_job_agree(t->cvt, t->comm, t->ci.rank, t->ci.size, dm_job_fingerprint(x, t->ci.size, job_id), err)))
        return rc;

    /* Only rank 0 writes checkpoints: find a folder it cannot write now, not
     * after the training it was meant to protect. */
    if (t->ci.rank == 0 && x->checkpoint_dir[0] && (rc = dm_checkpoint_dir_check(x->checkpoint_dir, err)))
        return rc;
    if ((rc = dm_dev_open(&t->dev, x->device, t->ci.local_rank, err))) return rc;
    t->dev_open = 1;

    t->dvt = x->data.lc->component->vtable;
    dm_dataset_config dc = {sizeof dc, x->seed, x->cfg->dir};
    t->di.struct_size = sizeof t->di;
    if ((rc = DM_GUARDED(x->data.lc, "open",
                          t->dvt->open(dm_param_set_params(x->data.params), &dc, &t->data, &t->di, &e)))) {
        t->data = NULL;
        return dm_fail(err, rc, "%s", e.msg);
    }
    if (t->di.count[DM_SPLIT_TRAIN] < (int64_t)x->batch_size * t->ci.size)
        return dm_fail(err, DM_ERR_INVALID, "%s: data: %lld training examples are fewer than one global batch "
                       "(%d ranks x %d)", x->cfg->path, (long long)t->di.count[DM_SPLIT_TRAIN], t->ci.size,
                       x->batch_size);

    int max_batch = x->batch_size > x->eval_batch_size ? x->batch_size : x->eval_batch_size;
    if ((rc = dm_model_build(&t->m, x, &t->dev, t->di.item, max_batch, x->threads, err))) {
        if (rc != DM_ERR_NOMEM && rc != DM_ERR_DEVICE) exit_as(t, DM_EXIT_CONFIG);
        return rc;
    }
    t->model_built = 1;

    t->ovt = x->opt.lc->component->vtable;
    if (!(t->ovt->devices & DM_DEVICE_BIT(x->device)) && exit_as(t, DM_EXIT_CONFIG))
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s: optimizer: type '%s' has no %s implementation", x->cfg->path,
                       x->opt.lc->component->type_name, dm_device_name(x->device));
    dm_optimizer_config oc = {sizeof oc, x->device, t->m.param_count, x->threads, t->dev.stream};
    t->oi.struct_size = sizeof t->oi;
    if ((rc = DM_GUARDED(x->opt.lc, "create",
                          t->ovt->create(dm_param_set_params(x->opt.params), &oc, &t->opt, &t->oi, &e)))) {
        t->opt = NULL;
        return dm_fail(err, rc, "optimizer: %s", e.msg);
    }
    t->n_opt = t->oi.state_floats_per_param * t->m.param_count;
    if (t->n_opt && !(t->opt_state = dm_dev_alloc(&t->dev, t->n_opt * sizeof(float), err))) return err->code;
    if ((rc = t->ovt->bind(t->opt, t->opt_state, &e))) return dm_fail(err, rc, "optimizer: %s", e.msg);

    size_t item = dm_shape_per_item(t->di.item);
    t->h_images = malloc((size_t)max_batch * item * sizeof(float));
    t->h_labels = malloc((size_t)max_batch * sizeof(int32_t));
    t->idx = malloc((size_t)max_batch * sizeof(int64_t));
    t->perm = malloc((size_t)t->di.count[DM_SPLIT_TRAIN] * sizeof(int64_t));
    if (!t->h_images || !t->h_labels || !t->idx || !t->perm) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    t->perm_epoch = -1;
    if (x->device == DM_DEVICE_CUDA && (rc = upload_dataset(t, err))) return rc;
    if ((rc = build_buckets(t, err))) return rc;
    return setup_staging(t, err);
}

static void teardown(trainer *t)
{
    /* first: its queued copies read and write the buffers freed below */
    if (t->copy_stream) dm_dev_stream_free(&t->dev, t->copy_stream);
    if (t->opt) t->ovt->destroy(t->opt);
    if (t->opt_state) dm_dev_free(&t->dev, t->opt_state);
    if (t->model_built) dm_model_free(&t->m);
    if (t->data) t->dvt->close(t->data);
    if (t->comm) {
        dm_error e = {0};
        t->cvt->finalize(t->comm, &e);
    }
    for (int s = 0; s < 2; s++) {
        dm_dev_free(&t->dev, t->d_images[s]);
        dm_dev_free(&t->dev, t->d_labels[s]);
    }
    dm_dev_free(&t->dev, t->d_perm);
    dm_dev_free(&t->dev, t->d_scratch);
    dm_dev_free(&t->dev, t->state_backup);
    /* after finalize: a backend may still hold an unwaited bucket of the mirror */
    dm_dev_event_free(&t->dev, t->computed);
    dm_dev_event_free(&t->dev, t->copies);
    for (int b = 0; t->buckets && b < t->n_buckets; b++) dm_dev_event_free(&t->dev, t->buckets[b].copied);
    dm_host_free(&t->dev, t->h_mirror);
    if (t->dev_open) dm_dev_close(&t->dev);
    free(t->h_images);
    free(t->h_labels);
    free(t->idx);
    free(t->perm);
    free(t->buckets);
    if (t->metrics) fclose(t->metrics);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* ---- the loop ------------------------------------------------------------------- */

int dm_train_run(dm_experiment *x, const dm_train_opts *opts, dm_error *err)
{
    trainer t = {0};
    t.x = x;
    t.opts = opts;
    double t_start = now_s();
    int rc = setup(&t, err);
    if (rc) { teardown(&t); return rc; }
    int N = t.ci.size;

    int64_t per_epoch = t.di.count[DM_SPLIT_TRAIN] / ((int64_t)x->batch_size * N);
    int64_t total_steps = x->epochs > 0 ? (int64_t)ceil(x->epochs * (double)per_epoch) : x->total_batches / N;
    if (total_steps < 1) {
        teardown(&t);
        return dm_fail(err, DM_ERR_INVALID, "%s: train: total_batches = %lld is fewer than the %d ranks",
                       x->cfg->path, (long long)x->total_batches, N);
    }

    if (rank0(&t)) {
        printf("dmnist %s: %s, %d rank%s (%s), device %s, %lld steps of %d x %d images, %zu parameters\n",
               DMNIST_VERSION, x->name, N, N == 1 ? "" : "s", x->backend, dm_device_name(x->device),
               (long long)total_steps, N, x->batch_size, t.m.param_count);
        fflush(stdout);
    }
    /* Identical start everywhere: rank 0 draws, everyone receives. */
    if (rank0(&t)) rc = dm_model_init_params(&t.m, x->seed, err);
    if (!rc) rc = dm_dev_sync(&t.dev, err);
    if (!rc && opts && opts->resume) rc = resume(&t, err);
    if (!rc) rc = broadcast_dev(&t, t.m.params, t.m.param_count * sizeof(float), err);
    if (!rc && t.n_opt) rc = broadcast_dev(&t, t.opt_state, t.n_opt * sizeof(float), err);
    if (!rc && t.m.state_count) rc = broadcast_dev(&t, t.m.state, t.m.state_count * sizeof(float), err);
    if (!rc) rc = dm_dev_zero(&t.dev, t.m.metrics, 2 * sizeof(float), err);
    if (rc) { teardown(&t); return rc; }
    /* Opened only once the run can start: a refused checkpoint leaves no empty file. */
    if (opts && opts->metrics_path && rank0(&t)) {
        if (!(t.metrics = fopen(opts->metrics_path, "w"))) {
            rc = dm_fail(err, DM_ERR_IO, "%s: cannot open for writing: %s", opts->metrics_path, strerror(errno));
            teardown(&t);
            return rc;
        }
    }

    if (opts && opts->timeline_path && (rc = open_timeline(&t, err))) { teardown(&t); return rc; }
    t.bar = rank0(&t) && opts && (opts->progress > 0 || (opts->progress < 0 && bar_wanted()));
    t.bar_loss = -1;

    double lr_scale = x->scale_lr ? (double)N : 1.0;
    double t_log = now_s(), t_train0 = t_log;
    int64_t images_since_log = 0, step0 = t.step;
    double train_compute_s = 0;
    uint64_t rank_seed = dm_hash64(x->seed, 0xD0D0ull + (uint64_t)t.ci.rank);

    t.checked_step = t.step; /* a resumed run starts checking from its step */
    t.params_checked_step = t.step;
    t.checked_loss_sum = 0;
    while (t.step < total_steps && rc == DM_OK) {
        double ta = now_s();
        dm_timeline_set_step(t.step + 1);
        if ((rc = next_train_batch(&t, err))) break;
        double tb = now_s();
        uint64_t step_seed = dm_hash64(rank_seed, (uint64_t)t.step);
        /* skip must undo what the bad step's forward did to the layer state */
        if (x->nan_skip && t.m.state_count) {
            if (!t.state_backup && !(t.state_backup = dm_dev_alloc(&t.dev, t.m.state_count * sizeof(float), err))) {
                rc = err ? err->code : DM_ERR_NOMEM;
                break;
            }
            if ((rc = dm_dev_copy(&t.dev, t.state_backup, t.m.state, t.m.state_count * sizeof(float), err))) break;
        }
        if ((rc = dm_model_forward(&t.m, x->batch_size, 1, step_seed, err))) break;
        double tf = now_s();
        if ((rc = dm_model_backward(&t.m, x->batch_size, step_seed, backward_hook, &t, err))) break;
        double tc = now_s();
        if ((rc = wait_buckets(&t, err))) break;
        /* Layer state (running statistics) was updated from each rank's own
         * batch: rank 0's wins, as with PyTorch DDP's buffers, so every rank
         * evaluates and checkpoints the same model. Before the loss check, so
         * that a skipped step leaves the ranks identical too. */
        if (N > 1 && t.m.state_count) {
            double ts = now_s();
            if ((rc = broadcast_dev(&t, t.m.state, t.m.state_count * sizeof(float), err))) break;
            dm_timeline_span("comm", ts, now_s(), "layer state broadcast");
            t.comm_wait_s += now_s() - ts;
        }
        double td = now_s();
        /* NaN/Inf check, before the update. CPU: every step (the loss is on
         * the host). CUDA: every step with nan_policy = skip (one host sync
         * per step), else before each checkpoint and at each log, which sync
         * anyway: a checkpoint never holds what a bad step did. With skip the
         * gradients are checked too (check_params covers them otherwise).
         * Ranks decide together: a skip or stop on one rank alone would leave
         * the others applying its NaN gradients or waiting for it. */
        int ckpt_due = x->checkpoint_every > 0 && (t.step + 1) % x->checkpoint_every == 0;
        if (x->device == DM_DEVICE_CPU || x->nan_skip || ckpt_due) {
            float sum;
            if ((rc = loss_sum(&t, &sum, err))) break;
            float window_loss = sum - t.checked_loss_sum; /* steps checked_step+1 .. step+1 */
            /* skip: the gradients too (already reduced, so the same on every
             * rank): a step whose loss is finite can still carry a NaN */
            int grads_ok = 1;
            if (x->nan_skip && (rc = all_finite(&t, t.m.grads, t.m.param_count, &grads_ok, err))) break;
            float bad_ranks = isfinite(window_loss) && grads_ok ? 0.0f : 1.0f;
            if (N > 1 && (rc = allreduce_host(&t, &bad_ranks, 1, DM_REDUCE_SUM, err))) break;
            if (bad_ranks > 0) {
                char where[128], steps[64];
                if (!isfinite(window_loss))
                    snprintf(where, sizeof where, "is %f on rank %d", (double)window_loss, t.ci.rank);
                else if (!grads_ok)
                    snprintf(where, sizeof where, "is finite but the gradients are not (NaN or Inf)");
                else
                    snprintf(where, sizeof where, "is not finite on %d other rank%s", (int)bad_ranks,
                             bad_ranks > 1 ? "s" : "");
                /* more than one step only on CUDA without skip */
                step_range(steps, sizeof steps, t.checked_step + 1, t.step + 1);
                if (x->nan_skip) {
                    if (rank0(&t)) printf("%s: loss %s, step skipped (nan_policy = skip)\n", steps, where);
                    if ((rc = set_loss_sum(&t, t.checked_loss_sum, err))) break;
                    if (t.state_backup && (rc = dm_dev_copy(&t.dev, t.m.state, t.state_backup,
                                                            t.m.state_count * sizeof(float), err)))
                        break;
                    t.step++;
                    t.checked_step = t.step;
                    continue;
                }
                rc = dm_fail(err, DM_ERR_INVALID, "%s: loss %s: training diverged "
                             "(lower optimizer.lr, or set train.nan_policy = skip)", steps, where);
                break;
            }
            t.checked_loss_sum = sum;
            t.checked_step = t.step + 1;
        }
        double tn = now_s(); /* after the loss check, before the update */
        double f = dm_lr_factor(&x->schedule, t.step, total_steps);
        dm_opt_step_ctx sc = {sizeof sc, t.step + 1, (float)(x->lr * lr_scale * f), t.dev.stream};
        dm_error e = {0};
        if ((rc = t.ovt->step(t.opt, &sc, t.m.params, t.m.grads, t.m.param_count, &e))) {
            rc = dm_fail(err, rc, "optimizer: step %lld: %s", (long long)t.step + 1, e.msg);
            break;
        }
        double te = now_s();
        dm_timeline_span("step", ta, te, "step %lld", (long long)t.step + 1);
        dm_timeline_span("data", ta, tb, "data");
        dm_timeline_span("forward", tb, tf, "forward");
        dm_timeline_span("backward", tf, tc, "backward");
        if (N > 1) dm_timeline_span("comm", tc, td, "allreduce wait");
        if (N > 1 && x->device == DM_DEVICE_CPU) dm_timeline_span("comm", td, tn, "loss check (allreduce)");
        dm_timeline_span("optimizer", tn, te, "optimizer");
        t.step++;
        t.t_data_s += tb - ta;
        t.t_fwd_bwd_s += tc - tb;
        t.t_opt_s += te - td;
        images_since_log += (int64_t)x->batch_size * N;
        if (x->sync_check_every > 0 && t.step % x->sync_check_every == 0 && (rc = sync_check(&t, err))) break;

        int log_now = x->log_every > 0 && (t.step % x->log_every == 0 || t.step == total_steps);
        if (log_now) {
            float mm[2];
            if ((rc = dm_dev_download(&t.dev, mm, t.m.metrics, sizeof mm, err))) break;
            if ((rc = dm_dev_zero(&t.dev, t.m.metrics, 2 * sizeof(float), err))) break;
            t.checked_loss_sum = 0;
            t.checked_step = t.step; /* the check below covers the steps since the last one */
            double elapsed = now_s() - t_log;
            /* loss sum, correct, examples, seconds, comm wait, compute: summed over ranks */
            float v[6] = {mm[0], mm[1], 0, (float)elapsed, (float)t.comm_wait_s, (float)t.t_fwd_bwd_s};
            int64_t steps_in = x->log_every > 0 ? (t.step % x->log_every ? t.step % x->log_every : x->log_every) : 1;
            v[2] = (float)(steps_in * x->batch_size);
            if ((rc = allreduce_host(&t, v, 6, DM_REDUCE_SUM, err))) break;
            double loss = v[0] / v[2], acc = v[1] / v[2];
            double secs = v[3] / N, ips = images_since_log / (secs > 0 ? secs : 1e-9);
            double comm = v[4] / N, comp = v[5] / N;
            if (!isfinite(loss) && !x->nan_skip) {
                rc = dm_fail(err, DM_ERR_INVALID, "step %lld: mean loss over the last %lld steps is %f: training "
                             "diverged (lower optimizer.lr)", (long long)t.step, (long long)steps_in, loss);
                break;
            }
            if ((rc = check_params(&t, err))) break;
            t.bar_loss = loss;
            if (rank0(&t)) {
                bar_clear(&t);
                printf("step %6lld/%lld  epoch %lld  loss %.4f  acc %.4f  images/s %.1f  comm-wait %.1f%%  lr %.5g\n",
                       (long long)t.step, (long long)total_steps, (long long)t.epoch, loss, acc, ips,
                       secs > 0 ? 100.0 * comm / secs : 0.0, sc.lr);
                fflush(stdout);
                if (t.metrics) {
                    fprintf(t.metrics, "{\"event\":\"step\",\"step\":%lld,\"epoch\":%lld,\"loss\":%.6g,\"accuracy\":%.6g,"
                            "\"images_per_s\":%.6g,\"lr\":%.6g,\"time_s\":%.6g,\"comm_wait_s\":%.6g,\"compute_s\":%.6g}\n",
                            (long long)t.step, (long long)t.epoch, loss, acc, ips, (double)sc.lr, now_s() - t_start,
                            comm, comp);
                    fflush(t.metrics);
                }
            }
            train_compute_s += now_s() - t_log;
            images_since_log = 0;
            t.comm_wait_s = 0;
            t.t_fwd_bwd_s = 0;
            t_log = now_s();
        }
        if (x->eval_every > 0 && t.step % x->eval_every == 0 && t.step < total_steps) {
            double tl, ta2;
            double tev = now_s();
            if ((rc = evaluate(&t, &tl, &ta2, err))) break;
            dm_timeline_span("eval", tev, now_s(), "eval");
            if (rank0(&t)) {
                bar_clear(&t);
                printf("eval at step %lld: test loss %.4f  test accuracy %.4f\n", (long long)t.step, tl, ta2);
                if (t.metrics)
                    fprintf(t.metrics, "{\"event\":\"eval\",\"step\":%lld,\"test_loss\":%.6g,\"test_accuracy\":%.6g,"
                            "\"time_s\":%.6g}\n", (long long)t.step, tl, ta2, now_s() - t_start);
            }
            t_log += now_s() - tev; /* evaluation time is not training time */
        }
        if (x->checkpoint_every > 0 && t.step % x->checkpoint_every == 0 && t.step < total_steps)
            if ((rc = check_params(&t, err)) || (rc = save_checkpoint(&t, err))) break;
        bar_draw(&t, total_steps, step0, t_train0, t.step == total_steps);
    }
    if (t.bar_shown) putchar('\n'); /* keep the finished bar */
    /* the GPU may still be working through queued steps */
    if (rc == DM_OK && x->device != DM_DEVICE_CPU) rc = dm_dev_sync(&t.dev, err);
    double train_s = now_s() - t_train0;
    dm_timeline_set_step(-1);
    double tev = now_s();
    if (rc == DM_OK) rc = check_params(&t, err);
    if (rc == DM_OK) rc = save_checkpoint(&t, err);
    double test_loss = 0, test_acc = 0;
    if (rc == DM_OK && rank0(&t)) {
        /* the final evaluation can take a while (seconds per 10,000 images on a CPU): say so */
        printf("evaluating on %lld test images\n", (long long)t.di.count[DM_SPLIT_TEST]);
        fflush(stdout);
    }
    if (rc == DM_OK) rc = evaluate(&t, &test_loss, &test_acc, err);
    dm_timeline_span("eval", tev, now_s(), "final checkpoint and eval");
    if (rc == DM_OK && rank0(&t)) {
        int64_t steps_run = t.step - step0;
        double ips = train_s > 0 ? (double)steps_run * x->batch_size * N / train_s : 0;
        double wall = now_s() - t_start;
        printf("test loss %.4f  test accuracy %.4f (%.2f%%)  steps %lld  images/s %.1f  wall %.2f s  peak RSS %.0f MB\n",
               test_loss, test_acc, 100 * test_acc, (long long)t.step, ips, wall, peak_rss_mb());
        if (t.metrics)
            fprintf(t.metrics, "{\"event\":\"final\",\"test_loss\":%.6g,\"test_accuracy\":%.6g,\"steps\":%lld,"
                    "\"images_per_s\":%.6g,\"wall_s\":%.6g,\"train_s\":%.6g,\"world_size\":%d,\"backend\":\"%s\","
                    "\"device\":\"%s\",\"batch_size\":%d,\"peak_rss_mb\":%.1f}\n",
                    test_loss, test_acc, (long long)t.step, ips, wall, train_s, N, x->backend,
                    dm_device_name(x->device), x->batch_size, peak_rss_mb());
    }
    (void)train_compute_s;
    if (opts && opts->timeline_path) {
        int trc = finish_timeline(&t, rc == DM_OK, err);
        if (rc == DM_OK) rc = trc;
    }
    teardown(&t);
    return rc;
}
