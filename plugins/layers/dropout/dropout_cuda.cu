/* Dropout on CUDA with the CPU's mask, bit for bit: element i of the batch
 * tensor is kept when dm_hash64(seed, i) >> 40 >= threshold (dropout.h).
 * dm_hash64 (abi.h) is a host function, so device_hash64 below restates it
 * (splitmix64 of seed ^ (i * 0xD1B54A32D192ED03)) in the same 64-bit
 * arithmetic; tests/cuda compares the masks with the CPU's exactly. */
#include <cuda_runtime.h>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "dropout.h"
}

#define THREADS 256

namespace
{

__device__ __forceinline__ uint64_t device_hash64(uint64_t seed, uint64_t index)
{
    uint64_t z = (seed ^ (index * 0xD1B54A32D192ED03ull)) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* dst[i] = keep(i) ? src[i] * scale : 0; the same for forward and backward. */
__global__ void mask_kernel(const float *src, float *dst, size_t count, uint64_t seed, uint32_t threshold, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = (device_hash64(seed, i) >> 40) >= threshold ? src[i] * scale : 0.0f;
}

int apply_mask(const dropout_state *s, void *stream, uint64_t seed, size_t count, const float *src, float *dst,
               dm_error *err)
{
    mask_kernel<<<dm_cuda_grid(count, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(src, dst, count, seed,
                                                                                           s->threshold, s->scale);
    return dm_cuda_launched(s->name, "dropout kernel", err);
}

} // namespace

int dropout_forward_cuda(const dropout_state *s, void *stream, uint64_t seed, size_t count, const float *x, float *y,
                         dm_error *err)
{
    return apply_mask(s, stream, seed, count, x, y, err);
}

int dropout_backward_cuda(const dropout_state *s, void *stream, uint64_t seed, size_t count, const float *dy, float *dx,
                          dm_error *err)
{
    return apply_mask(s, stream, seed, count, dy, dx, err);
}

int dropout_copy_cuda(const dropout_state *s, void *stream, size_t count, const float *src, float *dst, dm_error *err)
{
    return dm_cuda_copy(s->name, stream, count, src, dst, err);
}
