/* MaxPool2D layer: state and device math. maxpool2d.c is the
 * device-independent glue, maxpool2d_cpu.c the CPU pass and maxpool2d_cuda.cu
 * the CUDA kernels (built with DM_WITH_CUDA). */
#ifndef DM_MAXPOOL2D_H
#define DM_MAXPOOL2D_H

#include "dmnist/layer.h"

typedef struct maxpool2d_state {
    char name[64];
    dm_device device;
    int nthreads;
    dm_shape in;      /* create-time input shape */
    int pool, stride; /* square window, no padding */
    int out_h, out_w;
} maxpool2d_state;

/* x (n, c, h, w) -> y (n, c, out_h, out_w): the max of each window. */
void maxpool2d_forward_cpu(const maxpool2d_state *s, int n, const float *x, float *y);
/* dx = dy routed to the first maximum of each window (found again from x,
 * exactly as forward found it); overlapping windows add up. */
void maxpool2d_backward_cpu(const maxpool2d_state *s, int n, const float *x, const float *dy, float *dx);

/* maxpool2d_cuda.cu: the same on device buffers, on `stream`; a dm_status.
 * Declared in every build, defined only with DM_WITH_CUDA: DM_CPU_OR_CUDA
 * calls them there alone (and type-checks the calls everywhere). */
int maxpool2d_forward_cuda(const maxpool2d_state *s, void *stream, int n, const float *x, float *y, dm_error *err);
int maxpool2d_backward_cuda(const maxpool2d_state *s, void *stream, int n, const float *x, const float *dy, float *dx,
                            dm_error *err);

#endif
