/* ReLU on CUDA: one grid-stride elementwise kernel each way, on the core's
 * stream: the RELU and RELU_DX of relu.h, the same expressions as on the CPU. */
#include <cuda_runtime.h>

#include "dmnist/cuda_util.h"
#include "relu.h"

#define THREADS 256

namespace
{

__global__ void relu_fwd_kernel(const float *x, float *y, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        y[i] = RELU(x[i], 0);
}

__global__ void relu_bwd_kernel(const float *x, const float *dy, float *dx, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dx[i] = RELU_DX(x[i], 0, dy[i], 0);
}

} // namespace

int relu_forward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x, float *y, dm_error *err)
{
    relu_fwd_kernel<<<dm_cuda_grid(count, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(x, y, count);
    return dm_cuda_launched(s->name, "relu forward", err);
}

int relu_backward_cuda(const dm_elementwise *s, void *stream, size_t count, const float *x, const float *y,
                       const float *dy, float *dx, dm_error *err)
{
    (void)y;
    relu_bwd_kernel<<<dm_cuda_grid(count, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(x, dy, dx, count);
    return dm_cuda_launched(s->name, "relu backward", err);
}
