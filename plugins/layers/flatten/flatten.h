/* Flatten layer: state and device math. In NCHW the flattened vector has
 * the same bytes as the input, so forward and backward are copies (skipped
 * when the core hands the same buffer for both sides). A CUDA version adds
 * flatten_cuda.cu with a device-to-device copy. */
#ifndef DM_FLATTEN_H
#define DM_FLATTEN_H

#include "dmnist/layer.h"

typedef struct flatten_state {
    char name[64];
    dm_device device;
    dm_shape in;  /* create-time input shape */
    dm_shape out; /* (n, c*h*w, 1, 1) */
} flatten_state;

/* dst = src, count floats (no-op when they are the same buffer). */
void flatten_copy_cpu(size_t count, const float *src, float *dst);

/* flatten_cuda.cu: a device-to-device copy on `stream`; a dm_status.
 * Declared in every build, defined only with DM_WITH_CUDA: DM_CPU_OR_CUDA
 * calls them there alone (and type-checks the calls everywhere). */
int flatten_copy_cuda(const flatten_state *s, void *stream, size_t count, const float *src, float *dst, dm_error *err);

#endif
