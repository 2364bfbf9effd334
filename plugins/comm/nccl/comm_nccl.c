/* NCCL communication backend: one rank per GPU, gradients reduced on the GPU.
 *
 * Start-up. The local rank picks the GPU (local_rank % GPUs, the same rule
 * as the core's dm_dev_open, which runs after init). NCCL refuses two ranks
 * on one GPU, so more local ranks than GPUs is refused here with a clear
 * line. Rank 0 draws the unique id; with several ranks it reaches the others
 * through the run's file rendezvous (dmnist-run --np sets DMNIST_RENDEZVOUS,
 * or [comm] rendezvous = file:///DIR for mpirun and other launchers). The
 * communicator is created non-blocking, so a rank that never arrives gives a
 * timeout (and ncclCommAbort) instead of a hang.
 *
 * Collectives. Buffers are device buffers only (devices = cuda; the core
 * stages its few host vectors through the GPU). Each collective runs on the
 * plugin's own stream, ordered after the caller's stream by an event and
 * before the caller's later work by another:
 *     caller stream: ... backward(bucket) --record ready--> ... --wait done--> optimizer
 *     comm stream:             wait ready --> ncclAllReduce --> record done
 * so allreduce_start() and wait() never block the host and later layers'
 * backward overlaps the reduction. Blocking calls (allreduce, broadcast,
 * barrier) also wait on the host, at most timeout_s.
 *
 * Timeouts. A watchdog thread (several ranks only) polls the collectives in
 * flight; one still running after timeout_s, or an asynchronous NCCL error
 * (a peer gone), aborts the communicator (ncclCommAbort makes the stuck
 * kernels return), and every later call fails with that message. */
#define _GNU_SOURCE /* usleep */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "dmnist/comm.h"
#include "dmnist/plugin.h"
#include "nccl_rdzv.h"

#define NCCL_DEFAULT_TIMEOUT_S 60.0
#define MAX_INFLIGHT 256 /* collectives the watchdog tracks at once */

/* A collective in flight: its completion event and when it was started. */
typedef struct inflight {
    cudaEvent_t done;
    double started;
    const char *what;
} inflight;

struct dm_comm_request {
    cudaEvent_t done; /* owned by the inflight ring (single-rank: by the request) */
};

typedef struct nccl_state {
    ncclComm_t comm;
    int rank, size, local_rank, gpu;
    double timeout_s;
    cudaStream_t stream; /* the plugin's communication stream */
    float *one;          /* 1 float on the device, for barrier() */

    pthread_mutex_t mu; /* guards comm calls, the ring and broken */
    pthread_cond_t stop_cv;
    pthread_t watchdog;
    int watchdog_running, stopping;
    inflight ring[MAX_INFLIGHT];
    int head, count; /* oldest at head */
    int broken;      /* aborted: every call fails with broken_msg */
    int aborted;
    dm_status broken_code;
    char broken_msg[DM_ERRMSG_MAX];
} nccl_state;

static const dm_param_def nccl_params[] = {
    {"rendezvous", DM_PARAM_STRING, "", 0, -1, NULL,
     "file:///DIR shared by all ranks for the NCCL id; empty = the run's rendezvous"},
    {"timeout_s", DM_PARAM_FLOAT, "0", 0.0, 86400.0, NULL,
     "seconds a collective may take before the communicator is aborted; 0 = the run's comm timeout"},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "<what> failed: <NCCL's string> (<NCCL's last message>)"; the core adds
 * "nccl: " in front, as for every message of this plugin. */
static int nccl_fail(dm_error *err, ncclComm_t comm, ncclResult_t r, const char *what)
{
    const char *last = comm ? ncclGetLastError(comm) : ncclGetLastError(NULL);
    int code = r == ncclRemoteError || r == ncclSystemError ? DM_ERR_COMM
        : r == ncclInvalidArgument || r == ncclInvalidUsage ? DM_ERR_INVALID
                                                            : DM_ERR_DEVICE;
    if (last && last[0]) return dm_fail(err, code, "%s failed: %s (%s)", what, ncclGetErrorString(r), last);
    return dm_fail(err, code, "%s failed: %s", what, ncclGetErrorString(r));
}

static int cuda_fail(dm_error *err, cudaError_t e, const char *what)
{
    return dm_fail(err, DM_ERR_DEVICE, "cuda: %s failed: %s", what, cudaGetErrorString(e));
}

/* Non-blocking communicators may answer ncclInProgress: poll until the
 * call has really been issued (or failed), at most until deadline. */
static ncclResult_t settle(ncclComm_t comm, ncclResult_t r, double deadline)
{
    while (r == ncclInProgress) {
        if (now_s() > deadline) return ncclInProgress;
        usleep(100);
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) return ncclInternalError;
    }
    return r;
}

