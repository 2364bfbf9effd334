/* Device memory for the core: plain aligned host memory on the CPU, the
 * CUDA runtime when built with it. Plugins never allocate what crosses
 * the boundary; the core does it here. */
#define _GNU_SOURCE
#include "dm_core.h"

#include <stdlib.h>
#ifdef DMNIST_CORE_CUDA
#include <cuda_runtime_api.h>
#endif

const char *dm_device_name(dm_device device)
{
    return device == DM_DEVICE_CUDA ? "cuda" : "cpu";
}

#ifdef DMNIST_CORE_CUDA
#define CUDA_TRY(call, what)                                                                   \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess)                                                                 \
            return dm_fail(err, DM_ERR_DEVICE, "cuda: %s failed: %s", what, cudaGetErrorString(e_)); \
    } while (0)
#endif

int dm_dev_open(dm_devctx *d, dm_device device, int local_rank, dm_error *err)
{
    memset(d, 0, sizeof *d);
    d->device = device;
    if (device == DM_DEVICE_CPU)
        return DM_OK;
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
    if (d->device == DM_DEVICE_CUDA && d->stream)
        cudaStreamDestroy((cudaStream_t)d->stream);
#endif
    d->stream = NULL;
}

void *dm_dev_alloc(dm_devctx *d, size_t bytes, dm_error *err)
{
    if (bytes == 0) bytes = 64;
    if (d->device == DM_DEVICE_CPU) {
        size_t rounded = (bytes + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, rounded);
        if (!p) {
            dm_fail(err, DM_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
            return NULL;
        }
        memset(p, 0, rounded);
        return p;
    }
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
    if (d->device == DM_DEVICE_CPU) { free(p); return; }
#ifdef DMNIST_CORE_CUDA
    cudaFree(p);
#endif
}

int dm_dev_upload(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) { memcpy(dst, src, bytes); return DM_OK; }
#ifdef DMNIST_CORE_CUDA
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)d->stream), "upload");
    return DM_OK;
#else
    (void)err;
    return DM_ERR_DEVICE;
#endif
}

int dm_dev_download(dm_devctx *d, void *dst, const void *src, size_t bytes, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) { memcpy(dst, src, bytes); return DM_OK; }
#ifdef DMNIST_CORE_CUDA
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)d->stream), "download");
    CUDA_TRY(cudaStreamSynchronize((cudaStream_t)d->stream), "cudaStreamSynchronize");
    return DM_OK;
#else
    (void)err;
    return DM_ERR_DEVICE;
#endif
}

int dm_dev_zero(dm_devctx *d, void *p, size_t bytes, dm_error *err)
{
    if (d->device == DM_DEVICE_CPU) { memset(p, 0, bytes); return DM_OK; }
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
