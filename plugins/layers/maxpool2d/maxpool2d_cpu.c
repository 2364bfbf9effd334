/* MaxPool2D on the CPU, one (image, channel) plane per OpenMP iteration.
 * Backward recomputes the argmax from the input instead of storing indices:
 * no workspace, and nothing that must survive between forward and backward. */
#include "maxpool2d.h"
#include "dmnist/layer_util.h"

#include <string.h>

/* g when cond is 1, +0 when it is 0, without a branch (bit mask). */
static inline float keep_if(int cond, float g)
{
    uint32_t u;
    memcpy(&u, &g, sizeof u);
    u &= 0u - (uint32_t)cond;
    memcpy(&g, &u, sizeof u);
    return g;
}

/* Offset in the plane of the first maximum of window (oy, ox). */
static inline int window_argmax(const maxpool2d_state *s, const float *plane, int oy, int ox)
{
    const int W = s->in.w, y0 = oy * s->stride, x0 = ox * s->stride;
    int best = y0 * W + x0;
    float m = plane[best];
    for (int ky = 0; ky < s->pool; ky++) {
        const float *row = plane + (size_t)(y0 + ky) * W + x0;
        for (int kx = 0; kx < s->pool; kx++) {
            if (row[kx] > m) {
                m = row[kx];
                best = (y0 + ky) * W + x0 + kx;
            }
        }
    }
    return best;
}

void maxpool2d_forward_cpu(const maxpool2d_state *s, int n, const float *x, float *y)
{
    const int planes = n * s->in.c, ohw = s->out_h * s->out_w;
    const size_t hw = (size_t)s->in.h * s->in.w;
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if ((size_t)planes * hw >= DM_PARALLEL_MIN_ELEMENTS)
    for (int pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * hw;
        float *yp = y + (size_t)pl * ohw;
        if (s->pool == 2 && s->stride == 2) {
            /* The common case, written out so it vectorises. */
            const int W = s->in.w;
            for (int oy = 0; oy < s->out_h; oy++) {
                const float *r0 = xp + (size_t)(2 * oy) * W, *r1 = r0 + W;
                for (int ox = 0; ox < s->out_w; ox++) {
                    float a = r0[2 * ox] > r0[2 * ox + 1] ? r0[2 * ox] : r0[2 * ox + 1];
                    float b = r1[2 * ox] > r1[2 * ox + 1] ? r1[2 * ox] : r1[2 * ox + 1];
                    yp[oy * s->out_w + ox] = a > b ? a : b;
                }
            }
        } else {
            for (int oy = 0; oy < s->out_h; oy++)
                for (int ox = 0; ox < s->out_w; ox++) yp[oy * s->out_w + ox] = xp[window_argmax(s, xp, oy, ox)];
        }
    }
}

void maxpool2d_backward_cpu(const maxpool2d_state *s, int n, const float *x, const float *dy, float *dx)
{
    const int planes = n * s->in.c, ohw = s->out_h * s->out_w;
    const size_t hw = (size_t)s->in.h * s->in.w;
#pragma omp parallel for schedule(static) num_threads(s->nthreads) if ((size_t)planes * hw >= DM_PARALLEL_MIN_ELEMENTS)
    for (int pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * hw;
        const float *dyp = dy + (size_t)pl * ohw;
        float *dxp = dx + (size_t)pl * hw;
        memset(dxp, 0, hw * sizeof(float));
        if (s->pool == 2 && s->stride == 2) {
            /* The common case, without branches (random data would make
             * them mispredict): the first maximum of (a, b) and of (c, d),
             * then the top pair on a tie, which is window_argmax's rule.
             * Every element of each window is written. */
            const int W = s->in.w;
            for (int oy = 0; oy < s->out_h; oy++) {
                float *d0 = dxp + (size_t)(2 * oy) * W, *d1 = d0 + W;
                const float *r0 = xp + (size_t)(2 * oy) * W, *r1 = r0 + W;
                for (int ox = 0; ox < s->out_w; ox++) {
                    const float a = r0[2 * ox], b = r0[2 * ox + 1];
                    const float c = r1[2 * ox], d = r1[2 * ox + 1];
                    const float g = dyp[oy * s->out_w + ox];
                    const int top_b = b > a, bottom_d = d > c;
                    const float top = top_b ? b : a, bottom = bottom_d ? d : c;
                    const int low = bottom > top, high = !low;
                    const int top_a = !top_b, bottom_c = !bottom_d;
                    d0[2 * ox] = keep_if(high & top_a, g);
                    d0[2 * ox + 1] = keep_if(high & top_b, g);
                    d1[2 * ox] = keep_if(low & bottom_c, g);
                    d1[2 * ox + 1] = keep_if(low & bottom_d, g);
                }
            }
        } else {
            for (int oy = 0; oy < s->out_h; oy++)
                for (int ox = 0; ox < s->out_w; ox++) dxp[window_argmax(s, xp, oy, ox)] += dyp[oy * s->out_w + ox];
        }
    }
}