/* Abort once, under mu; later calls report why. */
static void break_comm(nccl_state *st, dm_status code, const char *msg)
{
    if (!st->broken) {
        st->broken = 1;
        st->broken_code = code;
        snprintf(st->broken_msg, sizeof st->broken_msg, "%s", msg);
    }
    if (st->comm && !st->aborted) {
        ncclCommAbort(st->comm);
        st->aborted = 1;
    }
}

static int check_broken(nccl_state *st, dm_error *err)
{
    if (!st->broken) return DM_OK;
    return dm_fail(err, st->broken_code, "%s", st->broken_msg);
}

/* Retire finished collectives at the ring's head; under mu. */
static void retire_done(nccl_state *st)
{
    while (st->count > 0) {
        inflight *f = &st->ring[st->head];
        if (cudaEventQuery(f->done) == cudaErrorNotReady) {
            (void)cudaGetLastError(); /* "not ready" is no error: keep it out of later checks */
            break;
        }
        cudaEventDestroy(f->done);
        st->head = (st->head + 1) % MAX_INFLIGHT;
        st->count--;
    }
}

static void *watchdog_main(void *arg)
{
    nccl_state *st = arg;
    cudaSetDevice(st->gpu); /* events are queried on this thread too */
    pthread_mutex_lock(&st->mu);
    while (!st->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000 * 1000; /* every 50 ms */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&st->stop_cv, &st->mu, &ts);
        if (st->stopping || st->broken) continue;
        retire_done(st);
        ncclResult_t async = ncclSuccess;
        if (st->comm && ncclCommGetAsyncError(st->comm, &async) == ncclSuccess && async != ncclSuccess &&
            async != ncclInProgress) {
            char msg[DM_ERRMSG_MAX];
            const char *last = ncclGetLastError(st->comm);
            snprintf(msg, sizeof msg, "rank %d: communicator failed: %s%s%s%s; aborted", st->rank,
                     ncclGetErrorString(async), last && last[0] ? " (" : "", last ? last : "",
                     last && last[0] ? ")" : "");
            break_comm(st, DM_ERR_COMM, msg);
        } else if (st->count > 0 && now_s() - st->ring[st->head].started > st->timeout_s) {
            char msg[DM_ERRMSG_MAX];
            snprintf(msg, sizeof msg,
                     "rank %d: %s did not complete within %g s (a peer is lost or stuck); "
                     "communicator aborted",
                     st->rank, st->ring[st->head].what, st->timeout_s);
            break_comm(st, DM_ERR_TIMEOUT, msg);
        }
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

/* ---- init / finalize -------------------------------------------------------- */

static void free_state(nccl_state *st)
{
    if (st->watchdog_running) {
        pthread_mutex_lock(&st->mu);
        st->stopping = 1;
        pthread_cond_signal(&st->stop_cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->watchdog, NULL);
    }
    while (st->count > 0) {
        cudaEventDestroy(st->ring[st->head].done);
        st->head = (st->head + 1) % MAX_INFLIGHT;
        st->count--;
    }
    if (st->one) cudaFree(st->one);
    if (st->stream) cudaStreamDestroy(st->stream);
    pthread_cond_destroy(&st->stop_cv);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static int nccl_init(const dm_params *params, const dm_comm_config *cfg, void **state, dm_comm_info *info,
                     dm_error *err)
{
    *state = NULL;
    if (cfg->device != DM_DEVICE_CUDA)
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "needs device = cuda (NCCL reduces GPU buffers); use backend = gloo or "
                       "mpi for device = cpu");
    int rank = cfg->rank >= 0 ? cfg->rank : 0;
    int size = cfg->size > 0 ? cfg->size : 1;
    int local_rank = cfg->local_rank >= 0 ? cfg->local_rank : rank;
    if (size < 1 || rank < 0 || rank >= size)
        return dm_fail(err, DM_ERR_INVALID, "rank %d is not in 0..%d", rank, size - 1);

    int gpus = 0;
    cudaError_t ce = cudaGetDeviceCount(&gpus);
    if (ce != cudaSuccess || gpus == 0)
        return dm_fail(err, DM_ERR_DEVICE, "no CUDA device: %s; use device = cpu",
                       ce != cudaSuccess ? cudaGetErrorString(ce) : "no GPU found");
    int local_size = DM_HAS_FIELD(cfg, dm_comm_config, local_size) && cfg->local_size > 0 ? cfg->local_size : size;
    if (local_size > gpus)
        return dm_fail(err, DM_ERR_UNSUPPORTED,
                       "%d ranks on this host but %d GPU%s: NCCL needs one GPU per rank; start "
                       "at most %d ranks here, or use backend = gloo or mpi",
                       local_size, gpus, gpus == 1 ? "" : "s", gpus);
    const int gpu = local_rank > 0 ? local_rank % gpus : 0; /* as dm_dev_open */
    if ((ce = cudaSetDevice(gpu)) != cudaSuccess) return cuda_fail(err, ce, "cudaSetDevice");

    double timeout_s = dm_param_float(params, "timeout_s", 0.0);
    if (timeout_s <= 0.0) timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : NCCL_DEFAULT_TIMEOUT_S;

    /* The unique id: drawn by rank 0, shared through the rendezvous. */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r;
    if (size == 1 || rank == 0) {
        if ((r = ncclGetUniqueId(&id)) != ncclSuccess) return nccl_fail(err, NULL, r, "ncclGetUniqueId");
    }
    if (size > 1) {
        const char *url = dm_param_str(params, "rendezvous", "");
        if (!url[0]) url = cfg->rendezvous ? cfg->rendezvous : "";
        if (!url[0])
            return dm_fail(err, DM_ERR_INVALID,
                           "%d ranks need a rendezvous to share the NCCL id: start with "
                           "dmnist-run --np N, or set [comm] rendezvous = file:///DIR (a directory all "
                           "ranks see) or DMNIST_RENDEZVOUS",
                           size);
        const char *dir = nccl_rdzv_dir(url);
        if (!dir) return dm_fail(err, DM_ERR_INVALID, "rendezvous '%s' is not supported: use file:///DIR", url);
        char name[256];
        nccl_rdzv_name(name, sizeof name);
        /* ABI 1.2: the core's job id (DMNIST_JOB_ID, Slurm, Open MPI), already one plain name */
        if (DM_HAS_FIELD(cfg, dm_comm_config, job_id) && cfg->job_id && cfg->job_id[0])
            snprintf(name, sizeof name, "nccl-id-%s", cfg->job_id);
        int rc = rank == 0 ? nccl_rdzv_publish(dir, name, size, &id, sizeof id, err)
                           : nccl_rdzv_fetch(dir, name, size, &id, sizeof id, timeout_s, err);
        if (rc) return rc;
    }

    nccl_state *st = calloc(1, sizeof *st);
    if (!st) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    st->rank = rank;
    st->size = size;
    st->local_rank = local_rank;
    st->gpu = gpu;
    st->timeout_s = timeout_s;
    pthread_mutex_init(&st->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->stop_cv, &ca);
    pthread_condattr_destroy(&ca);

    if ((ce = cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (ce = cudaMalloc((void **)&st->one, sizeof(float))) != cudaSuccess) {
        free_state(st);
        return cuda_fail(err, ce, "stream or buffer allocation");
    }

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; /* so a missing rank is a timeout, not a hang */
    const double deadline = now_s() + timeout_s;
    r = ncclCommInitRankConfig(&st->comm, size, id, rank, &config);
    if (r == ncclSuccess || r == ncclInProgress) r = settle(st->comm, r, deadline);
    if (r != ncclSuccess) {
        int rc;
        if (r == ncclInProgress)
            rc = dm_fail(err, DM_ERR_TIMEOUT, "rank %d of %d: not every rank joined the communicator within %g s", rank,
                         size, timeout_s);
        else rc = nccl_fail(err, st->comm, r, "ncclCommInitRankConfig");
        if (st->comm) ncclCommAbort(st->comm);
        st->comm = NULL;
        free_state(st);
        return rc;
    }
    if (size > 1) {
        if (pthread_create(&st->watchdog, NULL, watchdog_main, st) != 0) {
            ncclCommAbort(st->comm);
            free_state(st);
            return dm_fail(err, DM_ERR_INTERNAL, "cannot start the watchdog thread");
        }
        st->watchdog_running = 1;
    }
    info->rank = rank;
    info->size = size;
    info->local_rank = local_rank;
    *state = st;
    return DM_OK;
}

static int nccl_finalize(void *state, dm_error *err)
{
    nccl_state *st = state;
    if (!st) return DM_OK;
    int rc = DM_OK;
    if (st->watchdog_running) {
        pthread_mutex_lock(&st->mu);
        st->stopping = 1;
        pthread_cond_signal(&st->stop_cv);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->watchdog, NULL);
        st->watchdog_running = 0;
    }
    if (st->comm) {
        if (!st->aborted) {
            /* Finalize flushes outstanding work; a peer that is gone turns it
             * into a timeout, then an abort. */
            ncclResult_t r = ncclCommFinalize(st->comm);
            r = settle(st->comm, r, now_s() + st->timeout_s);
            if (r != ncclSuccess) {
                rc = r == ncclInProgress
                    ? dm_fail(err, DM_ERR_TIMEOUT, "finalize did not complete within %g s", st->timeout_s)
                    : nccl_fail(err, st->comm, r, "ncclCommFinalize");
                ncclCommAbort(st->comm);
            } else {
                ncclCommDestroy(st->comm);
            }
        }
        st->comm = NULL;
    }
    free_state(st);
    return rc;
}

/* ---- collectives -------------------------------------------------------------- */

static int need_device(const nccl_state *st, dm_device device, const char *what, dm_error *err)
{
    (void)st;
    if (device != DM_DEVICE_CUDA)
        return dm_fail(err, DM_ERR_UNSUPPORTED, "%s got a host buffer; nccl takes device buffers only (devices = cuda)",
                       what);
    return DM_OK;
}

/* Issue op on the comm stream after everything queued on `caller`, record
 * its completion in *done and make `caller` wait for it. Under mu. */
typedef ncclResult_t (*issue_fn)(nccl_state *st, void *arg);

static int launch(nccl_state *st, cudaStream_t caller, issue_fn issue, void *arg, const char *what, cudaEvent_t *done,
                  dm_error *err)
{
    int rc = check_broken(st, err);
    if (rc) return rc;
    cudaEvent_t ready = NULL;
    cudaError_t ce = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(done, cudaEventDisableTiming);
    if (ce == cudaSuccess) ce = cudaEventRecord(ready, caller);
    if (ce == cudaSuccess) ce = cudaStreamWaitEvent(st->stream, ready, 0);
    if (ready) cudaEventDestroy(ready); /* released once the wait has used it */
    if (ce != cudaSuccess) return cuda_fail(err, ce, what);
    ncclResult_t r = settle(st->comm, issue(st, arg), now_s() + st->timeout_s);
    if (r != ncclSuccess) {
        cudaEventDestroy(*done);
        *done = NULL;
        char msg[DM_ERRMSG_MAX];
        dm_error e = {0};
        if (r == ncclInProgress)
            dm_fail(&e, DM_ERR_TIMEOUT, "rank %d: %s could not be issued within %g s", st->rank, what, st->timeout_s);
        else nccl_fail(&e, st->comm, r, what);
        snprintf(msg, sizeof msg, "%s", e.msg);
        break_comm(st, (dm_status)e.code, msg);
        return dm_fail(err, e.code, "%s", msg);
    }
    if ((ce = cudaEventRecord(*done, st->stream)) != cudaSuccess ||
        (ce = cudaStreamWaitEvent(caller, *done, 0)) != cudaSuccess)
        return cuda_fail(err, ce, what);
    return DM_OK;
}

/* Track done for the watchdog (several ranks), or hand it back. Under mu. */
static void track(nccl_state *st, cudaEvent_t done, const char *what)
{
    retire_done(st);
    if (st->count == MAX_INFLIGHT) { /* the oldest must be long finished or timed out */
        cudaEventDestroy(st->ring[st->head].done);
        st->head = (st->head + 1) % MAX_INFLIGHT;
        st->count--;
    }
    inflight *f = &st->ring[(st->head + st->count) % MAX_INFLIGHT];
    f->done = done;
    f->started = now_s();
    f->what = what;
    st->count++;
}

/* Block the host until done, at most timeout_s; without mu. */
static int host_wait(nccl_state *st, cudaEvent_t done, const char *what, dm_error *err)
{
    const double deadline = now_s() + st->timeout_s;
    for (int us = 20;; us = us < 1000 ? us * 2 : 1000) {
        cudaError_t ce = cudaEventQuery(done);
        if (ce == cudaSuccess) break;
        if (ce != cudaErrorNotReady) return cuda_fail(err, ce, what);
        (void)cudaGetLastError(); /* "not ready" is no error: keep it out of later checks */
        pthread_mutex_lock(&st->mu);
        int rc = check_broken(st, err);
        if (!rc && now_s() > deadline) {
            char msg[DM_ERRMSG_MAX];
            snprintf(msg, sizeof msg,
                     "rank %d: %s did not complete within %g s (a peer is lost or stuck); "
                     "communicator aborted",
                     st->rank, what, st->timeout_s);
            break_comm(st, DM_ERR_TIMEOUT, msg);
            rc = dm_fail(err, DM_ERR_TIMEOUT, "%s", msg);
        }
        pthread_mutex_unlock(&st->mu);
        if (rc) return rc;
        usleep((useconds_t)us);
    }
    pthread_mutex_lock(&st->mu);
    int rc = check_broken(st, err);
    pthread_mutex_unlock(&st->mu);
    return rc;
}

typedef struct reduce_args {
    float *buf;
    size_t n;
    ncclRedOp_t op;
} reduce_args;

static ncclResult_t issue_allreduce(nccl_state *st, void *arg)
{
    reduce_args *a = arg;
    return ncclAllReduce(a->buf, a->buf, a->n, ncclFloat32, a->op, st->comm, st->stream);
}

typedef struct bcast_args {
    void *buf;
    size_t bytes;
    int root;
} bcast_args;

static ncclResult_t issue_broadcast(nccl_state *st, void *arg)
{
    bcast_args *a = arg;
    return ncclBroadcast(a->buf, a->buf, a->bytes, ncclUint8, a->root, st->comm, st->stream);
}

static int reduce_op(dm_reduce_op op, ncclRedOp_t *out, dm_error *err)
{
    if (op == DM_REDUCE_SUM) *out = ncclSum;
    else if (op == DM_REDUCE_AVG) *out = ncclAvg;
    else return dm_fail(err, DM_ERR_INVALID, "unknown reduce op %d", (int)op);
    return DM_OK;
}

static int nccl_allreduce_start(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                                dm_comm_request **req, dm_error *err)
{
    nccl_state *st = state;
    *req = NULL;
    reduce_args a = {buf, n, ncclSum};
    int rc = need_device(st, device, "allreduce", err);
    if (!rc) rc = reduce_op(op, &a.op, err);
    if (rc) return rc;
    dm_comm_request *q = calloc(1, sizeof *q);
    if (!q) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&st->mu);
    rc = launch(st, (cudaStream_t)cuda_stream, issue_allreduce, &a, "allreduce", &q->done, err);
    pthread_mutex_unlock(&st->mu);
    if (rc) {
        free(q);
        return rc;
    }
    *req = q;
    return DM_OK;
}

