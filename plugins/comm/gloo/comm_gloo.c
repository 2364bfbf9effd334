/* Gloo communication backend (TCP; rendezvous through a shared directory or
 * Redis). The Gloo calls live in gloo_shim.cc behind a C interface; this
 * file holds the vtable, the parameters and the worker thread.
 *
 * Gloo collectives on one context must not run at the same time, and all
 * ranks must run them in the same order. So every collective, blocking or
 * not, becomes a job in a FIFO queue that one worker thread per
 * communicator runs in order. allreduce_start() queues a job and returns;
 * wait() blocks on that job's completion, at most timeout_s. Blocking calls
 * are start + wait.
 *
 * After a failure or a timed-out wait the communicator is broken: queued
 * jobs fail at once with the first message, and later calls too. A job whose
 * waiter gave up is freed by the worker when Gloo lets go of it (its own
 * timeout); until finalize() returns its buffer may still be written.
 *
 * Gloo writes to its sockets with writev(), which raises SIGPIPE when a peer
 * has gone, and SIGPIPE's default action ends the process. So every thread
 * that talks to Gloo runs with SIGPIPE blocked: the worker, and Gloo's own
 * event-loop thread, which inherits the mask because init() blocks SIGPIPE
 * while Gloo creates it. A lost peer then is an EPIPE error, not a crash,
 * and the host's signal handling is left as it was.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "dmnist/comm.h"
#include "dmnist/plugin.h"
#include "gloo_shim.h"

#define GLOO_DEFAULT_TIMEOUT_S 30.0

typedef enum gloo_job_kind { JOB_ALLREDUCE, JOB_BROADCAST, JOB_BARRIER } gloo_job_kind;

/* A queued collective; for allreduce_start() it is the caller's handle. */
struct dm_comm_request {
    gloo_job_kind kind;
    void *buf;
    size_t n; /* floats (allreduce) or bytes (broadcast) */
    dm_reduce_op op;
    int root;
    int done;      /* set by the worker, under mu */
    int abandoned; /* the waiter gave up: the worker frees the job */
    int status;
    char msg[DM_ERRMSG_MAX];
    dm_comm_request *next_queued; /* FIFO of jobs the worker has not taken yet */
    dm_comm_request *next_live;   /* every job not yet waited on (finalize frees them) */
};

typedef struct gloo_state {
    dm_gloo *g;
    int rank, size;
    double timeout_s;

    pthread_t worker;
    int worker_running;
    pthread_mutex_t mu;     /* guards everything below */
    pthread_cond_t work_cv; /* queue not empty, or stopping */
    pthread_cond_t done_cv; /* some job finished */
    dm_comm_request *queue_head, *queue_tail;
    dm_comm_request *live;
    int stopping;
    int broken;
    char broken_msg[DM_ERRMSG_MAX];
} gloo_state;

static const dm_param_def gloo_params[] = {
    {"rendezvous", DM_PARAM_STRING, "", 0, -1, NULL, "file:///DIR or redis://HOST:PORT; empty = the run's rendezvous"},
    {"iface", DM_PARAM_STRING, "", 0, -1, NULL,
     "network interface to use, e.g. lo or eth0; empty = resolve the host name"},
    {"host", DM_PARAM_STRING, "", 0, -1, NULL,
     "address or host name to bind, e.g. 127.0.0.1; empty = this host's name"},
    {"timeout_s", DM_PARAM_FLOAT, "0", 0.0, 86400.0, NULL,
     "seconds any call may take before it fails; 0 = the run's comm timeout"},
    {"prefix", DM_PARAM_STRING, "", 0, -1, NULL,
     "key prefix in the store; set a new one to reuse a store; empty = dmnist"},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

/* ---- SIGPIPE ---------------------------------------------------------------- */

static void sigpipe_block(sigset_t *old)
{
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, old);
}

/* Restore the caller's mask, first dropping a SIGPIPE Gloo raised on this
 * thread meanwhile (it would otherwise be delivered now). */
static void sigpipe_restore(const sigset_t *old)
{
    if (!sigismember(old, SIGPIPE)) {
        sigset_t pipe_only;
        sigemptyset(&pipe_only);
        sigaddset(&pipe_only, SIGPIPE);
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &zero) == SIGPIPE) {}
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* ---- the worker ---------------------------------------------------------- */

