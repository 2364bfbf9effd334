/* MaxPool2D on CUDA, with the CPU's semantics: the first maximum of each
 * window (row by row, strictly greater replaces) wins, and backward finds
 * it again from x instead of storing indices.
 *   forward:  one thread per output element
 *   backward: one thread per input element, summing dy over the windows
 *             whose argmax it is, so no atomics and no zeroing pass, and
 *             overlapping windows add up in a fixed order. */
#include <cuda_runtime.h>

#include "dmnist/layer.h"
#include "dmnist/cuda_util.h"
extern "C" {
#include "maxpool2d.h"
}

#define THREADS 256

namespace
{

struct geom {
    int H, W, OH, OW, pool, stride;
};

/* Offset in the plane of the first maximum of window (oy, ox). */
__device__ __forceinline__ int window_argmax(const float *plane, geom g, int oy, int ox)
{
    const int y0 = oy * g.stride, x0 = ox * g.stride;
    int best = y0 * g.W + x0;
    float m = plane[best];
    for (int ky = 0; ky < g.pool; ky++)
        for (int kx = 0; kx < g.pool; kx++) {
            const int o = (y0 + ky) * g.W + x0 + kx;
            if (plane[o] > m) {
                m = plane[o];
                best = o;
            }
        }
    return best;
}

/* x (planes, H, W) -> y (planes, OH, OW). */
__global__ void pool_fwd_kernel(const float *x, float *y, size_t total, geom g)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t plane = i / ((size_t)g.OH * g.OW);
        const int r = (int)(i % ((size_t)g.OH * g.OW)), oy = r / g.OW, ox = r % g.OW;
        const float *xp = x + plane * g.H * g.W;
        y[i] = xp[window_argmax(xp, g, oy, ox)];
    }
}

/* dx (planes, H, W) from dy (planes, OH, OW). */
__global__ void pool_bwd_kernel(const float *x, const float *dy, float *dx, size_t total, geom g)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t plane = i / ((size_t)g.H * g.W);
        const int off = (int)(i % ((size_t)g.H * g.W)), iy = off / g.W, ix = off % g.W;
        const float *xp = x + plane * g.H * g.W;
        const float *dyp = dy + plane * g.OH * g.OW;
        /* windows oy with oy*stride <= iy < oy*stride + pool */
        int oy0 = iy - g.pool + 1 > 0 ? (iy - g.pool + 1 + g.stride - 1) / g.stride : 0;
        int oy1 = iy / g.stride;
        int ox0 = ix - g.pool + 1 > 0 ? (ix - g.pool + 1 + g.stride - 1) / g.stride : 0;
        int ox1 = ix / g.stride;
        if (oy1 > g.OH - 1) oy1 = g.OH - 1;
        if (ox1 > g.OW - 1) ox1 = g.OW - 1;
        float sum = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++)
                if (window_argmax(xp, g, oy, ox) == off) sum += dyp[oy * g.OW + ox];
        dx[i] = sum;
    }
}

geom geom_of(const maxpool2d_state *s)
{
    geom g = {s->in.h, s->in.w, s->out_h, s->out_w, s->pool, s->stride};
    return g;
}

} // namespace

int maxpool2d_forward_cuda(const maxpool2d_state *s, void *stream, int n, const float *x, float *y, dm_error *err)
{
    const size_t total = (size_t)n * s->in.c * s->out_h * s->out_w;
    pool_fwd_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(x, y, total, geom_of(s));
    return dm_cuda_launched(s->name, "maxpool forward", err);
}

int maxpool2d_backward_cuda(const maxpool2d_state *s, void *stream, int n, const float *x, const float *dy, float *dx,
                            dm_error *err)
{
    const size_t total = (size_t)n * s->in.c * s->in.h * s->in.w;
    pool_bwd_kernel<<<dm_cuda_grid(total, THREADS, 65535), THREADS, 0, (cudaStream_t)stream>>>(x, dy, dx, total,
                                                                                               geom_of(s));
    return dm_cuda_launched(s->name, "maxpool backward", err);
}
