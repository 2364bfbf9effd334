/* Batches from a dataset kept whole on the GPU (core/train_data.c uploads every
 * example once): one kernel copies the n examples of a step, picked by the
 * epoch's permutation already on the device, so a training step moves no
 * data between host and device and never waits for the host. */
#include <cuda_runtime.h>

#include "dm_cuda.h"

#define THREADS 256

namespace
{

/* One thread per 4 floats of the batch when rows are 16-byte aligned,
 * else per float (vec = 1); the first n threads also copy the labels. */
template <int vec>
__global__ void gather_kernel(float *dst, int32_t *dst_lab, const float *src, const int32_t *src_lab,
                              const int64_t *idx, int64_t first, int n, size_t item)
{
    const size_t row = item / vec, total = (size_t)n * row;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const size_t k = t / row, j = t % row;
        const int64_t e = idx ? idx[k] : first + (int64_t)k;
        if (vec == 4) reinterpret_cast<float4 *>(dst)[t] = reinterpret_cast<const float4 *>(src)[(size_t)e * row + j];
        else dst[t] = src[(size_t)e * row + j];
        if (j == 0) dst_lab[k] = src_lab[e];
    }
}

} // namespace

extern "C" int dm_cuda_gather(float *dst_images, int32_t *dst_labels, const float *src_images,
                              const int32_t *src_labels, const int64_t *idx, int64_t first, int n, size_t item,
                              void *stream, dm_error *err)
{
    if (n <= 0) return DM_OK;
    const int vec4 = item % 4 == 0 && ((uintptr_t)dst_images & 15) == 0 && ((uintptr_t)src_images & 15) == 0;
    const size_t total = (size_t)n * (vec4 ? item / 4 : item);
    size_t blocks = (total + THREADS - 1) / THREADS;
    if (blocks > 65535) blocks = 65535;
    cudaStream_t st = (cudaStream_t)stream;
    if (vec4)
        gather_kernel<4>
            <<<(unsigned)blocks, THREADS, 0, st>>>(dst_images, dst_labels, src_images, src_labels, idx, first, n, item);
    else
        gather_kernel<1>
            <<<(unsigned)blocks, THREADS, 0, st>>>(dst_images, dst_labels, src_images, src_labels, idx, first, n, item);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return dm_fail(err, DM_ERR_DEVICE, "cuda: batch gather kernel launch failed: %s", cudaGetErrorString(e));
    return DM_OK;
}
