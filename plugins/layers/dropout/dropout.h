/* Dropout layer (inverted dropout): state and device math.
 *
 * The mask is a pure function of (ctx->seed, element index) so that a CUDA
 * version computes the same mask, and backward recomputes it instead of
 * storing it: element i of the (n, c, h, w) batch tensor (NCHW index) is
 * kept when  dm_hash64(seed, i) >> 40  (24 uniform bits)  >= threshold,
 * threshold = floor(rate * 2^24); kept elements are scaled by 1/(1 - rate).
 * Backward must get the same ctx->seed as the matching forward call. */
#ifndef DM_DROPOUT_H
#define DM_DROPOUT_H

#include "dmnist/layer.h"

typedef struct dropout_state {
    char name[64];
    dm_device device;
    int nthreads;
    dm_shape shape;     /* create-time input shape */
    float rate;         /* probability of dropping, in [0, 1) */
    uint32_t threshold; /* floor(rate * 2^24) */
    float scale;        /* 1 / (1 - rate) */
} dropout_state;

static inline int dropout_keep(uint64_t seed, uint64_t index, uint32_t threshold)
{
    return (dm_hash64(seed, index) >> 40) >= threshold;
}

/* Training: y[i] = keep(i) ? x[i] * scale : 0. */
void dropout_forward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *x, float *y);
/* Training: dx[i] = keep(i) ? dy[i] * scale : 0 (the same mask). */
void dropout_backward_cpu(const dropout_state *s, uint64_t seed, size_t count, const float *dy, float *dx);
/* Evaluation (and rate 0): dst = src. */
void dropout_copy_cpu(size_t count, const float *src, float *dst);

/* dropout_cuda.cu: the same (the same masks) on device buffers, on
 * `stream`; a dm_status.
 * Declared in every build, defined only with DM_WITH_CUDA: DM_CPU_OR_CUDA
 * calls them there alone (and type-checks the calls everywhere). */
int dropout_forward_cuda(const dropout_state *s, void *stream, uint64_t seed, size_t count, const float *x, float *y,
                         dm_error *err);
int dropout_backward_cuda(const dropout_state *s, void *stream, uint64_t seed, size_t count, const float *dy, float *dx,
                          dm_error *err);
int dropout_copy_cuda(const dropout_state *s, void *stream, size_t count, const float *src, float *dst, dm_error *err);

#endif
