/* Device memory for the core: plain aligned host memory on the CPU, the
 * CUDA runtime when built with it. Plugins never allocate what crosses
 * the boundary; the core does it here. */
#define _GNU_SOURCE
#include "dm_core.h"

#include <stdlib.h>
#ifdef DMNIST_CORE_CUDA
#include <cuda_runtime_api.h>
#endif

const char *dm_device_name(dm_device device) { return device == DM_DEVICE_CUDA ? "cuda" : "cpu"; }

#ifdef DMNIST_CORE_CUDA
#define CUDA_TRY(call, what) \
    do { \
        cudaError_t e_ = (call); \
        if (e_ != cudaSuccess) \
            return dm_fail(err, DM_ERR_DEVICE, "cuda: %s failed: %s", what, cudaGetErrorString(e_)); \
    } while (0)
#endif

int dm_dev_open(dm_devctx *d, dm_device device, int local_rank, dm_error *err)
{
    memset(d, 0, sizeof *d);
    d->device = device;
    if (device == DM_DEVICE_CPU) return DM_OK;
#ifdef DMNIST_CORE_CUDA
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return dm_fail(err, DM_ERR_DEVICE, "no CUDA device: %s; use device = cpu",
                       e != cudaSuccess ? cudaGetErrorString(e) : "no GPU found");
    d->ordinal = local_rank > 0 ? local_rank % count : 0;
    CUDA_TRY(cudaSetDevice(d->ordinal), "cudaSetDevice");
    cudaStream_t s;
    CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    d->stream = s;
    return DM_OK;
#else
    (void)local_rank;
    return dm_fail(err, DM_ERR_DEVICE, "no CUDA device: this dmnist was built without CUDA; use device = cpu");
#endif
}

void dm_dev_close(dm_devctx *d)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA && d->stream) cudaStreamDestroy((cudaStream_t)d->stream);
#endif
    d->stream = NULL;
}

/* Zeroed host memory, 64-byte aligned (whole cache lines for the CPU kernels). */
static void *cpu_alloc(size_t bytes, dm_error *err)
{
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (!p) {
        dm_fail(err, DM_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

void *dm_dev_alloc(dm_devctx *d, size_t bytes, dm_error *err)
{
    if (bytes == 0) bytes = 64;
    if (d->device == DM_DEVICE_CPU) return cpu_alloc(bytes, err);
#ifdef DMNIST_CORE_CUDA
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        dm_fail(err, DM_ERR_NOMEM, "cuda: cannot allocate %zu bytes: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    /* On the core's stream: a legacy-stream memset is not ordered with the
     * non-blocking stream and could land after a later upload. */
    if ((e = cudaMemsetAsync(p, 0, bytes, (cudaStream_t)d->stream)) != cudaSuccess) {
        cudaFree(p);
        dm_fail(err, DM_ERR_DEVICE, "cuda: cudaMemset failed: %s", cudaGetErrorString(e));
        return NULL;
    }
    return p;
#else
    dm_fail(err, DM_ERR_DEVICE, "built without CUDA");
    return NULL;
#endif
}

void dm_dev_free(dm_devctx *d, void *p)
{
    if (!p) return;
    if (d->device == DM_DEVICE_CPU) {
        free(p);
        return;
    }
#ifdef DMNIST_CORE_CUDA
    cudaFree(p);
#endif
}

/* The copy directions, numbered as cudaMemcpyKind numbers them. */
enum { COPY_TO_DEVICE = 1, COPY_TO_HOST = 2, COPY_ON_DEVICE = 3 };

/* dst <- src on the run's stream (plain memcpy on the CPU); a copy to the
 * host waits for it, so the host can read dst on return. */
static int stream_copy(dm_devctx *d, void *dst, const void *src, size_t bytes, int kind, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) {
        memcpy(dst, src, bytes);
        return DM_OK;
    }
#ifdef DMNIST_CORE_CUDA
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, (enum cudaMemcpyKind)kind, (cudaStream_t)d->stream), "cudaMemcpyAsync");
    if (kind == COPY_TO_HOST) CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream), "cudaStreamSynchronize");
    return DM_OK;
#else
    (void)err;
    (void)kind;
    return DM_ERR_DEVICE;
#endif
}

int dm_dev_upload(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err)
{
    return stream_copy(d, dst, src, bytes, COPY_TO_DEVICE, err);
}

