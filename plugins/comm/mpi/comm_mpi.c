/* Open MPI communication backend.
 *
 * Collectives run on a private duplicate of MPI_COMM_WORLD with
 * MPI_ERRORS_RETURN, so an MPI error becomes a dm_status and a message
 * instead of an abort. MPI has no timeouts of its own: every collective,
 * the blocking ones included, is started as its nonblocking variant
 * (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) and polled with MPI_Testall
 * until it completes or the deadline passes. A peer that stopped answering
 * therefore gives DM_ERR_TIMEOUT instead of a hang.
 *
 * With `timeouts = false` the blocking calls use MPI_Allreduce, MPI_Bcast
 * and MPI_Barrier instead: Open MPI's blocking allreduce is faster on large
 * buffers (a bare program: 1.5-2.2 ms against 3.7-4.6 ms for MPI_Iallreduce,
 * 9.5 MB on 2 ranks), but a lost peer then hangs them. allreduce_start()
 * always polls.
 *
 * Progress: Open MPI's nonblocking collectives (libnbc) advance only inside
 * MPI calls, so a gradient bucket started with allreduce_start() would sit
 * still until wait(). A progress thread therefore tests the outstanding
 * requests every `progress_us` microseconds (sleeping otherwise), and the
 * bucket travels while the caller runs the rest of the backward pass. One
 * mutex serialises every MPI call after init (MPI_THREAD_SERIALIZED).
 * Measured on 2 pinned cores, seed CNN, fusion_mb 4: the wait for the
 * buckets fell from 9% to 3% of the step (docs/reports/benchmarks.md).
 *
 * After a failure the communicator is marked broken: later calls fail at
 * once with the first message, and finalize() skips MPI_Comm_free and
 * MPI_Finalize, both of which would wait for the lost peer.
 *
 * Host buffers only (devices = CPU): the core stages device buffers.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "dmnist/comm.h"
#include "dmnist/plugin.h"

/* Largest count handed to one MPI call: counts are int. Bigger buffers are
 * cut into chunks, each its own nonblocking operation, all in flight. */
#define DM_MPI_CHUNK_MAX (INT_MAX / 2)

/* Polls before we start yielding the core: keeps latency low when the
 * peers are ready, and lets oversubscribed ranks (more ranks than cores)
 * run while we wait for them. */
#define DM_MPI_SPIN_POLLS 1000

#define DM_MPI_DEFAULT_TIMEOUT_S 30.0

typedef struct mpi_state mpi_state;

/* One allreduce_start(): one MPI request per chunk. Requests not yet
 * waited on are kept in a list so finalize() can complete and free them. */
struct dm_comm_request {
    float *buf;
    size_t n;
    dm_reduce_op op;
    int n_reqs;
    MPI_Request *reqs;     /* n_reqs */
    dm_comm_request *next; /* list of outstanding requests */
};

struct mpi_state {
    MPI_Comm comm; /* our duplicate of MPI_COMM_WORLD */
    int rank, size;
    int we_initialised; /* MPI_Init_thread was ours, so MPI_Finalize is too */
    double timeout_s;
    int timeouts; /* 0: blocking calls use blocking MPI (no deadline) */
    int broken;   /* a collective failed: the communicator is unusable */
    char broken_msg[DM_ERRMSG_MAX];
    dm_comm_request *outstanding; /* started, not yet waited on, oldest first */

    /* The progress thread (see the top of the file). mu serialises every
     * MPI call after init and guards `outstanding`, `broken` and `stop`. */
    long progress_us;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a request was started, or stop */
    pthread_t progress;
    int progress_running, stop;
};