static int gloo_run_job(gloo_state *st, dm_comm_request *job, dm_error *err)
{
    switch (job->kind) {
    case JOB_ALLREDUCE: {
        int rc = dm_gloo_allreduce_sum(st->g, job->buf, job->n, err);
        if (rc == DM_OK && job->op == DM_REDUCE_AVG && st->size > 1) {
            /* Every rank divides the same sum: results stay identical. */
            float *x = job->buf, size = (float)st->size;
            for (size_t i = 0; i < job->n; i++) x[i] /= size;
        }
        return rc;
    }
    case JOB_BROADCAST: return dm_gloo_broadcast(st->g, job->buf, job->n, job->root, err);
    case JOB_BARRIER: return dm_gloo_barrier(st->g, err);
    }
    return dm_fail(err, DM_ERR_INTERNAL, "gloo: unknown job kind %d", (int)job->kind);
}

static void *gloo_worker(void *arg)
{
    gloo_state *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->queue_head && !st->stopping) pthread_cond_wait(&st->work_cv, &st->mu);
        dm_comm_request *job = st->queue_head;
        if (!job) break; /* stopping and nothing left */
        st->queue_head = job->next_queued;
        if (!st->queue_head) st->queue_tail = NULL;

        dm_error err = {0};
        if (st->broken) {
            job->status =
                dm_fail(&err, DM_ERR_COMM, "gloo: communicator unusable after an earlier failure: %s", st->broken_msg);
        } else {
            pthread_mutex_unlock(&st->mu);
            int rc = gloo_run_job(st, job, &err);
            pthread_mutex_lock(&st->mu);
            job->status = rc;
            if (rc != DM_OK && !st->broken) {
                st->broken = 1;
                snprintf(st->broken_msg, sizeof st->broken_msg, "%s", err.msg);
            }
        }
        snprintf(job->msg, sizeof job->msg, "%s", err.msg);
        job->done = 1;
        if (job->abandoned) free(job);
        pthread_cond_broadcast(&st->done_cv);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* ---- queueing and waiting ------------------------------------------------ */

static int gloo_check_usable(gloo_state *st, dm_device device, dm_error *err)
{
    if (!st) return dm_fail(err, DM_ERR_INVALID, "gloo: called without init()");
    if (device != DM_DEVICE_CPU)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "gloo: buffers on device %d are not supported (host buffers only)",
                       (int)device);
    return DM_OK;
}

static int gloo_enqueue(gloo_state *st, const dm_comm_request *proto, dm_comm_request **out, dm_error *err)
{
    *out = NULL;
    dm_comm_request *job = malloc(sizeof *job);
    if (!job) return dm_fail(err, DM_ERR_NOMEM, "gloo: out of memory");
    *job = *proto;
    pthread_mutex_lock(&st->mu);
    if (st->broken) {
        pthread_mutex_unlock(&st->mu);
        free(job);
        return dm_fail(err, DM_ERR_COMM, "gloo: communicator unusable after an earlier failure: %s", st->broken_msg);
    }
    if (st->queue_tail) st->queue_tail->next_queued = job;
    else st->queue_head = job;
    st->queue_tail = job;
    job->next_live = st->live;
    st->live = job;
    pthread_cond_signal(&st->work_cv);
    pthread_mutex_unlock(&st->mu);
    *out = job;
    return DM_OK;
}

