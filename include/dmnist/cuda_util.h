/* Helpers for a plugin's CUDA twin (.cu files only: it includes
 * cuda_runtime.h): grid sizes for grid-stride kernels, and one-line errors
 * for a failed launch or CUDA call. Optional and header-only, so a plugin
 * still links nothing of the core.
 *
 *   kernel<<<dm_cuda_grid(n, 256, 65535), 256, 0, stream>>>(...);
 *   return dm_cuda_launched(s->name, "relu forward", err);
 *      -> "conv1: cuda: relu forward launch failed: <cudaGetErrorString>" */
#ifndef DMNIST_CUDA_UTIL_H
#define DMNIST_CUDA_UTIL_H

#include <cuda_runtime.h>

#include "dmnist/abi.h"

/* Blocks of `threads` for a grid-stride loop over `total` elements: enough
 * to cover them, at least 1, at most `max_blocks` (the loop does the rest). */
static inline int dm_cuda_grid(size_t total, int threads, int max_blocks)
{
    size_t blocks = (total + (size_t)threads - 1) / (size_t)threads;
    return (int)(blocks < (size_t)max_blocks ? (blocks ? blocks : 1) : (size_t)max_blocks);
}

/* DM_OK when e is cudaSuccess, else "<who>: cuda: <what> failed: <reason>". */
static inline int dm_cuda_ok(cudaError_t e, const char *who, const char *what, dm_error *err)
{
    if (e != cudaSuccess)
        return dm_fail(err, DM_ERR_DEVICE, "%s: cuda: %s failed: %s", who, what, cudaGetErrorString(e));
    return DM_OK;
}

/* After a kernel launch: "<who>: cuda: <what> launch failed: <reason>" when
 * the launch failed. */
static inline int dm_cuda_launched(const char *who, const char *what, dm_error *err)
{
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return dm_fail(err, DM_ERR_DEVICE, "%s: cuda: %s launch failed: %s", who, what, cudaGetErrorString(e));
    return DM_OK;
}

/* Return from the calling function (which has a dm_error *err) when a CUDA
 * call fails, with dm_cuda_ok's message. */
#define DM_CUDA_TRY(who, call, what) \
    do { \
        int dm_rc_ = dm_cuda_ok((call), (who), (what), err); \
        if (dm_rc_ != DM_OK) return dm_rc_; \
    } while (0)

/* count floats from src to dst on `stream`, device to device; nothing when
 * src == dst (an in-place layer). */
static inline int dm_cuda_copy(const char *who, void *stream, size_t count, const float *src, float *dst, dm_error *err)
{
    if (src == dst) return DM_OK;
    return dm_cuda_ok(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice, (cudaStream_t)stream),
                      who, "cudaMemcpyAsync", err);
}

#endif /* DMNIST_CUDA_UTIL_H */
