/* Whether a device buffer holds a NaN or an Inf: the NaN/Inf checks of the
 * training loop (core/train_guard.c) read gradients and parameters with it. One
 * pass, a flag OR-ed per block (the result is the same whatever the order). */
#include <cuda_runtime.h>

#include "dm_cuda.h"

#define THREADS 256
#define MAX_BLOCKS 1024

namespace
{

__global__ void nonfinite_kernel(const float *x, size_t n, unsigned *flag)
{
    int bad = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        bad |= !isfinite(x[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1u);
}

} // namespace

extern "C" int dm_cuda_any_nonfinite(const float *x, size_t n, unsigned *flag, void *stream, dm_error *err)
{
    cudaStream_t s = (cudaStream_t)stream;
    cudaError_t e = cudaMemsetAsync(flag, 0, sizeof *flag, s);
    if (e == cudaSuccess && n > 0) {
        size_t blocks = (n + THREADS - 1) / THREADS;
        nonfinite_kernel<<<(unsigned)(blocks < MAX_BLOCKS ? blocks : MAX_BLOCKS), THREADS, 0, s>>>(x, n, flag);
        e = cudaGetLastError();
    }
    if (e != cudaSuccess) return dm_fail(err, DM_ERR_DEVICE, "NaN/Inf check: %s", cudaGetErrorString(e));
    return DM_OK;
}