static int nccl_wait(void *state, dm_comm_request *req, dm_error *err)
{
    nccl_state *st = state;
    if (!req) return dm_fail(err, DM_ERR_INVALID, "wait on a NULL request");
    /* The caller's stream already waits on req->done (launch); the host
     * does not. The watchdog owns the event from here on. */
    pthread_mutex_lock(&st->mu);
    int rc = check_broken(st, err);
    if (st->size > 1) track(st, req->done, "allreduce");
    else cudaEventDestroy(req->done);
    pthread_mutex_unlock(&st->mu);
    free(req);
    return rc;
}

/* Blocking calls: issue, then wait on the host (the contract: on return
 * the buffer holds the result). */
static int blocking(nccl_state *st, cudaStream_t caller, issue_fn issue, void *arg, const char *what, dm_error *err)
{
    cudaEvent_t done = NULL;
    pthread_mutex_lock(&st->mu);
    int rc = launch(st, caller, issue, arg, what, &done, err);
    pthread_mutex_unlock(&st->mu);
    if (rc) return rc;
    rc = host_wait(st, done, what, err);
    cudaEventDestroy(done);
    return rc;
}

static int nccl_allreduce(void *state, float *buf, size_t n, dm_reduce_op op, dm_device device, void *cuda_stream,
                          dm_error *err)
{
    nccl_state *st = state;
    reduce_args a = {buf, n, ncclSum};
    int rc = need_device(st, device, "allreduce", err);
    if (!rc) rc = reduce_op(op, &a.op, err);
    if (rc) return rc;
    return blocking(st, (cudaStream_t)cuda_stream, issue_allreduce, &a, "allreduce", err);
}

