/* SGD on CUDA: sgd.c's three update rules (plain, momentum, Nesterov) as
 * one fused elementwise kernel over the flat buffers, on the core's stream. */
#include <cuda_runtime.h>

#include "dmnist/optimizer.h"
#include "dmnist/cuda_util.h"

#define THREADS 256

namespace
{

/* mode 0: p -= lr * (g + wd p)
 * mode 1: b = mu b + d; p -= lr * b                 (d = g + wd p)
 * mode 2: b = mu b + d; p -= lr * (d + mu b)        (Nesterov) */
__global__ void sgd_kernel(float *p, const float *g, float *b, size_t n, float lr, float wd, float mu, int mode)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float d = g[i] + wd * p[i];
        if (mode == 0) {
            p[i] -= lr * d;
        } else {
            const float bi = mu * b[i] + d;
            b[i] = bi;
            p[i] -= mode == 1 ? lr * bi : lr * (d + mu * bi);
        }
    }
}

} // namespace

extern "C" int sgd_update_cuda(float *p, const float *g, float *velocity, size_t n, float lr, float wd, float mu,
                               int nesterov, void *stream, dm_error *err)
{
    if (n == 0) return DM_OK;
    const int mode = mu == 0.0f ? 0 : nesterov ? 2 : 1;
    sgd_kernel<<<dm_cuda_grid(n, THREADS, 4096), THREADS, 0, (cudaStream_t)stream>>>(p, g, velocity, n, lr, wd, mu,
                                                                                     mode);
    return dm_cuda_launched("sgd", "update kernel", err);
}