static const dm_param_def mpi_params[] = {
    {"timeout_s", DM_PARAM_FLOAT, "0", 0.0, 86400.0, NULL,
     "seconds any call may take before it fails; 0 = the run's comm timeout"},
    {"timeouts", DM_PARAM_BOOL, "true", 0, -1, NULL,
     "false: blocking calls use blocking MPI, faster but a lost peer hangs them"},
    {"progress_us", DM_PARAM_INT, "100", 0, 1e6, NULL,
     "a thread tests outstanding allreduces every N us so they progress during backward; 0 = only in wait()"},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

/* ---- errors --------------------------------------------------------------- */

/* Remember the first failure; later calls repeat it. */
static int mpi_break(mpi_state *st, dm_error *err, int code)
{
    if (!st->broken) {
        st->broken = 1;
        snprintf(st->broken_msg, sizeof st->broken_msg, "%s", err ? err->msg : "failed");
    }
    return code;
}

/* An MPI error code as one line, e.g. "mpi: rank 1: MPI_Ibcast: MPI_ERR_ROOT: invalid root". */
static int mpi_fail_rc(mpi_state *st, dm_error *err, int rc, const char *call)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", rc);
    dm_fail(err, DM_ERR_COMM, "mpi: rank %d: %s: %s", st ? st->rank : -1, call, text);
    return st ? mpi_break(st, err, DM_ERR_COMM) : DM_ERR_COMM;
}

static int mpi_check_usable(mpi_state *st, dm_device device, dm_error *err)
{
    if (!st) return dm_fail(err, DM_ERR_INVALID, "mpi: called without init()");
    if (st->broken)
        return dm_fail(err, DM_ERR_COMM, "mpi: communicator unusable after an earlier failure: %s", st->broken_msg);
    if (device != DM_DEVICE_CPU)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "mpi: buffers on device %d are not supported (host buffers only)",
                       (int)device);
    return DM_OK;
}

/* ---- the polling wait ------------------------------------------------------ */

/* Poll reqs until all complete or timeout_s passes. `what` names the
 * operation in messages, e.g. "allreduce of 7 floats". */
static int mpi_poll(mpi_state *st, int n_reqs, MPI_Request *reqs, const char *what, dm_error *err)
{
    double deadline = MPI_Wtime() + st->timeout_s;
    for (long polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Testall(n_reqs, reqs, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail_rc(st, err, rc, what);
        if (done) return DM_OK;
        if (MPI_Wtime() > deadline) {
            dm_fail(err, DM_ERR_TIMEOUT, "mpi: rank %d: %s timed out after %g s (a peer rank is gone?)", st->rank, what,
                    st->timeout_s);
            return mpi_break(st, err, DM_ERR_TIMEOUT);
        }
        if (polls >= DM_MPI_SPIN_POLLS) sched_yield();
    }
}

static int mpi_n_chunks(size_t count) { return (int)((count + DM_MPI_CHUNK_MAX - 1) / DM_MPI_CHUNK_MAX); }

/* Start one MPI_Iallreduce (in place, sum) per chunk of buf[n]. */
static int mpi_start_chunks(mpi_state *st, float *buf, size_t n, int n_reqs, MPI_Request *reqs, dm_error *err)
{
    for (int c = 0; c < n_reqs; c++) {
        size_t off = (size_t)c * DM_MPI_CHUNK_MAX;
        size_t len = n - off < DM_MPI_CHUNK_MAX ? n - off : DM_MPI_CHUNK_MAX;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, st->comm, &reqs[c]);
        if (rc != MPI_SUCCESS) return mpi_fail_rc(st, err, rc, "MPI_Iallreduce");
    }
    return DM_OK;
}

/* MPI has no mean: sum, then divide. Every rank divides the same sum by the
 * same size, so the result stays identical on all ranks. */
static void mpi_finish_avg(const mpi_state *st, float *buf, size_t n, dm_reduce_op op)
{
    if (op != DM_REDUCE_AVG || st->size == 1) return;
    float size = (float)st->size;
    for (size_t i = 0; i < n; i++) buf[i] /= size;
}

/* ---- the progress thread ----------------------------------------------------- */

