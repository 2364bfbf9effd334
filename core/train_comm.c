/* The trainer's communication: small host vectors and device buffers
 * through the backend (staged through a device scratch buffer for a
 * device-only backend, or through pinned host memory for a host-only one),
 * and the gradient buckets, each allreduced as soon as the backward pass
 * has produced it. */
#define _GNU_SOURCE
#include "trainer.h"

#include <stdlib.h>

int tr_comm_fail(const trainer *t, dm_error *err, int rc, const char *msg)
{
    size_t n = strlen(t->x->backend);
    if (strncmp(msg, t->x->backend, n) == 0 && msg[n] == ':') return dm_fail(err, rc, "%s", msg);
    return dm_fail(err, rc, "%s: %s", t->x->backend, msg);
}

/* ---- communication helpers ---------------------------------------------- */

/* A device buffer of at least `bytes` for staging host vectors through a
 * backend that takes device buffers only (nccl). */
float *tr_scratch(trainer *t, size_t bytes, dm_error *err)
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

int tr_allreduce_host(trainer *t, float *buf, size_t n, dm_reduce_op op, dm_error *err)
{
    /* Small host-side vectors (metrics): the backend takes host buffers,
     * or (nccl) gets them through a device scratch buffer. */
    dm_error e = {0};
    int rc;
    if (host_via_device(t)) {
        float *d = tr_scratch(t, n * sizeof(float), err);
        if (!d) return err ? err->code : DM_ERR_NOMEM;
        if ((rc = dm_dev_upload(&t->dev, d, buf, n * sizeof(float), err))) return rc;
        rc = t->cvt->allreduce(t->comm, d, n, op, t->dev.device, t->dev.stream, &e);
        if (!rc) return dm_dev_download(&t->dev, buf, d, n * sizeof(float), err);
    } else {
        rc = t->cvt->allreduce(t->comm, buf, n, op, DM_DEVICE_CPU, NULL, &e);
    }
    if (rc) return tr_comm_fail(t, err, rc, e.msg);
    return DM_OK;
}

/* Broadcast a small host buffer from rank 0 (staged like allreduce_host). */
int tr_broadcast_host(trainer *t, void *buf, size_t bytes, dm_error *e)
{
    if (!host_via_device(t)) return t->cvt->broadcast(t->comm, buf, bytes, 0, DM_DEVICE_CPU, NULL, e);
    float *d = tr_scratch(t, bytes, e);
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
int tr_broadcast_dev(trainer *t, void *buf, size_t bytes, dm_error *err)
{
    if (t->ci.size == 1) return DM_OK;
    dm_error e = {0};
    int rc;
    if (!t->stage) {
        rc = t->cvt->broadcast(t->comm, buf, bytes, 0, t->dev.device, t->dev.stream, &e);
        if (rc) return tr_comm_fail(t, err, rc, e.msg);
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
            return tr_comm_fail(t, err, rc, e.msg);
        rc = dm_dev_upload_async(&t->dev, d, t->h_mirror, n, t->copy_stream, err);
        if (!rc) rc = dm_dev_event_record(&t->dev, t->copies, t->copy_stream, err);
    }
    /* the compute stream's next reader of buf comes after the uploads */
    if (!rc) rc = dm_dev_stream_wait(&t->dev, t->dev.stream, t->copies, err);
    return rc;
}

/* ---- gradient buckets ----------------------------------------------------- */

int tr_build_buckets(trainer *t, dm_error *err)
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
    if (rc) return tr_comm_fail(t, err, rc, e.msg);
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
    if (!rc)
        rc = dm_dev_download_async(&t->dev, t->h_mirror + b->lo, t->m.grads + b->lo, (b->hi - b->lo) * sizeof(float),
                                   t->copy_stream, err);
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

int tr_backward_hook(void *user, int layer, dm_error *err)
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

int tr_wait_buckets(trainer *t, dm_error *err)
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
        dm_timeline_async("comm", ((uint64_t)t->step << 16) | (uint64_t)b, B->t_start, now_s(), "allreduce bucket %d",
                          b);
        if (r && !rc) rc = tr_comm_fail(t, err, r, e.msg);
        if (t->stage && !rc)
            rc = dm_dev_upload_async(&t->dev, t->m.grads + B->lo, t->h_mirror + B->lo, (B->hi - B->lo) * sizeof(float),
                                     t->copy_stream, err);
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

/* Layer state (running statistics) was updated from each rank's own batch:
 * rank 0's wins, as with PyTorch DDP's buffers, so every rank evaluates and
 * checkpoints the same model. Before the loss check, so that a skipped step
 * leaves the ranks identical too. */
int tr_sync_layer_state(trainer *t, dm_error *err)
{
    if (t->ci.size == 1 || !t->m.state_count) return DM_OK;
    double ts = now_s();
    int rc = tr_broadcast_dev(t, t->m.state, t->m.state_count * sizeof(float), err);
    if (rc) return rc;
    dm_timeline_span("comm", ts, now_s(), "layer state broadcast");
    t->comm_wait_s += now_s() - ts;
    return DM_OK;
}

/* Set up host staging (see stage_out) when device buffers must pass through
 * host memory. DMNIST_TEST_STAGING=1 with device = cpu runs the same path
 * with memcpy copies that land late (DM_STREAM_LATE_COPIES), so that
 * tests/distributed/staging.sh can compare it bit for bit with the direct
 * path on a machine without a GPU. */
int tr_setup_staging(trainer *t, dm_error *err)
{
    const char *test = getenv("DMNIST_TEST_STAGING");
    int test_cpu = t->dev.device == DM_DEVICE_CPU && test && atoi(test) > 0;
    t->stage = t->ci.size > 1 &&
        (test_cpu || (t->dev.device != DM_DEVICE_CPU && !(t->cvt->devices & DM_DEVICE_BIT(t->dev.device))));
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
