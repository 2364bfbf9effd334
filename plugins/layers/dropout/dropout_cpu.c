/* Dropout on the CPU. Forward and backward apply the same mask, so both are
 * "multiply by mask * scale". */
#include "dropout.h"
#include "dmnist/layer_util.h"

#include <string.h>

DROPOUT_CLONES static void apply_mask(const dropout_state *s, uint64_t seed, size_t count, const float *src,
                       float *dst)
{
    const uint32_t thr = s->threshold;
    const float scale = s->scale;
#pragma omp parallel for schedule(static) num_threads(s->nthreads) \
    if (count >= DM_PARALLEL_MIN_ELEMENTS)
    for (size_t i = 0; i < count; i++) {
        const float v = src[i] * scale;
        dst[i] = dropout_keep(seed, i, thr) ? v : 0.0f;
    }
}

void dropout_forward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *x,
                         float *y)
{
    apply_mask(s, seed, count, x, y);
}

void dropout_backward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *dy,
                          float *dx)
{
    apply_mask(s, seed, count, dy, dx);
}

void dropout_copy_cpu(size_t count, const float *src, float *dst)
{
    if (src != dst)
        memcpy(dst, src, count * sizeof(float));
}