static void *mpi_progress_main(void *arg)
{
    mpi_state *st = arg;
    struct timespec nap = {st->progress_us / 1000000, (st->progress_us % 1000000) * 1000L};
    pthread_mutex_lock(&st->mu);
    while (!st->stop) {
        if (!st->outstanding || st->broken) {
            pthread_cond_wait(&st->cv, &st->mu);
            continue;
        }
        for (dm_comm_request *r = st->outstanding; r && !st->broken; r = r->next) {
            int done = 0;
            int rc = MPI_Testall(r->n_reqs, r->reqs, &done, MPI_STATUSES_IGNORE);
            if (rc != MPI_SUCCESS) {
                /* wait() reports it: the request may be gone by then */
                dm_error e = {0};
                mpi_fail_rc(st, &e, rc, "MPI_Iallreduce");
            }
        }
        pthread_mutex_unlock(&st->mu);
        nanosleep(&nap, NULL);
        pthread_mutex_lock(&st->mu);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* ---- init / finalize ------------------------------------------------------- */

/* ---- start-up watchdog -------------------------------------------------------
 * MPI_Init_thread, MPI_Comm_dup and MPI_Comm_split_type are blocking and have
 * no timeout: a peer that never starts, or a launcher that never wires the
 * ranks up, would hang them for ever. No MPI call can be cancelled, so a
 * watchdog thread ends the process with one line when start-up outlives its
 * bound (the one exception to "a plugin never exits", documented in
 * docs/distributed.md). The bound is the configured timeout, at least
 * DM_MPI_STARTUP_MIN_S: Open MPI's own start-up takes seconds on a busy machine. */
#define DM_MPI_STARTUP_MIN_S 20.0

extern char *program_invocation_short_name; /* glibc */

typedef struct mpi_watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, running;
    double bound_s;
    int rank; /* from the launcher (dm_comm_config), -1 when unknown */
} mpi_watchdog;

static void *mpi_watchdog_main(void *arg)
{
    mpi_watchdog *w = arg;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)w->bound_s;
    deadline.tv_nsec += (long)((w->bound_s - (double)(time_t)w->bound_s) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cv, &w->mu, &deadline) != 0 && !w->done) {
            char line[512];
            char rank[16] = "?";
            if (w->rank >= 0) snprintf(rank, sizeof rank, "%d", w->rank);
            int n = snprintf(line, sizeof line,
                             "%s: mpi: rank %s: MPI start-up (MPI_Init_thread, MPI_Comm_dup) did not finish "
                             "within %g s (comm.timeout_s, else experiment.timeout_s; at least %g s): a rank "
                             "that never started, or a launcher that cannot reach it?\n",
                             program_invocation_short_name, rank, w->bound_s, DM_MPI_STARTUP_MIN_S);
            if (n > 0 && write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1) < 0) {}
            _exit(1);
        }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void mpi_watchdog_start(mpi_watchdog *w, double timeout_s, int rank)
{
    memset(w, 0, sizeof *w);
    w->rank = rank;
    w->bound_s = timeout_s > DM_MPI_STARTUP_MIN_S ? timeout_s : DM_MPI_STARTUP_MIN_S;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->running = pthread_create(&w->thread, NULL, mpi_watchdog_main, w) == 0;
}

static void mpi_watchdog_stop(mpi_watchdog *w)
{
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->running) pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

static int mpi_init_unguarded(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info,
                              dm_error *err);

static int mpi_init(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info, dm_error *err)
{
    double timeout_s = dm_param_float(params, "timeout_s", 0.0);
    if (timeout_s <= 0.0) timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : DM_MPI_DEFAULT_TIMEOUT_S;
    mpi_watchdog w;
    mpi_watchdog_start(&w, timeout_s, cfg->rank);
    int rc = mpi_init_unguarded(params, cfg, state, info, err);
    mpi_watchdog_stop(&w);
    return rc;
}