static int nccl_broadcast(void *state, void *buf, size_t bytes, int root, dm_device device, void *cuda_stream,
                          dm_error *err)
{
    nccl_state *st = state;
    int rc = need_device(st, device, "broadcast", err);
    if (rc) return rc;
    if (root < 0 || root >= st->size)
        return dm_fail(err, DM_ERR_INVALID, "broadcast root %d is not in 0..%d", root, st->size - 1);
    bcast_args a = {buf, bytes, root};
    return blocking(st, (cudaStream_t)cuda_stream, issue_broadcast, &a, "broadcast", err);
}

static int nccl_barrier(void *state, dm_error *err)
{
    nccl_state *st = state;
    reduce_args a = {st->one, 1, ncclSum};
    return blocking(st, st->stream, issue_allreduce, &a, "barrier", err);
}

DM_COMM_VTABLE(nccl, DM_DEVICE_BIT(DM_DEVICE_CUDA));

#define STR_(x) #x
#define STR(x) STR_(x)
/* No CUDA sources (only runtime and NCCL calls), so the signature is said here. */
DM_PLUGIN_DEFINE("nccl", "1.0.0", "cuda;nccl" STR(NCCL_MAJOR) "." STR(NCCL_MINOR),
                 DM_COMM_COMPONENT("nccl",
                                   "NCCL collectives on GPU buffers, one rank per GPU; id shared through a file:// "
                                   "rendezvous",
                                   nccl_params, &nccl_vtable));
