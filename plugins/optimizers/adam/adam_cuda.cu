/* Adam on CUDA: the update of adam.c's adam_update_cpu as one fused kernel
 * over the flat buffers (read p, g, m, v once, write p, m, v once), four
 * floats per thread when the buffers allow 16-byte accesses. lr_t carries
 * the bias correction, computed on the host in double as on the CPU. */
#include <cuda_runtime.h>

#include "dmnist/optimizer.h"
#include "dmnist/cuda_util.h"

#define THREADS 256

namespace
{

struct hyper {
    float lr_t, b1, b2, eps, wd;
};

__device__ __forceinline__ void update(float &p, float g, float &m, float &v, hyper h)
{
    const float gi = g + h.wd * p;
    m = h.b1 * m + (1.0f - h.b1) * gi;
    v = h.b2 * v + (1.0f - h.b2) * gi * gi;
    p -= h.lr_t * m / (sqrtf(v) + h.eps);
}

__global__ void adam_vec4_kernel(float4 *p, const float4 *g, float4 *m, float4 *v, size_t n4, hyper h)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x) {
        float4 pp = p[i], gg = g[i], mm = m[i], vv = v[i];
        update(pp.x, gg.x, mm.x, vv.x, h);
        update(pp.y, gg.y, mm.y, vv.y, h);
        update(pp.z, gg.z, mm.z, vv.z, h);
        update(pp.w, gg.w, mm.w, vv.w, h);
        p[i] = pp;
        m[i] = mm;
        v[i] = vv;
    }
}

__global__ void adam_kernel(float *p, const float *g, float *m, float *v, size_t n, hyper h)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        update(p[i], g[i], m[i], v[i], h);
}

bool aligned16(const void *a) { return ((uintptr_t)a & 15) == 0; }

} // namespace

extern "C" int adam_update_cuda(float *p, const float *g, float *m, float *v, size_t n, float lr_t, float b1, float b2,
                                float eps, float wd, void *stream, dm_error *err)
{
    if (n == 0) return DM_OK;
    const hyper h = {lr_t, b1, b2, eps, wd};
    cudaStream_t st = (cudaStream_t)stream;
    if (n % 4 == 0 && aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v))
        adam_vec4_kernel<<<dm_cuda_grid(n / 4, THREADS, 4096), THREADS, 0, st>>>((float4 *)p, (const float4 *)g,
                                                                                 (float4 *)m, (float4 *)v, n / 4, h);
    else adam_kernel<<<dm_cuda_grid(n, THREADS, 4096), THREADS, 0, st>>>(p, g, m, v, n, h);
    return dm_cuda_launched("adam", "update kernel", err);
}