static int mpi_init_unguarded(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info,
                              dm_error *err)
{
    *state = NULL;
    int finalized = 0, initialised = 0;
    MPI_Finalized(&finalized);
    if (finalized)
        return dm_fail(err, DM_ERR_COMM, "mpi: MPI was already finalised in this process; it cannot start again");

    mpi_state *st = calloc(1, sizeof *st);
    if (!st) return dm_fail(err, DM_ERR_NOMEM, "mpi: out of memory");
    st->comm = MPI_COMM_NULL;
    st->timeout_s = dm_param_float(params, "timeout_s", 0.0);
    if (st->timeout_s <= 0.0) st->timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : DM_MPI_DEFAULT_TIMEOUT_S;
    st->timeouts = (int)dm_param_int(params, "timeouts", 1);

    MPI_Initialized(&initialised);
    if (!initialised) {
        /* SERIALIZED: the core may call us from more than one thread, never at once. */
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) {
            mpi_fail_rc(NULL, err, rc, "MPI_Init_thread");
            free(st);
            return DM_ERR_COMM;
        }
        st->we_initialised = 1;
    }

    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &st->comm);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(st->comm, &st->rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(st->comm, &st->size);
    if (rc != MPI_SUCCESS) {
        mpi_fail_rc(NULL, err, rc, "MPI_Comm_dup");
        goto fail;
    }

    /* The launcher's view must agree with MPI's, else gradients would be
     * averaged over the wrong set of processes. */
    if ((cfg->rank >= 0 && cfg->rank != st->rank) || (cfg->size > 0 && cfg->size != st->size)) {
        dm_fail(err, DM_ERR_INVALID,
                "mpi: the launcher says rank %d of %d but MPI_COMM_WORLD has rank %d of %d "
                "(start the program with mpirun -np %d, or srun --mpi=pmix)",
                cfg->rank, cfg->size, st->rank, st->size, cfg->size);
        goto fail;
    }

    int local_rank = cfg->local_rank;
    if (local_rank < 0) {
        MPI_Comm node = MPI_COMM_NULL;
        rc = MPI_Comm_split_type(st->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(node, &local_rank);
        if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
        if (rc != MPI_SUCCESS) {
            mpi_fail_rc(st, err, rc, "MPI_Comm_split_type");
            goto fail;
        }
    }

    info->rank = st->rank;
    info->size = st->size;
    info->local_rank = local_rank;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    st->progress_us = (long)dm_param_int(params, "progress_us", 100);
    /* A second thread may call MPI only at SERIALIZED or above. */
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    if (st->progress_us > 0 && st->size > 1 && level >= MPI_THREAD_SERIALIZED)
        st->progress_running = pthread_create(&st->progress, NULL, mpi_progress_main, st) == 0;
    *state = st;
    return DM_OK;

fail:
    if (st->comm != MPI_COMM_NULL) MPI_Comm_free(&st->comm);
    if (st->we_initialised) MPI_Finalize();
    free(st);
    return err ? err->code : DM_ERR_COMM;
}

static void mpi_request_free(dm_comm_request *req)
{
    free(req->reqs);
    free(req);
}

static int mpi_finalize(void *state, dm_error *err)
{
    mpi_state *st = state;
    if (!st) return DM_OK;
    int status = DM_OK;
    if (st->progress_running) {
        pthread_mutex_lock(&st->mu);
        st->stop = 1;
        pthread_cond_signal(&st->cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->progress, NULL);
    }

    /* Complete requests nobody waited on (they are valid collectives all
     * ranks started); after a failure, MPI may still own their buffers, so
     * their MPI requests are left alone and only our memory is freed. */
    while (st->outstanding) {
        dm_comm_request *req = st->outstanding;
        st->outstanding = req->next;
        if (!st->broken && mpi_poll(st, req->n_reqs, req->reqs, "finalize", err) != DM_OK)
            status = err ? err->code : DM_ERR_COMM;
        mpi_request_free(req);
    }

    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!st->broken && !finalized) {
        MPI_Comm_free(&st->comm);
        if (st->we_initialised) {
            int rc = MPI_Finalize();
            if (rc != MPI_SUCCESS && status == DM_OK) status = mpi_fail_rc(NULL, err, rc, "MPI_Finalize");
        }
    }
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
    return status;
}

/* ---- collectives ------------------------------------------------------------ */

static int mpi_allreduce_start(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                               dm_comm_request **out, dm_error *err)
{
    mpi_state *st = state;
    (void)cuda_stream;
    *out = NULL;
    int status = mpi_check_usable(st, device, err);
    if (status != DM_OK) return status;
    if (op != DM_REDUCE_SUM && op != DM_REDUCE_AVG)
        return dm_fail(err, DM_ERR_INVALID, "mpi: unknown reduce op %d", (int)op);
    if (!buf && n > 0) return dm_fail(err, DM_ERR_INVALID, "mpi: allreduce of %zu floats from a NULL buffer", n);

    dm_comm_request *req = calloc(1, sizeof *req);
    int n_reqs = mpi_n_chunks(n);
    MPI_Request *reqs = n_reqs > 0 ? malloc((size_t)n_reqs * sizeof *reqs) : NULL;
    if (!req || (n_reqs > 0 && !reqs)) {
        free(req);
        free(reqs);
        return dm_fail(err, DM_ERR_NOMEM, "mpi: out of memory");
    }
    *req = (dm_comm_request){.buf = buf, .n = n, .op = op, .n_reqs = n_reqs, .reqs = reqs};
    status = mpi_start_chunks(st, buf, n, n_reqs, reqs, err);
    if (status != DM_OK) {
        mpi_request_free(req);
        return status;
    }
    /* One test now gets the first messages moving while the caller computes. */
    int done = 0;
    if (n_reqs > 0) MPI_Testall(n_reqs, reqs, &done, MPI_STATUSES_IGNORE);

    dm_comm_request **tail = &st->outstanding;
    while (*tail) tail = &(*tail)->next;
    *tail = req;
    *out = req;
    pthread_cond_signal(&st->cv);
    return DM_OK;
}

