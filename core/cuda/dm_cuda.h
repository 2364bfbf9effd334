/* CUDA helpers of the core (the .cu files in core/cuda/, compiled into dmnist_core only
 * when DMNIST_CORE_CUDA is defined). Plain C declarations; all pointers are
 * device pointers unless said otherwise, and every call is asynchronous on
 * `stream` (a cudaStream_t). */
#ifndef DM_CORE_CUDA_H
#define DM_CORE_CUDA_H

#include "dmnist/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Gather n examples of `item` floats each from a dataset that lives on the
 * device: example k of the batch is src[idx[k]] when idx is not NULL (idx
 * on the device: an epoch's permutation), else src[first + k].
 *   dst_images (n, item) <- src_images (count, item)
 *   dst_labels (n)       <- src_labels (count)
 * Indices must be in range (the core draws them from [0, count)). */
int dm_cuda_gather(float *dst_images, int32_t *dst_labels, const float *src_images, const int32_t *src_labels,
                   const int64_t *idx, int64_t first, int n, size_t item, void *stream, dm_error *err);

/* *flag (one device word) <- 1 when x[0..n) holds a NaN or an Inf, else 0. */
int dm_cuda_any_nonfinite(const float *x, size_t n, unsigned *flag, void *stream, dm_error *err);

#ifdef __cplusplus
}
#endif
#endif