static int gloo_wait(void *state, dm_comm_request *job, dm_error *err)
{
    gloo_state *st = state;
    if (!st || !job) return dm_fail(err, DM_ERR_INVALID, "gloo: wait() without a state or request");

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = (double)(time_t)st->timeout_s;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((st->timeout_s - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    pthread_mutex_lock(&st->mu);
    dm_comm_request **link = &st->live;
    while (*link && *link != job) link = &(*link)->next_live;
    if (!*link) {
        pthread_mutex_unlock(&st->mu);
        return dm_fail(err, DM_ERR_INVALID, "gloo: wait() on a request this communicator does not know");
    }
    *link = job->next_live;

    while (!job->done)
        if (pthread_cond_timedwait(&st->done_cv, &st->mu, &deadline) != 0 && !job->done) break; /* timed out */

    int status;
    if (job->done) {
        status = job->status;
        if (status != DM_OK) dm_fail(err, status, "%s", job->msg);
        free(job);
    } else {
        char what[80];
        if (job->kind == JOB_ALLREDUCE) snprintf(what, sizeof what, "allreduce of %zu floats", job->n);
        else if (job->kind == JOB_BROADCAST)
            snprintf(what, sizeof what, "broadcast of %zu bytes from rank %d", job->n, job->root);
        else snprintf(what, sizeof what, "barrier");
        status = dm_fail(err, DM_ERR_TIMEOUT, "gloo: rank %d: %s timed out after %g s (a peer rank is gone?)", st->rank,
                         what, st->timeout_s);
        if (!st->broken) {
            st->broken = 1;
            snprintf(st->broken_msg, sizeof st->broken_msg, "%s", err ? err->msg : "timeout");
        }
        job->abandoned = 1; /* Gloo may still use it: the worker frees it */
    }
    pthread_mutex_unlock(&st->mu);
    return status;
}

/* ---- rank discovery ------------------------------------------------------- */

/* Every rank on this machine: one rank, or a launcher saying the local
 * world is the whole world (dmnist-run --np, mpirun on one host). */
static int gloo_single_host(const dm_comm_config *cfg, int size)
{
    if (size == 1) return 1;
    return DM_HAS_FIELD(cfg, dm_comm_config, local_size) && cfg->local_size == size;
}

/* ---- init / finalize -------------------------------------------------------- */

static void gloo_free_state(gloo_state *st)
{
    dm_gloo_close(st->g);
    pthread_cond_destroy(&st->work_cv);
    pthread_cond_destroy(&st->done_cv);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static int gloo_init(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info,
                     dm_error *err)
{
    *state = NULL;
    int rank = cfg->rank, size = cfg->size;
    if (rank < 0 || size <= 0)
        return dm_fail(err, DM_ERR_INVALID,
                       "gloo: rank and world size unknown: start the ranks with dmnist-run --np N or "
                       "mpirun, or export DMNIST_RANK and DMNIST_WORLD_SIZE");
    if (rank >= size) return dm_fail(err, DM_ERR_INVALID, "gloo: rank %d is not in 0..%d", rank, size - 1);

    const char *rendezvous = dm_param_str(params, "rendezvous", "");
    if (!rendezvous[0]) rendezvous = cfg->rendezvous ? cfg->rendezvous : "";
    if (!rendezvous[0])
        return dm_fail(err, DM_ERR_INVALID,
                       "gloo: %d ranks%s need a rendezvous: set DMNIST_RENDEZVOUS (or [comm] rendezvous) to "
                       "redis://HOST:PORT or file:///DIR, a folder every rank's machine sees",
                       size,
                       DM_HAS_FIELD(cfg, dm_comm_config, local_size) && cfg->local_size > 0 && cfg->local_size < size
                           ? " on several machines"
                           : "");
    const char *prefix = dm_param_str(params, "prefix", "");
    double timeout_s = dm_param_float(params, "timeout_s", 0.0);
    if (timeout_s <= 0.0) timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : GLOO_DEFAULT_TIMEOUT_S;

    gloo_state *st = calloc(1, sizeof *st);
    if (!st) return dm_fail(err, DM_ERR_NOMEM, "gloo: out of memory");
    st->rank = rank;
    st->size = size;
    st->timeout_s = timeout_s;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->work_cv, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* wait() deadlines ignore clock changes */
    pthread_cond_init(&st->done_cv, &ca);
    pthread_condattr_destroy(&ca);

    /* Gloo's event-loop thread and our worker inherit this mask. */
    sigset_t old_mask;
    sigpipe_block(&old_mask);
    dm_gloo_setup setup = {
        .rendezvous = rendezvous,
        .prefix = prefix[0] ? prefix : "dmnist",
        .iface = dm_param_str(params, "iface", ""),
        .host = dm_param_str(params, "host", ""),
        .rank = rank,
        .size = size,
        .timeout_s = timeout_s,
        .job_id = DM_HAS_FIELD(cfg, dm_comm_config, job_id) && cfg->job_id ? cfg->job_id : "",
        .fingerprint = DM_HAS_FIELD(cfg, dm_comm_config, fingerprint) && cfg->fingerprint ? cfg->fingerprint : "",
        .single_host = gloo_single_host(cfg, size),
    };
    int local_rank = -1;
    int rc = dm_gloo_connect(&setup, &st->g, &local_rank, err);
    if (rc == DM_OK && pthread_create(&st->worker, NULL, gloo_worker, st) != 0)
        rc = dm_fail(err, DM_ERR_INTERNAL, "gloo: cannot start the worker thread");
    if (rc != DM_OK) {
        gloo_free_state(st);
        sigpipe_restore(&old_mask);
        return rc;
    }
    sigpipe_restore(&old_mask);
    st->worker_running = 1;

    info->rank = rank;
    info->size = size;
    info->local_rank = cfg->local_rank >= 0 ? cfg->local_rank : local_rank;
    *state = st;
    return DM_OK;
}

static int gloo_finalize(void *state, dm_error *err)
{
    gloo_state *st = state;
    (void)err;
    if (!st) return DM_OK;
    /* The worker drains the queue (jobs fail at once if broken) and exits;
     * a job still inside Gloo ends within Gloo's own timeout. */
    pthread_mutex_lock(&st->mu);
    st->stopping = 1;
    pthread_cond_signal(&st->work_cv);
    pthread_mutex_unlock(&st->mu);
    if (st->worker_running) pthread_join(st->worker, NULL);
    sigset_t old_mask; /* closing sockets to a lost peer */
    sigpipe_block(&old_mask);
    /* Handles nobody waited on. */
    while (st->live) {
        dm_comm_request *job = st->live;
        st->live = job->next_live;
        free(job);
    }
    gloo_free_state(st);
    sigpipe_restore(&old_mask);
    return DM_OK;
}

/* ---- collectives -------------------------------------------------------------- */

static int gloo_allreduce_start(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                                dm_comm_request **req, dm_error *err)
{
    gloo_state *st = state;
    (void)cuda_stream;
    *req = NULL;
    int rc = gloo_check_usable(st, device, err);
    if (rc != DM_OK) return rc;
    if (op != DM_REDUCE_SUM && op != DM_REDUCE_AVG)
        return dm_fail(err, DM_ERR_INVALID, "gloo: unknown reduce op %d", (int)op);
    if (!buf && n > 0) return dm_fail(err, DM_ERR_INVALID, "gloo: allreduce of %zu floats from a NULL buffer", n);
    dm_comm_request proto = {.kind = JOB_ALLREDUCE, .buf = buf, .n = n, .op = op};
    return gloo_enqueue(st, &proto, req, err);
}

static int gloo_allreduce(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                          dm_error *err)
{
    dm_comm_request *req = NULL;
    int rc = gloo_allreduce_start(state, buf, n, op, device, cuda_stream, &req, err);
    return rc != DM_OK ? rc : gloo_wait(state, req, err);
}

static int gloo_broadcast(void *state, void *buf, size_t bytes, int root, dm_device device, void *cuda_stream,
                          dm_error *err)
{
    gloo_state *st = state;
    (void)cuda_stream;
    int rc = gloo_check_usable(st, device, err);
    if (rc != DM_OK) return rc;
    if (root < 0 || root >= st->size)
        return dm_fail(err, DM_ERR_INVALID, "gloo: broadcast root %d is not a rank of 0..%d", root, st->size - 1);
    if (!buf && bytes > 0)
        return dm_fail(err, DM_ERR_INVALID, "gloo: broadcast of %zu bytes from a NULL buffer", bytes);
    dm_comm_request proto = {.kind = JOB_BROADCAST, .buf = buf, .n = bytes, .root = root};
    dm_comm_request *req = NULL;
    rc = gloo_enqueue(st, &proto, &req, err);
    return rc != DM_OK ? rc : gloo_wait(state, req, err);
}

static int gloo_barrier(void *state, dm_error *err)
{
    gloo_state *st = state;
    int rc = gloo_check_usable(st, DM_DEVICE_CPU, err);
    if (rc != DM_OK) return rc;
    dm_comm_request proto = {.kind = JOB_BARRIER};
    dm_comm_request *req = NULL;
    rc = gloo_enqueue(st, &proto, &req, err);
    return rc != DM_OK ? rc : gloo_wait(state, req, err);
}

/* ---- plugin descriptor ---------------------------------------------------------- */

DM_COMM_VTABLE(gloo, DM_DEVICE_BIT(DM_DEVICE_CPU));

DM_PLUGIN_DEFINE("gloo", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE ";gloo",
                 DM_COMM_COMPONENT("gloo",
                                   "Gloo collectives over TCP on host buffers; rendezvous via file:// or redis://",
                                   gloo_params, &gloo_vtable));