int dm_dev_download(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err)
{
    return stream_copy(d, dst, src, bytes, COPY_TO_HOST, err);
}

int dm_dev_copy(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err)
{
    return stream_copy(d, dst, src, bytes, COPY_ON_DEVICE, err);
}

int dm_dev_zero(dm_devctx *d, void *p, size_t bytes, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) {
        memset(p, 0, bytes);
        return DM_OK;
    }
#ifdef DMNIST_CORE_CUDA
    CUDA_TRY(cudaMemsetAsync(p, 0, bytes, (cudaStream_t)d->stream), "cudaMemsetAsync");
    return DM_OK;
#else
    (void)err;
    return DM_ERR_DEVICE;
#endif
}

int dm_dev_sync(dm_devctx *d, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) return DM_OK;
#ifdef DMNIST_CORE_CUDA
    CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream), "cudaStreamSynchronize");
    return DM_OK;
#else
    (void)err;
    return DM_ERR_DEVICE;
#endif
}

/* ---- host staging: pinned memory, a copy stream, events ------------------- */

void *dm_host_alloc(dm_devctx *d, size_t bytes, dm_error *err)
{
    if (bytes == 0) bytes = 64;
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        void *p = NULL;
        cudaError_t e = cudaMallocHost(&p, bytes);
        if (e != cudaSuccess) {
            dm_fail(err, DM_ERR_NOMEM, "cuda: cannot allocate %zu bytes of pinned host memory: %s", bytes,
                    cudaGetErrorString(e));
            return NULL;
        }
        memset(p, 0, bytes);
        return p;
    }
#else
    (void)d;
#endif
    return cpu_alloc(bytes, err);
}

void dm_host_free(dm_devctx *d, void *p)
{
    if (!p) return;
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        cudaFreeHost(p);
        return;
    }
#else
    (void)d;
#endif
    free(p);
}

/* The CPU stand-in for a stream: copies wait in a FIFO until something
 * needs them done (late_copies), or are done at once. `issued` and `done`
 * count copies ever queued and performed; an event remembers `issued`. */
typedef struct cpu_copy {
    void *dst;
    const void *src;
    size_t bytes;
} cpu_copy;

typedef struct cpu_stream {
    int late;    /* DM_STREAM_LATE_COPIES */
    cpu_copy *q; /* pending: q[head..n) */
    size_t head, n, cap;
    uint64_t issued, done;
} cpu_stream;

struct dm_dev_event {
#ifdef DMNIST_CORE_CUDA
    cudaEvent_t cu; /* device = cuda */
#endif
    cpu_stream *s; /* CPU: the stream recorded on (NULL: the host, done) */
    uint64_t seq;  /* CPU: done once s->done reaches it */
    int queries;   /* CPU, late_copies: queries since the record */
};

static void cpu_flush(cpu_stream *s, uint64_t upto)
{
    while (s->done < upto && s->head < s->n) {
        cpu_copy *c = &s->q[s->head++];
        memcpy(c->dst, c->src, c->bytes);
        s->done++;
    }
    if (s->head == s->n) s->head = s->n = 0;
}

static int cpu_copy_async(cpu_stream *s, void *dst, const void *src, size_t bytes, dm_error *err)
{
    if (!s || !s->late) {
        if (s) cpu_flush(s, s->issued); /* keep FIFO order behind earlier late copies */
        memcpy(dst, src, bytes);
        if (s) s->issued++, s->done++;
        return DM_OK;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        cpu_copy *q = realloc(s->q, cap * sizeof *q);
        if (!q) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
        s->q = q;
        s->cap = cap;
    }
    s->q[s->n++] = (cpu_copy){dst, src, bytes};
    s->issued++;
    return DM_OK;
}

int dm_dev_stream_new(dm_devctx *d, unsigned flags, void **stream, dm_error *err)
{
    *stream = NULL;
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        cudaStream_t s;
        /* non-blocking: no implicit ordering with the legacy default stream */
        CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
        *stream = s;
        return DM_OK;
    }
#else
    (void)d;
#endif
    cpu_stream *s = calloc(1, sizeof *s);
    if (!s) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
    s->late = (flags & DM_STREAM_LATE_COPIES) != 0;
    *stream = s;
    return DM_OK;
}