static int mpi_wait(void *state, dm_comm_request *req, dm_error *err)
{
    mpi_state *st = state;
    if (!st || !req) return dm_fail(err, DM_ERR_INVALID, "mpi: wait() without a state or request");

    /* Unlink it; wait() frees the handle whatever happens. */
    dm_comm_request **link = &st->outstanding;
    while (*link && *link != req) link = &(*link)->next;
    if (!*link) return dm_fail(err, DM_ERR_INVALID, "mpi: wait() on a request this communicator does not know");
    *link = req->next;

    int status;
    if (st->broken) {
        /* MPI may still own the buffer: leave its requests, free our memory. */
        status = dm_fail(err, DM_ERR_COMM, "mpi: communicator unusable after an earlier failure: %s", st->broken_msg);
    } else {
        char what[64];
        snprintf(what, sizeof what, "allreduce of %zu floats", req->n);
        status = mpi_poll(st, req->n_reqs, req->reqs, what, err);
        if (status == DM_OK) mpi_finish_avg(st, req->buf, req->n, req->op);
    }
    mpi_request_free(req);
    return status;
}

static int mpi_allreduce(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                         dm_error *err)
{
    mpi_state *st = state;
    if (st && !st->timeouts) {
        int status = mpi_check_usable(st, device, err);
        if (status != DM_OK) return status;
        if (op != DM_REDUCE_SUM && op != DM_REDUCE_AVG)
            return dm_fail(err, DM_ERR_INVALID, "mpi: unknown reduce op %d", (int)op);
        if (!buf && n > 0) return dm_fail(err, DM_ERR_INVALID, "mpi: allreduce of %zu floats from a NULL buffer", n);
        for (size_t off = 0; off < n; off += DM_MPI_CHUNK_MAX) {
            size_t len = n - off < DM_MPI_CHUNK_MAX ? n - off : DM_MPI_CHUNK_MAX;
            int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, st->comm);
            if (rc != MPI_SUCCESS) return mpi_fail_rc(st, err, rc, "MPI_Allreduce");
        }
        mpi_finish_avg(st, buf, n, op);
        return DM_OK;
    }
    dm_comm_request *req = NULL;
    int status = mpi_allreduce_start(state, buf, n, op, device, cuda_stream, &req, err);
    if (status != DM_OK) return status;
    return mpi_wait(state, req, err);
}

static int mpi_broadcast(void *state, void *buf, size_t bytes, int root, dm_device device, void *cuda_stream,
                         dm_error *err)
{
    mpi_state *st = state;
    (void)cuda_stream;
    int status = mpi_check_usable(st, device, err);
    if (status != DM_OK) return status;
    if (root < 0 || root >= st->size)
        return dm_fail(err, DM_ERR_INVALID, "mpi: broadcast root %d is not a rank of 0..%d", root, st->size - 1);
    if (!buf && bytes > 0) return dm_fail(err, DM_ERR_INVALID, "mpi: broadcast of %zu bytes from a NULL buffer", bytes);

    if (!st->timeouts) {
        for (size_t off = 0; off < bytes; off += DM_MPI_CHUNK_MAX) {
            size_t len = bytes - off < DM_MPI_CHUNK_MAX ? bytes - off : DM_MPI_CHUNK_MAX;
            int rc = MPI_Bcast((char *)buf + off, (int)len, MPI_BYTE, root, st->comm);
            if (rc != MPI_SUCCESS) return mpi_fail_rc(st, err, rc, "MPI_Bcast");
        }
        return DM_OK;
    }
    int n_reqs = mpi_n_chunks(bytes);
    if (n_reqs == 0) return DM_OK;
    MPI_Request *reqs = malloc((size_t)n_reqs * sizeof *reqs);
    if (!reqs) return dm_fail(err, DM_ERR_NOMEM, "mpi: out of memory");
    for (int c = 0; c < n_reqs; c++) {
        size_t off = (size_t)c * DM_MPI_CHUNK_MAX;
        size_t len = bytes - off < DM_MPI_CHUNK_MAX ? bytes - off : DM_MPI_CHUNK_MAX;
        int rc = MPI_Ibcast((char *)buf + off, (int)len, MPI_BYTE, root, st->comm, &reqs[c]);
        if (rc != MPI_SUCCESS) {
            free(reqs);
            return mpi_fail_rc(st, err, rc, "MPI_Ibcast");
        }
    }
    char what[80];
    snprintf(what, sizeof what, "broadcast of %zu bytes from rank %d", bytes, root);
    status = mpi_poll(st, n_reqs, reqs, what, err);
    free(reqs);
    return status;
}

