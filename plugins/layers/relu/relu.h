/* ReLU layer: state and device math. relu.c is the device-independent glue;
 * a CUDA version adds relu_cuda.cu with the same two functions for CUDA. */
#ifndef DM_RELU_H
#define DM_RELU_H

#include "dmnist/layer.h"

typedef struct relu_state {
    char name[64];
    dm_device device;
    int nthreads;
    dm_shape shape; /* create-time input shape; n = largest batch */
} relu_state;

/* Below this many elements a pass runs on the calling thread. These passes
 * are memory-bound and cheap (the seed's 2.4M-element maxpool takes 0.7 ms
 * on one core); on a busy machine each parallel region costs a wait for the
 * other thread to be scheduled, milliseconds with OpenMP's default spinning
 * (docs/cpu-path.md: serial passes made training 25-45% faster at load 13). */
#define RELU_PARALLEL_MIN (1u << 23)

/* y = max(x, 0) over count floats. */
void relu_forward_cpu(const relu_state *s, size_t count, const float *x, float *y);
/* dx = dy where x > 0, else 0. */
void relu_backward_cpu(const relu_state *s, size_t count, const float *x, const float *dy,
                       float *dx);

#ifdef DM_WITH_CUDA
/* relu_cuda.cu: the same on device buffers, on `stream`; a dm_status. */
int relu_forward_cuda(const relu_state *s, void *stream, size_t count, const float *x, float *y,
                      dm_error *err);
int relu_backward_cuda(const relu_state *s, void *stream, size_t count, const float *x,
                       const float *dy, float *dx, dm_error *err);
#endif

#endif