void dm_dev_stream_free(dm_devctx *d, void *stream)
{
    if (!stream) return;
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        cudaStreamSynchronize((cudaStream_t)stream);
        cudaStreamDestroy((cudaStream_t)stream);
        return;
    }
#else
    (void)d;
#endif
    cpu_stream *s = stream;
    cpu_flush(s, s->issued);
    free(s->q);
    free(s);
}

/* One asynchronous copy in either direction (to_host: device -> host). */
static int copy_async(dm_devctx *d, void *dst, const void *src, size_t bytes, void *stream, int to_host, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                                 (cudaStream_t)stream),
                 to_host ? "download" : "upload");
        return DM_OK;
    }
#endif
    (void)d, (void)to_host;
    return cpu_copy_async(stream, dst, src, bytes, err);
}

int dm_dev_download_async(dm_devctx *d, void *dst, const void *src, size_t bytes, void *stream, dm_error *err)
{
    return copy_async(d, dst, src, bytes, stream, 1, err);
}

int dm_dev_upload_async(dm_devctx *d, void *dst, const void *src, size_t bytes, void *stream, dm_error *err)
{
    return copy_async(d, dst, src, bytes, stream, 0, err);
}

int dm_dev_event_new(dm_devctx *d, dm_dev_event **ev, dm_error *err)
{
    dm_dev_event *e = calloc(1, sizeof *e);
    if (!e) return dm_fail(err, DM_ERR_NOMEM, "out of memory");
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        /* without timing: recording and waiting are cheaper */
        cudaError_t c = cudaEventCreateWithFlags(&e->cu, cudaEventDisableTiming);
        if (c != cudaSuccess) {
            free(e);
            return dm_fail(err, DM_ERR_DEVICE, "cuda: cudaEventCreate failed: %s", cudaGetErrorString(c));
        }
    }
#else
    (void)d;
#endif
    *ev = e;
    return DM_OK;
}

void dm_dev_event_free(dm_devctx *d, dm_dev_event *ev)
{
    if (!ev) return;
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) cudaEventDestroy(ev->cu);
#else
    (void)d;
#endif
    free(ev);
}

int dm_dev_event_record(dm_devctx *d, dm_dev_event *ev, void *stream, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        CUDA_TRY(cudaEventRecord(ev->cu, (cudaStream_t)stream), "cudaEventRecord");
        return DM_OK;
    }
#else
    (void)d, (void)err;
#endif
    ev->s = stream;
    ev->seq = ev->s ? ev->s->issued : 0;
    ev->queries = 0;
    return DM_OK;
}

int dm_dev_stream_wait(dm_devctx *d, void *stream, dm_dev_event *ev, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)stream, ev->cu, 0), "cudaStreamWaitEvent");
        return DM_OK;
    }
#else
    (void)d, (void)err;
#endif
    /* The CPU cannot defer the host's own work (stream NULL), nor order two
     * queues lazily: finish the marked copies now, which is what any later
     * work on `stream` needs. */
    (void)stream;
    if (ev->s) cpu_flush(ev->s, ev->seq);
    return DM_OK;
}

int dm_dev_event_query(dm_devctx *d, dm_dev_event *ev, int *done, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        cudaError_t c = cudaEventQuery(ev->cu);
        if (c == cudaErrorNotReady) {
            *done = 0;
            return DM_OK;
        }
        CUDA_TRY(c, "cudaEventQuery");
        *done = 1;
        return DM_OK;
    }
#else
    (void)d, (void)err;
#endif
    *done = 1;
    if (!ev->s || ev->s->done >= ev->seq) return DM_OK;
    /* late copies: not yet on the first query after the record, landed on
     * the second, so callers meet both answers */
    if (ev->s->late && ev->queries++ == 0) {
        *done = 0;
        return DM_OK;
    }
    cpu_flush(ev->s, ev->seq);
    return DM_OK;
}

int dm_dev_event_sync(dm_devctx *d, dm_dev_event *ev, dm_error *err)
{
#ifdef DMNIST_CORE_CUDA
    if (d->device == DM_DEVICE_CUDA) {
        CUDA_TRY(cudaEventSynchronize(ev->cu), "cudaEventSynchronize");
        return DM_OK;
    }
#else
    (void)d, (void)err;
#endif
    if (ev->s) cpu_flush(ev->s, ev->seq);
    return DM_OK;
}