static int mpi_barrier(void *state, dm_error *err)
{
    mpi_state *st = state;
    int status = mpi_check_usable(st, DM_DEVICE_CPU, err);
    if (status != DM_OK) return status;
    if (!st->timeouts) {
        int rc = MPI_Barrier(st->comm);
        return rc == MPI_SUCCESS ? DM_OK : mpi_fail_rc(st, err, rc, "MPI_Barrier");
    }
    MPI_Request req;
    int rc = MPI_Ibarrier(st->comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail_rc(st, err, rc, "MPI_Ibarrier");
    return mpi_poll(st, 1, &req, "barrier", err);
}

/* ---- the vtable's entry points: one MPI caller at a time ----------------------- */

static int mpi_allreduce_start_serialised(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device,
                                          void *cuda_stream, dm_comm_request **out, dm_error *err)
{
    mpi_state *st = state;
    if (!st) return mpi_allreduce_start(state, buf, n, op, device, cuda_stream, out, err);
    pthread_mutex_lock(&st->mu);
    int rc = mpi_allreduce_start(state, buf, n, op, device, cuda_stream, out, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static int mpi_wait_serialised(void *state, dm_comm_request *req, dm_error *err)
{
    mpi_state *st = state;
    if (!st) return mpi_wait(state, req, err);
    pthread_mutex_lock(&st->mu);
    int rc = mpi_wait(state, req, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static int mpi_allreduce_serialised(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device,
                                    void *cuda_stream, dm_error *err)
{
    mpi_state *st = state;
    if (!st) return mpi_allreduce(state, buf, n, op, device, cuda_stream, err);
    pthread_mutex_lock(&st->mu);
    int rc = mpi_allreduce(state, buf, n, op, device, cuda_stream, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static int mpi_broadcast_serialised(void *state, void *buf, size_t bytes, int root, dm_device device, void *cuda_stream,
                                    dm_error *err)
{
    mpi_state *st = state;
    if (!st) return mpi_broadcast(state, buf, bytes, root, device, cuda_stream, err);
    pthread_mutex_lock(&st->mu);
    int rc = mpi_broadcast(state, buf, bytes, root, device, cuda_stream, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static int mpi_barrier_serialised(void *state, dm_error *err)
{
    mpi_state *st = state;
    if (!st) return mpi_barrier(state, err);
    pthread_mutex_lock(&st->mu);
    int rc = mpi_barrier(state, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

/* ---- plugin descriptor ------------------------------------------------------- */

static const dm_comm_vtable mpi_vtable = {
    .struct_size = sizeof(dm_comm_vtable),
    .devices = DM_DEVICE_BIT(DM_DEVICE_CPU),
    .init = mpi_init,
    .allreduce = mpi_allreduce_serialised,
    .allreduce_start = mpi_allreduce_start_serialised,
    .wait = mpi_wait_serialised,
    .broadcast = mpi_broadcast_serialised,
    .barrier = mpi_barrier_serialised,
    .finalize = mpi_finalize,
};

DM_PLUGIN_DEFINE("mpi", "1.0.0", DM_PLUGIN_BUILD_SIGNATURE ";openmpi",
                 DM_COMM_COMPONENT("mpi", "Open MPI collectives on host buffers (start with mpirun), with timeouts",
                                   mpi_params, &mpi_vtable));
